"""Continual learning of SAM over a stream of domains (SAMCL): `ContinualSam` (one SLoRA module per domain and a
selector that routes each image), its replay buffer, the module selector, prompted training and the metrics."""

from .buffer import BASE_DOMAIN, BUFFER_FILE, CorruptBufferError, EmbeddingBuffer, image_bytes
from .metrics import average_accuracy, continual_metrics, forgetting, forward_transfer, save_accuracy_heatmap
from .model import CONTINUAL_CONFIG_FILE, SUPPORTED_BASES, ContinualSam, ContinualSamOutput, default_module_blocks
from .prompting import (
    DomainTrainingArguments,
    evaluate_prompted,
    prompted_segmentation_loss,
    sample_point_prompts,
    train_module,
)
from .selector import BASE_CLASS, SELECTOR_CONFIG_FILE, SELECTOR_WEIGHTS_FILE, ModuleSelector

__all__ = [
    "BASE_CLASS",
    "BASE_DOMAIN",
    "BUFFER_FILE",
    "CONTINUAL_CONFIG_FILE",
    "SELECTOR_CONFIG_FILE",
    "SELECTOR_WEIGHTS_FILE",
    "SUPPORTED_BASES",
    "ContinualSam",
    "ContinualSamOutput",
    "CorruptBufferError",
    "DomainTrainingArguments",
    "EmbeddingBuffer",
    "ModuleSelector",
    "average_accuracy",
    "continual_metrics",
    "default_module_blocks",
    "evaluate_prompted",
    "forgetting",
    "forward_transfer",
    "image_bytes",
    "prompted_segmentation_loss",
    "sample_point_prompts",
    "save_accuracy_heatmap",
    "train_module",
]
