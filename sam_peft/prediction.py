"""Segmenting a folder of images with a trained model, writing one mask per image into an output folder.

Inputs: an image file, or a folder searched recursively for files with an image extension
(`sam_peft.data.decoding.IMAGE_EXTENSIONS`, any case); other files, files or folders whose name starts with ".",
and symbolic links to folders are skipped.

Outputs, per input (`<name>` as below):

- `<name>.png`: the mask, 0/255 (foreground probability > 0.5) for binary models, a palette PNG of the class ids
  (argmax) for multi-class ones; at the image's own size.
- `<name>_overlay.png` (`overlays=True`): the image beside the prediction drawn over it.
- `save_probabilities=True`: binary models `<name>_prob.png`, the foreground probability as an 8-bit greyscale
  PNG (`round(255 * p)`); multi-class models `<name>_prob.npy`, the per-class (softmax) probabilities as a float16
  array `(K, H, W)` (`numpy.load`).

Naming: `<name>` is the input's path relative to the input folder (sub-folders are mirrored in the output folder)
without its extension: `photos/day/a.jpg` -> `day/a.png`. Where this makes two inputs' outputs collide (`a.png`
and `a.jpg` in one folder; `a.png` and `a_overlay.png`), the clashing inputs, and only those, keep their extension:
`a.jpg.png` and `a.png.png`. Names are chosen from all possible outputs, so they do not depend on the options.

The output folder is refused (`OutputFolderError`, naming it and the offending files) when it is the input folder,
lies inside the input folder, or holds anything that this tool did not write: it must be absent, empty, or hold a
previous prediction. A prediction is recorded in `predictions.json` (the written files, failures, the adapter),
written atomically before the first image (listing the planned files, `"complete": false`, so that an interrupted
run is recognised) and again at the end. A rerun into such a folder replaces the files that manifest lists and
removes those it does not write again; no other file is touched. Every file is written to a temporary name in its
folder and renamed into place, so a kill never leaves a partial image under a result's name.

A failing image (unreadable, truncated, ...) does not stop the others: `PredictionReport.failed` names each with
its error, and the manifest records them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import open_image, sam_image_processor, to_rgb
from .data.decoding import IMAGE_EXTENSIONS
from .modeling import input_image_size, logits_at_original_size
from .training.files import TEMPORARY_PREFIX, write_atomically, write_json_atomic
from .training.plots import label_colors, save_overlays

MANIFEST = "predictions.json"
WRITTEN_BY = "sam_peft.prediction"
MASK_SUFFIX = ".png"
OVERLAY_SUFFIX = "_overlay.png"
BINARY_PROBABILITY_SUFFIX = "_prob.png"
MULTICLASS_PROBABILITY_SUFFIX = "_prob.npy"
ALL_SUFFIXES = (MASK_SUFFIX, OVERLAY_SUFFIX, BINARY_PROBABILITY_SUFFIX, MULTICLASS_PROBABILITY_SUFFIX)
# temporary name of a file being written: TEMPORARY_PREFIX, the writer's process id, "-", the file's name
_TEMPORARY = re.compile(rf"{re.escape(TEMPORARY_PREFIX)}\d+-(.+)")


class OutputFolderError(ValueError):
    """The output folder cannot receive a prediction: it is (inside) the input folder or holds foreign files."""


@dataclass(frozen=True)
class PredictionInput:
    """One image to segment and the name of its outputs: a relative POSIX path without suffix (`"day/a"`)."""

    image: Path
    name: str

    def output(self, suffix: str) -> str:
        """The relative path of one output of this image, e.g. `output("_overlay.png")` -> `"day/a_overlay.png"`."""
        return self.name + suffix


@dataclass
class PredictionReport:
    """What `predict_folder` did: the images segmented, the failures, and the files written (relative paths)."""

    output_dir: Path
    predicted: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)  # image -> one-line error
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """`N masks written to DIR`, then a line per failed image: `path: error`."""
        lines = [f"{len(self.predicted)} masks written to {self.output_dir}"]
        if self.failed:
            lines.append(f"{len(self.failed)} image(s) failed:")
            lines += [f"  {path}: {error}" for path, error in self.failed.items()]
        return "\n".join(lines)


# --- inputs and their names ---------------------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(input_path: str | os.PathLike) -> tuple[Path, list[PurePosixPath]]:
    """The folder the inputs are relative to, and the images: `input_path` itself, or the images in the folder
    `input_path` and its sub-folders (hidden names skipped, symbolic links to folders not followed), sorted.

    Raises:
        FileNotFoundError: naming `input_path` when it is neither an image file nor a folder, or holds no image.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return input_path.parent, [PurePosixPath(input_path.name)]
    if not input_path.is_dir():
        raise FileNotFoundError(f"Input {input_path} is neither an image file nor a folder.")
    images = []
    for root, folders, files in os.walk(input_path):
        folders[:] = sorted(name for name in folders if not _is_hidden(name))
        relative = PurePosixPath(Path(root).relative_to(input_path).as_posix())
        images += [relative / n for n in files if not _is_hidden(n) and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise FileNotFoundError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {input_path} or below.")
    return input_path, sorted(images)


def _clashing(names: Sequence[str]) -> set[int]:
    """Indices of the names whose outputs (any suffix) collide with another name's, or with an output folder."""
    owners: dict[str, set[int]] = {}
    for index, name in enumerate(names):
        for suffix in ALL_SUFFIXES:
            owners.setdefault(name + suffix, set()).add(index)
    folders = {str(parent) for name in names for parent in PurePosixPath(name).parents}
    return {
        index
        for index, name in enumerate(names)
        for suffix in ALL_SUFFIXES
        if len(owners[name + suffix]) > 1 or name + suffix in folders
    }


def output_names(images: Sequence[PurePosixPath]) -> list[str]:
    """The output name of each relative image path: without its extension, or with it where that collides.

    Raises:
        ValueError: when even full names collide (an input folder named like an output, e.g. `a.png.png/`).
    """
    keep_extension: set[int] = set()
    while True:
        names = [str(p.parent / (p.name if i in keep_extension else p.stem)) for i, p in enumerate(images)]
        clashing = _clashing(names)
        if clashing <= keep_extension:
            break
        keep_extension |= clashing
    if clashing:
        raise ValueError(f"The outputs of {sorted(str(images[i]) for i in clashing)[:5]} collide with each other.")
    return names


def list_inputs(input_path: str | os.PathLike) -> list[PredictionInput]:
    """The images of `input_path` (a file or a folder, recursively) with the names of their outputs."""
    root, images = find_images(input_path)
    return [PredictionInput(root / Path(image), name) for image, name in zip(images, output_names(images), strict=True)]


def output_suffixes(num_labels: int, overlays: bool = False, save_probabilities: bool = False) -> list[str]:
    """The suffixes of the files written per image."""
    suffixes = [MASK_SUFFIX]
    if overlays:
        suffixes.append(OVERLAY_SUFFIX)
    if save_probabilities:
        suffixes.append(BINARY_PROBABILITY_SUFFIX if num_labels == 1 else MULTICLASS_PROBABILITY_SUFFIX)
    return suffixes


# --- the output folder --------------------------------------------------------------------------------------------


def _valid_entry(entry: object) -> bool:
    """A manifest entry is a relative POSIX path inside the output folder."""
    if not isinstance(entry, str) or entry in ("", "."):
        return False
    path = PurePosixPath(entry)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in entry and str(path) == entry


def read_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The manifest of a prediction in `output_dir`; None when absent, unreadable or not written by this tool."""
    try:
        manifest = json.loads(Path(output_dir, MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("written_by") != WRITTEN_BY:
        return None
    files = manifest.get("files")
    if not isinstance(files, list) or not all(_valid_entry(entry) for entry in files):
        return None
    return manifest


def _refuse_input_tree(output_dir: Path, input_path: Path) -> None:
    source, target = input_path.resolve(), output_dir.resolve()
    if target == source:
        raise OutputFolderError(f"The output folder {output_dir} is the input {input_path}; choose another folder.")
    if input_path.is_dir() and source in target.parents:
        raise OutputFolderError(
            f"The output folder {output_dir} lies inside the input folder {input_path}; choose one outside it."
        )


def _foreign_entries(output_dir: Path, allowed: set[str]) -> tuple[list[str], list[Path]]:
    """The relative paths below `output_dir` that are neither in `allowed` nor temporaries of allowed files
    (symbolic links to folders count as foreign), and those temporaries."""
    foreign, temporaries = [], []
    for root, folders, files in os.walk(output_dir):
        relative = Path(root).relative_to(output_dir)
        foreign += [(relative / name).as_posix() + "/" for name in folders if Path(root, name).is_symlink()]
        folders[:] = [name for name in folders if not Path(root, name).is_symlink()]
        for name in files:
            path = (relative / name).as_posix()
            match = _TEMPORARY.fullmatch(name)
            if path in allowed:
                continue
            if match and (relative / match.group(1)).as_posix() in allowed:
                temporaries.append(Path(root, name))
            else:
                foreign.append(path)
    return sorted(foreign), temporaries


def check_output_dir(output_dir: str | os.PathLike, input_path: str | os.PathLike) -> list[str]:
    """Checks that a prediction of `input_path` may be written into `output_dir`, reading only.

    Returns:
        The files of the previous prediction held there (relative paths), which a new one may replace.

    Raises:
        OutputFolderError: naming the folder, when it is the input, lies inside the input folder, is not a folder,
            or holds files that this tool did not write (named).
    """
    output_dir, input_path = Path(output_dir), Path(input_path)
    _refuse_input_tree(output_dir, input_path)
    if not output_dir.exists():
        return []
    if not output_dir.is_dir():
        raise OutputFolderError(f"The output folder {output_dir} exists and is not a folder.")
    manifest = read_manifest(output_dir)
    previous = list(manifest["files"]) if manifest else []
    foreign, _ = _foreign_entries(output_dir, {*previous, MANIFEST} if manifest else set())
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
        raise OutputFolderError(
            f"The output folder {output_dir} holds files that predict did not write: {shown}. Choose an empty or "
            f"new folder, or one holding only an earlier prediction (listed in its {MANIFEST})."
        )
    return previous


def _write_manifest(output_dir: Path, files: Sequence[str], failed: dict[str, str], complete: bool, **info) -> None:
    record = {"written_by": WRITTEN_BY, "complete": complete, **info, "files": sorted(files), "failed": failed}
    write_json_atomic(output_dir / MANIFEST, record)


def open_output_dir(
    output_dir: str | os.PathLike, input_path: str | os.PathLike, planned: Sequence[str], **info
) -> list[str]:
    """Makes `output_dir` ready for a prediction of `input_path` that will write the files `planned` (relative
    paths): refuses it as `check_output_dir` does (nothing written then), creates it, removes the temporaries a
    kill left, and writes the manifest of the planned files (`"complete": false`; `info` recorded beside them).

    Returns:
        The files of the previous prediction held there, for `close_output_dir`.
    """
    output_dir = Path(output_dir)
    previous = check_output_dir(output_dir, input_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    _, temporaries = _foreign_entries(output_dir, {*previous, MANIFEST})
    for temporary in temporaries:  # left by a kill
        temporary.unlink()
    _write_manifest(output_dir, {*previous, *planned}, {}, complete=False, **info)
    return previous


def close_output_dir(output_dir: str | os.PathLike, previous: Sequence[str], report: PredictionReport, **info) -> None:
    """Ends a prediction begun by `open_output_dir`: removes the previous prediction's files that `report` did not
    write again, and writes the complete manifest (`report`'s files and failures, and `info`)."""
    output_dir = Path(output_dir)
    kept = set(report.files)  # with the outputs of an image whose writing failed half-way: a rerun replaces them
    _remove_files(output_dir, sorted(set(previous) - kept))
    failed = {str(path): error for path, error in report.failed.items()}
    _write_manifest(output_dir, sorted(kept), failed, complete=True, **info)


def _remove_files(output_dir: Path, relative_paths: Sequence[str]) -> None:
    """Removes files below `output_dir`, then the folders that this leaves empty (never `output_dir`)."""
    for relative in sorted(relative_paths):
        path = output_dir / relative
        if not (path.is_file() or path.is_symlink()):
            continue
        path.unlink()
        for parent in path.parents:
            if parent == output_dir or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


# --- model outputs ------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: torch.nn.Module, processor, images: Sequence[Image.Image]) -> list[torch.Tensor]:
    """Per RGB image, the model's logits at the image's size, float `(K, H, W)` on the CPU."""
    inputs = processor(images=list(images), return_tensors="pt")
    parameter = next(model.parameters())
    pixel_values = inputs["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
    logits = model(pixel_values=pixel_values).logits
    resized = logits_at_original_size(logits.float(), inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return [image_logits.cpu() for image_logits in resized]


def label_map(logits: torch.Tensor) -> np.ndarray:
    """Logits `(K, H, W)` -> class ids `(H, W)` int64: foreground probability > 0.5 for K = 1, argmax otherwise."""
    return (logits[0].sigmoid() > 0.5).long().numpy() if logits.shape[0] == 1 else logits.argmax(0).numpy()


def mask_image(labels: np.ndarray, num_labels: int) -> Image.Image:
    """Class ids `(H, W)` -> a 0/255 greyscale mask (binary) or a palette PNG of the class ids."""
    if num_labels == 1:
        return Image.fromarray((labels > 0).astype(np.uint8) * 255)
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(label_colors(num_labels).flatten().tolist())  # an "L" image becomes a palette ("P") one
    return image


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Logits `(K, H, W)` -> binary: the foreground probability `(H, W)` uint8 (0-255); multi-class: the per-class
    probabilities `(K, H, W)` float16."""
    if logits.shape[0] == 1:
        return np.round(logits[0].sigmoid().numpy() * 255).astype(np.uint8)
    return logits.softmax(0).numpy().astype(np.float16)


def save_array(path: Path, array: np.ndarray) -> None:
    """`numpy.save` to exactly `path` (no `.npy` appended)."""
    with open(path, "wb") as file:
        np.save(file, array)


def write_outputs(
    item: PredictionInput,
    image: Image.Image,
    logits: torch.Tensor,
    output_dir: Path,
    suffixes: Sequence[str],
    written: list[str],
) -> None:
    """Writes the outputs of one image (`logits` `(K, H, W)`), one file per suffix, appending each file's relative
    path to `written` once it is in place."""
    num_labels = logits.shape[0]
    labels = label_map(logits)
    writers = {
        MASK_SUFFIX: mask_image(labels, num_labels).save,
        OVERLAY_SUFFIX: lambda path: save_overlays(path, [np.asarray(image)], [None], [labels]),
        BINARY_PROBABILITY_SUFFIX: lambda path: Image.fromarray(probabilities(logits)).save(path),
        MULTICLASS_PROBABILITY_SUFFIX: lambda path: save_array(path, probabilities(logits)),
    }
    for suffix in suffixes:
        write_atomically(output_dir / item.output(suffix), writers[suffix])
        written.append(item.output(suffix))


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def read_inputs(items: Sequence[PredictionInput], failed: dict[Path, str]) -> list[tuple[PredictionInput, Image.Image]]:
    """The readable images of `items` as RGB; the others go to `failed`."""
    loaded = []
    for item in items:
        try:
            loaded.append((item, to_rgb(open_image(str(item.image)))))
        except Exception as error:
            failed[item.image] = one_line(error)
    return loaded


def predict_each(
    loaded: Sequence[tuple[PredictionInput, Image.Image]],
    predict: Callable[[Sequence[tuple[PredictionInput, Image.Image]]], Sequence[Any]],
    failed: dict[Path, str],
) -> list[tuple[PredictionInput, Image.Image, Any]]:
    """`predict(loaded)` (one result per image) as one batch; if that fails, image by image: an image whose
    prediction fails goes to `failed` and the others are kept."""
    if not loaded:
        return []
    try:
        results = predict(loaded)
        return [(item, image, result) for (item, image), result in zip(loaded, results, strict=True)]
    except Exception as error:
        if len(loaded) == 1:
            failed[loaded[0][0].image] = one_line(error)
            return []
    return [result for pair in loaded for result in predict_each([pair], predict, failed)]


def _predict(
    model: torch.nn.Module, processor, loaded: Sequence[tuple[PredictionInput, Image.Image]], failed: dict[Path, str]
) -> list[tuple[PredictionInput, Image.Image, torch.Tensor]]:
    """Logits for the loaded images, as one batch; if that fails, image by image (failures go to `failed`)."""
    return predict_each(loaded, lambda pairs: predict_logits(model, processor, [image for _, image in pairs]), failed)


# --- the whole folder ---------------------------------------------------------------------------------------------


def predict_folder(
    model: torch.nn.Module,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 4,
    overlays: bool = False,
    save_probabilities: bool = False,
    adapter: str | None = None,
    progress: bool = True,
) -> PredictionReport:
    """Segments every image of `input_path` (a file or a folder, recursively) with `model` (a
    `SamForSemanticSegmentation`, maybe inside a PEFT model, in eval mode) into `output_dir`; see the module
    docstring for the files, their names and the folder's rules. `adapter` is recorded in the manifest.

    Raises:
        FileNotFoundError: when `input_path` is missing or holds no image.
        OutputFolderError: when `output_dir` is refused (nothing is written then).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    input_path, output_dir = Path(input_path), Path(output_dir)
    inputs = list_inputs(input_path)
    suffixes = output_suffixes(model.config.num_labels, overlays, save_probabilities)
    info = {"adapter": adapter, "input": str(input_path.resolve())}
    planned = [item.output(suffix) for item in inputs for suffix in suffixes]
    previous = open_output_dir(output_dir, input_path, planned, **info)

    report = PredictionReport(output_dir)
    processor = sam_image_processor(input_image_size(model.config))
    with tqdm(total=len(inputs), desc="predicting", unit="image", disable=not progress) as bar:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            for item, image, logits in _predict(model, processor, read_inputs(batch, report.failed), report.failed):
                try:
                    write_outputs(item, image, logits, output_dir, suffixes, report.files)
                    report.predicted.append(item.image)
                except Exception as error:
                    report.failed[item.image] = one_line(error)
            bar.update(len(batch))

    close_output_dir(output_dir, previous, report, **info)
    return report
