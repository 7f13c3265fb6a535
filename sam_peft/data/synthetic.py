"""Generated segmentation data for examples and tests: no download, deterministic by seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from .decoding import SegmentationDecoder
from .loaders import segmentation_features
from .objects import ObjectDecoder


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], (size, size): a `cells` x `cells` random grid upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size)
    i0 = np.minimum(coords.astype(int), cells - 1)
    t = coords - i0
    rows = grid[i0] * (1 - t)[:, None] + grid[i0 + 1] * t[:, None]  # (size, cells + 1)
    return rows[:, i0] * (1 - t)[None, :] + rows[:, i0 + 1] * t[None, :]


@dataclass(frozen=True)
class Appearance:
    """How a generated binary domain looks: per-channel RGB tint ranges (0..1) of the background and of the object,
    a brightness offset of the object, and the texture scale (grid cells of the smooth noise) of each."""

    background_tint: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.3,) * 3, (0.6,) * 3)
    object_tint: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.4,) * 3, (0.9,) * 3)
    object_offset: float = 0.15
    background_cells: int = 4
    object_cells: int = 16


# Generated domains that differ in appearance, for continual-learning examples: each stands in for a benchmark.
SYNTHETIC_DOMAINS: dict[str, Appearance] = {
    # textured object of a similar brightness to its background (camouflage)
    "camouflage": Appearance(),
    # smooth light-pink blob on a red, smooth mucosa (polyps)
    "polyp": Appearance(((0.7, 0.2, 0.2), (0.9, 0.35, 0.3)), ((0.9, 0.5, 0.5), (1.0, 0.6, 0.6)), 0.1, 3, 6),
    # dark grey region on a bright, finely textured grey surface (shadows)
    "shadow": Appearance(((0.75, 0.75, 0.75), (0.9, 0.9, 0.9)), ((0.1, 0.1, 0.1), (0.25, 0.25, 0.25)), 0.0, 12, 12),
    # brown patch on skin tones (skin lesions)
    "lesion": Appearance(((0.85, 0.65, 0.55), (0.95, 0.75, 0.65)), ((0.4, 0.25, 0.15), (0.55, 0.35, 0.25)), 0.0, 2, 10),
}


def binary_samples(
    count: int, size: int = 128, seed: int = 0, appearance: Appearance | str = "camouflage"
) -> tuple[np.ndarray, np.ndarray]:
    """`count` RGB images with one textured ellipse each, and its mask.

    Returns images (count, size, size, 3) uint8 and masks (count, size, size) uint8 in {0, 1}. By default the
    object differs from the background in hue and texture scale but not much in brightness, a mild camouflage;
    `appearance` (an `Appearance` or a `SYNTHETIC_DOMAINS` name) sets the colours and textures.
    """
    appearance = _appearance(appearance)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.empty((count, size, size), dtype=np.uint8)
    for n in range(count):
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        ry, rx = rng.uniform(0.12, 0.28, size=2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        mask = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        background = _smooth_noise(rng, size, appearance.background_cells)[..., None]
        background = background * rng.uniform(*appearance.background_tint, size=3)
        foreground = _smooth_noise(rng, size, appearance.object_cells)[..., None]
        foreground = foreground * rng.uniform(*appearance.object_tint, size=3)
        image = np.where(mask[..., None], foreground + appearance.object_offset, background)
        image = image + rng.normal(0, 0.03, (size, size, 3))
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
        masks[n] = mask
    return images, masks


def _object_region(rng: np.random.Generator, size: int, shape: int) -> np.ndarray:
    """A random ellipse (shape 0), rectangle (1) or triangle (2), rotated, as a boolean `(size, size)` region."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.25, 0.75, size=2)
    ry, rx = rng.uniform(0.1, 0.22, size=2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    if shape == 0:
        return u**2 + v**2 <= 1.0
    if shape == 1:
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)


def _class_color(class_id: int) -> np.ndarray:
    """A fixed RGB tint in [0.3, 0.9] per class, the same for every seed, `(3,)`."""
    return np.random.default_rng(1000 + class_id).uniform(0.3, 0.9, size=3)


def multiclass_samples(
    count: int, size: int = 128, num_labels: int = 4, seed: int = 0, max_objects: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """`count` RGB images with 1..`max_objects` textured objects of classes 1..`num_labels - 1`, and label maps.

    Each class has its own shape (ellipse, rectangle, triangle in turn), tint and texture scale; later objects
    cover earlier ones. Returns images (count, size, size, 3) uint8 and labels (count, size, size) uint8 with
    0 = background.
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2 (background and one class), got {num_labels}.")
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, size, size), dtype=np.uint8)
    for n in range(count):
        image = _smooth_noise(rng, size, 4)[..., None] * rng.uniform(0.3, 0.6, size=3)
        for _ in range(rng.integers(1, max_objects + 1)):
            class_id = int(rng.integers(1, num_labels))
            region = _object_region(rng, size, (class_id - 1) % 3)
            texture = _smooth_noise(rng, size, 4 + 4 * class_id)[..., None] * _class_color(class_id)
            image = np.where(region[..., None], texture + 0.1, image)
            labels[n][region] = class_id
        image = image + rng.normal(0, 0.03, (size, size, 3))
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images, labels


def instance_samples(
    count: int, size: int = 128, seed: int = 0, max_objects: int = 4, appearance: Appearance | str = "camouflage"
) -> tuple[np.ndarray, np.ndarray]:
    """`count` RGB images with 1..`max_objects` textured objects each (ellipses, rectangles and triangles of one
    `appearance` on its background, as `binary_samples` draws one), and their instance label maps.

    Later objects cover earlier ones; an object left with fewer than 16 pixels is erased, so every id present is a
    visible object. Returns images (count, size, size, 3) uint8 and labels (count, size, size) uint8 with
    0 = background and ids 1..n numbering each image's objects in drawing order (ids of covered objects skipped).
    """
    appearance = _appearance(appearance)
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects must be in 1..255 (8-bit label maps), got {max_objects}.")
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, size, size), dtype=np.uint8)
    for n in range(count):
        background = _smooth_noise(rng, size, appearance.background_cells)[..., None]
        image = background * rng.uniform(*appearance.background_tint, size=3)
        for object_id in range(1, int(rng.integers(1, max_objects + 1)) + 1):
            region = _object_region(rng, size, int(rng.integers(0, 3)))
            texture = _smooth_noise(rng, size, appearance.object_cells)[..., None]
            texture = texture * rng.uniform(*appearance.object_tint, size=3) + appearance.object_offset
            image = np.where(region[..., None], texture, image)
            labels[n][region] = object_id
        for object_id in np.unique(labels[n])[1:]:
            if (labels[n] == object_id).sum() < 16:
                labels[n][labels[n] == object_id] = 0
        image = image + rng.normal(0, 0.03, (size, size, 3))
        images[n] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images, labels


def _appearance(appearance: Appearance | str) -> Appearance:
    if isinstance(appearance, Appearance):
        return appearance
    if appearance not in SYNTHETIC_DOMAINS:
        raise ValueError(f"Unknown synthetic domain {appearance!r}; expected one of {sorted(SYNTHETIC_DOMAINS)}.")
    return SYNTHETIC_DOMAINS[appearance]


def _as_dataset(
    images: np.ndarray, targets: np.ndarray, target: str, split: str, decoder: SegmentationDecoder
) -> Dataset:
    """Images `(N, H, W, 3)` and masks `(N, H, W)` as a lazily decoded dataset with ids `"00000"`, ... ."""
    columns = {
        "image": list(images),
        target: list(targets),
        "id": [f"{index:05d}" for index in range(len(images))],
    }
    dataset = Dataset.from_dict(columns, features=segmentation_features(target), split=split)
    return dataset.with_transform(decoder)


def binary_dataset(
    count: int, size: int = 128, seed: int = 0, split: str = "train", appearance: Appearance | str = "camouflage"
) -> Dataset:
    """`binary_samples` as a `datasets.Dataset` with the loaders' columns `image`, `mask` (0/1), `id`.

    Masks are stored as 0/255 PNGs, like the benchmarks', and decoded to 0/1 by the dataset's transform.
    """
    images, masks = binary_samples(count, size, seed, appearance)
    return _as_dataset(images, masks * 255, "mask", split, SegmentationDecoder(target="mask"))


def multiclass_dataset(
    count: int, size: int = 128, num_labels: int = 4, seed: int = 0, split: str = "train"
) -> Dataset:
    """`multiclass_samples` as a `datasets.Dataset` with the columns `image`, `label` (class ids), `id`."""
    images, labels = multiclass_samples(count, size, num_labels, seed)
    return _as_dataset(images, labels, "label", split, SegmentationDecoder(target="label", num_labels=num_labels))


def instance_dataset(
    count: int,
    size: int = 128,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 4,
    appearance: Appearance | str = "camouflage",
) -> Dataset:
    """`instance_samples` as an object dataset, like `load_folder(..., objects="instance")`'s splits: columns
    `image`, `mask` (the label map), `id`, decoded by an `ObjectDecoder` into each image's object masks (for
    `prepare_objects_for_sam` and prompted fine-tuning)."""
    images, labels = instance_samples(count, size, seed, max_objects, appearance)
    return _as_dataset(images, labels, "mask", split, ObjectDecoder(objects="instance"))
