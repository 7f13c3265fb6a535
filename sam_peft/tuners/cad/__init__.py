"""CAD: a memory-efficient convolutional adapter beside SAM's frozen image encoder (Kim et al. 2024)."""

from ..frequency import high_pass_magnitude
from .adapter import AvgPool2x2, ConvAdapter, DilatedResidualBlock, HighFrequencyInput, avg_pool_2x2
from .config import CAD, SAM_VISION_ENCODER_TARGET, CadConfig
from .layer import CadLayer, CadVisionEncoder
from .model import CadModel

__all__ = [
    "CAD",
    "SAM_VISION_ENCODER_TARGET",
    "AvgPool2x2",
    "CadConfig",
    "CadLayer",
    "CadModel",
    "CadVisionEncoder",
    "ConvAdapter",
    "DilatedResidualBlock",
    "HighFrequencyInput",
    "avg_pool_2x2",
    "high_pass_magnitude",
]
