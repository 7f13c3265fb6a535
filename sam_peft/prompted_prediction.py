"""Prediction with prompts: boxes and clicks answered by a run trained with `task: prompted`, in Python
(`predict_prompted`) and over a folder of images (`predict_folder_prompted`, `recipes/predict.py --prompts`).

The model is a promptable SAM: a `SamModel`, `Sam2Model` or `Sam3TrackerModel`, inside a PEFT model or bare (what
`sam_peft.training.load_trained` returns for a prompted run), in eval mode.

Prompts
-------
A prompt is one object to segment, as a JSON object (or a `Prompt`):

- `"box": [x0, y0, x1, y1]`: the object's box, top-left and bottom-right corners (x1 > x0, y1 > y0);
- `"points": [[x, y], ...]` with `"labels": [1, 0, ...]`: clicks on the object (1) or off it (0); without
  `labels` every point is positive;
- both (a box refined by clicks), and optionally `"id"`: a string or an integer recorded with the result (unique
  within an image).

Coordinates are pixels of the original image as it is displayed (EXIF orientation applied): x to the right, y down,
within `[0, width] x [0, height]`; they are scaled to the model's input frame the way SAM's processor scales them
(by the image's resize factor), and the model adds the half-pixel offset itself. A single positive point (no box)
is ambiguous: the model answers it with its three masks and the one with the highest predicted IoU is kept (SAM's
protocol, Kirillov et al. 2023, section 7.1); every other prompt gets the model's single-mask answer. Each image is
encoded once, and its prompts are decoded in groups of the same shape (padding a prompt would change its mask).
The image encoder of an SLoRA model reads point prompts as a heat map (`sam_peft.tuners.slora`): it sees every
positive point of the image's prompts, and the box centre of a prompt without positive points (a box alone).

prompts.json
------------
`predict_folder_prompted` and `recipes/predict.py --prompts` read a JSON object mapping each input image, by its path
relative to the input folder with its extension and `/` separators (a single image given as the input: its file
name), to its list of prompts::

    {
      "street.jpg": [{"box": [10, 20, 200, 180], "id": "car"}, {"points": [[320, 95]]}],
      "day/field.png": [{"points": [[40, 50], [60, 52]], "labels": [1, 0]}, {"box": [0, 0, 64, 48]}]
    }

Every prompt is checked before the model is loaded: unknown keys, names that are not among the inputs, empty boxes,
coordinates outside the image (read from the image's header), points without one label each, labels other than 0
and 1, repeated ids; the error names the image, the prompt's index (from 0) and the fix. Input images that the file
does not name (or gives an empty list) are skipped: they get no output, and the summary and the manifest list them.

Outputs per prompted image (`<name>` as for `sam_peft.prediction`; the same output-folder rules, manifest, atomic
writes and failure handling):

- `<name>.png`: an instance label image at the image's size: 0 background, prompt `i`'s mask `i + 1` (later prompts
  drawn over earlier ones); a palette PNG for up to 255 prompts, a 16-bit greyscale PNG for more.
- `<name>_overlay.png` (`overlays=True`): the image beside the masks drawn over it.
- In `predictions.json`, `"objects"`: for each label image, per prompt its `label` value, `id` and `score` (the
  model's predicted IoU); `"skipped"`: the inputs without prompts.

Automatic mask generation (a grid of points over an image without prompts) is not offered: transformers'
`mask-generation` pipeline removes duplicate masks with `SamImageProcessor.post_process_for_mask_generation`, which
requires torchvision (`torchvision.ops.batched_nms`), and torchvision is no dependency of sam-peft.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import open_image, sam_image_processor, to_rgb
from .data._files import checked_size
from .hub import resolve_pretrained
from .modeling import input_image_size
from .prediction import (
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    PredictionInput,
    PredictionReport,
    close_output_dir,
    list_inputs,
    one_line,
    open_output_dir,
    predict_each,
    read_inputs,
)
from .training.checkpoints import read_run_file
from .training.files import write_atomically
from .training.interactive import image_inputs
from .training.plots import label_colors, save_overlays
from .tuners.slora.prompting import PADDING_LABEL, uses_prompt_heat_maps

PROMPT_KEYS = ("box", "points", "labels", "id")
PROMPTED_TASK = "prompted"
# the most prompts per image an 8-bit (palette) label image holds; more get a 16-bit one
MAX_8_BIT_PROMPTS = 255
# the most errors one PromptError lists
MAX_LISTED_PROBLEMS = 10
AUTOMATIC_MASKS_UNAVAILABLE = (
    "automatic mask generation (a grid of points, no prompts) is not offered: transformers' mask-generation "
    "pipeline removes duplicate masks with SamImageProcessor.post_process_for_mask_generation, which requires "
    "torchvision (torchvision.ops.batched_nms), and sam-peft does not depend on torchvision"
)


class PromptError(ValueError):
    """Prompts that cannot be used: malformed, outside their image, or naming images that are not inputs."""


# --- prompts ------------------------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_label(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in (0, 1)


def _as_list(value: object) -> object:
    """Arrays and tensors as (nested) lists; anything else as it is."""
    return value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coordinates(value: object, count: int) -> tuple[float, ...] | None:
    """`value` as `count` finite numbers, or None."""
    if isinstance(value, (list, tuple)) and len(value) == count and all(_is_number(v) for v in value):
        return tuple(float(v) for v in value)
    return None


@dataclass(frozen=True)
class Prompt:
    """One object to segment: a box `(x0, y0, x1, y1)`, points `((x, y), ...)` with labels (1 on the object, 0 off
    it; None: all 1), or both, in the original image's pixels; `id` is recorded with the result.

    Raises:
        PromptError: saying what is wrong and how to fix it (no box and no points, an empty box, one label per point
            missing, labels other than 0 / 1, coordinates that are not finite numbers).
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] | None = None
    id: str | int | None = None

    def __post_init__(self) -> None:
        for name in ("box", "points", "labels"):
            object.__setattr__(self, name, _as_list(getattr(self, name)))
        if self.box is not None:
            box = _coordinates(self.box, 4)
            if box is None:
                raise PromptError(f"box must be 4 numbers [x0, y0, x1, y1] in pixels, got {_shown(self.box)}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(
                    f"empty box {_shown(list(self.box))}: give [x0, y0, x1, y1] with x1 > x0 and y1 > y0 (top-left "
                    "then bottom-right corner, in pixels)"
                )
            object.__setattr__(self, "box", box)
        points = [_coordinates(point, 2) for point in self.points] if isinstance(self.points, (list, tuple)) else [None]
        if any(point is None for point in points):
            raise PromptError(f"points must be a list of [x, y] pairs of numbers, got {_shown(self.points)}")
        object.__setattr__(self, "points", tuple(points))
        if self.box is None and not self.points:
            raise PromptError(
                'a prompt needs a box or points: give "box": [x0, y0, x1, y1] and / or "points": [[x, y], ...]'
            )
        if self.labels is None:
            object.__setattr__(self, "labels", (1,) * len(self.points))
        elif not self.points:
            raise PromptError("labels without points: give the points they label, or leave labels out")
        elif not isinstance(self.labels, (list, tuple)) or len(self.labels) != len(self.points):
            count = len(self.labels) if isinstance(self.labels, (list, tuple)) else "no list of"
            raise PromptError(
                f"{len(self.points)} point(s) but {count} label(s): give one label per point (1 on the object, "
                "0 off it), or leave labels out for all positive"
            )
        elif not all(_is_label(label) for label in self.labels):
            raise PromptError(f"labels must be 1 (on the object) or 0 (off it), got {_shown(list(self.labels))}")
        else:
            object.__setattr__(self, "labels", tuple(int(label) for label in self.labels))
        if self.id is not None and (isinstance(self.id, bool) or not isinstance(self.id, (str, int))):
            raise PromptError(f"id must be a string or an integer, got {_shown(self.id)}")

    @classmethod
    def from_json(cls, value: object) -> Prompt:
        """A prompt from its JSON object (`{"box": ..., "points": ..., "labels": ..., "id": ...}`).

        Raises:
            PromptError: for anything but such an object (unknown keys named), or an invalid prompt.
        """
        if isinstance(value, Prompt):
            return value
        if not isinstance(value, Mapping):
            raise PromptError(
                f'a prompt is an object such as {{"box": [x0, y0, x1, y1]}} or {{"points": [[x, y]]}}, got '
                f"{_shown(value)}"
            )
        unknown = sorted(str(key) for key in value if key not in PROMPT_KEYS)
        if unknown:
            raise PromptError(
                f"unknown key(s) {', '.join(map(repr, unknown))}: a prompt takes {', '.join(PROMPT_KEYS)}"
            )
        points = value.get("points", ())
        if not isinstance(points, (list, tuple)) or (points == [] and "points" in value):
            raise PromptError(f"points must be a non-empty list of [x, y] pairs of numbers, got {_shown(points)}")
        return cls(value.get("box"), tuple(points), value.get("labels"), value.get("id"))

    @property
    def single_point(self) -> bool:
        """Whether this is one positive point without a box: the ambiguous prompt answered with SAM's best of three."""
        return self.box is None and self.labels == (1,)

    def outside(self, width: int, height: int) -> str | None:
        """What lies outside an image of `width` x `height` pixels (coordinates within `[0, width] x [0, height]`
        are inside), or None."""
        corners = [self.box[:2], self.box[2:]] if self.box is not None else []
        for kind, (x, y) in [*(("box corner", c) for c in corners), *(("point", p) for p in self.points)]:
            if not (0 <= x <= width and 0 <= y <= height):
                return (
                    f"{kind} ({x:g}, {y:g}) lies outside the image ({width} x {height} pixels: x in [0, {width}], "
                    f"y in [0, {height}]); give coordinates in the original image's pixels"
                )
        return None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this prompt (`from_json`'s inverse)."""
        record: dict[str, Any] = {}
        if self.box is not None:
            record["box"] = list(self.box)
        if self.points:
            record["points"] = [list(point) for point in self.points]
            record["labels"] = list(self.labels)
        if self.id is not None:
            record["id"] = self.id
        return record

    def _shape(self) -> tuple[bool, int, bool]:
        """Prompts of the same shape are decoded together: box or not, number of points, single point or not."""
        return self.box is not None, len(self.points), self.single_point


def _repeated_ids(prompts: Sequence[Prompt]) -> list[str | int]:
    ids = [prompt.id for prompt in prompts if prompt.id is not None]
    return sorted({i for i in ids if ids.count(i) > 1}, key=str)


# --- predictions --------------------------------------------------------------------------------------------------


@dataclass
class PromptedPrediction:
    """The answer to an image's prompts, in prompt order: `masks` `(P, H, W)` bool at the image's size and
    `scores` `(P,)` float32, the model's predicted IoU of each mask."""

    masks: np.ndarray
    scores: np.ndarray
    prompts: tuple[Prompt, ...] = ()

    def label_image(self) -> np.ndarray:
        """`(H, W)` instance labels: 0 background, prompt `i`'s mask `i + 1`, later prompts over earlier ones;
        uint8 for up to 255 prompts, uint16 beyond."""
        dtype = np.uint8 if len(self.masks) <= MAX_8_BIT_PROMPTS else np.uint16
        labels = np.zeros(self.masks.shape[1:], dtype=dtype)
        for index, mask in enumerate(self.masks):
            labels[mask] = index + 1
        return labels


def _model_parameter(model: torch.nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _image_row(encoded: dict[str, Any], row: int) -> dict[str, Any]:
    """One image's part of the `encoded` batch: a tensor's row, or each feature level's (SAM 2 / SAM 3)."""
    return {
        key: value[row : row + 1] if isinstance(value, torch.Tensor) else [level[row : row + 1] for level in value]
        for key, value in encoded.items()
    }


def _encoder_points(
    model: torch.nn.Module, prompts: Sequence[Sequence[Prompt]], inputs: Mapping[str, Any], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The points whose heat map the image encoder of an SLoRA model sees, per image of the batch, `(B, 1, K, 2)`
    in the model's input frame and `(B, 1, K)` labels (1, padding -10): every positive point of the image's
    prompts, and the box centre of a prompt without positive points. (None, None) for other models."""
    if not uses_prompt_heat_maps(model):
        return None, None
    per_image = []
    for image_prompts, original, reshaped in zip(
        prompts, inputs["original_sizes"].tolist(), inputs["reshaped_input_sizes"].tolist(), strict=True
    ):
        scale = (reshaped[1] / original[1], reshaped[0] / original[0])  # x by width, y by height, as _decode
        points = []
        for prompt in image_prompts:
            positive = [point for point, label in zip(prompt.points, prompt.labels, strict=True) if label == 1]
            if not positive and prompt.box is not None:
                positive = [((prompt.box[0] + prompt.box[2]) / 2, (prompt.box[1] + prompt.box[3]) / 2)]
            points.extend((x * scale[0], y * scale[1]) for x, y in positive)
        per_image.append(points)
    width = max(1, *(len(points) for points in per_image))
    encoder_points = torch.zeros(len(per_image), 1, width, 2)
    encoder_labels = torch.full((len(per_image), 1, width), PADDING_LABEL, dtype=torch.long)
    for row, points in enumerate(per_image):
        if points:
            encoder_points[row, 0, : len(points)] = torch.tensor(points, dtype=torch.float64).float()
            encoder_labels[row, 0, : len(points)] = 1
    return encoder_points.to(device), encoder_labels.to(device)


def _decode(
    model: torch.nn.Module,
    processor,
    encoded: dict[str, Any],
    prompts: Sequence[Prompt],
    original_size: list[int],
    reshaped_size: list[int],
    prompts_per_batch: int,
) -> PromptedPrediction:
    """The masks and scores of one image's prompts, from its encoded image (`_image_row`)."""
    height, width = original_size
    masks = np.zeros((len(prompts), height, width), dtype=bool)
    scores = np.zeros(len(prompts), dtype=np.float32)
    device = _model_parameter(model).device
    # the processor's resize factor of each axis, as SamProcessor scales prompt coordinates (x by width, y by height)
    scale = torch.tensor([reshaped_size[1] / width, reshaped_size[0] / height], dtype=torch.float64)
    groups: dict[tuple[bool, int, bool], list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt._shape(), []).append(index)
    for (has_box, num_points, single_point), indices in groups.items():
        for start in range(0, len(indices), prompts_per_batch):
            chunk = indices[start : start + prompts_per_batch]
            inputs = {}
            if has_box:
                boxes = torch.tensor([prompts[i].box for i in chunk], dtype=torch.float64) * scale.repeat(2)
                inputs["input_boxes"] = boxes[None].float().to(device)  # (1, G, 4)
            if num_points:
                points = torch.tensor([prompts[i].points for i in chunk], dtype=torch.float64) * scale
                inputs["input_points"] = points[None].float().to(device)  # (1, G, k, 2)
                inputs["input_labels"] = torch.tensor([prompts[i].labels for i in chunk])[None].to(device)
            outputs = model(**encoded, **inputs, multimask_output=single_point)
            low_res, iou = outputs.pred_masks[0], outputs.iou_scores[0]  # (G, M, h, w), (G, M)
            chosen = iou.argmax(dim=-1) if single_point else torch.zeros(len(chunk), dtype=torch.long)
            rows = torch.arange(len(chunk), device=low_res.device)
            chosen = chosen.to(low_res.device)
            upsampled = processor.post_process_masks(
                [low_res[rows, chosen][:, None].float()], [original_size], [reshaped_size]
            )
            masks[chunk] = upsampled[0][:, 0].cpu().numpy()
            scores[chunk] = iou[rows, chosen].float().cpu().numpy()
    return PromptedPrediction(masks, scores, tuple(prompts))


@torch.no_grad()
def predict_prompted(
    model: torch.nn.Module,
    images: Sequence[Image.Image | str | os.PathLike | np.ndarray],
    prompts: Sequence[Sequence[Prompt | Mapping[str, Any]]],
    *,
    image_size: int | None = None,
    batch_size: int = 4,
    prompts_per_batch: int = 64,
) -> list[PromptedPrediction]:
    """Segments what each image's prompts point at.

    Args:
        model: a promptable SAM (`SamModel`, `Sam2Model`, `Sam3TrackerModel`, bare or inside a PEFT model; the
            model of a run trained with `task: prompted`), in eval mode.
        images: PIL images, paths or arrays `(H, W[, C])`; any mode (converted to RGB), turned upright by their EXIF
            orientation.
        prompts: per image, its prompts (`Prompt`s or their JSON objects, see the module docstring), coordinates in
            that image's pixels; an image may have none.
        image_size: the model's input size; default: its prompt encoder's (`input_image_size`).
        batch_size: images encoded per forward of the image encoder.
        prompts_per_batch: prompts decoded per forward of the mask decoder.

    Returns:
        Per image, a `PromptedPrediction` with one mask and score per prompt, in prompt order.

    Raises:
        PromptError: naming the image and prompt (indices from 0) that is invalid or lies outside its image.
        ValueError: when `images` and `prompts` differ in length, or a batch size is below 1.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but prompts for {len(prompts)}: give one list of prompts per image.")
    if batch_size < 1 or prompts_per_batch < 1:
        raise ValueError(f"batch_size and prompts_per_batch must be >= 1, got {batch_size} and {prompts_per_batch}.")
    pictures = [to_rgb(open_image(image)) for image in images]
    checked = []
    for index, (picture, image_prompts) in enumerate(zip(pictures, prompts, strict=True)):
        checked.append([])
        for number, value in enumerate(image_prompts):
            try:
                prompt = Prompt.from_json(value)
                problem = prompt.outside(*picture.size)
                if problem:
                    raise PromptError(problem)
            except PromptError as error:
                raise PromptError(f"image {index}, prompt {number}: {error}") from None
            checked[-1].append(prompt)
        if _repeated_ids(checked[-1]):
            raise PromptError(f"image {index}: prompt ids {_repeated_ids(checked[-1])} repeat; give unique ids")

    processor = sam_image_processor(image_size or input_image_size(model.config))
    parameter = _model_parameter(model)
    results: list[PromptedPrediction | None] = [None] * len(pictures)
    for index, picture in enumerate(pictures):
        if not checked[index]:
            results[index] = PromptedPrediction(
                np.zeros((0, picture.height, picture.width), dtype=bool), np.zeros(0, dtype=np.float32)
            )
    prompted = [index for index in range(len(pictures)) if checked[index]]
    for start in range(0, len(prompted), batch_size):
        batch = prompted[start : start + batch_size]
        inputs = processor(images=[pictures[index] for index in batch], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
        # each image encoded once, its embedding reused for all its prompts (an SLoRA encoder sees their points)
        encoder_points = _encoder_points(model, [checked[index] for index in batch], inputs, parameter.device)
        images = torch.arange(len(batch), device=parameter.device)
        encoded = image_inputs(model, pixel_values, images, None, *encoder_points)
        for row, index in enumerate(batch):
            results[index] = _decode(
                model,
                processor,
                _image_row(encoded, row),
                checked[index],
                inputs["original_sizes"][row].tolist(),
                inputs["reshaped_input_sizes"][row].tolist(),
                prompts_per_batch,
            )
    return results


# --- prompts.json -------------------------------------------------------------------------------------------------


def _relative_names(input_path: Path, inputs: Sequence[PredictionInput]) -> list[str]:
    """Each input's name in prompts.json: its path relative to the input folder (a single image: its file name)."""
    root = input_path.parent if input_path.is_file() else input_path
    return [item.image.relative_to(root).as_posix() for item in inputs]


def _problems_message(source: str, problems: Sequence[str]) -> str:
    shown = "\n".join(f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return f"{len(problems)} problem(s) in {source}:\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")


def read_prompts(
    prompts: str | os.PathLike | Mapping[str, Sequence[Any]], input_path: str | os.PathLike
) -> dict[str, list[Prompt]]:
    """The prompts of the images of `input_path` (as `list_inputs` finds them), read from a prompts.json file or
    given as its mapping, each checked against its image (whose size is read from its header).

    Returns:
        By input name (relative path, see the module docstring), its prompts; only the images with some.

    Raises:
        PromptError: listing every problem (the image, the prompt's index, what to fix): an unreadable file, names
            that are not inputs, invalid prompts, coordinates outside their image, repeated ids; or no prompt at
            all for any input.
        FileNotFoundError: when `input_path` is missing or holds no image.
    """
    input_path = Path(input_path)
    inputs = list_inputs(input_path)
    names = dict(zip(_relative_names(input_path, inputs), inputs, strict=True))
    source = "the prompts"
    if not isinstance(prompts, Mapping):
        source = str(prompts)
        try:
            prompts = json.loads(Path(prompts).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise PromptError(f"Cannot read the prompts file {source}: {one_line(error)}") from None
        if not isinstance(prompts, dict):
            raise PromptError(
                f"{source} must hold a JSON object mapping image paths to lists of prompts, e.g. "
                '{"a.png": [{"box": [10, 20, 110, 90]}]}; it holds a ' + type(prompts).__name__
            )
    unknown = sorted(str(name) for name in prompts if name not in names)
    if unknown:
        examples = ", ".join(repr(name) for name in list(names)[:3])
        raise PromptError(
            f"{source} names {len(unknown)} image(s) that are not among the inputs of {input_path}: "
            f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}. Name each image by its path "
            "relative to the input folder, with its extension and / separators (an input that is one image: its "
            f"file name); the {len(names)} input(s) include {examples}."
        )
    problems, checked = [], {}
    for name, values in prompts.items():
        if not isinstance(values, (list, tuple)):
            problems.append(f"image {name!r}: expected a list of prompts, got {_shown(values)}")
            continue
        size, _ = checked_size(names[name].image)  # an unreadable image fails when it is read, among the others
        image_prompts = []
        for index, value in enumerate(values):
            try:
                prompt = Prompt.from_json(value)
                problem = prompt.outside(*size) if size is not None else None
                if problem:
                    raise PromptError(problem)
                image_prompts.append(prompt)
            except PromptError as error:
                problems.append(f"image {name!r}, prompt {index}: {error}")
        if _repeated_ids(image_prompts):
            problems.append(f"image {name!r}: prompt ids {_repeated_ids(image_prompts)} repeat; give unique ids")
        if image_prompts:
            checked[name] = image_prompts
    if problems:
        raise PromptError(_problems_message(source, problems))
    if not checked:
        raise PromptError(f"{source} gives no prompt to any of the {len(names)} input(s) of {input_path}.")
    return {name: checked[name] for name in names if name in checked}


# --- the whole folder ---------------------------------------------------------------------------------------------


@dataclass
class PromptedPredictionReport(PredictionReport):
    """`PredictionReport` of `predict_folder_prompted`, with the inputs skipped for having no prompts and, per label
    image written (relative path), each prompt's `label`, `id` and `score`."""

    skipped: list[Path] = field(default_factory=list)
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def summary(self) -> str:
        """`N label images (M masks) written to DIR`, the failures (`path: error`), then the skipped images."""
        lines = super().summary().splitlines()
        masks = sum(len(records) for records in self.objects.values())
        lines[0] = f"{len(self.predicted)} label images ({masks} masks) written to {self.output_dir}"
        if self.skipped:
            lines.append(f"{len(self.skipped)} image(s) without prompts skipped:")
            lines += [f"  {path}" for path in self.skipped[:MAX_LISTED_PROBLEMS]]
            if len(self.skipped) > MAX_LISTED_PROBLEMS:
                lines.append(f"  ... and {len(self.skipped) - MAX_LISTED_PROBLEMS} more (see the manifest)")
        return "\n".join(lines)


def label_png(labels: np.ndarray) -> Image.Image:
    """Instance labels `(H, W)` -> a palette PNG image (uint8 labels) or a 16-bit greyscale one (uint16)."""
    if labels.dtype == np.uint16:
        return Image.fromarray(labels)  # "I;16"
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(label_colors(MAX_8_BIT_PROMPTS + 1).flatten().tolist())
    return image


def _write_prompted(
    item: PredictionInput,
    image: Image.Image,
    result: PromptedPrediction,
    output_dir: Path,
    suffixes: Sequence[str],
    written: list[str],
) -> None:
    labels = result.label_image()
    shown = np.where(labels > 0, (labels.astype(np.int64) - 1) % (MAX_8_BIT_PROMPTS - 1) + 1, 0)  # 255: no colour
    writers = {
        MASK_SUFFIX: label_png(labels).save,
        OVERLAY_SUFFIX: lambda path: save_overlays(path, [np.asarray(image)], [None], [shown]),
    }
    for suffix in suffixes:
        write_atomically(output_dir / item.output(suffix), writers[suffix])
        written.append(item.output(suffix))


def predict_folder_prompted(
    model: torch.nn.Module,
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    prompts: str | os.PathLike | Mapping[str, Sequence[Any]],
    *,
    batch_size: int = 4,
    overlays: bool = False,
    adapter: str | None = None,
    progress: bool = True,
) -> PromptedPredictionReport:
    """Segments the prompts of the images of `input_path` (a file or a folder, recursively) with a promptable
    `model` into `output_dir`: one instance label image per prompted image (see the module docstring), under
    `sam_peft.prediction`'s rules for names, the output folder, its manifest and failing images. `prompts` is a
    prompts.json file or its mapping; `adapter` is recorded in the manifest.

    Raises:
        FileNotFoundError: when `input_path` is missing or holds no image.
        PromptError: when the prompts are invalid (`read_prompts`; nothing is written then).
        OutputFolderError: when `output_dir` is refused (nothing is written then).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    input_path, output_dir = Path(input_path), Path(output_dir)
    inputs = list_inputs(input_path)
    chosen = read_prompts(prompts, input_path)
    names = dict(zip(inputs, _relative_names(input_path, inputs), strict=True))
    prompted = [item for item in inputs if names[item] in chosen]
    suffixes = [MASK_SUFFIX, OVERLAY_SUFFIX] if overlays else [MASK_SUFFIX]
    prompts_file = None if isinstance(prompts, Mapping) else str(Path(prompts).resolve())
    info = {"adapter": adapter, "input": str(input_path.resolve()), "task": PROMPTED_TASK, "prompts": prompts_file}
    planned = [item.output(suffix) for item in prompted for suffix in suffixes]
    previous = open_output_dir(output_dir, input_path, planned, **info)

    skipped = [item for item in inputs if names[item] not in chosen]
    report = PromptedPredictionReport(output_dir, skipped=[item.image for item in skipped])
    image_size = input_image_size(model.config)

    def predict(pairs: Sequence[tuple[PredictionInput, Image.Image]]) -> list[PromptedPrediction]:
        images, image_prompts = [image for _, image in pairs], [chosen[names[item]] for item, _ in pairs]
        return predict_prompted(model, images, image_prompts, image_size=image_size, batch_size=len(pairs))

    with tqdm(total=len(prompted), desc="predicting", unit="image", disable=not progress) as bar:
        for start in range(0, len(prompted), batch_size):
            batch = prompted[start : start + batch_size]
            for item, image, result in predict_each(read_inputs(batch, report.failed), predict, report.failed):
                try:
                    _write_prompted(item, image, result, output_dir, suffixes, report.files)
                    report.predicted.append(item.image)
                    report.objects[item.output(MASK_SUFFIX)] = [
                        {"label": index + 1, "id": prompt.id, "score": round(float(score), 6)}
                        for index, (prompt, score) in enumerate(zip(result.prompts, result.scores, strict=True))
                    ]
                except Exception as error:
                    report.failed[item.image] = one_line(error)
            bar.update(len(batch))

    close_output_dir(
        output_dir, previous, report, **info, skipped=[names[item] for item in skipped], objects=report.objects
    )
    return report


# --- runs -----------------------------------------------------------------------------------------------------------


def run_task(name_or_path: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None) -> str:
    """What a run (folder or Hub repository) was trained for, from its run file: `"prompted"` or `"prompt_free"`
    (runs recorded before prompted training existed are prompt-free). Reads the run file only.

    Raises:
        FileNotFoundError: when the run (or its run file) cannot be found.
    """
    record = read_run_file(resolve_pretrained(name_or_path, subfolder=subfolder, revision=revision))
    model = record.get("model") if isinstance(record, dict) else None
    return (model or {}).get("task") or "prompt_free"


__all__ = [
    "AUTOMATIC_MASKS_UNAVAILABLE",
    "PROMPTED_TASK",
    "Prompt",
    "PromptError",
    "PromptedPrediction",
    "PromptedPredictionReport",
    "label_png",
    "predict_folder_prompted",
    "predict_prompted",
    "read_prompts",
    "run_task",
]
