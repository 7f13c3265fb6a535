"""SAM models and model helpers (among them `encoder_prefix` / `encoder_suffix`: SAM's image encoder in two parts)."""

from .encoder_split import BlockOutput, block_features, embed_patches, encoder_prefix, encoder_suffix, pool_block
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
    "BlockOutput",
    "SamForSemanticSegmentation",
    "SamSemanticSegmentationConfig",
    "SamSemanticSegmentationOutput",
    "balanced_bce_loss",
    "bce_dice_loss",
    "bce_iou_loss",
    "block_features",
    "embed_patches",
    "encoder_prefix",
    "encoder_suffix",
    "init_vision_weights_",
    "load_encoder_adapter",
    "logits_at_original_size",
    "pool_block",
    "post_process_semantic_segmentation",
    "random_sam",
    "sam_config",
    "semantic_set_loss",
    "structure_loss",
]
