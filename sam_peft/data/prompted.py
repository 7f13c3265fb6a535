"""Lazy SAM preprocessing of object datasets for prompted fine-tuning, and batches of a varying number of objects.

`prepare_objects_for_sam(dataset, image_size)` is `prepare_for_sam` for the object datasets of
`sam_peft.data.objects` (`load_folder(..., objects=...)`, `load_coco`): it sets a `SamObjectTransform`, so rows are
decoded and processed only when read. Each example holds:

- `pixel_values` `(3, S, S)`: exactly what `prepare_for_sam` makes of the image (same resize, pad, normalisation,
  and, on training splits, the same augmentation draws: under one torch seed both flip an image alike);
- `object_masks` `(N, S, S)` bool: one mask per object in the model's input frame, augmented with the image,
  resized with nearest neighbour like `prepare_for_sam`'s labels and padded with False;
- `valid` `(S, S)` bool: False on the padding (right of and below the resized image);
- `original_sizes`, `reshaped_input_sizes` `(2,)` int64 `(height, width)`, `id`;
- `objects`: the decoded objects' metadata (`id`, `category_id`, `bbox`, ...: `bbox` and `area` in the original
  image's pixels), lists in the order of `object_masks`;
- `vanished_objects`: how many objects were dropped for having fewer than `min_area` pixels in the input frame
  (by default: none left, e.g. a 2-pixel object of a 4000 px photo resized to 1024). They are dropped because
  `boxes_from_masks` and `sample_points` have nothing to prompt with; an image may so end with `N = 0` objects.

`max_objects` caps the objects per example after the vanished ones are dropped, keeping their stored order. On
training splits the draw is made anew at every read from torch's generator, like the augmentation (reproducible
under `torch.manual_seed` or `SeededSamples`, different from epoch to epoch); on the other splits it is a fixed
function of `seed` and the row's `id` (`object_seed`), so evaluation sees the same objects every time.

`sam_objects_collate_fn` pads the objects of a batch to `P = max N_i`: `object_masks` `(B, P, S, S)` (padding
objects all False) and `object_counts` `(B,)`. The batch fits transformers' prompted SAM, whose `P` prompts per
image share one image embedding (`input_boxes` `(B, P, 4)`, `input_points` `(B, P, k, 2)`)::

    batch = sam_objects_collate_fn([inputs["train"][i] for i in range(4)])
    boxes = object_boxes(batch)  # (B, P, 4); zeros for padding objects
    outputs = model(pixel_values=batch["pixel_values"], input_boxes=boxes, multimask_output=False)
    loss = prompted_mask_loss(outputs.pred_masks, outputs.iou_scores, object_targets(batch))  # padding ignored
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from PIL import Image
from torch import Tensor

from .decoding import IGNORE_INDEX
from .objects import ObjectDecoder
from .preprocessing import DEFAULT_AUGMENTATION, Augmentation, sam_image_processor, sam_inputs
from .prompts import Seed, as_generator, boxes_from_masks

# Per-example tensors that `sam_objects_collate_fn` stacks (`object_masks` it pads); the rest become lists.
OBJECT_TENSOR_KEYS = ("pixel_values", "valid", "original_sizes", "reshaped_input_sizes", "vanished_objects")


def object_seed(example_id: Any, seed: int) -> int:
    """The seed of an example's object draw: CRC-32 of `seed` and its id (the same every run and process)."""
    return zlib.crc32(f"{seed}:{example_id}".encode())


def _pack(masks: np.ndarray) -> list[Image.Image]:
    """`(N, H, W)` bool -> `ceil(N / 8)` `"L"` images, object `i` in bit `7 - i % 8` of image `i // 8`.

    Flips, rotations, crops, nearest-neighbour resizing and zero padding move whole pixels, so they commute with
    the packing: eight objects are augmented and resized for the price of one.
    """
    return [Image.fromarray(plane) for plane in np.packbits(masks, axis=0)]


def _unpack(planes: Tensor, count: int) -> np.ndarray:
    """Inverse of `_pack` on the processed planes `(ceil(N / 8), S, S)`: `(N, S, S)` bool."""
    return np.unpackbits(planes.numpy().astype(np.uint8), axis=0, count=count).astype(bool)


class SamObjectTransform:
    """Batch transform (for `with_transform`) turning stored object rows into SAM inputs, one example per image.

    See the module's docstring for the output. `S` is the processor's pad size (the model's image size).

    Args:
        image_size: the model's input size, used to build a processor when `processor` is `None`.
        processor: a `SamImageProcessor` or `SamProcessor`, as for `SamSegmentationTransform`.
        decoder: the `ObjectDecoder` of the stored rows (`prepare_objects_for_sam` takes the loaders' one).
        augmentation: applied to the image and its masks together before resizing, or `None`.
        max_objects: keep at most this many objects per image (drawn after the vanished ones are dropped).
        seed: an int draws each row's objects from `object_seed(id, seed)` (the same at every read); `None` draws
            from torch's global generator (anew at every read).
        min_area: objects with fewer pixels in the input frame are dropped and counted in `vanished_objects`.
    """

    def __init__(
        self,
        image_size: int = 1024,
        *,
        processor: Any = None,
        decoder: ObjectDecoder | None = None,
        augmentation: Augmentation | None = None,
        max_objects: int | None = None,
        seed: int | None = 0,
        min_area: int = 1,
    ):
        if max_objects is not None and max_objects < 1:
            raise ValueError(f"max_objects must be at least 1 (or None), got {max_objects}.")
        if min_area < 1:
            raise ValueError(f"min_area must be at least 1 (an empty mask cannot be prompted), got {min_area}.")
        if processor is None:
            processor = sam_image_processor(image_size)
        self.processor = getattr(processor, "image_processor", processor)
        self.decoder = decoder if decoder is not None else ObjectDecoder("coco")
        self.augmentation = augmentation
        self.max_objects = max_objects
        self.seed = seed
        self.min_area = min_area

    def _chosen(self, kept: np.ndarray, row_id: Any) -> np.ndarray:
        """`kept`, or `max_objects` of them drawn (in their order) with the row's or torch's generator."""
        if self.max_objects is None or len(kept) <= self.max_objects:
            return kept
        generator = None if self.seed is None else torch.Generator().manual_seed(object_seed(row_id, self.seed))
        drawn = torch.randperm(len(kept), generator=generator)[: self.max_objects]
        return kept[np.sort(drawn.numpy())]

    def example(self, image: Any, stored: Any, row_id: Any = None) -> dict[str, Any]:
        """One stored row (its image and its `mask` or COCO `objects` value) -> one SAM example."""
        rgb, masks, objects = self.decoder.decode_row(image, stored, row_id)
        count = len(masks)
        planes = _pack(masks) if count else []
        if self.augmentation is not None:
            rgb, planes = self.augmentation.apply(rgb, planes)
        inputs = sam_inputs(self.processor, [rgb], planes)
        height, width = inputs["reshaped_input_sizes"][0].tolist()
        side_h, side_w = inputs["pixel_values"].shape[-2:]
        valid = torch.zeros(side_h, side_w, dtype=torch.bool)
        valid[:height, :width] = True
        resized = _unpack(inputs["labels"], count) if count else np.zeros((0, side_h, side_w), bool)
        kept = np.flatnonzero(resized.sum(axis=(1, 2)) >= self.min_area)
        chosen = self._chosen(kept, row_id)
        return {
            "pixel_values": inputs["pixel_values"][0],
            "object_masks": torch.from_numpy(np.ascontiguousarray(resized[chosen])),
            "valid": valid,
            "original_sizes": inputs["original_sizes"][0],
            "reshaped_input_sizes": inputs["reshaped_input_sizes"][0],
            "objects": {key: [values[i] for i in chosen] for key, values in objects.items()},
            "vanished_objects": torch.tensor(count - len(kept)),
            "id": row_id,
        }

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        """`{column: [values]}` -> `{key: [value per row]}` (masks differ in count, so nothing is stacked)."""
        ids = batch.get("id", [None] * len(batch["image"]))
        examples = [
            self.example(image, stored, row_id)
            for image, stored, row_id in zip(batch["image"], batch[self.decoder.target], ids, strict=True)
        ]
        output = {key: [example[key] for example in examples] for key in examples[0]} if examples else {}
        if "id" not in batch:
            output.pop("id", None)
        return output


def _current_object_decoder(dataset: Dataset) -> ObjectDecoder | None:
    """The `ObjectDecoder` set on `dataset` by the loaders, if any."""
    transform = dataset.format.get("format_kwargs", {}).get("transform")
    return transform if isinstance(transform, ObjectDecoder) else None


def prepare_objects_for_sam(
    data: Dataset | DatasetDict,
    image_size: int = 1024,
    *,
    processor: Any = None,
    augmentation: Augmentation | None = DEFAULT_AUGMENTATION,
    train_splits: Sequence[str] = ("train",),
    decoder: ObjectDecoder | None = None,
    max_objects: int | None = None,
    seed: int = 0,
    min_area: int = 1,
) -> Dataset | DatasetDict:
    """Sets lazy SAM preprocessing of objects (`SamObjectTransform`) on a dataset of `load_folder(...,
    objects=...)` or `load_coco`; the counterpart of `prepare_for_sam` for prompted fine-tuning.

    Args:
        data: a `DatasetDict` or one split, as the object loaders return it (their `ObjectDecoder` set on it).
        image_size: the model's input size (`config.vision_config.image_size`: 1024 for SAM, 128 for the tiny one).
        processor: a `SamImageProcessor` to use instead of one built for `image_size`.
        augmentation: applied to the splits named in `train_splits` only (image and masks together); `None`
            disables it.
        train_splits: names of the training splits (a single `Dataset` counts as training when its `split` is
            among them).
        decoder: how rows are decoded; by default the loaders' `ObjectDecoder` set on `data`.
        max_objects: at most this many objects per image: drawn anew at each read on training splits (torch's
            generator), fixed by `seed` and the row id on the others.
        seed: the seed of the fixed draws of the other splits.
        min_area: objects with fewer pixels after resizing are dropped (counted in `vanished_objects`).

    Returns:
        The same kind of object, whose examples are SAM inputs with their objects; batch them with
        `sam_objects_collate_fn`.

    Raises:
        ValueError: when a split has no `ObjectDecoder` and none is given (not an object dataset).
    """
    processor = (
        sam_image_processor(image_size) if processor is None else getattr(processor, "image_processor", processor)
    )

    def prepare(split: Dataset, name: str | None) -> Dataset:
        split_decoder = decoder or _current_object_decoder(split)
        if split_decoder is None:
            raise ValueError(
                f"Split {name!r} is not an object dataset (no ObjectDecoder set on it): load it with "
                "load_folder(..., objects=...) or load_coco, or pass decoder=ObjectDecoder(...)."
            )
        training = name is not None and name in train_splits
        transform = SamObjectTransform(
            processor=processor,
            decoder=split_decoder,
            augmentation=augmentation if training else None,
            max_objects=max_objects,
            seed=None if training else seed,
            min_area=min_area,
        )
        return split.with_transform(transform)

    if isinstance(data, DatasetDict):
        return DatasetDict({name: prepare(split, name) for name, split in data.items()})
    return prepare(data, None if data.split is None else str(data.split))


def sam_objects_collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batches examples of `SamObjectTransform`, padding their objects to `P = max N_i` (at least 1).

    Returns `pixel_values` `(B, 3, S, S)`, `object_masks` `(B, P, S, S)` bool (padding objects all False),
    `object_counts` `(B,)` int64 (the objects of image `b` are `object_masks[b, :object_counts[b]]`), `valid`
    `(B, S, S)`, `original_sizes` / `reshaped_input_sizes` `(B, 2)`, `vanished_objects` `(B,)`, and lists for the
    rest (`id`, `objects`). `P` is at least 1, so a batch whose images have no object still has a prompt axis
    (all padding: `object_present` is False throughout).
    """
    counts = torch.tensor([len(example["object_masks"]) for example in examples], dtype=torch.long)
    size = tuple(examples[0]["valid"].shape)
    masks = torch.zeros(len(examples), max(int(counts.max()), 1), *size, dtype=torch.bool)
    for index, example in enumerate(examples):
        masks[index, : counts[index]] = torch.as_tensor(example["object_masks"])
    batch: dict[str, Any] = {"object_masks": masks, "object_counts": counts}
    for key in examples[0]:
        if key == "object_masks":
            continue
        values = [example[key] for example in examples]
        batch[key] = torch.stack([torch.as_tensor(v) for v in values]) if key in OBJECT_TENSOR_KEYS else values
    return batch


def object_present(batch: dict[str, Any]) -> Tensor:
    """`(B, P)` bool: True for the real objects of a `sam_objects_collate_fn` batch, False for the padding."""
    counts = batch["object_counts"]
    return torch.arange(batch["object_masks"].shape[1], device=counts.device) < counts[:, None]


def object_targets(batch: dict[str, Any]) -> Tensor:
    """`(B, P, S, S)` uint8 labels of each prompt's object, for `prompted_mask_loss`: 1 on the object, 0 elsewhere,
    `IGNORE_INDEX` (255) on the image's padding and on every pixel of a padding object."""
    masks = batch["object_masks"]
    ignored = ~(batch["valid"][:, None] & object_present(batch)[:, :, None, None].to(masks.device))
    targets = masks.to(torch.uint8)
    return targets.masked_fill_(ignored, IGNORE_INDEX)


def object_boxes(batch: dict[str, Any], jitter: int | tuple[int, int] = 0, generator: Seed = None) -> Tensor:
    """`input_boxes` `(B, P, 4)` float of a `sam_objects_collate_fn` batch: `boxes_from_masks` of each real object
    (inside the image's valid region, optionally jittered), zeros for padding objects (whose targets are ignored)."""
    masks, valid = batch["object_masks"], batch["valid"]
    present = object_present(batch)
    boxes = torch.zeros(*present.shape, 4, device=masks.device)
    if present.any():
        flat_valid = valid[:, None].expand_as(masks)[present]
        found = boxes_from_masks(masks[present], jitter, as_generator(generator), flat_valid)
        boxes[present] = found[:, 0].to(boxes.device)
    return boxes
