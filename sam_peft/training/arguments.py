"""The training recipe's configuration: three dataclasses parsed by transformers' `HfArgumentParser` from a YAML
file, with command-line values overriding it (`recipes/train.py config.yaml --learning_rate 3e-4`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

METHODS = ("conv_lora", "lora", "cad", "decoder_only")
# methods whose image encoder stays frozen, so that its outputs can be cached
FROZEN_ENCODER_METHODS = ("cad", "decoder_only")
# metrics for which lower is better; every other metric is "higher is better"
LOWER_IS_BETTER = frozenset({"mae", "ber", "shadow_error", "non_shadow_error", "mber", "loss"})


@dataclass
class ModelArguments:
    """The base model and the fine-tuning method."""

    base_model: str = field(
        default="facebook/sam-vit-base", metadata={"help": "SAM checkpoint: Hub id or local folder."}
    )
    random_base: str | None = field(
        default=None,
        metadata={"help": "Create a random SAM of this variant (tiny, vit-b, ...) at base_model if it is absent."},
    )
    method: str = field(default="conv_lora", metadata={"help": f"One of {METHODS}."})
    num_labels: int = field(default=1, metadata={"help": "1 for binary tasks, K for K classes."})
    num_mask_tokens: int | None = field(default=None, metadata={"help": "Mask tokens of a multi-class model."})
    semantic_loss: str = field(
        default="structure", metadata={"help": "structure, balanced_bce, bce_dice or bce_iou (CAD)."}
    )
    r: int = field(default=3, metadata={"help": "Rank of (Conv-)LoRA."})
    lora_alpha: float = field(default=32, metadata={"help": "(Conv-)LoRA scaling numerator."})
    lora_dropout: float = field(default=0.0, metadata={"help": "(Conv-)LoRA dropout."})
    num_experts: int = field(default=8, metadata={"help": "Conv-LoRA experts (scales 1..num_experts)."})
    top_k: int = field(default=1, metadata={"help": "Conv-LoRA experts per window."})
    moe_loss_weight: float = field(default=1.0, metadata={"help": "Weight of Conv-LoRA's balance loss."})
    cad_image_size: int = field(default=512, metadata={"help": "CAD: side of the adapter's input (paper: 512)."})
    cad_scale: float = field(default=0.1, metadata={"help": "CAD: factor of the adapter output (paper: 0.1)."})
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute vision blocks in backward."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; expected one of {METHODS}.")


@dataclass
class DataArguments:
    """Where the images come from: a benchmark, a custom folder, a Hub dataset, or generated data."""

    benchmark: str | None = field(
        default=None, metadata={"help": "A sam_peft.data.load_benchmark name, or 'synthetic'."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Folder of the benchmark (or its parent)."})
    image_dir: str | None = field(default=None, metadata={"help": "Custom data: folder of images."})
    mask_dir: str | None = field(default=None, metadata={"help": "Custom data: folder of masks (matched by stem)."})
    hub_dataset: str | None = field(default=None, metadata={"help": "Hub dataset id (columns image, mask/label)."})
    validation_fraction: float = field(default=0.2, metadata={"help": "Custom folders: share carved for validation."})
    eval_split: str = field(default="validation", metadata={"help": "Split evaluated each epoch."})
    image_size: int | None = field(default=None, metadata={"help": "SAM input size; default: the model's."})
    hflip: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip in training."})
    synthetic_train_size: int = field(default=64, metadata={"help": "Synthetic data: training images."})
    synthetic_eval_size: int = field(default=16, metadata={"help": "Synthetic data: evaluation images."})
    synthetic_appearance: str = field(
        default="camouflage", metadata={"help": "Synthetic binary data: a sam_peft.data.SYNTHETIC_DOMAINS name."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers."})
    cache_embeddings: bool = field(
        default=False,
        metadata={"help": "cad / decoder_only: read the frozen encoder's outputs from an on-disk cache."},
    )
    embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache folder; default: $HF_HOME/sam-peft/embeddings."}
    )
    embedding_cache_dtype: str = field(
        default="float16", metadata={"help": "Storage dtype of cached embeddings: float16, bfloat16 or float32."}
    )

    def __post_init__(self) -> None:
        if self.embedding_cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(
                f"Unknown embedding_cache_dtype {self.embedding_cache_dtype!r}; expected float16, bfloat16 or float32."
            )


@dataclass
class TrainArguments:
    """Optimisation, evaluation, checkpoints, outputs and the Hub."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where the adapter and reports go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a different run in output_dir."})
    num_epochs: int = field(default=30, metadata={"help": "Training epochs."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_schedule: str = field(default="polynomial", metadata={"help": "polynomial, cosine or constant."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps."})
    batch_size: int = field(default=4, metadata={"help": "Per-process training batch size."})
    eval_batch_size: int = field(default=4, metadata={"help": "Per-process evaluation batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping; null disables."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate)."})
    seed: int = field(default=42, metadata={"help": "Seed of weights, data order and augmentation."})
    eval_every_epochs: int = field(default=1, metadata={"help": "Evaluate (and checkpoint) every N epochs."})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Selects the best epoch; default iou (binary) or mean_iou (multi-class)."}
    )
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "Accelerate tracker, if installed."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload adapter, card and metrics at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for push_to_hub."})

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. 'user/sam-conv-lora-kvasir').")
        if self.lr_schedule not in ("polynomial", "cosine", "constant"):
            raise ValueError(f"Unknown lr_schedule {self.lr_schedule!r}; expected polynomial, cosine or constant.")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def parse_config(
    classes: tuple[type, ...], argv: list[str] | None = None, structured_keys: tuple[str, ...] = ()
) -> tuple[tuple, dict]:
    """`[config.yaml] [--key value ...]` into instances of the dataclasses `classes`: the YAML's values,
    overridden by the command line.

    `structured_keys` are YAML keys that hold nested values (lists of mappings, ...) rather than fields; they are
    returned in the second item, untouched, and cannot be given on the command line.

    Raises:
        ValueError: naming any key of the YAML file that is neither a field of `classes` nor a structured key.
        FileNotFoundError: when the YAML file does not exist.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(classes)
    defaults: dict = {}
    if argv and argv[0].endswith((".yaml", ".yml")):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        defaults = yaml.safe_load(path.read_text()) or {}
        known = {name for cls in classes for name in cls.__dataclass_fields__} | set(structured_keys)
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"Unknown config key(s) in {path}: {', '.join(unknown)}. Valid keys: {sorted(known)}.")
    structured = {key: defaults.pop(key) for key in structured_keys if key in defaults}
    parser.set_defaults(**defaults)
    return tuple(parser.parse_args_into_dataclasses(args=argv)), structured


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """The training recipe's `[config.yaml] [--key value ...]` (see `parse_config`).

    Raises:
        ValueError: naming any key of the YAML file that is not a field of the three dataclasses, or
            `cache_embeddings` with a method that trains the encoder.
        FileNotFoundError: when the YAML file does not exist.
    """
    (model_args, data_args, train_args), _ = parse_config(ARGUMENT_CLASSES, argv)
    if data_args.cache_embeddings and model_args.method not in FROZEN_ENCODER_METHODS:
        raise ValueError(
            "cache_embeddings needs a method that keeps the image encoder frozen "
            f"({', '.join(FROZEN_ENCODER_METHODS)}); {model_args.method} changes the encoder's output as it trains."
        )
    return model_args, data_args, train_args
