"""Loaders returning `datasets.DatasetDict`s with the columns `image`, `mask` (binary) or `label` (class ids), `id`.

Files are stored undecoded (`datasets.Image(decode=False)`: paths for local files) and decoded lazily by a
`SegmentationDecoder` set with `with_transform`: reading `ds["train"][0]` gives an RGB `PIL.Image` and a mask
`PIL.Image` in {0, 1} (or class ids, 255 = ignore). Nothing is read from disk until an example is accessed, except
the folder listings, unless `verify=True` (or `verify_dataset`) checks every file first.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, DatasetInfo, Features, Value

from ._files import Pair, find_pairs, first_folder, split_pattern, verify_pairs
from .decoding import PaletteLike, SegmentationDecoder, palette_table
from .errors import DataLayoutError
from .layouts import BENCHMARKS, DEFAULT_SPLIT_SEED, BenchmarkLayout, SplitSource

# Keyword arguments `load_benchmark` accepts besides the per-split folder overrides.
_OPTION_KEYS = (
    "image_pattern",
    "mask_pattern",
    "mask_suffix",
    "validation_fraction",
    "holdout_test",
    "seed",
    "threshold",
    "palette",
    "verify",
)


def segmentation_features(target: str = "mask") -> Features:
    """The loaders' features: undecoded `image` and `target` images (decoded by `SegmentationDecoder`), `id`."""
    return Features(
        {"image": datasets.Image(decode=False), target: datasets.Image(decode=False), "id": Value("string")}
    )


def _build_split(pairs: Sequence[Pair], target: str, split: str, info: DatasetInfo) -> Dataset:
    """A dataset of `pairs` storing file paths only."""
    columns = {
        "image": [os.fspath(pair.image) for pair in pairs],
        target: [os.fspath(pair.mask) for pair in pairs],
        "id": [pair.id for pair in pairs],
    }
    info = info.copy()
    info.features = segmentation_features(target)
    return Dataset.from_dict(columns, features=info.features, info=info, split=split)


T = TypeVar("T")


def _pair_id(pair: Pair) -> str:
    return pair.id


def carve(items: Sequence[T], count: int, seed: int, key: Callable[[T], str] = _pair_id) -> tuple[list[T], list[T]]:
    """Moves `count` randomly chosen items (seeded, independent of the listing order) out of `items`: pairs of
    files by default, or anything with a unique `key`.

    Returns `(kept, carved)`, both in the original order.
    """
    if not 0 <= count <= len(items):
        raise ValueError(f"Cannot carve {count} examples out of {len(items)}.")
    ordered = sorted(items, key=key)
    chosen = {key(ordered[index]) for index in np.random.default_rng(seed).permutation(len(ordered))[:count]}
    return [item for item in items if key(item) not in chosen], [item for item in items if key(item) in chosen]


def _carve_fraction(
    items: Sequence[T], fraction: float, seed: int, split: str, source: str, key: Callable[[T], str] = _pair_id
) -> tuple[list[T], list[T], str]:
    """Carves `round(len(items) * fraction)` items into `split`; returns kept, carved and a note for the info."""
    if not 0 < fraction < 1:
        raise ValueError(f"The {split} fraction must be in (0, 1), got {fraction}.")
    count = round(len(items) * fraction)
    kept, carved = carve(items, count, seed, key)
    return kept, carved, f"{split}: {fraction:.0%} of the {source} ({count}), carved with seed {seed}"


def _carve_splits(
    splits: dict[str, list[Pair]], holdout_test: int, validation_fraction: float, seed: int
) -> tuple[dict[str, list[Pair]], list[str]]:
    """Carves `test` (a count) then `validation` (a fraction) out of `train`; returns the splits and notes."""
    notes = []
    if (holdout_test or validation_fraction) and "train" not in splits:
        raise ValueError(f"Cannot carve test or validation images: there is no train split, only {list(splits)}.")
    if holdout_test:
        splits["train"], splits["test"] = carve(splits["train"], holdout_test, seed)
        notes.append(f"test: {holdout_test} of the distributed training images, carved with seed {seed}")
    if validation_fraction:
        splits["train"], splits["validation"], note = _carve_fraction(
            splits["train"], validation_fraction, seed, "validation", "training images"
        )
        notes.append(note)
    return splits, notes


def _check_unique_ids(split: str, pairs: Sequence[Pair]) -> None:
    seen: dict[str, Pair] = {}
    for pair in pairs:
        if pair.id in seen:
            raise DataLayoutError(
                f"Split {split!r} has two images with the id {pair.id!r}: {seen[pair.id].image} and {pair.image}."
            )
        seen[pair.id] = pair


def _assemble(
    splits: dict[str, list[Pair]], decoder: SegmentationDecoder, title: str, name: str, notes: Sequence[str]
) -> DatasetDict:
    """Builds the `DatasetDict`, describing where it came from and how it was split in every split's info."""
    counts = ", ".join(f"{split} {len(pairs)}" for split, pairs in splits.items())
    description = f"{title} loaded by sam_peft.data. Splits: {counts}."
    if notes:
        description += " " + "; ".join(notes) + "."
    info = DatasetInfo(description=description, dataset_name=name)
    dataset = DatasetDict()
    for split, pairs in splits.items():
        dataset[split] = _build_split(pairs, decoder.target, split, info)
    return dataset.with_transform(decoder)


def _override_source(sources: tuple[SplitSource, ...], images: Any, masks: Any) -> tuple[SplitSource, ...]:
    """Replaces a split's sources by one source whose folders (or glob patterns) come from the overrides."""
    base = sources[0]
    changes: dict[str, Any] = {"name": ""}
    if images is not None:
        folder, pattern = split_pattern(images)
        changes["images"] = folder
        if pattern is not None:
            changes["image_pattern"] = pattern
    if masks is not None:
        folder, pattern = split_pattern(masks)
        changes["masks"] = folder
        if pattern is not None:
            changes["mask_pattern"] = pattern
    return (dataclasses.replace(base, **changes),)


def _with_overrides(layout: BenchmarkLayout, overrides: Mapping[str, Any]) -> tuple[BenchmarkLayout, dict[str, Any]]:
    """Applies `{split}_images` / `{split}_masks` and pattern overrides; returns the layout and the options."""
    folder_keys = {f"{split}_{kind}" for split in layout.splits for kind in ("images", "masks")}
    unknown = sorted(set(overrides) - folder_keys - set(_OPTION_KEYS))
    if unknown:
        raise TypeError(
            f"Unknown override(s) {unknown} for {layout.name!r}; accepted: {sorted(folder_keys)} and "
            f"{list(_OPTION_KEYS)}."
        )
    splits = dict(layout.splits)
    for split, sources in layout.splits.items():
        images, masks = overrides.get(f"{split}_images"), overrides.get(f"{split}_masks")
        if images is not None or masks is not None:
            sources = _override_source(sources, images, masks)
        pattern_changes = {
            key: overrides[key] for key in ("image_pattern", "mask_pattern", "mask_suffix") if key in overrides
        }
        splits[split] = tuple(dataclasses.replace(source, **pattern_changes) for source in sources)
    options = {key: overrides[key] for key in _OPTION_KEYS if key in overrides}
    return dataclasses.replace(layout, splits=splits), options


def _missing_folders(layout: BenchmarkLayout, root: Path) -> list[str]:
    """The required folders of `layout` that do not exist under `root` (alternatives joined by "or")."""
    missing = []
    for split, sources in layout.splits.items():
        if split in layout.optional_splits:
            continue
        for source in sources:
            missing.extend(
                " or ".join(folders) for folders in (source.images, source.masks) if first_folder(root, folders) is None
            )
    return missing


def _candidate_roots(data_dir: Path, names: Sequence[str]) -> list[Path]:
    """`data_dir`, then its sub-folders (two levels) named like the archive's folder, then its other sub-folders."""
    lowered = {name.lower() for name in names}
    named, others = [], []
    for child in sorted(path for path in data_dir.iterdir() if path.is_dir()):
        if child.name.lower() in lowered:
            named.append(child)
            named.extend(sorted(sub for sub in child.iterdir() if sub.is_dir() and sub.name.lower() in lowered))
        else:
            others.append(child)
    return [data_dir, *named, *others]


def _layout_tree(layout: BenchmarkLayout) -> str:
    lines = []
    for split, sources in layout.splits.items():
        for source in sources:
            images, masks = " or ".join(source.images), " or ".join(source.masks)
            optional = " (optional)" if split in layout.optional_splits else ""
            lines.append(f"  {split}{optional}: images in {images}/{source.image_pattern}, masks in {masks}/")
    return "\n".join(lines)


def find_root(layout: BenchmarkLayout, data_dir: str | os.PathLike) -> Path:
    """The folder holding `layout`'s sub-folders: `data_dir` itself or one of its sub-folders.

    Raises:
        DataLayoutError: when `data_dir` does not exist or no candidate has the expected sub-folders; the message
            lists the missing folders and the whole expected layout.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataLayoutError(
            f"data_dir {data_dir} does not exist or is not a folder; expected the {layout.title} folder "
            f"(e.g. {layout.roots[0]}/) or its parent, laid out as:\n{_layout_tree(layout)}"
        )
    best: tuple[Path, list[str]] | None = None
    for candidate in _candidate_roots(data_dir, layout.roots):
        missing = _missing_folders(layout, candidate)
        if not missing:
            return candidate
        if best is None or len(missing) < len(best[1]):
            best = (candidate, missing)
    closest, missing = best
    raise DataLayoutError(
        f"No {layout.title} layout ({layout.name!r}) found in {data_dir}: under {closest} the folder(s) "
        f"{', '.join(missing)} are missing. Expected (relative to {data_dir} or to its {layout.roots[0]}/ "
        f"sub-folder):\n{_layout_tree(layout)}\nPass e.g. train_images=... / train_masks=... to override folders."
    )


def _split_pairs(root: Path, sources: Sequence[SplitSource]) -> list[Pair]:
    pairs = []
    for source in sources:
        image_folder, mask_folder = first_folder(root, source.images), first_folder(root, source.masks)
        pairs.extend(
            find_pairs(
                image_folder, mask_folder, source.image_pattern, source.mask_pattern, source.mask_suffix, source.name
            )
        )
    return pairs


def _sources_present(root: Path, sources: Sequence[SplitSource]) -> bool:
    return all(
        first_folder(root, folders) is not None for source in sources for folders in (source.images, source.masks)
    )


def _collect(layout: BenchmarkLayout, root: Path) -> dict[str, list[Pair]]:
    """Pairs of every split whose folders exist (optional splits are skipped when absent)."""
    splits = {}
    for split, sources in layout.splits.items():
        if split in layout.optional_splits and not _sources_present(root, sources):
            continue
        splits[split] = _split_pairs(root, sources)
        _check_unique_ids(split, splits[split])
    return splits


def _decoder(target: str, threshold: int, palette: PaletteLike | None, num_labels: int | None) -> SegmentationDecoder:
    table = palette_table(palette) if palette is not None else None
    return SegmentationDecoder(target=target, threshold=threshold, palette=table, num_labels=num_labels)


def load_layout(layout: BenchmarkLayout, data_dir: str | os.PathLike, **overrides: Any) -> DatasetDict:
    """Loads a dataset described by `layout` (a row of `BENCHMARKS`, or your own) from `data_dir`.

    See `load_benchmark` for `data_dir` and the `overrides`.
    """
    layout, options = _with_overrides(layout, overrides)
    root = find_root(layout, data_dir)
    splits = _collect(layout, root)
    if options.get("verify", False):
        verify_pairs([pair for pairs in splits.values() for pair in pairs], desc=f"Checking {layout.name} files")
    seed = options.get("seed", DEFAULT_SPLIT_SEED)
    holdout = options.get("holdout_test", layout.holdout_test)
    fraction = options.get("validation_fraction", layout.validation_fraction)
    splits, notes = _carve_splits(splits, holdout, fraction, seed)
    splits = {split: splits[split] for split in _split_order(splits)}
    palette = options.get("palette", layout.palette)
    num_labels = layout.num_labels if layout.target == "label" else None
    decoder = _decoder(layout.target, options.get("threshold", 128), palette, num_labels)
    return _assemble(splits, decoder, f"{layout.title} ({root})", layout.name, notes)


def _split_order(splits: Mapping[str, Any]) -> list[str]:
    """`train`, `validation`, `test`, then the other (bundle test) splits in their order."""
    first = [split for split in ("train", "validation", "test") if split in splits]
    return first + [split for split in splits if split not in first]


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def load_benchmark(name: str, data_dir: str | os.PathLike, **overrides: Any) -> DatasetDict:
    """Loads one of the papers' benchmarks from the folder its archive extracts to.

    Binary benchmarks give the columns `image`, `mask` (0/1 after thresholding at 128) and `id` (the file stem);
    Trans10K gives `label` (class ids, 255 = ignore; names in `BENCHMARKS[name].class_names`) instead of `mask`.
    Splits are `train`, `validation` and `test`; bundles name their test sets (`test_kvasir`, `test_camo`, ...).
    Where the papers carve validation (or, for Kvasir-SEG and CVC-ClinicDB, test) images out of the training
    images, this is done with a fixed seed, written in every split's `info.description`.

    Args:
        name: one of `BENCHMARKS` (`kvasir`, `cvc-clinicdb`, `pranet`, `isic2017`, `cod10k`, `camo`, `chameleon`,
            `sinet`, `sbu`, `istd`, `leaf`, `roads`, `trans10k-v1`, `trans10k-v2`).
        data_dir: the extracted folder (e.g. `Kvasir-SEG/`) or its parent.
        overrides: `{split}_images` / `{split}_masks`: a folder (relative to the dataset root, or absolute) or a
            glob such as `"imgs/*.png"`, replacing that split's folders; `image_pattern`, `mask_pattern`,
            `mask_suffix`: for every split; `validation_fraction`, `holdout_test` (count), `seed`: the carving;
            `threshold` (binary masks), `palette` (colour -> class id); `verify=True` checks every file now
            (headers, truncation, sizes: see `verify_dataset`), to find bad files before training.

    Raises:
        ValueError: for an unknown `name` (listing the known ones).
        DataLayoutError: when `data_dir` or an expected sub-folder is missing.
        DataFileError: for an image without a mask or two images of one stem in a folder (naming them); unreadable
            or truncated files and masks whose size differs from their image raise it when first read (or at load
            time with `verify=True`, all of them in one error).
    """
    key = _normalise_name(name)
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}.")
    return load_layout(BENCHMARKS[key], data_dir, **overrides)


def _folder_splits(
    pairs: list[Pair], split: str, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[Pair]], list[str]]:
    """`{split: pairs}`, with `test` then `validation` carved out of it when their fractions are non-zero."""
    splits, notes = {split: pairs}, []
    if test_fraction:
        splits[split], splits["test"], note = _carve_fraction(pairs, test_fraction, seed, "test", "images")
        notes.append(note)
    if validation_fraction:
        splits[split], splits["validation"], note = _carve_fraction(
            splits[split], validation_fraction, seed, "validation", "remaining images"
        )
        notes.append(note)
    return splits, notes


def load_folder(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    *,
    mask_suffix: str = "",
    image_pattern: str = "*",
    mask_pattern: str = "*",
    num_labels: int = 1,
    palette: PaletteLike | None = None,
    threshold: int = 128,
    split: str = "train",
    validation_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = DEFAULT_SPLIT_SEED,
    verify: bool = False,
    objects: str | None = None,
    min_area: int = 0,
) -> DatasetDict:
    """Loads a custom folder of images and a folder of masks matched by file stem.

    A mask is named `<image stem><mask_suffix>.<any image extension>` (e.g. `mask_suffix="_segmentation"`). Two
    images of one stem (`im03.png` and `im03.jpg`) are an error, as is an image with two candidate masks.

    Args:
        image_dir: folder of images (only its direct files whose name matches `image_pattern`).
        mask_dir: folder of masks; may be `image_dir` when masks carry a `mask_suffix`.
        num_labels: 1 for binary masks (column `mask`), K > 1 for K-class masks (column `label`).
        palette: colour -> class id for colour-coded K-class masks (or a list of colours, index = id).
        threshold: binarisation threshold of binary masks (8-bit scale).
        split: name of the split holding the images.
        validation_fraction, test_fraction: carved out of `split` with `seed` (test first).
        verify: check every file now (unreadable or truncated files, size mismatches: see `verify_dataset`).
        objects: load objects for prompted training instead of semantic masks: `"image"` (a binary mask's
            foreground is one object), `"components"` (one object per connected component of a binary mask) or
            `"instance"` (label images, 0 = background, one id per object; 16-bit PNGs and TIFFs too). Every mask
            is read once now: images without objects are skipped (warned, and counted in `info.description`).
            Rows are decoded by an `ObjectDecoder` (`sam_peft.data.objects`): `image`, `masks` `(N, H, W)` bool,
            `objects` (`id`, `category_id`, `category`, `bbox`, `area`, `iscrowd`), `id`.
        min_area: with `objects`, objects of fewer pixels are dropped (specks).

    Returns:
        A `DatasetDict` with `split` (and `validation` / `test` when carved), columns `image`, `mask` or `label`, `id`.

    Raises:
        DataLayoutError: when a folder is missing or holds no matching image.
        DataFileError: for an image without a mask, two images of one stem, an image with several masks; with
            `verify`, for every bad file (in one error).
    """
    image_folder, mask_folder = Path(image_dir).expanduser(), Path(mask_dir).expanduser()
    for role, folder in (("image", image_folder), ("mask", mask_folder)):
        if not folder.is_dir():
            raise DataLayoutError(f"The {role} folder {folder} does not exist or is not a folder.")
    pairs = find_pairs(image_folder, mask_folder, image_pattern, mask_pattern, mask_suffix)
    if verify:
        verify_pairs(pairs, desc=f"Checking {image_folder.name} files")
    object_notes: list[str] = []
    if objects is not None:
        if num_labels != 1 or palette is not None:
            raise ValueError("objects= reads binary masks or instance label images: leave num_labels and palette.")
        from .objects import folder_objects  # here: sam_peft.data.objects imports this module

        pairs, decoder, object_notes = folder_objects(
            pairs, objects, min_area=min_area, threshold=threshold, desc=f"Counting objects in {mask_folder.name}"
        )
    splits, notes = _folder_splits(pairs, split, validation_fraction, test_fraction, seed)
    if objects is None:
        target = "mask" if num_labels == 1 else "label"
        decoder = _decoder(target, threshold, palette, num_labels if target == "label" else None)
    return _assemble(splits, decoder, f"Image folder {image_folder}", image_folder.name, object_notes + notes)


def _stored_path(value: Any) -> str | None:
    """The file path of a stored (undecoded) image value, or `None` when it is held in memory."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, Mapping) and value.get("bytes") is None and value.get("path"):
        return value["path"]
    return None


def verify_dataset(dataset: Dataset | DatasetDict, desc: str = "Checking files") -> int:
    """Checks the files of every row of a `load_folder` / `load_benchmark` dataset, without decoding their pixels.

    For each row whose image and mask (or label) are file paths: both headers must be readable, PNG and JPEG files
    must end with their end marker (a file that does not is decoded to be sure), and the mask must have the
    image's size once both are turned upright by their EXIF orientation. Rows holding images in memory (Hub
    datasets, synthetic data) are skipped: checking them would mean decoding them. A progress bar shows from
    1000 rows on.

    Args:
        dataset: a dataset or every split of a `DatasetDict` (columns `image` and `mask` or `label`, `id`).
        desc: the progress bar's label.

    Returns:
        The number of rows checked.

    Raises:
        DataFileError: one error listing every bad file with its reason (the first 20, then how many more), with no
            chained traceback.
    """
    parts = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    pairs = []
    for part in parts:
        target = "mask" if "mask" in part.column_names else "label"
        columns = part.select_columns(["image", target]).with_format(None)[:]
        for index, (image, mask) in enumerate(zip(columns["image"], columns[target], strict=True)):
            image_path, mask_path = _stored_path(image), _stored_path(mask)
            if image_path is not None and mask_path is not None:
                pairs.append(Pair(str(index), Path(image_path), Path(mask_path)))
    verify_pairs(pairs, desc=desc)
    return len(pairs)


def _as_dataset_dict(loaded: Any) -> DatasetDict:
    if isinstance(loaded, DatasetDict):
        return loaded
    if isinstance(loaded, Dataset):
        return DatasetDict({str(loaded.split or "train"): loaded})
    raise TypeError(f"load_hub needs a map-style Dataset or DatasetDict (no streaming), got {type(loaded).__name__}.")


def _standardise_split(dataset: Dataset, mapping: Mapping[str, str], target: str) -> Dataset:
    """Renames the mapped columns, drops the others, adds `id` if missing and leaves images undecoded."""
    missing = [column for column in mapping if column not in dataset.column_names]
    if missing:
        raise ValueError(f"Column(s) {missing} not in the dataset; its columns are {dataset.column_names}.")
    if "id" not in mapping.values() and "id" in dataset.column_names:
        mapping = {**mapping, "id": "id"}
    dataset = dataset.select_columns(list(mapping)).rename_columns({k: v for k, v in mapping.items() if k != v})
    if "id" not in dataset.column_names:
        dataset = dataset.add_column("id", [str(index) for index in range(len(dataset))])
    elif dataset.features["id"] != Value("string"):
        dataset = dataset.cast_column("id", Value("string"))
    for column in ("image", target):
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def load_hub(
    path: str,
    *,
    image_column: str = "image",
    target_column: str | None = None,
    id_column: str | None = None,
    num_labels: int = 1,
    palette: PaletteLike | None = None,
    threshold: int = 128,
    validation_fraction: float = 0.0,
    seed: int = DEFAULT_SPLIT_SEED,
    **load_dataset_kwargs: Any,
) -> DatasetDict:
    """Loads a Hub dataset (or a local dataset folder / data files) with `datasets.load_dataset`, mapped to our columns.

    A dataset without a `validation` split gets one carved out of `train` when `validation_fraction` is non-zero,
    as `load_folder` does: `round(len(train) * validation_fraction)` rows chosen with `seed` by their ids, so the
    choice does not depend on the row order. A dataset with its own `validation` split keeps it as it is.

    Args:
        path: a Hub dataset id (`"user/name"`), a local folder, or a builder name (`"parquet"` with `data_files=`).
        image_column: the dataset's image column, renamed `image`.
        target_column: its mask column, renamed `mask` (binary, `num_labels=1`) or `label` (K classes);
            defaults to that name.
        id_column: a column of example names, renamed `id`; by default the dataset's `id` column if it has one,
            else the row indices.
        num_labels, palette, threshold: as in `load_folder`.
        validation_fraction, seed: the carving of `validation` out of `train`, when the dataset has none.
        load_dataset_kwargs: passed to `datasets.load_dataset` (`name`, `split`, `revision`, `cache_dir`, ...).

    Returns:
        A `DatasetDict` with the columns `image`, `mask` or `label`, `id` only, decoded lazily; the carving, if
        any, is described in the splits' `info.description`.

    Raises:
        ValueError: for a missing column, `streaming=True`, or a carving without a `train` split or with ids that
            are not unique.
    """
    if load_dataset_kwargs.get("streaming"):
        raise ValueError("load_hub does not support streaming=True; the SAM transforms need map-style datasets.")
    target = "mask" if num_labels == 1 else "label"
    mapping = {image_column: "image", (target_column or target): target}
    if id_column is not None:
        mapping[id_column] = "id"
    loaded = _as_dataset_dict(datasets.load_dataset(path, **load_dataset_kwargs))
    dataset = DatasetDict({split: _standardise_split(part, mapping, target) for split, part in loaded.items()})
    if validation_fraction and "validation" not in dataset:
        dataset = _carve_validation_rows(dataset, validation_fraction, seed)
    decoder = _decoder(target, threshold, palette, num_labels if target == "label" else None)
    return dataset.with_transform(decoder)


def _carve_validation_rows(dataset: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """`dataset` with `validation` carved out of `train` (by ids, as `carve` does for files)."""
    if "train" not in dataset:
        raise ValueError(f"Cannot carve validation rows: there is no train split, only {list(dataset)}.")
    train = dataset["train"]
    ids = list(train["id"])
    if len(set(ids)) != len(ids):
        raise ValueError(
            "Cannot carve validation rows: the train split's ids are not unique; name a column of unique ids "
            "with id_column, or pass validation_fraction=0 and a split of your own."
        )
    kept, carved, note = _carve_fraction(ids, fraction, seed, "validation", "train rows", key=str)
    index = {row_id: position for position, row_id in enumerate(ids)}
    splits = {**dataset, "train": train.select([index[row_id] for row_id in kept])}
    splits["validation"] = train.select([index[row_id] for row_id in carved])
    for split in ("train", "validation"):
        splits[split].info.description = f"{train.info.description or ''} {note}.".strip()
    return DatasetDict({split: splits[split] for split in _split_order(splits)})
