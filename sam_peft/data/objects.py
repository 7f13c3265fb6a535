"""Objects for prompted fine-tuning: one training target per object, from binary masks, label images or COCO.

A prompted model (a box or points per object) trains on objects, not on whole-image masks. Three sources:

- a binary mask: `objects="image"` (its whole foreground is one object) or `objects="components"` (one object
  per connected component, 8-connected by default, components under `min_area` pixels dropped);
- an instance label image, `objects="instance"`: integers with 0 = background and one id per object
  (microscopy label images, 8/16/32-bit PNGs and TIFFs; a colour-coded image gives one object per colour, black
  being the background);
- COCO annotations (`load_coco`): polygons, compressed or uncompressed RLE, decoded with `pycocotools` (an
  optional extra: `pip install "sam-peft[coco]"`).

`masks_to_objects` splits one mask into objects, `load_folder(..., objects=...)` loads a folder of masks or label
images as objects, `load_coco` a COCO dataset. Every object dataset is decoded lazily by an `ObjectDecoder` set
with `with_transform`; a decoded row has the same form whatever the source:

- `image`: the RGB `PIL.Image` (turned upright by its EXIF orientation);
- `masks`: `(N, H, W)` bool numpy array, one mask per object (`torch.from_numpy` shares its memory);
- `objects`: a dict of `N`-long lists in the masks' order: `id` (COCO annotation id, instance id or component
  number), `category_id`, `category` (name), `bbox` (`[x, y, width, height]` in pixels, of the mask), `area`
  (pixels of the mask), `iscrowd`;
- `id` and the other stored columns, unchanged.

Storage: a COCO dataset stores each object as compressed RLE (a short string: a few hundred bytes for an object
of a 1024 px image), with its box and area; masks are decoded only when a row is read, and only for the objects
kept (`ObjectDecoder(max_objects=k)` draws `k` per read, bounding the memory of images with many objects: 100
masks of 1024 x 1024 px take 100 MiB). A folder dataset stores the mask file's path and splits it when read.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Dataset, DatasetDict, DatasetInfo, Features, List, Value
from datasets.utils import tqdm
from PIL import Image
from scipy import ndimage

from ._files import PROGRESS_MIN_FILES, Pair, checked_size, list_images
from .decoding import describe_source, open_image, to_binary_mask, to_rgb
from .errors import DataFileError, DataLayoutError
from .layouts import DEFAULT_SPLIT_SEED
from .loaders import _carve_fraction, _split_order

# How masks become objects: see `masks_to_objects`.
MASK_OBJECT_MODES = ("image", "components", "instance")

# Category of the objects of folder datasets (binary masks and label images have no classes).
FOLDER_CATEGORY_ID = 1
FOLDER_CATEGORY = "object"

# Crowd handling of `load_coco`.
CROWD_MODES = ("skip", "keep")

# Error and warning messages list at most this many examples.
_SHOWN = 5

_COCO_INSTALL = 'pip install "sam-peft[coco]"'


def _shown(items: Sequence[Any], count: int | None = None) -> str:
    """`a, b, c` (the first `_SHOWN` items), then `(and k more)`."""
    count = len(items) if count is None else count
    text = ", ".join(str(item) for item in items[:_SHOWN])
    return text + (f" (and {count - _SHOWN} more)" if count > _SHOWN else "")


# ---------------------------------------------------------------------------------------------------------------
# Masks and label images -> objects


def _check_mode(objects: str) -> None:
    if objects not in MASK_OBJECT_MODES:
        raise ValueError(f"objects must be one of {MASK_OBJECT_MODES}, got {objects!r}.")


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    if connectivity == 8:
        return ndimage.generate_binary_structure(2, 2)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}.")


def instance_ids(image: Image.Image, source: str = "<label image>") -> np.ndarray:
    """The object ids `(H, W)` int64 of an instance label image (0 = background).

    Greyscale, palette (the indices), 16-bit and 32-bit images are read as their values; a float image must hold
    integers; a colour image whose channels are equal is read as one channel, otherwise each colour is one id
    (`r * 65536 + g * 256 + b`, black = background; alpha is dropped).

    Raises:
        DataFileError: for negative or non-integer values, naming `source`.
    """
    if image.mode == "1":
        values = np.asarray(image, dtype=np.int64)
    elif image.mode in ("L", "P", "I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image)
    else:
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            values = rgb[..., 0]
        else:
            values = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return _as_ids(values, source)


def _as_ids(values: np.ndarray, source: str) -> np.ndarray:
    if values.dtype == bool:
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        if values.size and not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise DataFileError(f"Label image {source} holds non-integer values; instance ids must be integers.")
    elif not np.issubdtype(values.dtype, np.integer):
        raise DataFileError(f"Label image {source} has values of type {values.dtype}; expected integer ids.")
    values = values.astype(np.int64)
    if values.size and int(values.min()) < 0:
        raise DataFileError(f"Label image {source} has negative values; instance ids must be >= 0 (0 = background).")
    return values


def _as_array(mask: Any) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().numpy()
    return np.asarray(mask)


def object_labels(
    mask: Any,
    objects: str = "components",
    *,
    min_area: int = 0,
    connectivity: int = 8,
    threshold: int = 128,
    source: str = "<mask>",
) -> tuple[np.ndarray, np.ndarray]:
    """A label map of the objects of `mask` and their ids: `(labels (H, W) int64, ids (N,) int64 ascending)`.

    Object `i` is `labels == ids[i]`; see `masks_to_objects` for the arguments. Objects under `min_area` pixels
    (or empty) are left out of `ids`, not erased from `labels`.
    """
    _check_mode(objects)
    if objects == "instance":
        labels = instance_ids(mask, source) if isinstance(mask, Image.Image) else _as_ids(_as_array(mask), source)
    else:
        if isinstance(mask, Image.Image):
            foreground = to_binary_mask(mask, threshold, source).astype(bool)
        else:
            foreground = _as_array(mask) != 0
        if objects == "image":
            labels = foreground.astype(np.int64)
        else:
            labels, _ = ndimage.label(foreground, structure=_structure(connectivity))
            labels = labels.astype(np.int64, copy=False)
    if labels.ndim != 2:
        raise ValueError(f"{source} must be one (H, W) mask, got shape {labels.shape}.")
    values, counts = np.unique(labels, return_counts=True)
    ids = values[(values != 0) & (counts >= max(int(min_area), 1))]
    return labels, ids


def masks_to_objects(
    mask: Any, objects: str = "components", *, min_area: int = 0, connectivity: int = 8, threshold: int = 128
) -> np.ndarray:
    """Splits one mask into objects: `(N, H, W)` bool numpy array (`N` may be 0).

    Args:
        mask: `(H, W)` numpy array, torch tensor or `PIL.Image`. For `"image"` and `"components"` an array's
            non-zero pixels are the foreground, an image is made binary as the loaders do (`to_binary_mask`: 0/1,
            0/255, 0/100 masks, ... ); for `"instance"` the values are object ids (0 = background; see
            `instance_ids` for images).
        objects: `"image"` (the whole foreground is one object), `"components"` (one object per connected
            component, in scan order: top to bottom, then left to right), `"instance"` (one object per id, in
            ascending id order).
        min_area: objects with fewer pixels are dropped (specks); empty objects always are.
        connectivity: 8 (diagonal neighbours touch) or 4, for `"components"`.
        threshold: binarisation threshold of mask images with more than two values (8-bit scale).

    Raises:
        ValueError: for an unknown mode, a mask that is not 2-D, or (`DataFileError`) negative / non-integer ids.
    """
    labels, ids = object_labels(mask, objects, min_area=min_area, connectivity=connectivity, threshold=threshold)
    return labels[None] == ids[:, None, None]


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes `(N, 4)` float32 `[x, y, width, height]` (as COCO) of masks `(N, H, W)`; zeros when empty."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for index, mask in enumerate(masks):
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[index] = (columns[0], rows[0], columns[-1] + 1 - columns[0], rows[-1] + 1 - rows[0])
    return boxes


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def _require_pycocotools() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as error:
        raise ImportError(
            f"COCO annotations need pycocotools, an optional dependency of sam-peft: {_COCO_INSTALL} "
            "(or pip install pycocotools)."
        ) from error
    return mask_utils


def _sample(count: int, limit: int | None) -> list[int]:
    """All of `range(count)`, or `limit` of them drawn with torch's generator, in ascending order."""
    if limit is None or count <= limit:
        return list(range(count))
    return sorted(torch.randperm(count)[:limit].tolist())


@dataclass(frozen=True)
class ObjectDecoder:
    """Batch transform (for `Dataset.with_transform`) decoding stored rows into an image and its objects.

    Output per row: `image` an RGB `PIL.Image`, `masks` `(N, H, W)` bool numpy, `objects` a dict of `N`-long lists
    (`id`, `category_id`, `category`, `bbox` `[x, y, w, h]`, `area`, `iscrowd`; a COCO row's `segmentation` is
    decoded into `masks` and left out); the other columns pass through.

    Args:
        objects: `"coco"` for rows of `load_coco` (column `objects`), else how the `mask` column of a folder row
            becomes objects: `"image"`, `"components"` or `"instance"` (see `masks_to_objects`).
        min_area, connectivity, threshold: as in `masks_to_objects` (folder rows; `load_coco` applies its
            `min_area` when loading).
        max_objects: decode at most this many objects per row, drawn anew at every read with torch's global
            generator (seed it with `torch.manual_seed`; DataLoader workers draw differently), in their stored
            order; `None` decodes them all.
    """

    objects: str = "coco"
    min_area: int = 0
    connectivity: int = 8
    threshold: int = 128
    max_objects: int | None = None

    def __post_init__(self):
        if self.objects != "coco":
            _check_mode(self.objects)
        _structure(self.connectivity)
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1 (or None), got {self.max_objects}.")

    @property
    def target(self) -> str:
        """The stored column holding the objects: `objects` (COCO) or `mask` (folders)."""
        return "objects" if self.objects == "coco" else "mask"

    def labels(self, mask: Any, source: str = "<mask>") -> tuple[np.ndarray, np.ndarray]:
        """`object_labels` of one stored mask (a path, bytes dict or image) with this decoder's settings."""
        image = mask if isinstance(mask, Image.Image) else open_image(mask, source)
        return object_labels(
            image,
            self.objects,
            min_area=self.min_area,
            connectivity=self.connectivity,
            threshold=self.threshold,
            source=source,
        )

    def decode_row(self, image: Any, stored: Any, row_id: Any = None) -> tuple[Image.Image, np.ndarray, dict]:
        """One stored image and its objects (a mask, or a COCO `objects` dict) -> (RGB image, masks, objects)."""
        image_source = describe_source(image)
        rgb = to_rgb(open_image(image, image_source))
        row = f" (row {row_id!r})" if row_id is not None else ""
        if self.objects == "coco":
            masks, objects = self._coco_objects(stored, rgb.size, image_source, row)
        else:
            masks, objects = self._mask_objects(stored, rgb.size, image_source, row)
        return rgb, masks, objects

    def _mask_objects(self, stored: Any, size: tuple[int, int], image_source: str, row: str) -> tuple:
        source = describe_source(stored)
        raw = open_image(stored, source)
        if raw.size != size:
            raise DataFileError(
                f"Mask {source} is {raw.size[0]}x{raw.size[1]} but its image {image_source} is {size[0]}x{size[1]} "
                f"(width x height){row}."
            )
        labels, ids = self.labels(raw, source)
        ids = ids[_sample(len(ids), self.max_objects)]
        masks = labels[None] == ids[:, None, None]
        count = len(ids)
        objects = {
            "id": ids.tolist(),
            "category_id": [FOLDER_CATEGORY_ID] * count,
            "category": [FOLDER_CATEGORY] * count,
            "bbox": _mask_boxes(masks).tolist(),
            "area": masks.sum(axis=(1, 2)).tolist(),
            "iscrowd": [False] * count,
        }
        return masks, objects

    def _coco_objects(self, stored: Mapping[str, list], size: tuple[int, int], image_source: str, row: str) -> tuple:
        width, height = size
        segmentations = stored["segmentation"]
        chosen = _sample(len(segmentations), self.max_objects)
        objects = {key: [values[i] for i in chosen] for key, values in stored.items() if key != "segmentation"}
        rles = [segmentations[i] for i in chosen]
        for index, rle in zip(chosen, rles, strict=True):
            if list(rle["size"]) != [height, width]:
                raise DataFileError(
                    f"Annotation {stored['id'][index]} is {rle['size'][1]}x{rle['size'][0]} but its image "
                    f"{image_source} is {width}x{height} (width x height){row}: the JSON's width / height do not "
                    "match the file (a resized image, or a photo whose EXIF orientation turns it?)."
                )
        if not rles:
            return np.zeros((0, height, width), bool), objects
        mask_utils = _require_pycocotools()
        with warnings.catch_warnings():  # pycocotools' array conversion, deprecated by numpy 2 (harmless)
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            decoded = mask_utils.decode([{"size": list(rle["size"]), "counts": rle["counts"]} for rle in rles])
        return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool), objects

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Decodes a batch `{column: [values]}`; returns its columns with `image`, `masks` and `objects` decoded."""
        ids = batch.get("id", [None] * len(batch["image"]))
        images, masks, objects = [], [], []
        for image, stored, row_id in zip(batch["image"], batch[self.target], ids, strict=True):
            rgb, row_masks, row_objects = self.decode_row(image, stored, row_id)
            images.append(rgb)
            masks.append(row_masks)
            objects.append(row_objects)
        output = {key: value for key, value in batch.items() if key != self.target}
        return {**output, "image": images, "masks": masks, "objects": objects}


# ---------------------------------------------------------------------------------------------------------------
# Folders of masks / label images (the hook of `load_folder(..., objects=...)`)


def folder_objects(
    pairs: Sequence[Pair], objects: str, *, min_area: int = 0, threshold: int = 128, desc: str = "Counting objects"
) -> tuple[list[Pair], ObjectDecoder, list[str]]:
    """Reads every mask of `pairs` once and drops the images without objects (warned and counted).

    Returns the pairs kept, the decoder to set on the dataset, and notes for its description.
    """
    decoder = ObjectDecoder(objects=objects, min_area=min_area, threshold=threshold)
    kept, empty = [], []
    for pair in tqdm(pairs, desc=desc, disable=len(pairs) < PROGRESS_MIN_FILES):
        _, ids = decoder.labels(pair.mask, os.fspath(pair.mask))
        (kept if len(ids) else empty).append(pair)
    if not kept:
        raise DataLayoutError(
            f"None of the {len(pairs)} masks has an object (objects={objects!r}, min_area={min_area}), e.g. "
            f"{_shown([str(pair.mask) for pair in empty])}."
        )
    notes = [f"objects: {objects!r}, min_area {min_area}"]
    if empty:
        notes.append(f"{len(empty)} image(s) without objects skipped")
        warnings.warn(
            f"{len(empty)} of {len(pairs)} image(s) have no object (objects={objects!r}, min_area={min_area}) and "
            f"were skipped: {_shown([pair.id for pair in empty])}.",
            UserWarning,
            stacklevel=3,
        )
    return kept, decoder, notes


# ---------------------------------------------------------------------------------------------------------------
# COCO


def object_features() -> Features:
    """The features of `load_coco` datasets: the undecoded image, its objects (RLE, box, area, category), ids, size."""
    return Features(
        {
            "image": datasets.Image(decode=False),
            "objects": {
                "id": List(Value("int64")),
                "category_id": List(Value("int64")),
                "category": List(Value("string")),
                "bbox": List(List(Value("float32"), length=4)),
                "area": List(Value("int64")),
                "iscrowd": List(Value("bool")),
                "segmentation": List({"size": List(Value("int32"), length=2), "counts": Value("string")}),
            },
            "id": Value("string"),
            "image_id": Value("int64"),
            "width": Value("int32"),
            "height": Value("int32"),
        }
    )


@dataclass(frozen=True)
class CocoStats:
    """What `load_coco` kept and skipped (also written in each split's `info.description` and warned).

    Attributes:
        images: images listed in the annotations file.
        rows: images loaded (rows over all splits).
        missing_images: file names listed but not in the folder (skipped with `missing_images="skip"`).
        images_without_objects: file names of the images left without objects (skipped).
        annotations: annotations in the file.
        objects: objects loaded.
        crowd_skipped: `iscrowd` annotations skipped (`crowd="skip"`).
        degenerate: ids of the annotations skipped for an empty segmentation, a polygon of fewer than 3 points, or
            a mask of zero area (e.g. a polygon outside the image).
        below_min_area: objects skipped for having fewer than `min_area` pixels.
        capped: objects dropped by `max_objects_per_image`.
    """

    images: int = 0
    rows: int = 0
    missing_images: tuple[str, ...] = ()
    images_without_objects: tuple[str, ...] = ()
    annotations: int = 0
    objects: int = 0
    crowd_skipped: int = 0
    degenerate: tuple[int, ...] = ()
    below_min_area: int = 0
    capped: int = 0

    def summary(self) -> str:
        """One line: what was loaded, then what was skipped."""
        parts = [f"{self.rows} of {self.images} images, {self.objects} of {self.annotations} annotations loaded"]
        skipped = [
            (len(self.missing_images), "image(s) missing from the folder"),
            (len(self.images_without_objects), "image(s) without objects"),
            (self.crowd_skipped, "crowd annotation(s)"),
            (len(self.degenerate), "degenerate annotation(s)"),
            (self.below_min_area, "object(s) below min_area"),
            (self.capped, "object(s) over max_objects_per_image"),
        ]
        parts.extend(f"{count} {what} skipped" for count, what in skipped if count)
        return "; ".join(parts)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        nearby = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        hint = f" JSON files in {path.parent}: {_shown(nearby)}." if nearby else ""
        raise DataLayoutError(
            f"The COCO annotations file {path} does not exist.{hint} Pass the path of the instances JSON (e.g. "
            "annotations/instances_train2017.json)."
        )
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"Cannot read the COCO annotations file {path}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataFileError(
            f"{path} is not a COCO instances file: it has no 'images' list (its top level: {keys}). Expected "
            "{'images': [...], 'annotations': [...], 'categories': [...]}."
        )
    return data


def _folder_names(folder: Path) -> dict[str, str]:
    """Lower-cased stem -> name of the image files directly in `folder`."""
    return {Path(name).stem.lower(): name for name in (path.name for path in list_images(folder))}


def _locate(folder: Path, file_name: str, names: set[str]) -> Path | None:
    """The file of a JSON `file_name` under `folder`: the relative path, or else its base name."""
    candidate = folder / file_name
    if ("/" not in file_name and file_name in names) or candidate.is_file():
        return candidate
    base = Path(file_name).name
    if base != file_name and base in names:
        return folder / base
    return None


def _missing_message(missing: Sequence[str], total: int, json_path: Path, folder: Path) -> str:
    stems = _folder_names(folder)
    held = sorted(stems.values())
    other_extension = [
        f"{name} -> {stems[Path(name).stem.lower()]}" for name in missing if Path(name).stem.lower() in stems
    ]
    lines = [
        f"{len(missing)} of the {total} images listed in {json_path} are not in {folder}: {_shown(missing)}.",
        f"The folder holds {len(held)} image file(s)" + (f", e.g. {_shown(held, len(held))}." if held else "."),
    ]
    if other_extension:
        lines.append(
            f"{len(other_extension)} of them are there with another extension ({_shown(other_extension)}): the "
            "JSON's file_name must name the files as they are."
        )
    lines.append(
        "Pass the folder the JSON's file_name entries are relative to (e.g. coco/train2017 with "
        "instances_train2017.json; check that the JSON is the one of this split), or missing_images='skip' to "
        "load the images present."
    )
    return "\n".join(lines)


def _image_size(entry: Mapping, path: Path) -> tuple[int, int]:
    """`(height, width)` from the JSON, or else from the file's header."""
    if entry.get("height") and entry.get("width"):
        return int(entry["height"]), int(entry["width"])
    size, problem = checked_size(path)
    if problem is not None:
        raise DataFileError(problem)
    return size[1], size[0]


class _Annotations:
    """Turns annotations' segmentations (polygons, RLE) into compressed RLE, checking them."""

    def __init__(self, mask_utils: Any, json_path: Path):
        self.mask_utils = mask_utils
        self.json_path = json_path

    def rle(self, annotation: Mapping, height: int, width: int) -> dict | None:
        """Compressed RLE `{"size": [h, w], "counts": str}`, or `None` when the segmentation is degenerate."""
        segmentation = annotation.get("segmentation")
        name = f"Annotation {annotation.get('id')!r} (image {annotation.get('image_id')!r}) of {self.json_path}"
        if not segmentation:
            return None
        if isinstance(segmentation, list):
            return self._polygons(segmentation, height, width, name)
        if not isinstance(segmentation, Mapping) or "counts" not in segmentation or "size" not in segmentation:
            raise DataFileError(
                f"{name} has a segmentation that is neither polygons (a list of [x1, y1, x2, y2, ...]) nor RLE "
                f"({{'size': [h, w], 'counts': ...}}): {str(segmentation)[:80]}."
            )
        size = [int(value) for value in segmentation["size"]]
        if size != [height, width]:
            raise DataFileError(
                f"{name} is an RLE of size {size} (height, width) but its image is {[height, width]} in the JSON."
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(counts) != height * width or any(count < 0 for count in counts):
                raise DataFileError(
                    f"{name} is an uncompressed RLE whose counts sum to {sum(counts)}, not height x width = "
                    f"{height * width} (or has negative counts)."
                )
            rle = self.mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return self._compact(rle)

    def _polygons(self, polygons: list, height: int, width: int, name: str) -> dict | None:
        kept = []
        for polygon in polygons:
            if not isinstance(polygon, list) or not all(isinstance(v, (int, float)) for v in polygon):
                raise DataFileError(f"{name} has a polygon that is not a list of numbers: {str(polygon)[:80]}.")
            if len(polygon) % 2:
                raise DataFileError(f"{name} has a polygon of {len(polygon)} coordinates, an odd number.")
            if len(polygon) >= 6:  # pycocotools would read 4 numbers as a box
                kept.append([float(value) for value in polygon])
        if not kept:
            return None
        return self._compact(self.mask_utils.merge(self.mask_utils.frPyObjects(kept, height, width)))

    @staticmethod
    def _compact(rle: dict) -> dict:
        counts = rle["counts"]
        return {
            "size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        }


def _categories(data: Mapping) -> dict[int, str] | None:
    entries = data.get("categories")
    if entries is None:
        return None
    return {int(entry["id"]): str(entry.get("name", entry["id"])) for entry in entries}


def _group_annotations(data: Mapping, image_ids: set[int], json_path: Path) -> dict[int, list[Mapping]]:
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise DataFileError(f"{json_path} has no 'annotations' list; a COCO instances file has one (may be empty).")
    if annotations and not any("segmentation" in annotation for annotation in annotations):
        raise DataFileError(
            f"No annotation of {json_path} has a 'segmentation' (a captions, keypoints or box-only file?); objects "
            "need polygons or RLE masks."
        )
    grouped: dict[int, list[Mapping]] = {}
    orphans = []
    for annotation in annotations:
        image_id = annotation.get("image_id")
        if image_id not in image_ids:
            orphans.append(annotation)
            continue
        grouped.setdefault(image_id, []).append(annotation)
    if orphans:
        examples = [f"annotation {a.get('id')!r} -> image {a.get('image_id')!r}" for a in orphans]
        raise DataFileError(
            f"{len(orphans)} of the {len(annotations)} annotations of {json_path} refer to image ids that its "
            f"'images' list lacks: {_shown(examples)}. The 'images' list has {len(image_ids)} ids, e.g. "
            f"{_shown(sorted(image_ids))}. Is the file complete (not merged from two splits)? Remove those "
            "annotations or add their images."
        )
    return grouped


def _check_images(entries: list, json_path: Path) -> None:
    seen_ids: dict[Any, str] = {}
    seen_names: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or "id" not in entry or "file_name" not in entry:
            raise DataFileError(f"An image entry of {json_path} lacks 'id' or 'file_name': {str(entry)[:80]}.")
        image_id, name = entry["id"], entry["file_name"]
        if image_id in seen_ids:
            raise DataFileError(f"{json_path} lists the image id {image_id!r} twice ({seen_ids[image_id]}, {name}).")
        if name in seen_names:
            raise DataFileError(
                f"{json_path} lists the file {name} twice (image ids {seen_names[name]!r} and {image_id!r})."
            )
        seen_ids[image_id], seen_names[name] = name, image_id


def _row_id(file_name: str) -> str:
    return Path(file_name).with_suffix("").as_posix()


def _capped(count: int, limit: int | None, seed: int, row_id: str) -> list[int]:
    """Indices of the objects kept under `limit`, drawn with `seed` and the row's id (not its position)."""
    if limit is None or count <= limit:
        return list(range(count))
    rng = np.random.default_rng([seed, zlib.crc32(row_id.encode("utf-8"))])
    return sorted(rng.choice(count, size=limit, replace=False).tolist())


def _verify_sizes(rows: Sequence[dict]) -> None:
    problems = []
    for row in tqdm(rows, desc="Checking images", disable=len(rows) < PROGRESS_MIN_FILES):
        size, problem = checked_size(Path(row["image"]))
        if problem is None and size != (row["width"], row["height"]):
            problem = (
                f"Image {row['image']} is {size[0]}x{size[1]} but the JSON says {row['width']}x{row['height']} "
                "(width x height)."
            )
        if problem is not None:
            problems.append(problem)
    if problems:
        shown = "\n".join(f"  {problem}" for problem in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataFileError(f"{len(problems)} problem(s) in the images of {len(rows)} rows:\n{shown}{more}") from None


def load_coco(
    images_dir: str | os.PathLike,
    annotations_json: str | os.PathLike,
    *,
    split: str = "train",
    max_objects_per_image: int | None = None,
    min_area: int = 0,
    crowd: str = "skip",
    missing_images: str = "error",
    validation_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = DEFAULT_SPLIT_SEED,
    verify: bool = False,
    return_stats: bool = False,
) -> DatasetDict | tuple[DatasetDict, CocoStats]:
    """Loads a folder of images and its COCO instances file: one row per image, with its objects.

    Every annotation with a segmentation becomes an object stored as compressed RLE: polygons (several parts of
    one object are merged), uncompressed RLE (`counts` a list) and compressed RLE (`counts` a string) alike, with
    pycocotools' rasterisation. Its `bbox` and `area` are those of the mask (pixels), not the JSON's polygon
    values. Skipped, counted (`CocoStats`), warned and noted in each split's `info.description`:

    - annotations without a segmentation, with only polygons of fewer than 3 points, or whose mask is empty
      (a polygon outside the image or of zero area): degenerate, listed by id;
    - `iscrowd` annotations with `crowd="skip"` (the default: a crowd region covers several objects, so it is no
      target for a prompt of one object); `crowd="keep"` keeps them as objects with `iscrowd` True;
    - objects under `min_area` pixels, and those over `max_objects_per_image` (a seeded draw per image);
    - images left without objects (including images without annotations).

    Malformed annotations (an odd number of polygon coordinates, an RLE whose size differs from its image's or
    whose counts do not add up, an unknown category) raise `DataFileError` naming the annotation id.

    Args:
        images_dir: the folder the JSON's `file_name` entries are relative to (a `file_name` with a folder part,
            e.g. `train2017/x.jpg`, is also found by its base name in `images_dir`).
        annotations_json: the COCO instances file (`images`, `annotations`, optionally `categories`).
        split: name of the split holding the images.
        max_objects_per_image: keep at most this many objects per image, drawn with `seed` and the image's id
            (the same objects whatever the order of the file). `ObjectDecoder(max_objects=k)` draws anew at
            every read instead.
        min_area: objects with fewer mask pixels are skipped.
        crowd: `"skip"` or `"keep"` the `iscrowd` annotations.
        missing_images: `"error"` (default) or `"skip"` for images listed in the JSON but not in the folder.
        validation_fraction, test_fraction: carved out of `split` with `seed` (test first), as `load_folder` does.
        seed: the seed of the carving and of `max_objects_per_image`.
        verify: read every image's header now: unreadable files and sizes that differ from the JSON's raise one
            `DataFileError` (otherwise found when a row is read).
        return_stats: also return the `CocoStats`.

    Returns:
        A `DatasetDict` with `split` (and `validation` / `test` when carved), columns `image` (undecoded path),
        `objects` (dict of lists: `id`, `category_id`, `category`, `bbox` `[x, y, w, h]`, `area`, `iscrowd`,
        `segmentation` `{"size": [h, w], "counts": str}`), `id` (the file name without extension), `image_id`,
        `width`, `height` (see `object_features`), decoded by an `ObjectDecoder` when read: `image`, `masks`
        `(N, H, W)` bool and `objects` without `segmentation`. With `return_stats`, `(dataset, stats)`.

    Raises:
        ImportError: without pycocotools, naming `pip install "sam-peft[coco]"`.
        DataLayoutError: for a missing folder or annotations file, images of the JSON that are not in the folder
            (with how many, examples and the fix), or when no image has objects.
        DataFileError: for an unreadable or malformed JSON, annotations of unknown image ids, malformed
            annotations (naming their ids).
    """
    mask_utils = _require_pycocotools()
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}.")
    if missing_images not in ("error", "skip"):
        raise ValueError(f"missing_images must be 'error' or 'skip', got {missing_images!r}.")
    if max_objects_per_image is not None and max_objects_per_image < 1:
        raise ValueError(f"max_objects_per_image must be at least 1 (or None), got {max_objects_per_image}.")
    folder, json_path = Path(images_dir).expanduser(), Path(annotations_json).expanduser()
    if not folder.is_dir():
        raise DataLayoutError(f"The image folder {folder} does not exist or is not a folder.")
    data = _read_json(json_path)
    entries = data["images"]
    _check_images(entries, json_path)
    categories = _categories(data)
    grouped = _group_annotations(data, {entry["id"] for entry in entries}, json_path)

    names = {path.name for path in list_images(folder)}
    located = {entry["id"]: _locate(folder, entry["file_name"], names) for entry in entries}
    missing = [entry["file_name"] for entry in entries if located[entry["id"]] is None]
    if missing and (missing_images == "error" or len(missing) == len(entries)):
        raise DataLayoutError(_missing_message(missing, len(entries), json_path, folder))

    converter = _Annotations(mask_utils, json_path)
    counts = {"crowd": 0, "small": 0, "capped": 0}
    degenerate: list[int] = []
    rows, empty = [], []
    for entry in entries:
        path = located[entry["id"]]
        if path is None:
            continue
        height, width = _image_size(entry, path)
        objects = []
        for annotation in grouped.get(entry["id"], []):
            if annotation.get("iscrowd") and crowd == "skip":
                counts["crowd"] += 1
                continue
            rle = converter.rle(annotation, height, width)
            area = int(mask_utils.area(_encoded(rle))) if rle is not None else 0
            if area == 0:
                degenerate.append(annotation.get("id"))
                continue
            if area < min_area:
                counts["small"] += 1
                continue
            objects.append(_object(annotation, rle, area, mask_utils, categories, json_path))
        row_id = _row_id(entry["file_name"])
        if not objects:
            empty.append(entry["file_name"])
            continue
        chosen = _capped(len(objects), max_objects_per_image, seed, row_id)
        counts["capped"] += len(objects) - len(chosen)
        objects = [objects[index] for index in chosen]
        rows.append(
            {
                "image": os.fspath(path),
                "objects": {key: [obj[key] for obj in objects] for key in _OBJECT_KEYS},
                "id": row_id,
                "image_id": int(entry["id"]),
                "width": width,
                "height": height,
            }
        )

    stats = CocoStats(
        images=len(entries),
        rows=len(rows),
        missing_images=tuple(missing),
        images_without_objects=tuple(empty),
        annotations=len(data["annotations"]),
        objects=sum(len(row["objects"]["id"]) for row in rows),
        crowd_skipped=counts["crowd"],
        degenerate=tuple(degenerate),
        below_min_area=counts["small"],
        capped=counts["capped"],
    )
    if not rows:
        raise DataLayoutError(f"No image of {json_path} has objects: {stats.summary()}.")
    _warn_skipped(stats, json_path)
    if verify:
        _verify_sizes(rows)
    dataset = _assemble_coco(rows, split, validation_fraction, test_fraction, seed, stats, json_path, folder)
    return (dataset, stats) if return_stats else dataset


_OBJECT_KEYS = ("id", "category_id", "category", "bbox", "area", "iscrowd", "segmentation")


def _encoded(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _object(
    annotation: Mapping, rle: dict, area: int, mask_utils: Any, categories: dict[int, str] | None, json_path: Path
) -> dict:
    category_id = int(annotation.get("category_id", 0))
    if categories is None:
        category = str(category_id)
    elif category_id in categories:
        category = categories[category_id]
    else:
        raise DataFileError(
            f"Annotation {annotation.get('id')!r} of {json_path} has the category id {category_id}, which is not in "
            f"its 'categories' ({_shown(sorted(categories))})."
        )
    return {
        "id": int(annotation.get("id", -1)),
        "category_id": category_id,
        "category": category,
        "bbox": [float(value) for value in mask_utils.toBbox(_encoded(rle))],
        "area": area,
        "iscrowd": bool(annotation.get("iscrowd", 0)),
        "segmentation": rle,
    }


def _warn_skipped(stats: CocoStats, json_path: Path) -> None:
    details = []
    if stats.images_without_objects:
        details.append(f"images without objects: {_shown(stats.images_without_objects)}")
    if stats.missing_images:
        details.append(f"images not in the folder: {_shown(stats.missing_images)}")
    if stats.degenerate:
        details.append(f"degenerate annotation ids: {_shown(stats.degenerate)}")
    if details:
        warnings.warn(f"{json_path.name}: {stats.summary()}. " + "; ".join(details) + ".", UserWarning, stacklevel=3)


def _assemble_coco(
    rows: list[dict],
    split: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    stats: CocoStats,
    json_path: Path,
    folder: Path,
) -> DatasetDict:
    splits, notes = {split: rows}, []

    def key(row: dict) -> str:
        return row["id"]

    if test_fraction:
        splits[split], splits["test"], note = _carve_fraction(rows, test_fraction, seed, "test", "images", key)
        notes.append(note)
    if validation_fraction:
        splits[split], splits["validation"], note = _carve_fraction(
            splits[split], validation_fraction, seed, "validation", "remaining images", key
        )
        notes.append(note)
    counts = ", ".join(f"{name} {len(part)}" for name, part in splits.items())
    description = f"COCO images {folder} with {json_path.name} loaded by sam_peft.data. Splits: {counts}. "
    description += stats.summary() + "."
    if notes:
        description += " " + "; ".join(notes) + "."
    features = object_features()
    dataset = DatasetDict()
    for name in _split_order(splits):
        info = DatasetInfo(description=description, dataset_name=folder.name, features=features)
        columns = {column: [row[column] for row in splits[name]] for column in features}
        dataset[name] = Dataset.from_dict(columns, features=features, info=info, split=name)
    return dataset.with_transform(ObjectDecoder("coco"))
