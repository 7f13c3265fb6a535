"""Decoding of stored images and masks into RGB images, binary masks and class-id maps.

The loaders of `sam_peft.data` store images and masks undecoded (`datasets.Image(decode=False)`: a file path or
the file's bytes) and decode them lazily with a `SegmentationDecoder`, set as the datasets' transform. Decoding
here, rather than in `datasets.Image`, lets every error name its file and handles what the benchmarks contain:

- images and masks are turned upright by their EXIF orientation tag (phone photos store the pixels unrotated
  and a tag saying how to display them; masks are drawn on the displayed image), as `datasets.Image` does;
- images in any mode (RGBA, greyscale, palette, 16-bit, CMYK, ...) become 8-bit RGB;
- binary masks (colour, 16-bit, alpha, palette) are first reduced to one intensity per pixel, then become 0/1:
  a mask with exactly two values has the larger one as foreground, whatever it is (0/1, 0/100, 0/255, 0/65535);
  a mask with more than two values (anti-aliased JPEG, soft mask) is thresholded at 128 on the 8-bit scale
  (`threshold * 257` for 16-bit masks, 0.5 for values within [0, 1]); a mask with one value is all foreground
  when that value is at or above the threshold (or is 1 in a mask within [0, 1]) and all background otherwise.
  The first thresholded mask of a process raises one `UserWarning` naming it (later ones are only counted:
  `thresholded_masks()` lists them), so that a soft mask whose foreground stays below the threshold is seen;
- class-id masks are read as indices, or mapped from colours through an explicit palette, where an unknown
  colour is an error.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import DataFileError

# File extensions the loaders treat as images or masks (compared in lower case).
IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})

# Label value that the losses and metrics ignore (padding, unlabelled pixels).
IGNORE_INDEX = 255

# Colour -> class id, e.g. {(0, 0, 0): 0, (255, 0, 0): 1}, or a sequence of colours whose index is the class id.
PaletteLike = Mapping[tuple[int, int, int], int] | Sequence[tuple[int, int, int]]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_ORIENTATION = 0x0112  # EXIF tag


def describe_source(value: Any) -> str:
    """A human-readable name for a stored image value: its path, or what kind of in-memory object it is."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return value.get("path") or "<image bytes>"
    return f"<in-memory {type(value).__name__}>"


def open_image(value: Any, source: str | None = None) -> Image.Image:
    """Reads one stored image completely, whatever form `datasets` or the user gives it in, turned upright.

    An image with an EXIF orientation tag (phone photos) is flipped / rotated as it is displayed, and its tag
    dropped; a PIL image given in memory is then copied, not changed.

    Args:
        value: a path, a `{"bytes": ..., "path": ...}` dict (as `datasets.Image(decode=False)` stores it), a PIL
            image, or an array `(H, W)` / `(H, W, C)`.
        source: name used in error messages; defaults to the path.

    Raises:
        DataFileError: naming the file, when it is missing, not an image, or truncated.
    """
    if isinstance(value, Image.Image):
        return ImageOps.exif_transpose(value) if exif_orientation(value) != 1 else value
    if isinstance(value, (np.ndarray, list)):
        return _array_image(np.asarray(value))
    source = source or describe_source(value)
    try:
        if isinstance(value, Mapping):
            data = value.get("bytes")
            image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
        else:
            image = Image.open(value)
        image.load()
        if exif_orientation(image) != 1:
            ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataFileError(f"Cannot read image file {source}: {error}") from error
    return image


def exif_orientation(image: Image.Image, header_only: bool = False) -> int:
    """The EXIF orientation tag of `image` (1 = upright, 2..8 = flipped and / or rotated); 1 when it has none.

    With `header_only`, nothing more than the header is read: the EXIF chunk of a PNG that stores it after the
    pixel data is then not seen. A malformed EXIF block counts as no tag: it should not make an otherwise
    readable image unusable.
    """
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1  # Pillow would decode the whole PNG to look for a late EXIF chunk
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # Pillow's EXIF parser raises many types on malformed blocks
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _array_image(array: np.ndarray) -> Image.Image:
    """An array `(H, W)` or `(H, W, C)` as a PIL image; integer arrays become 8-bit when their values allow."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        fits = array.size == 0 or (int(array.min()) >= 0 and int(array.max()) <= 255)
        array = array.astype(np.uint8 if fits else np.int32)
    return Image.fromarray(array)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scales a 16-bit, 32-bit integer or float array to 8 bits, `(H, W[, C])` -> same shape, uint8."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).round().astype(np.uint8)
    if array.dtype == np.uint16 or (array.size and int(array.max()) > 255):
        return np.clip(array / 257.0, 0, 255).round().astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: alpha dropped, palette and CMYK converted, 16-bit and float rescaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = _to_uint8(np.asarray(image))
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _composited(image: Image.Image) -> np.ndarray:
    """Colour channels of `image` composited on black by its alpha, `(H, W, C)` float (C = 1 or 3)."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
    return rgba[..., :3] * rgba[..., 3:] / 255.0


def _mask_intensity(image: Image.Image) -> np.ndarray:
    """Per-pixel mask strength `(H, W)` in the mask's own range: the brightest channel, alpha composited on black.

    Colour masks (e.g. red on black) count as foreground where any channel is bright; palette masks whose indices
    are all 0 or 1 are read as those indices (their colours are only for display).
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F", "L"):
        return np.asarray(image)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8) * 255
    if image.mode == "P" and "transparency" not in image.info:
        indices = np.asarray(image)
        if indices.size == 0 or int(indices.max()) <= 1:
            return indices
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _composited(image).max(axis=-1)
    return np.asarray(image.convert("RGB")).max(axis=-1)


def to_binary_mask(image: Image.Image, threshold: int = 128, source: str | None = None) -> np.ndarray:
    """A binary mask `(H, W)` uint8 in {0, 1} from a mask image of any mode.

    The mask is first reduced to one intensity per pixel (see `_mask_intensity`); then:

    - exactly two values: the larger one is foreground, whatever it is (0/1, 0/100, 0/255, 0/65535, 100/255);
    - more than two values (anti-aliased JPEG, soft mask): pixels at or above `threshold` (8-bit scale) are
      foreground; `threshold * 257` for 16-bit masks (maximum above 255), 0.5 for masks within [0, 1]. The first
      such mask of the process raises a `UserWarning` naming it; every one is recorded (`thresholded_masks()`);
    - one value: all foreground when it is at or above that threshold (or is 1 in a mask within [0, 1]), else
      all background (as before the two-value rule).

    Args:
        image: the decoded mask.
        threshold: binarisation threshold of masks with more than two values, on the 8-bit scale.
        source: the mask's name, for the warning and `thresholded_masks()`; `"<mask>"` when not given.
    """
    intensity = _mask_intensity(image)
    if intensity.size == 0:
        return np.zeros(intensity.shape, np.uint8)
    low, high = intensity.min(), intensity.max()
    level = _threshold_level(float(high), threshold)
    if low == high:
        return np.full(intensity.shape, int(high >= level), np.uint8)
    if ((intensity == low) | (intensity == high)).all():
        return (intensity == high).astype(np.uint8)
    _record_thresholded(source or "<mask>", threshold)
    return (intensity >= level).astype(np.uint8)


def _threshold_level(peak: float, threshold: int) -> float:
    """The threshold on a mask's own scale: 0.5 within [0, 1], `threshold * 257` for 16-bit, else `threshold`."""
    if peak <= 1.0:
        return 0.5
    return threshold * 257 if peak > 255 else threshold


_thresholded_lock = threading.Lock()
_thresholded: dict[str, None] = {}  # names of the masks thresholded in this process, in order (an ordered set)


def _record_thresholded(source: str, threshold: int) -> None:
    """Records a thresholded mask; the first one of the process (since the last reset) raises the warning."""
    with _thresholded_lock:
        first = not _thresholded
        _thresholded[source] = None
    if first:
        warnings.warn(
            f"Mask {source} has more than two values (an anti-aliased JPEG or a soft mask?), so it was thresholded "
            f"at {threshold} on the 8-bit scale: pixels below are background, even where the mask's foreground is "
            "faint. Masks with exactly two values take the larger as foreground. This warning is given once per "
            "process; sam_peft.data.decoding.thresholded_masks() lists every mask thresholded so far.",
            UserWarning,
            stacklevel=2,
        )


def thresholded_masks(reset: bool = False) -> list[str]:
    """The names of the masks with more than two values thresholded by this process so far, in decoding order.

    DataLoader workers are processes of their own: each has its own list and gives its own warning.

    Args:
        reset: forget them afterwards, so that the next thresholded mask warns again.
    """
    with _thresholded_lock:
        names = list(_thresholded)
        if reset:
            _thresholded.clear()
    return names


def palette_table(palette: PaletteLike) -> tuple[tuple[int, int, int, int], ...]:
    """Normalises a palette to sorted `(r, g, b, class_id)` tuples, checking colours and ids."""
    items = palette.items() if isinstance(palette, Mapping) else ((color, index) for index, color in enumerate(palette))
    table = []
    for color, class_id in items:
        rgb = tuple(int(channel) for channel in color)
        if len(rgb) != 3 or not all(0 <= channel <= 255 for channel in rgb):
            raise ValueError(f"Palette colours must be (r, g, b) in 0..255, got {color!r}.")
        if not 0 <= int(class_id) <= IGNORE_INDEX:
            raise ValueError(f"Palette class ids must be in 0..255, got {class_id!r} for colour {rgb}.")
        table.append((*rgb, int(class_id)))
    return tuple(sorted(table))


def _colors_to_ids(rgb: np.ndarray, palette: tuple[tuple[int, int, int, int], ...], source: str) -> np.ndarray:
    """Maps an RGB mask `(H, W, 3)` uint8 to class ids `(H, W)` uint8 through `palette`; unknown colours raise."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    known = {(r << 16) | (g << 8) | b: class_id for r, g, b, class_id in palette}
    unique, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(code) for code in unique if int(code) not in known]
    if unknown:
        shown = ", ".join(str(((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in unknown[:5])
        raise DataFileError(
            f"Mask {source} has {len(unknown)} colour(s) not in the palette: {shown}"
            f"{' ...' if len(unknown) > 5 else ''}. Known colours: {sorted(known_colors(palette))}."
        )
    ids = np.array([known[int(code)] for code in unique], dtype=np.uint8)
    return ids[inverse.reshape(codes.shape)]


def known_colors(palette: tuple[tuple[int, int, int, int], ...]) -> list[tuple[int, int, int]]:
    """The colours of a normalised palette."""
    return [(r, g, b) for r, g, b, _ in palette]


def _index_values(image: Image.Image, source: str) -> np.ndarray:
    """Class ids stored as pixel values (palette indices, greyscale or equal RGB channels), `(H, W)`."""
    if image.mode in ("P", "L") or image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        return np.asarray(image)
    if image.mode in ("LA", "La"):
        return np.asarray(image)[..., 0]
    rgb = np.asarray(image.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]
    raise DataFileError(
        f"Mask {source} is colour-coded ({image.mode}); pass a palette mapping its colours to class ids."
    )


def to_label_map(
    image: Image.Image,
    palette: tuple[tuple[int, int, int, int], ...] | None = None,
    num_labels: int | None = None,
    source: str = "<mask>",
) -> np.ndarray:
    """Class ids `(H, W)` uint8 from a label mask: through `palette` if given, else the stored indices.

    With `num_labels`, every value must be a class id below it or `IGNORE_INDEX` (255).
    """
    if palette is not None:
        labels = _colors_to_ids(np.asarray(image.convert("RGB")), palette, source)
    else:
        labels = _index_values(image, source)
    if labels.size and int(labels.max()) > IGNORE_INDEX:
        raise DataFileError(f"Mask {source} has values above {IGNORE_INDEX}; class ids must fit in 8 bits.")
    labels = labels.astype(np.uint8)
    if num_labels is not None:
        values = np.unique(labels)
        bad = values[(values >= num_labels) & (values != IGNORE_INDEX)]
        if bad.size:
            raise DataFileError(
                f"Mask {source} has class ids {bad.tolist()} outside 0..{num_labels - 1} (and {IGNORE_INDEX} = ignore)."
            )
    return labels


@dataclass(frozen=True)
class SegmentationDecoder:
    """Batch transform (for `Dataset.with_transform`) decoding stored `image` and `mask` / `label` columns.

    Output per row: `image` an RGB `PIL.Image`, and either `mask` (binary task) an `"L"` image in {0, 1} or
    `label` (multi-class task) an `"L"` image of class ids with 255 = ignore; other columns pass through.

    Args:
        target: `"mask"` (binary, see `to_binary_mask`) or `"label"` (class ids).
        threshold: binarisation threshold of masks with more than two values, on the 8-bit scale.
        palette: `(r, g, b, class_id)` tuples (see `palette_table`) for colour-coded label masks.
        num_labels: number of classes of a label mask, to check its values; `None` skips the check.
    """

    target: str = "mask"
    threshold: int = 128
    palette: tuple[tuple[int, int, int, int], ...] | None = None
    num_labels: int | None = None

    def __post_init__(self):
        if self.target not in ("mask", "label"):
            raise ValueError(f"target must be 'mask' or 'label', got {self.target!r}.")

    def decode_pair(self, image: Any, target: Any, row_id: Any = None) -> tuple[Image.Image, np.ndarray]:
        """One stored image and its mask -> (RGB image `(W, H)`, target `(H, W)` uint8); sizes must agree."""
        image_source, target_source = describe_source(image), describe_source(target)
        rgb = to_rgb(open_image(image, image_source))
        raw_target = open_image(target, target_source)
        if raw_target.size != rgb.size:
            row = f" (row {row_id!r})" if row_id is not None else ""
            raise DataFileError(
                f"Mask {target_source} is {raw_target.size[0]}x{raw_target.size[1]} but its image {image_source} "
                f"is {rgb.size[0]}x{rgb.size[1]} (width x height){row}."
            )
        return rgb, self.decode_target(raw_target, target_source)

    def decode_target(self, target: Image.Image, source: str = "<mask>") -> np.ndarray:
        """A decoded mask image -> `(H, W)` uint8: {0, 1} for `"mask"`, class ids for `"label"`."""
        if self.target == "mask":
            return to_binary_mask(target, self.threshold, source)
        return to_label_map(target, self.palette, self.num_labels, source)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Decodes a batch `{column: [values]}`; returns the same columns with decoded images."""
        ids = batch.get("id", [None] * len(batch["image"]))
        images, targets = [], []
        for image, target, row_id in zip(batch["image"], batch[self.target], ids, strict=True):
            rgb, decoded = self.decode_pair(image, target, row_id)
            images.append(rgb)
            targets.append(Image.fromarray(decoded))
        return {**batch, "image": images, self.target: targets}
