"""Finding folders and pairing image files with mask files by name."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from datasets.utils import tqdm
from PIL import Image

from .decoding import IMAGE_EXTENSIONS, exif_orientation
from .errors import DataFileError, DataLayoutError

# Scans and checks over at least this many files show a progress bar.
PROGRESS_MIN_FILES = 1000


@dataclass(frozen=True)
class Pair:
    """One example on disk: its id, image file and mask file."""

    id: str
    image: Path
    mask: Path


def split_pattern(spec: str | os.PathLike) -> tuple[str, str | None]:
    """`"imgs/*.png"` -> `("imgs", "*.png")`; a plain folder -> `(folder, None)`."""
    spec = os.fspath(spec)
    head, tail = os.path.split(spec)
    if glob.has_magic(tail):
        return head, tail
    return spec, None


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder `name` of `folder`, matched exactly or else case-insensitively."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if not folder.is_dir():
        return None
    lowered = name.lower()
    matches = sorted(entry for entry in folder.iterdir() if entry.is_dir() and entry.name.lower() == lowered)
    return matches[0] if matches else None


def resolve_folder(root: Path, relative: str) -> Path | None:
    """`root / relative`, tolerating case differences and doubled folders (`TestDataset/TestDataset/...`).

    Archives often extract into a folder of their own name, so each part may appear twice in a row.
    Absolute `relative` paths are used as they are. Returns `None` when no such folder exists.
    """
    path = Path(relative)
    if path.is_absolute():
        return path if path.is_dir() else None
    return _resolve_parts(root, path.parts)


def _resolve_parts(folder: Path, parts: Sequence[str]) -> Path | None:
    if not parts:
        return folder
    found = _child(folder, parts[0])
    if found is None:
        return None
    direct = _resolve_parts(found, parts[1:])
    if direct is not None:
        return direct
    doubled = _child(found, parts[0])
    return _resolve_parts(doubled, parts[1:]) if doubled is not None else None


def first_folder(root: Path, alternatives: Iterable[str]) -> Path | None:
    """The first of `alternatives` (paths relative to `root`) that exists, or `None`."""
    for relative in alternatives:
        found = resolve_folder(root, relative)
        if found is not None:
            return found
    return None


def list_images(folder: Path, pattern: str = "*", exclude_suffix: str = "") -> list[Path]:
    """Image files directly in `folder` whose name matches `pattern` (case-insensitive), sorted by name.

    Hidden files (`.DS_Store`, macOS `._name.jpg` forks) and files whose stem ends in `exclude_suffix` are skipped.
    """
    pattern = pattern.lower()
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not entry.is_file():
                continue
            stem, extension = os.path.splitext(name)
            if extension.lower() not in IMAGE_EXTENSIONS or not fnmatchcase(name.lower(), pattern):
                continue
            if exclude_suffix and stem.endswith(exclude_suffix):
                continue
            files.append(Path(entry.path))
    return sorted(files, key=lambda path: path.name)


def _index_by_stem(masks: Iterable[Path]) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for mask in masks:
        index.setdefault(mask.stem, []).append(mask)
    return index


def pair_by_stem(
    images: Sequence[Path],
    mask_folder: Path,
    mask_pattern: str = "*",
    mask_suffix: str = "",
    id_prefix: str = "",
) -> list[Pair]:
    """Matches each image with the mask named `<image stem><mask_suffix>.<any image extension>`.

    Masks without an image are ignored (a mask folder may serve several splits); an image without a mask, or
    with several candidate masks, raises `DataFileError` naming it.
    """
    index = _index_by_stem(list_images(mask_folder, mask_pattern))
    pairs, missing = [], []
    for image in tqdm(images, desc=f"Pairing {mask_folder.name}", disable=len(images) < PROGRESS_MIN_FILES):
        candidates = index.get(image.stem + mask_suffix, [])
        if not candidates:
            missing.append(image)
            continue
        if len(candidates) > 1:
            names = ", ".join(str(path) for path in candidates)
            raise DataFileError(f"Image {image} has several masks: {names}; pass a mask pattern to choose one.")
        pairs.append(Pair(id_prefix + image.stem, image, candidates[0]))
    if missing:
        raise DataFileError(_missing_masks_message(missing, mask_folder, mask_suffix))
    return pairs


def _missing_masks_message(missing: Sequence[Path], mask_folder: Path, mask_suffix: str) -> str:
    shown = "\n".join(f"  {image}" for image in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"{len(missing)} image(s) have no mask in {mask_folder} (expected <image stem>{mask_suffix}.<extension>):"
        f"\n{shown}{more}"
    )


def find_pairs(
    image_folder: Path,
    mask_folder: Path,
    image_pattern: str = "*",
    mask_pattern: str = "*",
    mask_suffix: str = "",
    id_prefix: str = "",
) -> list[Pair]:
    """All (image, mask) pairs of one image folder and one mask folder; an empty image folder is an error."""
    same_folder = image_folder.resolve() == mask_folder.resolve()
    images = list_images(image_folder, image_pattern, exclude_suffix=mask_suffix if same_folder else "")
    if not images:
        raise DataLayoutError(f"No image files matching {image_pattern!r} in {image_folder}.")
    check_unique_stems(images, image_pattern)
    return pair_by_stem(images, mask_folder, mask_pattern, mask_suffix, id_prefix)


def check_unique_stems(images: Sequence[Path], pattern: str = "*") -> None:
    """Raises `DataFileError` naming both files when two images share a stem (`im03.png` and `im03.jpg`).

    They would get the same id and the same mask. (Two masks of one stem are reported by `pair_by_stem`, for the
    images that would use them.)
    """
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise DataFileError(
                f"Images {seen[image.stem]} and {image} have the same name stem {image.stem!r}, so they would get the "
                f"same id and the same mask; remove or rename one, or pass an image pattern narrower than "
                f"{pattern!r} (e.g. '*.jpg')."
            )
        seen[image.stem] = image


# A file-checking error message lists at most this many problems, then says how many more there are.
MAX_LISTED_PROBLEMS = 20


def verify_pairs(pairs: Sequence[Pair], desc: str = "Checking files") -> None:
    """Checks every pair's files without decoding their pixels; raises one `DataFileError` listing every problem.

    Each file's header must be readable (not missing, not a non-image), PNG and JPEG files must not be truncated
    (checked by their end marker; a file without one is decoded to be sure), and each mask must have its image's
    size once both are turned upright by their EXIF orientation. Other problems (a truncated file of another
    format, unknown mask colours) are only found when a file is decoded.

    Raises:
        DataFileError: listing up to `MAX_LISTED_PROBLEMS` bad files with their reasons, then how many more; raised
            without a chained traceback.
    """
    problems = []
    for pair in tqdm(pairs, desc=desc, disable=len(pairs) < PROGRESS_MIN_FILES):
        problems.extend(pair_problems(pair))
    if problems:
        raise DataFileError(problems_message(problems, len(pairs))) from None


def pair_problems(pair: Pair) -> list[str]:
    """What is wrong with one pair's files (one line each), or nothing."""
    image_size, image_problem = checked_size(pair.image)
    mask_size, mask_problem = checked_size(pair.mask)
    problems = [problem for problem in (image_problem, mask_problem) if problem is not None]
    if not problems and image_size != mask_size:
        problems.append(
            f"Mask {pair.mask} is {mask_size[0]}x{mask_size[1]} but its image {pair.image} is "
            f"{image_size[0]}x{image_size[1]} (width x height)."
        )
    return problems


def problems_message(problems: Sequence[str], num_pairs: int) -> str:
    """One readable message for the problems found in `num_pairs` image / mask pairs."""
    shown = "\n".join(f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    more_line = f"\n  ... and {more} more" if more > 0 else ""
    return (
        f"{len(problems)} problem(s) in the files of {num_pairs} image / mask pair(s):\n{shown}{more_line}\n"
        "Fix, replace or remove these files (with their image or mask) and load again."
    )


def checked_size(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """`((width, height) as displayed, None)`, or `(None, what is wrong)`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            transposed = exif_orientation(image, header_only=True) >= 5
            if _lacks_end_marker(image.format, path):
                image.load()  # a file without its end marker may still decode: only a failed decode is reported
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, f"Cannot read image file {path}: {error}"
    return ((height, width) if transposed else (width, height)), None


_END_MARKERS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9", "MPO": b"\xff\xd9"}
_TAIL_BYTES = 1024  # the end marker may be followed by padding or a small trailer


def _lacks_end_marker(image_format: str | None, path: Path) -> bool:
    """Whether a PNG or JPEG file's last bytes lack its end marker (it may be truncated); False for others."""
    marker = _END_MARKERS.get(image_format or "")
    if marker is None:
        return False
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - _TAIL_BYTES))
        return marker not in file.read()
