"""Registers sam-peft's tuner types with peft. Runs once, when `sam_peft` is imported.

peft's `register_peft_method` accepts only members of its closed `PeftType` enum, so an outside package cannot
use it. `PeftType` is a str-enum, though, so plain string keys ("CONV_LORA") in peft's type mappings hash and
compare like members: with them, `get_peft_model`, `save_pretrained`, `PeftConfig.from_pretrained`,
`PeftModel.from_pretrained`, `load_adapter`, `set_adapter` and `delete_adapter` all work. This module is the only
place that touches those peft internals (checked on peft 0.21; setup.cfg pins peft to that minor version).
"""

from __future__ import annotations

from peft import PeftConfig
from peft import mapping as peft_mapping
from peft.tuners.tuners_utils import BaseTuner


def register_tuner(peft_type: str, config_cls: type[PeftConfig], model_cls: type[BaseTuner], prefix: str) -> None:
    """Make `peft_type` known to peft; calling it again with the same classes does nothing.

    Raises:
        ValueError: when `peft_type` or `prefix` is already registered to something else (another package, or a
            name peft itself uses).
    """
    existing = peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if existing is not None and existing is not config_cls:
        raise ValueError(f"PEFT type {peft_type!r} is already registered to {existing.__module__}.{existing.__name__}.")
    other_owner = next(
        (t for t, p in peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING.items() if p == prefix and t != peft_type),
        None,
    )
    if other_owner is not None:
        raise ValueError(f"Parameter prefix {prefix!r} is already used by PEFT type {other_owner!s}.")
    peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix


def register_all() -> None:
    """Register every sam-peft tuner type. (`sam_peft`'s `__init__` also hooks the model card writer of their plain
    `save_pretrained` in: the hub layer is above this one.)"""
    from .tuners.cad import CAD, CadConfig, CadModel
    from .tuners.conv_lora import CONV_LORA, ConvLoraConfig, ConvLoraModel
    from .tuners.sam_adapter import SAM_ADAPTER, SamAdapterConfig, SamAdapterModel
    from .tuners.slora import SLORA, SloraConfig, SloraModel

    register_tuner(CONV_LORA, ConvLoraConfig, ConvLoraModel, ConvLoraModel.prefix)
    register_tuner(CAD, CadConfig, CadModel, CadModel.prefix)
    register_tuner(SAM_ADAPTER, SamAdapterConfig, SamAdapterModel, SamAdapterModel.prefix)
    register_tuner(SLORA, SloraConfig, SloraModel, SloraModel.prefix)
