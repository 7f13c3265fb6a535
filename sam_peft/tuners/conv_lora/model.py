"""The Conv-LoRA tuner: injects Conv-LoRA layers into a SAM model the way peft's LoRA injects its layers."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..base import SamPeftTuner
from ..targets import CONVOLUTIONAL_ENCODER, QKV_TARGETS
from .config import ConvLoraConfig
from .layer import ConvLoraLayer, Linear


class ConvLoraModel(SamPeftTuner):
    """Creates a Conv-LoRA model from a transformers `SamModel` (or `SamHQModel`, or any model whose targets are
    `nn.Linear` layers fed channels-last 4-D tensors).

    Example:
        >>> import sam_peft
        >>> from peft import get_peft_model
        >>> from transformers import SamModel
        >>> sam = SamModel.from_pretrained("facebook/sam-vit-base")
        >>> model = get_peft_model(sam, sam_peft.ConvLoraConfig(modules_to_save=["mask_decoder"]))
        >>> model.print_trainable_parameters()
    """

    prefix: str = "conv_lora_"
    tuner_layer_cls = ConvLoraLayer
    target_module_mapping: ClassVar[dict[str, str]] = QKV_TARGETS
    unsupported_architectures: ClassVar[dict[str, str]] = {"edgetam": CONVOLUTIONAL_ENCODER}

    def _create_and_replace(
        self,
        peft_config: ConvLoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, ConvLoraLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not isinstance(target, nn.Linear):
            raise ValueError(
                f"Conv-LoRA target {current_key!r} is a {type(target).__name__}; only nn.Linear layers (SAM's fused "
                "qkv projections) can be adapted. Check `target_modules`."
            )
        self._insert(parent, target_name, Linear(target, adapter_name, peft_config), target, adapter_name)
