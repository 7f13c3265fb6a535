"""`import sam_peft` registers the tuner types with peft, idempotently."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from peft import PeftConfig, get_peft_model
from peft import mapping as peft_mapping

import sam_peft
from sam_peft._registration import register_all, register_tuner
from sam_peft.tuners.conv_lora import ConvLoraModel


def test_import_registers_conv_lora():
    assert peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING["CONV_LORA"] is sam_peft.ConvLoraConfig
    assert peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING["CONV_LORA"] is ConvLoraModel
    assert peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING["CONV_LORA"] == "conv_lora_"


def test_registration_is_idempotent():
    before = dict(peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING)
    register_all()
    importlib.reload(sam_peft)
    register_all()
    assert peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING.keys() == before.keys()


def test_conflicting_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_tuner("CONV_LORA", PeftConfig, ConvLoraModel, "conv_lora_")
    with pytest.raises(ValueError, match="prefix 'lora_' is already used"):
        register_tuner("SOMETHING_NEW", PeftConfig, ConvLoraModel, "lora_")
    assert "SOMETHING_NEW" not in peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING


def test_peft_config_roundtrip_through_peft(tmp_path, tiny_sam):
    model = get_peft_model(tiny_sam, sam_peft.ConvLoraConfig(r=2, num_experts=3))
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, sam_peft.ConvLoraConfig)
    assert (config.peft_type, config.r, config.expert_scales) == ("CONV_LORA", 2, [1, 2, 3])


def test_import_order_peft_first_then_sam_peft():
    """Importing peft (and transformers) before sam_peft still registers: no import-order surprise."""
    code = (
        "import peft, transformers\n"
        "from peft import mapping\n"
        "assert 'CONV_LORA' not in mapping.PEFT_TYPE_TO_CONFIG_MAPPING\n"
        "import sam_peft\n"
        "assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING['CONV_LORA'] is sam_peft.ConvLoraConfig\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


ROOT = Path(__file__).resolve().parents[1]


# What `pip install -e .` installs without the test extra: the package and the recipes import without these.
TEST_EXTRA_MODULES = ("sklearn", "pysodmetrics", "py_sod_metrics", "pycocotools", "pytest", "xdist", "ruff")


def test_the_package_and_the_recipes_import_without_the_test_extra():
    """A fresh `pip install -e .` has none of the test extra (nor scikit-learn, which pysodmetrics brings and some
    peft configs ask for when built): importing sam_peft, listing peft's methods and loading every recipe must not
    need them."""
    blocked = ", ".join(repr(name) for name in TEST_EXTRA_MODULES)
    code = (
        f"import sys, runpy\nfor name in ({blocked},):\n    sys.modules[name] = None\n"
        "import sam_peft\nfrom sam_peft.modeling.methods import PEFT_TYPES\nassert 'LORA' in PEFT_TYPES\n"
        "for recipe in ('train', 'evaluate', 'predict', 'continual', 'cache_embeddings'):\n"
        "    runpy.run_path(f'recipes/{recipe}.py', run_name='not_main')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
