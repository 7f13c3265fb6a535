"""SLoRA: SAMCL's AugModule, LoRA with a shared down-projection and point-prompt features (Wang et al. 2024)."""

from .config import DEFAULT_NUM_ADAPTED_BLOCKS, PROMPT_LAYOUTS, SAM_ATTENTION_TARGET, SLORA, SloraConfig
from .heat_map import (
    OFFICIAL_HEAT_MAP_SCALE,
    OPENCV_GAUSSIAN_KERNEL_9,
    gaussian_blur,
    gaussian_kernel_1d,
    points_to_heat_map,
)
from .layer import SloraAttention, SloraLayer, SloraNeck, SloraSharedState
from .model import SloraModel

__all__ = [
    "DEFAULT_NUM_ADAPTED_BLOCKS",
    "OFFICIAL_HEAT_MAP_SCALE",
    "OPENCV_GAUSSIAN_KERNEL_9",
    "PROMPT_LAYOUTS",
    "SAM_ATTENTION_TARGET",
    "SLORA",
    "SloraAttention",
    "SloraConfig",
    "SloraLayer",
    "SloraModel",
    "SloraNeck",
    "SloraSharedState",
    "gaussian_blur",
    "gaussian_kernel_1d",
    "points_to_heat_map",
]
