"""Conv-LoRA: LoRA with a mixture of convolutional experts in the bottleneck (Zhong et al., ICLR 2024)."""

from .config import CONV_LORA, SAM_QKV_TARGET, ConvLoraConfig
from .layer import ConvExperts, ConvLoraLayer, Linear, NoisyTopKGate, set_expert_dispatch
from .model import ConvLoraModel

__all__ = [
    "CONV_LORA",
    "SAM_QKV_TARGET",
    "ConvExperts",
    "ConvLoraConfig",
    "ConvLoraLayer",
    "ConvLoraModel",
    "Linear",
    "NoisyTopKGate",
    "set_expert_dispatch",
]
