"""recipes/train.py end to end on a tiny SAM and generated data: outputs, resume, two processes, bad input."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from safetensors.torch import load_file
from transformers import SamModel

from sam_peft import sam_config
from sam_peft.data.layouts import BENCHMARKS
from sam_peft.training import load_trained, parse_args

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "train.py"
QUICKSTART = ROOT / "recipes" / "configs" / "quickstart.yaml"


def small_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """Arguments of a quickstart run shrunk to seconds: 8 training and 4 evaluation images, 2 epochs of 2 steps."""
    return [
        str(QUICKSTART),
        "--base_model",
        str(tmp_path / "base"),
        "--output_dir",
        str(tmp_path / name),
        "--synthetic_train_size",
        "8",
        "--synthetic_eval_size",
        "4",
        "--batch_size",
        "4",
        "--eval_batch_size",
        "4",
        "--num_epochs",
        "2",
        "--report_to",
        "none",
        *extra,
    ]


def run_train(
    args: list[str], launcher: list[str] | None = None, check: bool = True, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), str(TRAIN), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("train")
    run_train(small_run(tmp_path, "run"))
    return tmp_path


def test_run_writes_adapter_card_metrics_and_pictures(finished_run):
    run_dir = finished_run / "run"
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "training_curves.png").stat().st_size > 0 and (run_dir / "predictions.png").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_4"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metric_for_best_model"] == "iou" and 0.0 <= metrics["iou"] <= 1.0
    assert set(metrics["untrained"]) >= {"iou", "s_alpha", "loss", "auxiliary_loss"}
    # The optimised loss is the task loss plus the balance loss (moe_loss_weight 1.0), each logged apart.
    for entry in metrics["train_log"]:
        assert entry["loss"] == pytest.approx(entry["task_loss"] + entry["auxiliary_loss"], rel=1e-5)
        assert entry["auxiliary_loss"] > 0.0
    card = (run_dir / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "peft" and metadata["base_model"] == str(finished_run / "base")
    _, results = model_index_to_eval_results(metadata["model-index"])
    assert {r.metric_type: r.metric_value for r in results}["iou"] == pytest.approx(metrics["iou"])
    # only trained weights are checkpointed: the adapter and the decoder, not the frozen encoder
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert not any("vision_encoder" in k and "conv_lora" not in k for k in saved)


def test_trained_run_reloads_with_identical_predictions(finished_run):
    model = load_trained(finished_run / "run")
    again = load_trained(finished_run / "run")
    pixel_values = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixel_values).logits, again(pixel_values=pixel_values).logits)
    saved = adapter_weights(finished_run / "run")
    assert saved and all(torch.count_nonzero(v) > 0 for k, v in saved.items() if "conv_lora_B" in k)


def test_adapter_on_another_base_model_is_a_clear_error(finished_run, tmp_path):
    config = sam_config("tiny")
    config.vision_config.hidden_size, config.vision_config.mlp_dim = 48, 96  # a wider encoder
    SamModel(config).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"(?s)does not fit this model.*size mismatch.*conv_lora_A"):
        load_trained(finished_run / "run", base_model=str(tmp_path / "other"))


def test_cached_encoder_outputs_give_the_same_run(finished_run, tmp_path):
    """decoder_only with and without --cache_embeddings (float32): the same loss curve and result."""
    shutil.copytree(finished_run / "base", tmp_path / "base")
    common = ("--method", "decoder_only", "--learning_rate", "0.001")
    run_train(small_run(tmp_path, "plain", *common))
    cache_args = ("--cache_embeddings", "--embedding_cache_dir", str(tmp_path / "cache"))
    run_train(small_run(tmp_path, "cached", *common, *cache_args, "--embedding_cache_dtype", "float32"))
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    cached = json.loads((tmp_path / "cached" / "metrics.json").read_text())
    assert [e["step"] for e in cached["train_log"]] == [e["step"] for e in plain["train_log"]] == [1, 2, 3, 4]
    losses = [[e["loss"] for e in run["train_log"]] for run in (plain, cached)]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=0)
    assert cached["iou"] == pytest.approx(plain["iou"], abs=1e-5)
    stats = cached["embedding_cache"]
    # 4 evaluation images (read again at each of 3 evaluations) and 8 training images, some flipped
    assert stats["misses"] >= 12 and stats["hits"] >= 8 and stats["repaired"] == 0
    assert stats["directory"].startswith(str(tmp_path / "cache"))


def test_cad_trains_from_a_cache_filled_ahead(finished_run, tmp_path):
    """recipes/cache_embeddings.py stores every image the run reads, flipped or not: training never encodes."""
    shutil.copytree(finished_run / "base", tmp_path / "base")
    args = small_run(tmp_path, "cad", "--method", "cad", "--cad_image_size", "64", "--semantic_loss", "bce_iou")
    args += ["--embedding_cache_dir", str(tmp_path / "cache")]
    filled = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "cache_embeddings.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert "train (flipped): 8 computed" in filled.stdout and "validation: 4 computed" in filled.stdout
    run_train([*args, "--cache_embeddings"])
    run_dir = tmp_path / "cad"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["embedding_cache"]["misses"] == 0 and metrics["embedding_cache"]["hits"] > 0
    assert json.loads((run_dir / "adapter_config.json").read_text())["peft_type"] == "CAD"
    saved = adapter_weights(run_dir)
    assert any("cad_adapter" in k and "running_mean" in k for k in saved)  # BatchNorm statistics travel too
    assert any(k.startswith("base_model.model.mask_decoder") for k in saved)
    model = load_trained(run_dir)
    pixel_values = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixel_values).logits, load_trained(run_dir)(pixel_values).logits)
    card = (run_dir / "README.md").read_text()
    assert "cad_image_size" in card and "CAD" in card


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("method: conv_lora\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) in .*bad\.yaml: learning_rat"):
        parse_args([str(config)])


def test_missing_data_dir_is_named(tmp_path):
    result = run_train(
        [
            str(QUICKSTART),
            "--benchmark",
            "kvasir",
            "--output_dir",
            str(tmp_path / "x"),
            "--base_model",
            str(tmp_path / "base"),
        ],
        check=False,
    )
    assert result.returncode != 0 and "benchmark 'kvasir' needs data_dir" in result.stderr


def test_output_dir_of_a_different_run_is_refused(finished_run, tmp_path):
    shutil.copytree(finished_run / "run", tmp_path / "run")
    shutil.copytree(finished_run / "base", tmp_path / "base")
    args = small_run(tmp_path, "run", "--learning_rate", "0.5", "--max_steps", "1")
    refused = run_train(args, check=False)
    assert refused.returncode != 0
    assert re.search(r"holds a different run \(.*train\.learning_rate: 0\.003 -> 0\.5", refused.stderr)
    (tmp_path / "run" / ".tmp-results").mkdir()  # left by a kill
    run_train([*args, "--overwrite_output_dir", "true"])
    # only what this run wrote is there: its configuration and its checkpoint
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "training_config.json"]
    recorded = json.loads((tmp_path / "run" / "training_config.json").read_text())
    assert recorded["train"]["learning_rate"] == 0.5


def _write_pairs(images: Path, masks: Path, count: int, rng: np.random.Generator) -> None:
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"img_{index}.jpg")
        Image.fromarray(((rng.random((40, 50)) > 0.7) * 255).astype(np.uint8)).save(masks / f"img_{index}.png")


@pytest.fixture(scope="module")
def evaluate_main():
    """recipes/evaluate.py's main(), run in this process."""
    return runpy.run_path(str(ROOT / "recipes" / "evaluate.py"))["main"]


def run_evaluate(evaluate_main, monkeypatch, capsys, *args: str) -> list[str]:
    """The printed table of `recipes/evaluate.py args`: header, `| --- |` line, row."""
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    evaluate_main()
    return capsys.readouterr().out.strip().splitlines()[-3:]


def test_evaluate_prints_the_papers_row(finished_run, tmp_path, evaluate_main, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "SBU"
    _write_pairs(root / "SBUTrain4KRecoveredSmall/ShadowImages", root / "SBUTrain4KRecoveredSmall/ShadowMasks", 4, rng)
    _write_pairs(root / "SBU-Test/ShadowImages", root / "SBU-Test/ShadowMasks", 3, rng)
    output = tmp_path / "metrics.json"
    args = ["--adapter", str(finished_run / "run"), "--benchmark", "sbu", "--data_dir", str(root)]
    header, rule, row = run_evaluate(evaluate_main, monkeypatch, capsys, *args, "--output", str(output))
    assert header == "| sbu test (3 images) | ber | shadow_error | non_shadow_error |"
    assert rule == "| --- | ---: | ---: | ---: |"
    metrics = json.loads(output.read_text())
    assert metrics["split"] == "test" and metrics["images"] == 3
    assert row == (
        f"| {finished_run / 'run'} | {100 * metrics['ber']:.2f} | {100 * metrics['shadow_error']:.2f} | "
        f"{100 * metrics['non_shadow_error']:.2f} |"
    )


def test_evaluate_without_data_uses_the_runs_own_from_anywhere(
    finished_run, tmp_path, evaluate_main, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # another working directory
    output = tmp_path / "again.json"
    header, _, _ = run_evaluate(
        evaluate_main, monkeypatch, capsys, "--adapter", str(finished_run / "run"), "--output", str(output)
    )
    assert header == "| synthetic validation (4 images) | iou | dice | s_alpha | e_phi | f_beta_w | mae |"
    # the run's final evaluation, reproduced: same data (generated with the run's seed), same weights
    trained = json.loads((finished_run / "run" / "metrics.json").read_text())
    again = json.loads(output.read_text())
    for key in ("iou", "s_alpha", "mae", "loss", "auxiliary_loss"):
        assert again[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-7), key


def test_evaluate_a_folder_whole_and_a_hub_dataset(finished_run, tmp_path, evaluate_main, monkeypatch, capsys):
    import datasets

    rng = np.random.default_rng(1)
    _write_pairs(tmp_path / "images", tmp_path / "masks", 5, rng)
    args = ["--adapter", str(finished_run / "run"), "--image_dir", str(tmp_path / "images")]
    header, _, _ = run_evaluate(evaluate_main, monkeypatch, capsys, *args, "--mask_dir", str(tmp_path / "masks"))
    assert header.startswith(f"| {tmp_path / 'images'} test (5 images) | iou | dice |")

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    rows = {"img": [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(6)]}
    rows["seg"] = [((rng.random((40, 50)) > 0.7) * 255).astype(np.uint8) for _ in range(6)]
    (tmp_path / "hub" / "data").mkdir(parents=True)
    features = datasets.Features({"img": datasets.Image(), "seg": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "hub/data/train-00000-of-00001.parquet")
    args = ["--adapter", str(finished_run / "run"), "--hub_dataset", str(tmp_path / "hub")]
    args += ["--image_column", "img", "--target_column", "seg", "--validation_fraction", "0.5"]
    header, _, _ = run_evaluate(evaluate_main, monkeypatch, capsys, *args)
    # no test split: the validation half carved out of train
    assert header.startswith(f"| {tmp_path / 'hub'} validation (3 images) | iou |")


def test_every_recipe_help_starts_with_its_purpose_and_usage(monkeypatch, capsys):
    usages = {
        "train.py": "usage: accelerate launch recipes/train.py CONFIG.yaml [--key value ...]",
        "continual.py": "usage: python recipes/continual.py CONFIG.yaml [--key value ...]",
        "cache_embeddings.py": "usage: python recipes/cache_embeddings.py CONFIG.yaml [--key value ...]",
        "evaluate.py": "usage: python recipes/evaluate.py [CONFIG.yaml] --adapter RUN_OR_HUB_ID [DATA SOURCE]",
        "predict.py": "usage: python recipes/predict.py --adapter RUN_OR_HUB_ID --input IMAGE_OR_FOLDER",
        "export.py": "usage: python recipes/export.py --adapter RUN_OR_HUB_ID --output_dir OUT",
    }
    assert sorted(usages) == sorted(p.name for p in (ROOT / "recipes").glob("*.py"))
    for name, usage in usages.items():
        recipe = runpy.run_path(str(ROOT / "recipes" / name))
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as exit_info:
            recipe["main"]()
        assert exit_info.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(usage), name
        # then a blank line and the one-line purpose: the recipe's docstring's first line
        assert lines[1] == "" and lines[2] == recipe["__doc__"].splitlines()[0], name
        if name == "evaluate.py":  # every benchmark has its paper's columns
            assert set(recipe["TASKS"]) == set(BENCHMARKS)
