"""SAM models and model helpers."""

from .losses import balanced_bce_loss, bce_dice_loss, bce_iou_loss, semantic_set_loss, structure_loss
from .prompted import load_encoder_adapter
from .random_sam import VARIANTS, init_vision_weights_, random_sam, sam_config
from .semantic_sam import (
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    SamSemanticSegmentationOutput,
    logits_at_original_size,
    post_process_semantic_segmentation,
)

__all__ = [
    "VARIANTS",
    "SamForSemanticSegmentation",
    "SamSemanticSegmentationConfig",
    "SamSemanticSegmentationOutput",
    "balanced_bce_loss",
    "bce_dice_loss",
    "bce_iou_loss",
    "init_vision_weights_",
    "load_encoder_adapter",
    "logits_at_original_size",
    "post_process_semantic_segmentation",
    "random_sam",
    "sam_config",
    "semantic_set_loss",
    "structure_loss",
]
