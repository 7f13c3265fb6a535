"""The SAM-Adapter tuner: a prompt generator on the patch embedding and a prompt before every targeted block."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..base import SamPeftTuner
from ..targets import CONVOLUTIONAL_ENCODER
from .config import SAM_BLOCK_TARGET, SamAdapterConfig
from .layer import PromptedBlock, PromptGenerator, SamAdapterLayer


class SamAdapterModel(SamPeftTuner):
    """Creates a SAM-Adapter model from a transformers `SamModel`, `SamHQModel` or `SamForSemanticSegmentation`.

    The targets are vision blocks (`vision_encoder.layers.<i>`), each wrapped as a `PromptedBlock`; the patch
    embedding of their encoder is wrapped once as the `PromptGenerator` that computes the prompt features they
    read. Both are peft tuner layers: saving, loading, several adapters, disabling, deleting and unloading work as
    for any PEFT method. There is nothing to merge.

    Example:
        >>> import sam_peft
        >>> from peft import get_peft_model
        >>> from transformers import SamModel
        >>> sam = SamModel.from_pretrained("facebook/sam-vit-base")
        >>> model = get_peft_model(sam, sam_peft.SamAdapterConfig(modules_to_save=["mask_decoder"]))
    """

    prefix: str = "sam_adapter_"
    tuner_layer_cls = SamAdapterLayer
    target_module_mapping: ClassVar[dict[str, str]] = {"sam": SAM_BLOCK_TARGET, "sam_hq": SAM_BLOCK_TARGET}
    unsupported_architectures: ClassVar[dict[str, str]] = {
        "sam2": (
            "its prompts come from one patch embedding of one width for every block, while Hiera's stages differ in "
            "width and resolution; not implemented yet"
        ),
        "sam3_tracker": "not implemented yet (the prompts are built for SAM's ViT blocks and patch embedding)",
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
        if isinstance(target, SamAdapterLayer) or not hasattr(target, "attn"):
            raise ValueError(
                f"SAM-Adapter target {current_key!r} is a {type(target).__name__}; only vision blocks (e.g. "
                "`vision_encoder.layers.0`) take prompts. Check `target_modules`."
            )
        self._insert(
            parent, target_name, PromptedBlock(target, adapter_name, peft_config, generator), target, adapter_name
        )

    def _prompt_generator(self, peft_config: SamAdapterConfig, adapter_name: str, block_key: str) -> PromptGenerator:
        """The `PromptGenerator` on the patch embedding of the encoder holding block `block_key`, with the adapter.

        Wraps the patch embedding on the first block of an encoder and adds the adapter to it on later ones.
        """
        encoder_key, separator, _ = block_key.rpartition(".layers.")
        encoder = self.model.get_submodule(encoder_key) if separator else None
        patch_embed = getattr(encoder, "patch_embed", None)
        if patch_embed is None or not hasattr(patch_embed, "projection"):
            raise ValueError(
                f"SAM-Adapter target {block_key!r} is not a block of a SAM vision encoder (`<encoder>.layers.<i>` "
                "beside a `patch_embed` with a `projection` convolution). Check `target_modules`."
            )
        if isinstance(patch_embed, PromptGenerator):
            if adapter_name not in patch_embed.sam_adapter_embedding:
                patch_embed.update_layer(adapter_name, peft_config)
            return patch_embed
        generator = PromptGenerator(patch_embed, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            generator.requires_grad_(False)
        self._replace_module(encoder, "patch_embed", generator, patch_embed)
        return generator
