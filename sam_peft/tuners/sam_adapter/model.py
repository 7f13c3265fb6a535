"""The SAM-Adapter tuner: a prompt generator on the patch embedding and a prompt before every targeted block."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..base import SamPeftTuner
from ..targets import CONVOLUTIONAL_ENCODER
from .config import SAM3_BLOCK_TARGET, SAM_BLOCK_TARGET, SamAdapterConfig
from .layer import PromptedBlock, PromptGenerator, SamAdapterLayer

# Where a ViT encoder keeps its patch embedding (a module with a `projection` convolution), relative to the module
# that holds its blocks in `layers`: SAM's and SAM-HQ's `SamVisionEncoder.patch_embed`, SAM 3's
# `Sam3ViTModel.embeddings.patch_embeddings` (the convolution alone, before the position embedding and LayerNorm).
PATCH_EMBEDDINGS = ("patch_embed", "embeddings.patch_embeddings")

# Why SAM-Adapter does not apply to SAM 2's Hiera encoder (the error reads "SAM-Adapter cannot adapt SAM 2 (Hiera
# encoder): <this>.").
HIERA_REFUSAL = (
    "its blocks read four widths (C to 8 C) on four token grids (strides 4 to 32; the first block of stages 2-4 "
    "still reads the previous stage's and pools its queries), while SAM-Adapter feeds every block a prompt of one "
    "width on one grid from one prompt generator on the patch embedding. Its authors adapt Hiera with a separate "
    "method, SAM2-Adapter (Chen et al. 2024, 'SAM2-Adapter: Evaluating & Adapting Segment Anything 2 in Downstream "
    "Tasks'): per stage, a hand-crafted feature from a pyramid of strided convolutions, an embedding feature of the "
    "stage's input tokens and a shared projection to the stage's width; sam-peft does not implement it"
)


class SamAdapterModel(SamPeftTuner):
    """Creates a SAM-Adapter model from a transformers `SamModel`, `SamHQModel`, `Sam3TrackerModel` or one of their
    semantic-segmentation heads (`SamForSemanticSegmentation`, ...).

    The targets are vision blocks (`vision_encoder.layers.<i>` on SAM and SAM-HQ, `vision_encoder.backbone.layers.<i>`
    on SAM 3's tracker), each wrapped as a `PromptedBlock`; the patch embedding of their encoder
    (`vision_encoder.patch_embed`, SAM 3's `vision_encoder.backbone.embeddings.patch_embeddings`) is wrapped once as
    the `PromptGenerator` that computes the prompt features they read. Both are peft tuner layers: saving, loading,
    several adapters, disabling, deleting and unloading work as for any PEFT method. There is nothing to merge.
    SAM 2 (Hiera) and EdgeTAM (convolutional) are refused, saying why (`unsupported_architectures`).

    Example:
        >>> import sam_peft
        >>> from peft import get_peft_model
        >>> from transformers import SamModel
        >>> sam = SamModel.from_pretrained("facebook/sam-vit-base")
        >>> model = get_peft_model(sam, sam_peft.SamAdapterConfig(modules_to_save=["mask_decoder"]))
    """

    prefix: str = "sam_adapter_"
    tuner_layer_cls = SamAdapterLayer
    target_module_mapping: ClassVar[dict[str, str]] = {
        "sam": SAM_BLOCK_TARGET,
        "sam_hq": SAM_BLOCK_TARGET,
        "sam3_tracker": SAM3_BLOCK_TARGET,
    }
    unsupported_architectures: ClassVar[dict[str, str]] = {
        "sam2": HIERA_REFUSAL,
        "edgetam": CONVOLUTIONAL_ENCODER,
    }

    def _create_and_replace(
        self,
        peft_config: SamAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        generator = self._prompt_generator(peft_config, adapter_name, current_key)
        if isinstance(target, PromptedBlock):
            target.update_layer(adapter_name, peft_config, generator)
            return
        if isinstance(target, SamAdapterLayer) or not (hasattr(target, "attn") or hasattr(target, "attention")):
            raise ValueError(
                f"SAM-Adapter target {current_key!r} is a {type(target).__name__}; only vision blocks (e.g. "
                "`vision_encoder.layers.0`) take prompts. Check `target_modules`."
            )
        self._insert(
            parent, target_name, PromptedBlock(target, adapter_name, peft_config, generator), target, adapter_name
        )

    def _prompt_generator(self, peft_config: SamAdapterConfig, adapter_name: str, block_key: str) -> PromptGenerator:
        """The `PromptGenerator` on the patch embedding of the encoder holding block `block_key`, with the adapter.

        The encoder is the module whose `layers` hold the block; its patch embedding is the first of
        `PATCH_EMBEDDINGS` it has. Wraps the patch embedding on the first block of an encoder and adds the adapter
        to it on later ones.
        """
        encoder_key, separator, _ = block_key.rpartition(".layers.")
        encoder = self.model.get_submodule(encoder_key) if separator else None
        found = [(path, _submodule(encoder, path)) for path in PATCH_EMBEDDINGS]
        found = [(path, module) for path, module in found if hasattr(module, "projection")]
        if not found:
            raise ValueError(
                f"SAM-Adapter target {block_key!r} is not a block of a ViT vision encoder (`<encoder>.layers.<i>` "
                "beside a patch embedding with a `projection` convolution: `<encoder>.patch_embed` on SAM, "
                "`<encoder>.embeddings.patch_embeddings` on SAM 3). Check `target_modules`."
            )
        path, patch_embed = found[0]
        if isinstance(patch_embed, PromptGenerator):
            if adapter_name not in patch_embed.sam_adapter_embedding:
                patch_embed.update_layer(adapter_name, peft_config)
            return patch_embed
        generator = PromptGenerator(patch_embed, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            generator.requires_grad_(False)
        parent_path, _, child_name = path.rpartition(".")
        self._replace_module(_submodule(encoder, parent_path), child_name, generator, patch_embed)
        return generator


def _submodule(module: nn.Module | None, path: str) -> nn.Module | None:
    """`module.get_submodule(path)` (`module` itself for ""), or None when `module` is None or lacks it."""
    if module is None:
        return None
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
