"""SAM-Adapter: per-block prompts from patch-embedding tuning and high-frequency features (Chen et al. 2023)."""

from .config import EMBEDDING_FEATURES, SAM_ADAPTER, SAM_BLOCK_TARGET, SamAdapterConfig
from .layer import PromptedBlock, PromptFeatures, PromptGenerator, SamAdapterLayer
from .model import SamAdapterModel

__all__ = [
    "EMBEDDING_FEATURES",
    "SAM_ADAPTER",
    "SAM_BLOCK_TARGET",
    "PromptFeatures",
    "PromptGenerator",
    "PromptedBlock",
    "SamAdapterConfig",
    "SamAdapterLayer",
    "SamAdapterModel",
]
