"""`convert_checkpoint`: one entry point for the four converters, by method name."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel

from .cad import convert_cad
from .conv_lora import convert_conv_lora
from .sam_adapter import convert_sam_adapter
from .slora import convert_slora

# Method name (as sam-peft's tuner folders and the command's --method) -> its converter.
CONVERTERS: dict[str, Callable[..., PeftModel]] = {
    "slora": convert_slora,
    "sam_adapter": convert_sam_adapter,
    "cad": convert_cad,
    "conv_lora": convert_conv_lora,
}

# Where each method's checkpoints come from, for help texts.
SOURCES: dict[str, str] = {
    "slora": "SAMCL's module file (github.com/INV-WZQ/SAMCL, save_lora_parameters)",
    "sam_adapter": "SAM-Adapter's model_epoch_*.pth (github.com/tianrun-chen/SAM-Adapter-PyTorch)",
    "cad": "CAD's checkpoints/*.pth (github.com/Kyyle2114/Convolutional-Adapter-for-Segment-Anything)",
    "conv_lora": "AutoGluon's Conv-LoRA model.ckpt (github.com/autogluon/autogluon, multimodal)",
}

_COMMON_PARAMETERS = ("checkpoint", "base_model", "output_dir")


def method_options(method: str) -> list[str]:
    """The options a method's converter takes besides the checkpoint, base model and output folder."""
    parameters = inspect.signature(CONVERTERS[method]).parameters
    return [name for name in parameters if name not in _COMMON_PARAMETERS]


def convert_checkpoint(
    method: str,
    checkpoint: str | os.PathLike,
    base_model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> PeftModel:
    """Converts an official checkpoint of `method` to a sam-peft adapter on `base_model`.

    Args:
        method: "slora", "sam_adapter", "cad" or "conv_lora" (see `SOURCES` for the formats).
        checkpoint: the authors' checkpoint file.
        base_model: the SAM it was trained on: a Hub id or folder, or a loaded model.
        output_dir: when given, the adapter is saved there with `save_pretrained`.
        options: the method's options (`method_options`), e.g. `lora_alpha` for "conv_lora".

    Returns:
        The `PeftModel` (eval mode) holding the converted weights.

    Raises:
        ValueError: an unknown method or option.
        ConversionError: a checkpoint that cannot be converted, with what is wrong and the file's name.
    """
    if method not in CONVERTERS:
        raise ValueError(f"Unknown method {method!r}; expected one of {sorted(CONVERTERS)}.")
    unknown = sorted(set(options) - set(method_options(method)))
    if unknown:
        accepted = ", ".join(method_options(method)) or "none"
        raise ValueError(f"Method {method!r} takes no option {', '.join(unknown)} (its options: {accepted}).")
    return CONVERTERS[method](checkpoint, base_model, output_dir=output_dir, **options)
