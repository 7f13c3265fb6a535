"""The training recipe's configuration: three dataclasses parsed by transformers' `HfArgumentParser` from a YAML
file, with command-line values overriding it (`recipes/train.py config.yaml --learning_rate 3e-4`)."""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml
from transformers import HfArgumentParser

from ..modeling.methods import METHODS, PEFT_TYPES, get_method, make_peft_config, recipe_methods

# the methods recipes/train.py trains (`sam_peft.modeling.methods` holds what each is)
TRAINED_METHODS = recipe_methods()
# what the recipe trains SAM for: prompt-free segmentation (the papers' setting, a task head instead of prompts) or
# prompted segmentation (SAM's own decoder answering boxes and clicks)
TASKS = ("prompt_free", "prompted")
# learning-rate schedules, by name: transformers' scheduler of each (`sam_peft.training.make_scheduler`)
SCHEDULES = {"polynomial": "polynomial", "cosine": "cosine", "constant": "constant_with_warmup"}
# Accelerate's mixed precision settings
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# metrics for which lower is better; every other metric is "higher is better"
LOWER_IS_BETTER = frozenset(
    {"mae", "ber", "shadow_error", "non_shadow_error", "mber", "loss", "noc@85", "noc@90", "nof@85", "nof@90"}
)
# how image_dir + mask_dir masks become objects for task: prompted (`sam_peft.data.load_folder(objects=...)`)
OBJECT_MODES = ("image", "components", "instance")
# the data sources, each named by its keys; data_dir completes a benchmark, the columns a Hub dataset
DATA_SOURCES = (("benchmark",), ("image_dir", "mask_dir", "coco_annotations"), ("hub_dataset",))
DATA_SOURCE_KEYS = frozenset(key for keys in DATA_SOURCES for key in keys)
# what a data source given on the command line replaces of the YAML's
DATA_SOURCE_GROUP = DATA_SOURCE_KEYS | {"data_dir", "image_column", "target_column"}
# command-line strings that mean None for a field that admits it, as in YAML
NULL_STRINGS = frozenset({"null", "none", "None"})
# what each checked field type expects, in error messages
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_field_types(instance: Any) -> None:
    """Check every bool, int, float or str field (or such `| None`) of the dataclass `instance` against its
    annotation. Like argparse, numeric strings (PyYAML reads `1e-4` as a string) become the field's number and
    ints of float fields become floats; fields of other types are left alone.

    Raises:
        ValueError: naming the field, the value and what it expects: `num_epochs must be an integer, got 1.5`.
    """
    hints = get_type_hints(type(instance))
    for name in (f.name for f in fields(instance)):
        value, args = getattr(instance, name), get_args(hints[name])
        optional = type(None) in args
        kind = next(arg for arg in args if arg is not type(None)) if optional else hints[name]
        if kind not in _EXPECTED or (optional and value is None):
            continue
        if kind in (int, float) and isinstance(value, str):
            with suppress(ValueError):
                value = kind(value)
        if kind is float and type(value) is int:
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ValueError(f"{name} must be {_EXPECTED[kind]}{' or null' if optional else ''}, got {value!r}")
        setattr(instance, name, value)


def _one_of(choices: tuple[str, ...]) -> str:
    """`a, b or c`."""
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def check_choice(instance: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raises ValueError when the field `name` of `instance` is not one of `choices`."""
    value = getattr(instance, name)
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected {_one_of(choices)}.")


def _check_at_least(instance: Any, minimum: int, *names: str) -> None:
    """Raises ValueError naming the first of the fields `names` of `instance` below `minimum` (None passes)."""
    for name in names:
        value = getattr(instance, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


class ConfigFileOnly(argparse.Action):
    """The command-line action of a field that only the YAML config file sets (a mapping, such as `peft_config`):
    given on the command line, it is an error naming the field (put `"action": ConfigFileOnly` in its metadata)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise ValueError(
            f"{self.dest} is a mapping of the YAML config file; it cannot be given on the command line "
            f"({option_string})."
        )


def _users(argument: str) -> tuple[str, ...]:
    """The recipe's methods that take the model argument `argument` (list it among their hyperparameters)."""
    return tuple(name for name in TRAINED_METHODS if argument in METHODS[name].hyperparameters)


# Model arguments that only some methods take (None for the others): each method lists those it takes among its
# `hyperparameters`, and those it needs among its `required` (`sam_peft.modeling.methods`).
METHOD_ARGUMENTS = ("peft_config", "last_blocks")


@dataclass
class ModelArguments:
    """The base model and the fine-tuning method (`sam_peft.modeling.methods.METHODS`), with the method's arguments:
    `peft_config` for peft's own methods (a mapping, from the YAML file only), `last_blocks` for last-blocks tuning
    and to put LoRA or a peft adapter on the last blocks only."""

    base_model: str = field(
        default="facebook/sam-vit-base", metadata={"help": "SAM checkpoint: Hub id or local folder."}
    )
    random_base: str | None = field(
        default=None,
        metadata={"help": "Create a random SAM of this variant (tiny, vit-b, ...) at base_model if it is absent."},
    )
    method: str = field(default="conv_lora", metadata={"help": f"One of {TRAINED_METHODS}."})
    task: str = field(
        default="prompt_free",
        metadata={"help": "prompt_free (a task head, the papers' setting) or prompted (boxes and clicks)."},
    )
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
    peft_config: dict | None = field(
        default=None,
        metadata={
            "help": "method peft, YAML only: a mapping of peft_type (one of "
            f"{', '.join(PEFT_TYPES)}) and the fields of peft's config class of that type (r, use_dora, "
            "target_modules, ...); targets default to the image encoder's attention projections.",
            "action": ConfigFileOnly,
            "nargs": "*",  # any use on the command line reaches the action's error
        },
    )
    last_blocks: int | None = field(
        default=None,
        metadata={
            "help": f"Methods {', '.join(_users('last_blocks'))}: the last N image-encoder blocks only (last_blocks: "
            "trained in full; lora, peft: the adapter's blocks)."
        },
    )
    activation_checkpointing: bool = field(default=False, metadata={"help": "Recompute vision blocks in backward."})

    def __post_init__(self) -> None:
        check_field_types(self)
        get_method(self.method)  # an unknown method, or one of another recipe, is an error listing these
        check_choice(self, "task", TASKS)
        if self.task == "prompted" and self.num_labels != 1:
            raise ValueError(
                f"task: prompted segments one object per prompt (num_labels 1), got num_labels={self.num_labels}; "
                "multi-class segmentation is task: prompt_free."
            )
        _check_at_least(self, 1, "num_labels", "r", "num_experts", "cad_image_size", "last_blocks")
        self._check_method_arguments()
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be between 1 and num_experts ({self.num_experts}), got {self.top_k}")

    def _check_method_arguments(self) -> None:
        """Each of `METHOD_ARGUMENTS` is set for the methods that need it, and for those that take it only; the
        `peft_config` mapping is checked against peft's config class of its type."""
        method = METHODS[self.method]
        for name in METHOD_ARGUMENTS:
            if getattr(self, name) is None and name in method.required:
                raise ValueError(f"method {self.method} needs {name}: {_METHOD_ARGUMENT_NEEDS[name]}")
            if getattr(self, name) is not None and name not in method.hyperparameters:
                raise ValueError(
                    f"{name} applies to method {_one_of(_users(name))}; this run's method is {self.method}. "
                    f"Remove {name}, or choose {'that method' if len(_users(name)) == 1 else 'one of those'}."
                )
        if self.peft_config is not None:
            make_peft_config(self.peft_config)  # its peft_type and fields, before anything is built


# what a method that needs each of METHOD_ARGUMENTS misses without it, in errors
_METHOD_ARGUMENT_NEEDS = {
    "peft_config": "a mapping in the YAML config file with a peft_type (one of "
    f"{', '.join(PEFT_TYPES)}) and the fields of its peft config class, e.g. peft_config: {{peft_type: LORA, r: 8}}.",
    "last_blocks": "how many of the image encoder's last blocks to train (last_blocks: N, N >= 1).",
}


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
    image_column: str | None = field(default=None, metadata={"help": "Hub dataset: its image column (default image)."})
    target_column: str | None = field(
        default=None, metadata={"help": "Hub dataset: its mask column (default mask, or label for K classes)."}
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "Custom folders, and Hub datasets without a validation split: share of train carved off."},
    )
    eval_split: str = field(default="validation", metadata={"help": "Split evaluated each epoch."})
    image_size: int | None = field(default=None, metadata={"help": "SAM input size; default: the model's."})
    hflip: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip in training."})
    synthetic_train_size: int = field(default=64, metadata={"help": "Synthetic data: training images."})
    synthetic_eval_size: int = field(default=16, metadata={"help": "Synthetic data: evaluation images."})
    synthetic_appearance: str = field(
        default="camouflage", metadata={"help": "Synthetic binary data: a sam_peft.data.SYNTHETIC_DOMAINS name."}
    )
    objects: str = field(
        default="components",
        metadata={
            "help": "task prompted, image_dir + mask_dir: the objects of a mask: image (its foreground), components "
            "(each connected component) or instance (label images, one id per object)."
        },
    )
    coco_annotations: str | None = field(
        default=None, metadata={"help": "task prompted: a COCO annotations JSON of the images in image_dir."}
    )
    max_objects: int | None = field(
        default=16, metadata={"help": "task prompted: objects per image and batch (drawn anew each epoch)."}
    )
    min_object_area: int = field(default=0, metadata={"help": "task prompted: drop objects of fewer pixels."})
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
        check_field_types(self)
        if self.embedding_cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(
                f"Unknown embedding_cache_dtype {self.embedding_cache_dtype!r}; expected float16, bfloat16 or float32."
            )
        given = {key: getattr(self, key) for keys in DATA_SOURCES for key in keys if getattr(self, key) is not None}
        if sum(any(key in given for key in keys) for keys in DATA_SOURCES) > 1:
            named = ", ".join(f"{key}={value!r}" for key, value in given.items())
            raise ValueError(
                f"More than one data source: {named}; name one of benchmark (with data_dir), image_dir and mask_dir, "
                "or hub_dataset."
            )
        hub_only = [key for key in ("image_column", "target_column") if getattr(self, key) is not None]
        if hub_only and self.hub_dataset is None:
            raise ValueError(
                f"{' and '.join(hub_only)} {'applies' if len(hub_only) == 1 else 'apply'} to hub_dataset only; "
                "folders and benchmarks have no columns."
            )
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be in [0, 1], got {self.hflip}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        check_choice(self, "objects", OBJECT_MODES)
        if self.coco_annotations is not None and (self.image_dir is None or self.mask_dir is not None):
            raise ValueError(
                "coco_annotations names the objects of the images in image_dir: give image_dir, and no mask_dir."
            )
        _check_at_least(self, 0, "num_workers", "min_object_area")
        _check_at_least(self, 1, "max_objects")
        names = ("image_size", "synthetic_train_size", "synthetic_eval_size", "max_train_samples", "max_eval_samples")
        _check_at_least(self, 1, *names)


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
    checkpoint_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "Also checkpoint every N optimiser steps within an epoch (long epochs); "
            "null: at each epoch's end only."
        },
    )
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Selects the best epoch; default iou (binary) or mean_iou (multi-class)."}
    )
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    num_correction_clicks: int = field(
        default=7, metadata={"help": "task prompted: corrective clicks after the first prompt, per batch."}
    )
    box_probability: float = field(
        default=0.5, metadata={"help": "task prompted: chance that a batch starts from boxes rather than a point."}
    )
    box_jitter: int = field(
        default=0, metadata={"help": "task prompted: outward box jitter per side, pixels of the input (MedSAM: 20)."}
    )
    focal_weight: float = field(default=20.0, metadata={"help": "task prompted: weight of the focal loss (SAM: 20)."})
    dice_weight: float = field(default=1.0, metadata={"help": "task prompted: weight of the dice loss (SAM: 1)."})
    iou_weight: float = field(default=1.0, metadata={"help": "task prompted: weight of the IoU head's MSE (SAM: 1)."})
    eval_max_clicks: int = field(
        default=20, metadata={"help": "task prompted: clicks per object in the interactive evaluation (SAM: 20)."}
    )
    report_to: str | None = field(default="tensorboard", metadata={"help": "Accelerate tracker, if installed."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload adapter, card and metrics at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for push_to_hub."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. 'user/sam-conv-lora-kvasir').")
        check_choice(self, "lr_schedule", tuple(SCHEDULES))
        check_choice(self, "mixed_precision", MIXED_PRECISIONS)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps} (use null for no limit)")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm} (use null to disable clipping)")
        _check_at_least(self, 0, "weight_decay", "warmup_steps", "num_correction_clicks", "box_jitter")
        _check_at_least(self, 1, "eval_max_clicks")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")
        names = ("num_epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "eval_every_epochs")
        _check_at_least(self, 1, *names, "checkpoint_every_steps")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


# the parsed value of an option that the command line does not give
_UNSET = object()


# A config's key naming another config (a path relative to the file) whose values it starts from and overrides.
EXTENDS_KEY = "extends"


def _read_config(path: Path, known: set[str], seen: tuple[Path, ...] = ()) -> dict:
    """The values of a YAML config file whose keys are all `known`; a file with `extends: other.yaml` gets the
    values of that file (itself read this way), overridden by its own."""
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of keys to values, got {type(values).__name__}.")
    unknown = sorted(set(values) - known - {EXTENDS_KEY})
    if unknown:
        raise ValueError(f"Unknown config key(s) in {path}: {', '.join(unknown)}. Valid keys: {sorted(known)}.")
    if EXTENDS_KEY not in values:
        return values
    parent = (path.parent / str(values.pop(EXTENDS_KEY))).resolve()
    chain = (*seen, path.resolve())
    if parent in chain:
        raise ValueError(
            f"Config {path} extends {parent}, which is already on its chain of extends "
            f"({' -> '.join(map(str, chain))}): remove the loop."
        )
    return {**_read_config(parent, known, chain), **values}


def _null_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: `convert`, except that the NULL_STRINGS are None."""

    def parse(text: str) -> Any:
        return None if text in NULL_STRINGS else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its errors ("invalid int value")
    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` with each option's default, and the recipe's docstring as written."""


def _command_line_values(
    classes: tuple[type, ...], argv: list[str], defaults: dict, description: str | None, usage: str | None
) -> dict:
    """The fields that `argv` gives (`--key value`, `--key=value`, `--key-name value`, ...), by name, parsed by an
    `HfArgumentParser` of `classes` whose `--help` shows `usage`, `description` and `defaults`."""
    parser = HfArgumentParser(classes, description=description, usage=usage, formatter_class=_HelpFormatter)
    parser.set_defaults(**defaults)
    hints = {name: hint for cls in classes for name, hint in get_type_hints(cls).items()}
    for action in parser._actions:  # argparse has no public list of its actions
        if isinstance(action, ConfigFileOnly):
            action.type = None  # the action says why, not a conversion error
        elif action.nargs is None and type(None) in get_args(hints.get(action.dest)):
            action.type = _null_or(action.type)
    names = {f.name for cls in classes for f in fields(cls) if f.init}
    # options absent from argv keep the _UNSET of this namespace rather than getting their default
    namespace, unused = parser.parse_known_args(argv, Namespace(**dict.fromkeys(names, _UNSET)))
    if unused:
        raise ValueError(f"Unknown command-line argument(s): {' '.join(unused)}")
    return {name: value for name, value in vars(namespace).items() if value is not _UNSET}


def parse_config(
    classes: tuple[type, ...],
    argv: list[str] | None = None,
    structured_keys: tuple[str, ...] = (),
    replaced_together: tuple[tuple[frozenset[str], frozenset[str]], ...] = (),
    description: str | None = None,
    usage: str | None = None,
) -> tuple[tuple, dict]:
    """`[config.yaml] [--key value ...]` into instances of the dataclasses `classes`: the YAML's values,
    overridden by the command line, where `null`, `none` and `None` give None to fields that admit it. Every
    instance's fields are checked against their annotations (`check_field_types`).

    `structured_keys` are YAML keys that hold nested values (lists of mappings, ...) rather than fields; they are
    returned in the second item, untouched, and cannot be given on the command line.

    `replaced_together` holds `(keys, group)` pairs: when the command line gives any of `keys`, the YAML's values of
    every key of `group` are dropped, so that the command line replaces the group as a whole (`parse_args`: a data
    source given on the command line replaces the YAML's source).

    `description` and `usage` (the recipe's docstring and command line) head `--help`.

    Raises:
        ValueError: naming any key of the YAML file that is neither a field of `classes` nor a structured key, any
            command-line argument that is not an option, or a field of the wrong type.
        FileNotFoundError: when the YAML file does not exist.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    values: dict = {}
    if argv and argv[0].endswith((".yaml", ".yml")):
        known = {name for cls in classes for name in cls.__dataclass_fields__} | set(structured_keys)
        values = _read_config(Path(argv.pop(0)), known)
    structured = {key: values.pop(key) for key in structured_keys if key in values}
    given = _command_line_values(classes, argv, values, description, usage)
    for keys, group in replaced_together:
        if keys & given.keys():
            values = {key: value for key, value in values.items() if key not in group}
    values.update(given)
    instances = tuple(
        cls(**{f.name: values[f.name] for f in fields(cls) if f.init and f.name in values}) for cls in classes
    )
    for instance in instances:
        check_field_types(instance)  # the dataclasses that do not check their own fields (recipes/continual.py's)
    return instances, structured


# Keys that apply to one task only, by task: setting one (to other than its default) for the other task is an error.
TASK_KEYS = {
    "prompted": (
        "objects",
        "coco_annotations",
        "max_objects",
        "min_object_area",
        "num_correction_clicks",
        "box_probability",
        "box_jitter",
        "focal_weight",
        "dice_weight",
        "iou_weight",
        "eval_max_clicks",
    ),
    "prompt_free": ("num_mask_tokens", "semantic_loss", "cache_embeddings"),
}


def check_task_keys(*instances: Any) -> None:
    """Raises ValueError naming the keys of the other task that the arguments set (to other than their defaults)."""
    values = {f.name: (getattr(i, f.name), f.default) for i in instances for f in fields(i) if f.init}
    task = values["task"][0]
    for other, keys in TASK_KEYS.items():
        changed = [key for key in keys if values[key][0] != values[key][1]]
        if other != task and changed:
            raise ValueError(
                f"{', '.join(changed)} {'applies' if len(changed) == 1 else 'apply'} to task: {other}, and this run "
                f"is task: {task}. Remove {'it' if len(changed) == 1 else 'them'}, or set task: {other}."
            )


def parse_args(
    argv: list[str] | None = None, description: str | None = None, usage: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """The training recipe's `[config.yaml] [--key value ...]` (see `parse_config`). A data source given on the
    command line (benchmark, image_dir, mask_dir or hub_dataset) replaces the YAML's source, its data_dir and columns;
    `--data_dir` alone completes the YAML's benchmark. A local `base_model` folder (or one `random_base` creates)
    becomes an absolute path. `peft_config` (method peft) is a mapping that only the YAML file gives; as a field of
    `ModelArguments` it is recorded with the other model arguments (the run file that `load_trained` rebuilds the
    model from, and the run's configuration that resuming compares).

    Raises:
        ValueError: naming any key of the YAML file that is not a field of the three dataclasses, a field of the
            wrong type or out of range, two data sources, a method without the arguments it needs (`peft_config`,
            `last_blocks`) or with those of another method, a `peft_config` that peft's config class refuses, or
            `cache_embeddings` with a method that trains the encoder.
        FileNotFoundError: when the YAML file does not exist.
    """
    source = (DATA_SOURCE_KEYS, DATA_SOURCE_GROUP)
    (model_args, data_args, train_args), _ = parse_config(
        ARGUMENT_CLASSES, argv, replaced_together=(source,), description=description, usage=usage
    )
    check_task_keys(model_args, data_args, train_args)
    if data_args.cache_embeddings and not METHODS[model_args.method].frozen_encoder:
        frozen = [name for name in TRAINED_METHODS if METHODS[name].frozen_encoder]
        raise ValueError(
            f"cache_embeddings needs a method that keeps the image encoder frozen ({', '.join(frozen)}); "
            f"{model_args.method} changes the encoder's output as it trains."
        )
    if model_args.random_base is not None or Path(model_args.base_model).is_dir():
        # a local base model is recorded (run file, adapter config, card) by its absolute path: the run then loads
        # from any working directory
        model_args.base_model = str(Path(model_args.base_model).resolve())
    return model_args, data_args, train_args
