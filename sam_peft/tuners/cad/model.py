"""The CAD tuner: wraps SAM's vision encoder so that a convolutional adapter's output is added to its embedding."""

from __future__ import annotations

import re
from typing import ClassVar

from torch import nn

from ..base import SamPeftTuner
from .config import SAM_VISION_ENCODER_TARGET, CadConfig
from .layer import CadLayer, CadVisionEncoder


class CadModel(SamPeftTuner):
    """Creates a CAD model from a transformers `SamModel`, `SamHQModel` or `SamForSemanticSegmentation`.

    CAD is a side network rather than a per-layer injection: its one target is the vision encoder, which is
    wrapped (`CadVisionEncoder`) so that it runs without autograd and the adapter's output is added to its
    `last_hidden_state`. Saving, loading, several adapters, disabling and deleting work as for any PEFT method;
    the BatchNorm running statistics are saved with the adapter. There is nothing to merge.

    Example:
        >>> import sam_peft
        >>> from peft import get_peft_model
        >>> model = sam_peft.SamForSemanticSegmentation.from_pretrained("facebook/sam-vit-base")
        >>> model = get_peft_model(model, sam_peft.CadConfig())  # adapter + mask decoder train
        >>> model.print_trainable_parameters()
    """

    prefix: str = "cad_"
    tuner_layer_cls = CadLayer
    target_module_mapping: ClassVar[dict[str, str]] = dict.fromkeys(
        ("sam", "sam_hq", "sam2", "sam3_tracker"), SAM_VISION_ENCODER_TARGET
    )
    unsupported_architectures: ClassVar[dict[str, str]] = {
        "edgetam": (
            "transformers builds its RepViT encoder through timm, which sam-peft does not depend on, so CAD's side "
            "network on EdgeTAM's FPN is neither built nor tested"
        )
    }

    def _create_and_replace(
        self,
        peft_config: CadConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        if isinstance(target, CadLayer):
            target.update_layer(adapter_name, peft_config)
            return
        if not ((hasattr(target, "patch_embed") or hasattr(target, "backbone")) and hasattr(target, "neck")):
            raise ValueError(
                f"CAD target {current_key!r} is a {type(target).__name__}; CAD wraps SAM's whole vision encoder (the "
                "module with `patch_embed` or `backbone`, and `neck`, whose output is the image embedding). Check "
                "`target_modules`."
            )
        config = getattr(target, "config", None)
        # the image embedding's channels: SAM's neck output, or SAM 2 / SAM 3's FPN width
        output_channels = getattr(config, "output_channels", getattr(config, "fpn_hidden_size", None))
        if output_channels is not None and output_channels != peft_config.channels:
            raise ValueError(
                f"CadConfig.channels is {peft_config.channels} but the image embedding of {current_key!r} has "
                f"{output_channels} channels; the adapter's output is added to it, so they must be equal."
            )
        self._insert(parent, target_name, CadVisionEncoder(target, adapter_name, peft_config), target, adapter_name)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...vision_encoder.cad_adapter.<name>.blocks.0.conv.weight` -> `...cad_adapter.blocks.0.conv.weight`.

        The adapter is a nested module, so its adapter name sits in the middle of the key, where peft's default
        (which expects it second to last) would leave it.
        """
        pattern = rf"(\.{re.escape(cls.prefix)}\w+)\.{re.escape(adapter_name)}(?=\.|$)"
        renamed, count = re.subn(pattern, r"\1", key, count=1)
        return renamed if count else super()._remove_adapter_name_from_key(key, adapter_name)
