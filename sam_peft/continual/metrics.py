"""Continual-learning metrics over an accuracy matrix, and a heat-map picture of it.

`A[i, j]` is the score (SAMCL: IoU) on domain j after learning stage i, where stage i learns domain i. The matrix
has S rows (stages) and D >= S columns (domains; column S, when present, is the next domain, evaluated but not
learned yet). Cells never evaluated hold NaN; a metric that needs one raises an error naming it.

At stage i (0-based):

- average accuracy `AA_i = mean_{j <= i} A[i, j]`: the score over every domain learned so far;
- forgetting `FM_i = mean_{j < i} (A[j, j] - A[i, j])`: how much the score on each earlier domain dropped since
  it was learned, over the i earlier domains; undefined (NaN) at stage 0, where no domain came before.
  SAMCL's formula `mean_j (A[j, j] - A[i, j])` averages over j <= i instead, counting the zero term of the
  domain just learned: its value is `i / (i + 1)` times this one (`include_current=True` gives it);
- forward transfer `FT_i = mean_{j < i} A[j, j + 1]`: the score on each domain before it was learned (the model
  of stage j on domain j + 1), over the i such pairs; NaN at stage 0.

With one row per stage these are the last stage's values; `continual_metrics` gives them for every stage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

AccuracyMatrix = Sequence[Sequence[float]] | np.ndarray | torch.Tensor
"""(S, D) scores: nested lists, a NumPy array or a tensor."""

# Anchor colours of the viridis colour map (low to high), interpolated linearly.
_COLOR_MAP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)
_MISSING_COLOR = (224, 224, 224)
_CELL_HEIGHT = 36
_PADDING = 8


def _matrix(matrix: AccuracyMatrix) -> np.ndarray:
    """`matrix` as a float64 (S, D) array with 1 <= S <= D."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu().numpy()
    array = np.array(matrix, dtype=np.float64)
    if array.ndim != 2 or not 1 <= array.shape[0] <= array.shape[1]:
        raise ValueError(
            f"An accuracy matrix has one row per stage and one column per domain, with at least as many domains as "
            f"stages; got shape {array.shape}."
        )
    return array


def _stage(array: np.ndarray, stage: int | None) -> int:
    stages = array.shape[0]
    if stage is None:
        return stages - 1
    if not -stages <= stage < stages:
        raise ValueError(f"Stage {stage} is out of range for a matrix of {stages} stages.")
    return stage % stages


def _cells(array: np.ndarray, cells: Sequence[tuple[int, int]], metric: str) -> np.ndarray:
    """Values of `cells` (row, column); raises naming the first one not evaluated (NaN)."""
    values = np.array([array[i, j] for i, j in cells], dtype=np.float64)
    missing = [cell for cell, value in zip(cells, values, strict=True) if math.isnan(value)]
    if missing:
        raise ValueError(
            f"{metric} needs A{list(missing[0])} (domain {missing[0][1]} after stage {missing[0][0]}), "
            "which is NaN: not evaluated."
        )
    return values


def average_accuracy(matrix: AccuracyMatrix, stage: int | None = None) -> float:
    """`AA = mean_{j <= i} A[i, j]` at stage i (default: the last).

    Args:
        matrix: (S, D) accuracy matrix, row = stage, column = domain (NaN: not evaluated).
        stage: Row i; negative values count from the end.
    """
    array = _matrix(matrix)
    i = _stage(array, stage)
    return float(_cells(array, [(i, j) for j in range(i + 1)], "Average accuracy").mean())


def forgetting(matrix: AccuracyMatrix, stage: int | None = None, include_current: bool = False) -> float:
    """`FM = mean_{j < i} (A[j, j] - A[i, j])` at stage i (default: the last); NaN at stage 0.

    Positive when earlier domains got worse. With `include_current=True`, the mean runs over j <= i as in SAMCL's
    code (the term j = i is 0, so the value is i / (i + 1) times the default one, and 0 at stage 0).
    """
    array = _matrix(matrix)
    i = _stage(array, stage)
    if i == 0:
        return 0.0 if include_current else math.nan
    learned = _cells(array, [(j, j) for j in range(i)], "Forgetting")
    now = _cells(array, [(i, j) for j in range(i)], "Forgetting")
    return float((learned - now).sum() / (i + 1 if include_current else i))


def forward_transfer(matrix: AccuracyMatrix, stage: int | None = None) -> float:
    """`FT = mean_{j < i} A[j, j + 1]` at stage i (default: the last): the score on each next domain before
    learning it; NaN at stage 0."""
    array = _matrix(matrix)
    i = _stage(array, stage)
    if i == 0:
        return math.nan
    return float(_cells(array, [(j, j + 1) for j in range(i)], "Forward transfer").mean())


def continual_metrics(matrix: AccuracyMatrix, include_current: bool = False) -> dict[str, list[float]]:
    """AA, FM and FT of every stage: `{"average_accuracy": [...], "forgetting": [...], "forward_transfer": [...]}`,
    one value per row of `matrix` (NaN where undefined)."""
    array = _matrix(matrix)
    stages = range(array.shape[0])
    return {
        "average_accuracy": [average_accuracy(array, i) for i in stages],
        "forgetting": [forgetting(array, i, include_current) for i in stages],
        "forward_transfer": [forward_transfer(array, i) for i in stages],
    }


def _color(fraction: float) -> tuple[int, int, int]:
    """Colour-map colour at `fraction` in [0, 1]."""
    position = min(max(fraction, 0.0), 1.0) * (len(_COLOR_MAP) - 1)
    low = min(int(position), len(_COLOR_MAP) - 2)
    mixed = _COLOR_MAP[low] + (position - low) * (_COLOR_MAP[low + 1] - _COLOR_MAP[low])
    return tuple(int(c) for c in np.rint(mixed))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _centered_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font, fill, align: str = "center") -> None:
    """Write `text` centred vertically on y, and horizontally on x (`align="right"`: ending at x)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    start = x - (right - left) if align == "right" else x - (right - left) / 2
    draw.text((start - left, y - (bottom - top) / 2 - top), text, fill=fill, font=font)


def save_accuracy_heatmap(
    path: str | os.PathLike,
    matrix: AccuracyMatrix,
    domains: Sequence[str],
    stages: Sequence[str] | None = None,
    title: str = "score on domain (column) after learning (row)",
    value_range: tuple[float, float] | None = None,
    value_format: str = "{:.3f}",
) -> None:
    """Draw the accuracy matrix as a PNG heat map: one coloured, annotated cell per value, NaN cells grey.

    Drawn with Pillow, like `sam_peft.training.plots` (no plotting dependency); the diagonal, each domain's score
    right after it was learned, is outlined.

    Args:
        path: Output file.
        matrix: (S, D) accuracy matrix.
        domains: D column names.
        stages: S row names (default: the first S domains, each row being the stage that learned it).
        title: Line written above the matrix.
        value_range: Values mapped to the ends of the colour map (default: [0, 1] widened to the data's range).
        value_format: Format of the annotation of each cell.
    """
    array = _matrix(matrix)
    rows, columns = array.shape
    stages = list(domains[:rows]) if stages is None else list(stages)
    if len(domains) != columns or len(stages) != rows:
        raise ValueError(
            f"A {rows} x {columns} matrix needs {columns} domain names and {rows} stage names, got {len(domains)} "
            f"and {len(stages)}."
        )
    finite = array[np.isfinite(array)]
    if value_range is None:
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        high = max(1.0, float(finite.max())) if finite.size else 1.0
    else:
        low, high = value_range
    span = (high - low) or 1.0

    font = _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return math.ceil(measure.textlength(text, font=font))

    annotations = [[value_format.format(v) if math.isfinite(v) else "-" for v in row] for row in array]
    cell_width = max(64, *(text_width(t) + 2 * _PADDING for t in [*domains, *(a for r in annotations for a in r)]))
    left = max(text_width(f"after {name}") for name in stages) + 2 * _PADDING
    top = 3 * _CELL_HEIGHT // 2 + _CELL_HEIGHT
    width = max(left + columns * cell_width + _PADDING, text_width(title) + 2 * _PADDING)
    height = top + rows * _CELL_HEIGHT + _PADDING

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_PADDING, _PADDING), title, fill="black", font=font)
    for j, name in enumerate(domains):
        x = left + j * cell_width + cell_width // 2
        _centered_text(draw, x, top - _CELL_HEIGHT // 2, name, font, "black")
    for i, name in enumerate(stages):
        y = top + i * _CELL_HEIGHT + _CELL_HEIGHT // 2
        _centered_text(draw, left - _PADDING, y, f"after {name}", font, "black", align="right")
        for j in range(columns):
            value = array[i, j]
            box = (
                left + j * cell_width,
                top + i * _CELL_HEIGHT,
                left + (j + 1) * cell_width,
                top + (i + 1) * _CELL_HEIGHT,
            )
            fill = _color((value - low) / span) if math.isfinite(value) else _MISSING_COLOR
            draw.rectangle(box, fill=fill, outline="white")
            if i == j:
                draw.rectangle(box, outline="black", width=2)  # the score just after learning the domain
            luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
            text_color = "black" if luminance > 128 else "white"
            _centered_text(draw, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, annotations[i][j], font, text_color)
    image.save(path)
