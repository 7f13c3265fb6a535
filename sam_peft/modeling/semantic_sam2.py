"""Prompt-free binary segmentation on SAM 2 / 2.1 and SAM 3's tracker: one class per generation, as transformers has.

`Sam2ForSemanticSegmentation` is a `Sam2Model` and `Sam3TrackerForSemanticSegmentation` a `Sam3TrackerModel` (the
same modules and weight names, so their checkpoints load as they are and adapters target the same modules) whose
forward takes no prompt: the model's own "no prompt" input (one padding point), one mask, upsampled to the input
size, and the losses and outputs of `SamForSemanticSegmentation` (binary). Multi-class heads on these generations
are not available yet.

    model = Sam2ForSemanticSegmentation.from_pretrained("facebook/sam2.1-hiera-small")
    outputs = model(pixel_values=pixel_values, labels=labels)  # labels (B, H, W) in {0, 1, 255}
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor
from transformers import Sam2Config, Sam2Model, Sam3TrackerConfig, Sam3TrackerModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from ..tuners.auxiliary import auxiliary_loss
from .losses import BINARY_LOSSES, binary_segmentation_loss
from .semantic_sam import SamForSemanticSegmentation, SamSemanticSegmentationOutput, check_labels


def _check_task(config: Any) -> None:
    """Binary only, with a known loss."""
    if config.num_labels != 1:
        raise ValueError(
            f"The prompt-free head of {type(config).__name__.removesuffix('SemanticSegmentationConfig')} is binary "
            f"(num_labels=1) for now; got num_labels={config.num_labels}. Multi-class heads exist for SAM and SAM-HQ "
            "(SamForSemanticSegmentation)."
        )
    if config.semantic_loss not in BINARY_LOSSES:
        raise ValueError(f"Unknown semantic_loss {config.semantic_loss!r}; expected one of {sorted(BINARY_LOSSES)}.")


class Sam2SemanticSegmentationConfig(Sam2Config):
    r"""Configuration of [`Sam2ForSemanticSegmentation`]: a [`Sam2Config`] plus the loss settings (binary).

    Args:
        semantic_loss (`str`, *optional*, defaults to `"structure"`):
            Binary loss, as `SamSemanticSegmentationConfig.semantic_loss`.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the loss.
        moe_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the auxiliary losses of sam-peft layers (Conv-LoRA's balance loss) added to the loss.
    """

    semantic_loss: str = "structure"
    semantic_loss_ignore_index: int = 255
    moe_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)
        _check_task(self)


class Sam3TrackerSemanticSegmentationConfig(Sam3TrackerConfig):
    r"""Configuration of [`Sam3TrackerForSemanticSegmentation`]: a [`Sam3TrackerConfig`] plus the loss settings,
    as [`Sam2SemanticSegmentationConfig`]."""

    semantic_loss: str = "structure"
    semantic_loss_ignore_index: int = 255
    moe_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)
        _check_task(self)


class PromptFreeSegmentationMixin:
    """The prompt-free forward, losses and post-processing on a prompted SAM model class (SAM 2, SAM 3 tracker)."""

    # The task head: sam-peft tuners train and save it in full unless the adapter's config says otherwise.
    peft_default_modules_to_save: ClassVar[tuple[str, ...]] = ("mask_decoder",)

    @classmethod
    def semantic_config(cls, config: Any) -> Any:
        """`config` as this class's config (a plain `Sam2Config` / `Sam3TrackerConfig` is converted)."""
        if isinstance(config, cls.config_class):
            return config
        values = config.to_dict()
        for key in ("architectures", "transformers_version"):
            values.pop(key, None)
        return cls.config_class.from_dict(values)

    def freeze_encoders(self):
        """Freezes everything but the mask decoder (the decoder-only setting). Returns the model."""
        for name, parameter in self.named_parameters():
            if not name.startswith("mask_decoder."):
                parameter.requires_grad_(False)
        return self

    def forward(
        self, pixel_values: Tensor | None = None, labels: Tensor | None = None, **kwargs: Any
    ) -> SamSemanticSegmentationOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Images at the model's input size (resized, or resized and padded as `sam_peft.data.prepare_for_sam`
                does).
            labels (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                Integer labels at the input resolution: 0 / 1, or `config.semantic_loss_ignore_index` (255).
            kwargs:
                Passed to the model's forward (e.g. `output_hidden_states`).
        """
        if pixel_values is None:
            raise ValueError("pixel_values are required.")
        size = tuple(pixel_values.shape[-2:])
        if labels is not None:
            check_labels(labels, pixel_values.shape[0], size, 1, self.config.semantic_loss_ignore_index)
        outputs = super().forward(pixel_values=pixel_values, multimask_output=False, **kwargs)
        masks = outputs.pred_masks[:, 0]  # (B, 1, h, w): 4 x the embedding grid
        logits = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        loss = task_loss = aux_loss = None
        if labels is not None:
            task_loss = binary_segmentation_loss(
                logits, labels.to(logits.device), self.config.semantic_loss, self.config.semantic_loss_ignore_index
            )
            aux_loss = auxiliary_loss(self).to(task_loss)
            # The decoder's IoU and object-score heads do not shape the prompt-free mask, but they train with the
            # decoder: they enter with weight 0, so that every trained weight gets a gradient (several processes
            # under DDP need that) and the loss is unchanged.
            unused_heads = outputs.iou_scores.sum() + outputs.object_score_logits.sum()
            loss = task_loss + self.config.moe_loss_weight * aux_loss + 0.0 * unused_heads
        return SamSemanticSegmentationOutput(
            loss=loss,
            task_loss=task_loss,
            auxiliary_loss=aux_loss,
            logits=logits,
            masks_queries_logits=masks,
            vision_hidden_states=outputs.vision_hidden_states,
            vision_attentions=outputs.vision_attentions,
        )

    post_process_semantic_segmentation = SamForSemanticSegmentation.post_process_semantic_segmentation


class Sam2ForSemanticSegmentation(PromptFreeSegmentationMixin, Sam2Model):
    """SAM 2 / 2.1 as a prompt-free binary segmentation model (see the module's docstring)."""

    config_class = Sam2SemanticSegmentationConfig

    def __init__(self, config: Sam2Config):
        super().__init__(self.semantic_config(config))


class Sam3TrackerForSemanticSegmentation(PromptFreeSegmentationMixin, Sam3TrackerModel):
    """SAM 3's tracker as a prompt-free binary segmentation model (see the module's docstring)."""

    config_class = Sam3TrackerSemanticSegmentationConfig

    def __init__(self, config: Sam3TrackerConfig):
        super().__init__(self.semantic_config(config))


# transformers renames the keys of a SAM 3 checkpoint (stored under the full model's names, `tracker_model.` ...) for
# its own classes only: without this, a subclass would load none of its weights and keep random ones.
register_checkpoint_conversion_mapping(
    Sam3TrackerForSemanticSegmentation.__name__, get_checkpoint_conversion_mapping("sam3_tracker"), overwrite=True
)

# The prompt-free segmentation class of each SAM generation, by `model_type`.
PROMPT_FREE_CLASSES = {
    "sam": SamForSemanticSegmentation,
    "sam_hq": SamForSemanticSegmentation,
    "sam2": Sam2ForSemanticSegmentation,
    "sam3_tracker": Sam3TrackerForSemanticSegmentation,
}
