"""Builds what the training recipe trains on: the model with its method, and the prepared datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import constants
from peft import get_peft_model
from transformers import PretrainedConfig

from ..data import (
    binary_dataset,
    instance_dataset,
    load_benchmark,
    load_folder,
    load_hub,
    multiclass_dataset,
    prepare_for_sam,
    verify_dataset,
)
from ..data.objects import load_coco
from ..data.preprocessing import Augmentation
from ..data.prompted import prepare_objects_for_sam
from ..modeling import PROMPT_FREE_CLASSES, SamForSemanticSegmentation, input_image_size, random_sam
from ..modeling.methods import PartialTuning, get_method
from ..modeling.prompted import promptable_class
from .arguments import DataArguments, ModelArguments
from .embedding_cache import EmbeddingCache, frozen_vision_encoder


def ensure_random_base(args: ModelArguments) -> None:
    """With `random_base` set, save a random SAM of that variant at `base_model` unless one is there already."""
    if args.random_base is None or (Path(args.base_model) / "config.json").is_file():
        return
    random_sam(args.random_base, seed=0).save_pretrained(args.base_model)


def build_model(args: ModelArguments) -> torch.nn.Module:
    """The prompt-free model of `args.base_model`'s generation (`SamForSemanticSegmentation`,
    `Sam2ForSemanticSegmentation` or `Sam3TrackerForSemanticSegmentation`, binary or multi-class after
    `args.num_labels`) with the method's trainable weights (`sam_peft.modeling.methods`): a PEFT model with the
    method's adapter, whose mask decoder is trained in full, or, for the methods without an adapter (decoder_only,
    bias_only, norm_only, attention_only, last_blocks, full), the model with only its mask decoder and the method's
    own weights trainable.

    Raises:
        ValueError: for `num_mask_tokens` (other than 1) on a binary task, whatever the generation; for a method
            that cannot apply to the generation, with the reason.
    """
    model_type = PretrainedConfig.get_config_dict(args.base_model)[0].get("model_type")
    if args.task == "prompted":
        return build_prompted_model(args, model_type)
    # any other checkpoint is refused by SamForSemanticSegmentation, with the reason
    model_class = PROMPT_FREE_CLASSES.get(model_type, SamForSemanticSegmentation)
    if args.num_labels == 1 and args.num_mask_tokens not in (None, 1):
        raise ValueError(
            f"num_mask_tokens applies to multi-class SAM models (num_labels > 1); this {model_class.__name__} is "
            f"binary (num_labels=1), with one mask. Got num_mask_tokens={args.num_mask_tokens}."
        )
    task = {
        "num_labels": args.num_labels,
        "num_mask_tokens": args.num_mask_tokens,
        "semantic_loss": args.semantic_loss,
        "moe_loss_weight": args.moe_loss_weight,
    }
    model = model_class.from_pretrained(args.base_model, **task)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _apply_method(args, model)


# The part of the model that every method trains in full beside its own weights: SAM's mask decoder (its IoU head
# included; the prompt-free head's class branch too).
TRAINED_MODULE = "mask_decoder"


def build_prompted_model(args: ModelArguments, model_type: str) -> torch.nn.Module:
    """The promptable model of `args.base_model` (`SamModel`, `Sam2Model` or `Sam3TrackerModel`) for prompted
    fine-tuning: the method's adapter (or its own weights) plus SAM's mask decoder (and IoU head) trained in full,
    the prompt encoder frozen; for decoder_only, the mask decoder alone.

    Raises:
        ValueError: for a checkpoint type without a promptable class here (`promptable_class`).
    """
    model = promptable_class(model_type).from_pretrained(args.base_model)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _apply_method(args, model, train_decoder=True)


def _apply_method(args: ModelArguments, model: torch.nn.Module, train_decoder: bool = False) -> torch.nn.Module:
    """`model` with the trainable weights of `args.method`: wrapped with its adapter, or with every parameter frozen
    but the mask decoder's and those the method trains. `train_decoder` adds the mask decoder to an adapter's
    `modules_to_save` (a prompt-free model's tuners save it by default, `peft_default_modules_to_save`)."""
    built = get_method(args.method).build(args, model)
    if isinstance(built, PartialTuning) or built is None:
        return train_only(model, () if built is None else built.parameters)
    if train_decoder:
        built.modules_to_save = sorted({*(built.modules_to_save or ()), TRAINED_MODULE})
    return get_peft_model(model, built)


def train_only(model: torch.nn.Module, parameters: tuple[str, ...] | list[str]) -> torch.nn.Module:
    """Freezes every parameter of `model` but its mask decoder's and `parameters` (names). Returns the model.

    Raises:
        ValueError: naming parameters that `model` does not have.
    """
    named = dict(model.named_parameters())
    missing = sorted(set(parameters) - named.keys())
    if missing:
        raise ValueError(f"{type(model).__name__} has no parameters {missing[:3]} ({len(missing)} missing).")
    model.requires_grad_(False)
    model.get_submodule(TRAINED_MODULE).requires_grad_(True)
    for name in parameters:
        named[name].requires_grad_(True)
    return model


def load_data(args: DataArguments, num_labels: int, seed: int) -> DatasetDict:
    """The raw splits (columns `image`, `mask` or `label`, `id`) from the source `args` names."""
    if args.benchmark == "synthetic":
        make = binary_dataset if num_labels == 1 else multiclass_dataset
        extra = {"appearance": args.synthetic_appearance} if num_labels == 1 else {"num_labels": num_labels}
        return DatasetDict(
            {
                "train": make(args.synthetic_train_size, seed=seed, split="train", **extra),
                args.eval_split: make(args.synthetic_eval_size, seed=seed + 1, split=args.eval_split, **extra),
            }
        )
    if args.benchmark is not None:
        if args.data_dir is None:
            raise ValueError(f"benchmark {args.benchmark!r} needs data_dir: the folder its archive extracts to.")
        return load_benchmark(args.benchmark, args.data_dir)
    if args.image_dir is not None or args.mask_dir is not None:
        if args.image_dir is None or args.mask_dir is None:
            raise ValueError("Custom data needs both image_dir and mask_dir.")
        return load_folder(
            args.image_dir, args.mask_dir, num_labels=num_labels, validation_fraction=args.validation_fraction
        )
    if args.hub_dataset is not None:
        columns = {"image_column": args.image_column or "image", "target_column": args.target_column}
        return load_hub(
            args.hub_dataset, num_labels=num_labels, validation_fraction=args.validation_fraction, **columns
        )
    raise ValueError("No data: set benchmark (and data_dir), image_dir and mask_dir, or hub_dataset.")


def load_object_data(args: DataArguments, seed: int) -> DatasetDict:
    """The raw object splits of prompted fine-tuning (rows decoded by an `ObjectDecoder`: `image`, `masks`,
    `objects`, `id`): generated instance images (`benchmark: synthetic`), image and mask folders (`objects`: how a
    mask becomes objects), or a COCO annotation file of the images in `image_dir`.

    Raises:
        ValueError: for a benchmark or Hub dataset (semantic masks, no objects), naming the sources that work.
    """
    if args.benchmark == "synthetic":
        look = {"appearance": args.synthetic_appearance}
        train = instance_dataset(args.synthetic_train_size, seed=seed, split="train", **look)
        evaluation = instance_dataset(args.synthetic_eval_size, seed=seed + 1, split=args.eval_split, **look)
        return DatasetDict({"train": train, args.eval_split: evaluation})
    fraction = {"validation_fraction": args.validation_fraction, "min_area": args.min_object_area}
    if args.coco_annotations is not None:
        return load_coco(args.image_dir, args.coco_annotations, verify=True, **fraction)  # its images checked
    if args.image_dir is not None and args.mask_dir is not None:
        return load_folder(args.image_dir, args.mask_dir, objects=args.objects, **fraction)
    raise ValueError(
        "task: prompted reads objects from image_dir and mask_dir (objects: image, components or instance), from "
        "image_dir and coco_annotations, or from benchmark: synthetic; benchmarks and Hub datasets are loaded for "
        "task: prompt_free."
    )


def select_splits(data: DatasetDict, args: DataArguments) -> DatasetDict:
    """`train` and the evaluation split of `data`, each cut to `max_train_samples` / `max_eval_samples`.

    Raises:
        ValueError: for a missing split.
    """
    for split, limit in (("train", args.max_train_samples), (args.eval_split, args.max_eval_samples)):
        if split not in data:
            raise ValueError(f"The data has no {split!r} split; it has {sorted(data)}.")
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return DatasetDict({"train": data["train"], args.eval_split: data[args.eval_split]})


def build_object_datasets(args: DataArguments, image_size: int, seed: int) -> tuple[DatasetDict, DatasetDict]:
    """The training and evaluation splits of prompted fine-tuning, raw (`load_object_data`) and with SAM's lazy
    object preprocessing (`prepare_objects_for_sam`: flips on `train`, at most `max_objects` objects per image,
    drawn anew at each read on `train`, fixed by `seed` on the evaluation split). Folder files are checked first,
    as `build_datasets` does."""
    data = select_splits(load_object_data(args, seed), args)
    verify_data_files(args, data)
    prepared = prepare_objects_for_sam(
        data, image_size, augmentation=Augmentation(hflip=args.hflip), max_objects=args.max_objects, seed=seed
    )
    return data, prepared


def build_datasets(args: DataArguments, num_labels: int, image_size: int, seed: int) -> tuple[DatasetDict, DatasetDict]:
    """The training and evaluation splits, raw (decoded images and masks) and with SAM's lazy preprocessing
    (flip augmentation on `train`).

    The files of a benchmark or of image / mask folders are checked first, for the rows used only (after
    `max_train_samples` / `max_eval_samples`): readable headers, no truncated PNG / JPEG, masks of their image's
    size (`sam_peft.data.verify_dataset`, with a progress bar from 1000 rows on). Hub datasets are not checked
    (their images are held in the dataset's files: checking them would mean reading every image), so a bad row
    raises when it is first decoded; synthetic data needs no check.

    Raises:
        ValueError: for a missing split.
        DataFileError: one error listing every bad file with its reason (the first 20, then how many more), with
            no chained traceback.
    """
    data = select_splits(load_data(args, num_labels, seed), args)
    verify_data_files(args, data)
    return data, prepare_for_sam(data, image_size, augmentation=Augmentation(hflip=args.hflip))


def verify_data_files(args: DataArguments, data: Dataset | DatasetDict) -> None:
    """Checks every file of `data` loaded from the source `args` names, when it is a benchmark or image / mask
    folders (`sam_peft.data.verify_dataset`); Hub and synthetic data hold no files to check.

    Raises:
        DataFileError: one error listing every bad file with its reason.
    """
    if args.coco_annotations is None and (args.benchmark not in (None, "synthetic") or args.image_dir is not None):
        verify_dataset(data, desc="Checking data files")


def check_embedding_cache(args: DataArguments, model: torch.nn.Module, image_size: int) -> None:
    """Checks, before any work, that the embedding cache `args.cache_embeddings` asks for can serve `model`.

    Raises:
        ValueError: for an encoder that is not frozen or whose output the cache cannot store
            (`frozen_vision_encoder`), and for decoder-only training at an input size other than the model's (the
            decoder then reads the embeddings without the pixel values, and its output size is the model's).
    """
    if not args.cache_embeddings:
        return
    encoder, cad = frozen_vision_encoder(model)
    trained = next((name for name, p in encoder.named_parameters() if p.requires_grad), None)
    if trained is not None:
        raise ValueError(
            f"The embedding cache needs a frozen image encoder; this one trains {trained!r} (and maybe more), so its "
            "output changes as it trains."
        )
    model_size = getattr(encoder.config, "image_size", None) or input_image_size(model.config)
    if cad is None and image_size != model_size:
        raise ValueError(
            f"Decoder-only training from cached embeddings needs image_size equal to the model's ({model_size}); "
            f"got {image_size}."
        )


def build_embedding_cache(args: DataArguments, model: torch.nn.Module, image_size: int) -> EmbeddingCache | None:
    """The frozen-encoder embedding cache of a cad or decoder_only run (`args.cache_embeddings`), else `None`;
    `check_embedding_cache` says when it cannot be built."""
    if not args.cache_embeddings:
        return None
    check_embedding_cache(args, model, image_size)
    directory = args.embedding_cache_dir or Path(constants.HF_HOME) / "sam-peft" / "embeddings"
    return EmbeddingCache(directory, model, dtype=getattr(torch, args.embedding_cache_dtype))


class SeededSamples(torch.utils.data.Dataset):
    """A training split whose random augmentation of each sample is a pure function of `(seed, epoch, index)`.

    Each sample is prepared under torch's generator seeded from those three numbers, inside `fork_rng`, so:
    a run resumed mid-epoch draws what the uninterrupted run drew (a DataLoader prepares one batch ahead, and
    would otherwise move the global generator past the state a checkpoint records), two processes draw what one
    draws, and the model's own random draws (gate noise, dropout) never depend on the data pipeline.
    Call `set_epoch` at the start of each epoch.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
