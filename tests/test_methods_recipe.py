"""Methods of the registry through recipes/train.py end to end: a peft method from the YAML's `peft_config`
mapping, and SLoRA for one domain (prompt-free with its learned prompt, prompted with its point heat maps)."""

from __future__ import annotations

import json

import yaml
from peft import PeftModel
from test_prompted_recipe import prompted_run
from test_train_recipe import QUICKSTART, run_train, small_run

from sam_peft.modeling import random_sam
from sam_peft.training import load_trained, read_run_file
from sam_peft.tuners.slora import SloraConfig


def test_a_peft_method_from_the_yaml_trains_is_recorded_and_reloads(tmp_path):
    random_sam("tiny", seed=0).save_pretrained(tmp_path / "base")
    config = tmp_path / "ia3.yaml"
    config.write_text(
        yaml.safe_dump(
            {"extends": str(QUICKSTART), "method": "peft", "peft_config": {"peft_type": "IA3"}, "last_blocks": 2}
        )
    )
    args = small_run(tmp_path, "run", "--num_epochs", "1")
    run_train([str(config), *args[1:]])
    record = read_run_file(tmp_path / "run")["model"]
    assert record["method"] == "peft" and record["peft_config"] == {"peft_type": "IA3"} and record["last_blocks"] == 2
    model = load_trained(tmp_path / "run")
    assert isinstance(model, PeftModel) and model.peft_config["default"].peft_type.value == "IA3"
    adapted = {name.split(".ia3_l")[0] for name, _ in model.named_parameters() if ".ia3_l." in name}
    assert adapted and all(".layers.2." in name or ".layers.3." in name for name in adapted)  # the last 2 of 4
    card = (tmp_path / "run" / "README.md").read_text()
    assert "registers the IA3 tuner type" in card and "'PEFT'" not in card  # the adapter's own type
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["peft_type"] == "IA3"


def test_slora_trains_for_one_domain_prompt_free_and_prompted(tmp_path):
    random_sam("tiny", seed=0).save_pretrained(tmp_path / "base")
    run_train(small_run(tmp_path, "free", "--method", "slora", "--r", "4", "--num_epochs", "1"))
    run_train(prompted_run(tmp_path, "prompted", "--method", "slora", "--r", "4", "--num_epochs", "1"))
    for name, learned in (("free", True), ("prompted", False)):
        config = SloraConfig.from_pretrained(tmp_path / name)
        assert (config.learned_prompt, config.prompt_augmentation, config.r) == (learned, True, 4)
        assert isinstance(load_trained(tmp_path / name), PeftModel)
    prompted = json.loads((tmp_path / "prompted" / "metrics.json").read_text())
    assert prompted["num_objects"] > 0 and "miou@1" in prompted["untrained"]
