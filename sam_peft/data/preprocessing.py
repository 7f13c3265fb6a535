"""Lazy SAM preprocessing of segmentation datasets: augmentation, resize, pad, normalise, and batching.

`prepare_for_sam(dataset, image_size)` sets a `SamSegmentationTransform` with `with_transform`, so images are only
decoded and processed when examples are read (e.g. by a `DataLoader` with `collate_fn=sam_collate_fn`):

- training splits are augmented first (`Augmentation`: horizontal flip by default; vertical flip, 90-degree
  rotation, random crop and colour jitter as options), image and mask together;
- transformers' `SamImageProcessor` resizes the longest side to `image_size` (bilinear for images, nearest for
  masks), pads bottom and right to `image_size` x `image_size`, and normalises the images;
- the labels' padding is set to 255 (ignored by the losses), and `original_sizes` / `reshaped_input_sizes`
  travel with each example so `post_process_semantic_segmentation` maps predictions back to the original images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from PIL import Image, ImageEnhance

from .decoding import IGNORE_INDEX, SegmentationDecoder

# Per-example tensors that `sam_collate_fn` stacks; other keys are collected into lists.
TENSOR_KEYS = ("pixel_values", "labels", "original_sizes", "reshaped_input_sizes")


def _chance(probability: float) -> bool:
    """True with `probability`, drawn from torch's generator (seeded per DataLoader worker)."""
    return probability > 0 and bool(torch.rand(()) < probability)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation of an (image, mask) pair, applied before SAM's resize.

    Geometric changes apply to both (masks with nearest-neighbour), colour changes to the image only. Randomness
    comes from torch's global generator, so `torch.manual_seed` makes it reproducible and DataLoader workers
    draw differently.

    Args:
        hflip: probability of a horizontal flip (the papers' default augmentation).
        vflip: probability of a vertical flip.
        rotate90: probability of a rotation by 90, 180 or 270 degrees (chosen uniformly).
        crop_scale: `(low, high)` area fraction of a random crop keeping the aspect ratio, or `None`.
        brightness, contrast, saturation: strength `s` of a random factor in `[1 - s, 1 + s]`; 0 disables.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate90: float = 0.0
    crop_scale: tuple[float, float] | None = None
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        """Augments an RGB image and its `"L"` mask of the same size; returns both (sizes still equal)."""
        image, (mask,) = self.apply(image, [mask])
        return image, mask

    def apply(self, image: Image.Image, masks: Sequence[Image.Image]) -> tuple[Image.Image, list[Image.Image]]:
        """Augments an RGB image and any number of masks of its size with one draw: every mask moves with the
        image. The draws are those of `__call__`, so under one seed both augment an image alike."""
        image, masks = self._geometric(image, list(masks))
        return self._photometric(image), masks

    def _geometric(self, image: Image.Image, masks: list[Image.Image]) -> tuple[Image.Image, list[Image.Image]]:
        if self.crop_scale is not None:
            image, masks = self._crop(image, masks)
        operations = []
        if _chance(self.hflip):
            operations.append(Image.Transpose.FLIP_LEFT_RIGHT)
        if _chance(self.vflip):
            operations.append(Image.Transpose.FLIP_TOP_BOTTOM)
        if _chance(self.rotate90):
            turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
            operations.append(turns[int(torch.randint(0, 3, ()))])
        for operation in operations:
            image, masks = image.transpose(operation), [mask.transpose(operation) for mask in masks]
        return image, masks

    def _crop(self, image: Image.Image, masks: list[Image.Image]) -> tuple[Image.Image, list[Image.Image]]:
        width, height = image.size
        side = math.sqrt(_uniform(*self.crop_scale))
        crop_width, crop_height = max(1, round(width * side)), max(1, round(height * side))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        top = int(torch.randint(0, height - crop_height + 1, ()))
        box = (left, top, left + crop_width, top + crop_height)
        return image.crop(box), [mask.crop(box) for mask in masks]

    def _photometric(self, image: Image.Image) -> Image.Image:
        enhancers = (
            (ImageEnhance.Brightness, self.brightness),
            (ImageEnhance.Contrast, self.contrast),
            (ImageEnhance.Color, self.saturation),
        )
        for enhancer, strength in enhancers:
            if strength > 0:
                image = enhancer(image).enhance(_uniform(1 - strength, 1 + strength))
        return image


# The papers' training augmentation: a random horizontal flip.
DEFAULT_AUGMENTATION = Augmentation()


def sam_image_processor(image_size: int = 1024) -> Any:
    """A `SamImageProcessor` resizing images and masks to `image_size` (longest side) and padding them square."""
    from transformers import SamImageProcessor

    square = {"height": image_size, "width": image_size}
    return SamImageProcessor(
        size={"longest_edge": image_size},
        pad_size=square,
        mask_size={"longest_edge": image_size},
        mask_pad_size=square,
    )


def _size_value(size: Any, key: str) -> int:
    value = getattr(size, key, None)
    return int(value if value is not None else size[key])


class SamSegmentationTransform:
    """Batch transform (for `with_transform`) turning stored examples into SAM inputs.

    Output per example: `pixel_values` float `(3, S, S)`, `labels` int64 `(S, S)` (mask values or class ids at the
    input resolution, padding 255), `original_sizes` and `reshaped_input_sizes` int64 `(2,)` as `(height, width)`,
    and `id` when the dataset has one. `S` is the processor's pad size (the model's image size).

    Args:
        image_size: the model's input size, used to build a processor when `processor` is `None`.
        processor: a `SamImageProcessor` or `SamProcessor` (e.g. `from_pretrained("facebook/sam-vit-base")`);
            masks are resized to its image size, not its low-resolution `mask_size`.
        decoder: how stored images and masks are decoded; by default a binary decoder, or a class-id decoder
            when the batch has a `label` column.
        augmentation: applied to every example before resizing (training splits), or `None`.
    """

    def __init__(
        self,
        image_size: int = 1024,
        *,
        processor: Any = None,
        decoder: SegmentationDecoder | None = None,
        augmentation: Augmentation | None = None,
    ):
        if processor is None:
            processor = sam_image_processor(image_size)
        self.processor = getattr(processor, "image_processor", processor)
        self.decoder = decoder
        self.augmentation = augmentation

    def _decoder_for(self, batch: dict[str, list]) -> SegmentationDecoder:
        if self.decoder is not None:
            return self.decoder
        return SegmentationDecoder(target="label" if "label" in batch else "mask")

    def _decoded(self, batch: dict[str, list]) -> tuple[list[Image.Image], list[Image.Image]]:
        """RGB images and `"L"` masks of the batch, augmented when an augmentation is set."""
        decoder = self._decoder_for(batch)
        ids = batch.get("id", [None] * len(batch["image"]))
        images, masks = [], []
        for image, target, row_id in zip(batch["image"], batch[decoder.target], ids, strict=True):
            rgb, decoded = decoder.decode_pair(image, target, row_id)
            mask = Image.fromarray(decoded)
            if self.augmentation is not None:
                rgb, mask = self.augmentation(rgb, mask)
            images.append(rgb)
            masks.append(mask)
        return images, masks

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        """`{column: [values]}` -> batched SAM inputs (tensors with a leading batch dimension), plus `id`."""
        images, masks = self._decoded(batch)
        inputs = sam_inputs(self.processor, images, masks)
        labels = ignore_padding(inputs["labels"], inputs["reshaped_input_sizes"])
        output = {
            "pixel_values": inputs["pixel_values"],
            "labels": labels,
            "original_sizes": inputs["original_sizes"],
            "reshaped_input_sizes": inputs["reshaped_input_sizes"],
        }
        if "id" in batch:
            output["id"] = list(batch["id"])
        return output


def sam_inputs(processor: Any, images: Sequence[Image.Image], masks: Sequence[Image.Image] = ()) -> Any:
    """Runs a `SamImageProcessor` on RGB images and (optionally) masks: the images resized (longest side), padded
    and normalised into `pixel_values` `(B, 3, S, S)`; the masks resized with nearest neighbour to the images' input
    size (not the processor's low-resolution `mask_size`) and padded with 0 into `labels` `(M, S, S)` int64.

    Each mask is resized on its own by its longest side, so a mask of an image's size lands on that image's input
    frame whatever the count: `SamSegmentationTransform` passes one mask per image, the object transform of
    `sam_peft.data.prompted` one image and all its masks. Also returns `original_sizes` and `reshaped_input_sizes`
    `(B, 2)`.
    """
    if not masks:
        return processor(images=list(images), return_tensors="pt")
    return processor(
        images=list(images),
        segmentation_maps=list(masks),
        mask_size={"longest_edge": _size_value(processor.size, "longest_edge")},
        mask_pad_size={
            "height": _size_value(processor.pad_size, "height"),
            "width": _size_value(processor.pad_size, "width"),
        },
        return_tensors="pt",
    )


def ignore_padding(labels: torch.Tensor, reshaped_input_sizes: torch.Tensor) -> torch.Tensor:
    """Sets the padding of `labels` `(B, S, S)` (right of / below each `(height, width)` in `reshaped_input_sizes`
    `(B, 2)`) to 255, so the losses skip it. Returns a new tensor."""
    labels = labels.clone()
    for index, (height, width) in enumerate(reshaped_input_sizes.tolist()):
        labels[index, height:, :] = IGNORE_INDEX
        labels[index, :, width:] = IGNORE_INDEX
    return labels


def _current_decoder(dataset: Dataset) -> SegmentationDecoder | None:
    """The `SegmentationDecoder` set on `dataset` by the loaders, if any."""
    transform = dataset.format.get("format_kwargs", {}).get("transform")
    return transform if isinstance(transform, SegmentationDecoder) else None


def _prepare_split(
    dataset: Dataset, processor: Any, augmentation: Augmentation | None, decoder: SegmentationDecoder | None
) -> Dataset:
    transform = SamSegmentationTransform(
        processor=processor, decoder=decoder or _current_decoder(dataset), augmentation=augmentation
    )
    return dataset.with_transform(transform)


def prepare_for_sam(
    data: Dataset | DatasetDict,
    image_size: int = 1024,
    *,
    processor: Any = None,
    augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
    train_splits: Sequence[str] = ("train",),
    decoder: SegmentationDecoder | None = None,
) -> Dataset | DatasetDict:
    """Sets lazy SAM preprocessing (`SamSegmentationTransform`) on a dataset from the `sam_peft.data` loaders.

    Args:
        data: a `DatasetDict` or one split (columns `image` and `mask` or `label`, optionally `id`).
        image_size: the model's input size (`config.vision_config.image_size`: 1024 for SAM, 128 for the tiny one).
        processor: a `SamImageProcessor` to use instead of one built for `image_size`.
        augmentation: applied to the splits named in `train_splits` only (a single `Dataset` counts as training
            when its `split` is among them); `None` disables it.
        train_splits: names of the training splits.
        decoder: how images and masks are decoded; by default the loaders' decoder set on `data`.

    Returns:
        The same kind of object, whose examples are SAM inputs; batch them with `sam_collate_fn`. With a
        `transformers.Trainer`, set `remove_unused_columns=False` (the stored columns are not the model's inputs).
    """
    processor = (
        sam_image_processor(image_size) if processor is None else getattr(processor, "image_processor", processor)
    )
    if isinstance(data, DatasetDict):
        return DatasetDict(
            {
                split: _prepare_split(part, processor, augmentation if split in train_splits else None, decoder)
                for split, part in data.items()
            }
        )
    is_train = data.split is not None and str(data.split) in train_splits
    return _prepare_split(data, processor, augmentation if is_train else None, decoder)


def sam_collate_fn(examples: Sequence[dict[str, Any]], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Batches examples of `SamSegmentationTransform`: tensors stacked (`pixel_values` `(B, 3, S, S)`, `labels`
    `(B, S, S)`, sizes `(B, 2)`), other values (e.g. `id`) collected into lists.

    `keys` keeps only those entries, e.g. `functools.partial(sam_collate_fn, keys=("pixel_values", "labels"))` as
    the data collator of a `transformers.Trainer`, whose batches go to the model's `forward` as they are.
    """
    batch: dict[str, Any] = {}
    for key in examples[0] if keys is None else keys:
        values = [example[key] for example in examples]
        if key in TENSOR_KEYS:
            batch[key] = torch.stack([torch.as_tensor(value) for value in values])
        else:
            batch[key] = values
    return batch
