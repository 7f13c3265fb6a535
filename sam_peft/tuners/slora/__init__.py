"""SLoRA: SAMCL's AugModule, LoRA with a shared down-projection and point-prompt features (Wang et al. 2024)."""

from .config import (
    ATTENTION_TARGETS,
    DEFAULT_NUM_ADAPTED_BLOCKS,
    PROMPT_LAYOUTS,
    SAM2_ATTENTION_TARGET,
    SAM3_ATTENTION_TARGET,
    SAM_ATTENTION_TARGET,
    SLORA,
    SloraConfig,
)
from .encoders import Sam2EncoderLayout, Sam3EncoderLayout, SamEncoderLayout, encoder_layout
from .heat_map import (
    OFFICIAL_HEAT_MAP_SCALE,
    OPENCV_GAUSSIAN_KERNEL_9,
    gaussian_blur,
    gaussian_kernel_1d,
    points_to_heat_map,
)
from .layer import (
    SloraAttention,
    SloraFpnNeck,
    SloraLayer,
    SloraLearnedPrompt,
    SloraNeck,
    SloraSam2Neck,
    SloraSam3Neck,
    SloraSharedState,
)
from .model import SloraModel
from .prompting import box_centres, encoder_prompts, object_points_by_image, slora_tuner, uses_prompt_heat_maps

__all__ = [
    "ATTENTION_TARGETS",
    "DEFAULT_NUM_ADAPTED_BLOCKS",
    "OFFICIAL_HEAT_MAP_SCALE",
    "OPENCV_GAUSSIAN_KERNEL_9",
    "PROMPT_LAYOUTS",
    "SAM2_ATTENTION_TARGET",
    "SAM3_ATTENTION_TARGET",
    "SAM_ATTENTION_TARGET",
    "SLORA",
    "Sam2EncoderLayout",
    "Sam3EncoderLayout",
    "SamEncoderLayout",
    "SloraAttention",
    "SloraConfig",
    "SloraFpnNeck",
    "SloraLayer",
    "SloraLearnedPrompt",
    "SloraModel",
    "SloraNeck",
    "SloraSam2Neck",
    "SloraSam3Neck",
    "SloraSharedState",
    "box_centres",
    "encoder_layout",
    "encoder_prompts",
    "gaussian_blur",
    "gaussian_kernel_1d",
    "object_points_by_image",
    "points_to_heat_map",
    "slora_tuner",
    "uses_prompt_heat_maps",
]
