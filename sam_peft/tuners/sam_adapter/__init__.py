"""SAM-Adapter: per-block prompts from patch-embedding tuning and high-frequency features (Chen et al. 2023)."""

from .config import EMBEDDING_FEATURES, SAM3_BLOCK_TARGET, SAM_ADAPTER, SAM_BLOCK_TARGET, SamAdapterConfig
from .layer import PromptedBlock, PromptFeatures, PromptGenerator, SamAdapterLayer
from .model import HIERA_REFUSAL, PATCH_EMBEDDINGS, SamAdapterModel

__all__ = [
    "EMBEDDING_FEATURES",
    "HIERA_REFUSAL",
    "PATCH_EMBEDDINGS",
    "SAM3_BLOCK_TARGET",
    "SAM_ADAPTER",
    "SAM_BLOCK_TARGET",
    "PromptFeatures",
    "PromptGenerator",
    "PromptedBlock",
    "SamAdapterConfig",
    "SamAdapterLayer",
    "SamAdapterModel",
]
