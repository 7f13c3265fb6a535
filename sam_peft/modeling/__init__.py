"""SAM models and model helpers (among them `encoder_prefix` / `encoder_suffix`: SAM's image encoder in two parts)."""

from .encoder_split import BlockOutput, block_features, embed_patches, encoder_prefix, encoder_suffix, pool_block
from .losses import balanced_bce_loss, bce_dice_loss, bce_iou_loss, semantic_set_loss, structure_loss
from .prompted import load_encoder_adapter
from .random_sam import VARIANTS, init_vision_weights_, random_sam, sam_config
from .semantic_sam import (
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    SamSemanticSegmentationOutput,
    image_embedding_channels,
    input_image_size,
    logits_at_original_size,
    post_process_semantic_segmentation,
)
from .semantic_sam2 import (
    PROMPT_FREE_CLASSES,
    Sam2ForSemanticSegmentation,
    Sam2SemanticSegmentationConfig,
    Sam3TrackerForSemanticSegmentation,
    Sam3TrackerSemanticSegmentationConfig,
)

__all__ = [
    "PROMPT_FREE_CLASSES",
    "VARIANTS",
    "BlockOutput",
    "Sam2ForSemanticSegmentation",
    "Sam2SemanticSegmentationConfig",
    "Sam3TrackerForSemanticSegmentation",
    "Sam3TrackerSemanticSegmentationConfig",
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
    "image_embedding_channels",
    "init_vision_weights_",
    "input_image_size",
    "load_encoder_adapter",
    "logits_at_original_size",
    "pool_block",
    "post_process_semantic_segmentation",
    "random_sam",
    "sam_config",
    "semantic_set_loss",
    "structure_loss",
]
