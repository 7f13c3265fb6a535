"""Pictures of a run: training curves and prediction overlays, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PANEL = (480, 320)  # width, height of one chart
MARGIN = 48


def _panel(title: str, xs: Sequence[float], ys: Sequence[float], color: tuple[int, int, int]) -> Image.Image:
    """One line chart with its title, axes and the y range written at the axis ends."""
    width, height = PANEL
    image = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    left, top, right, bottom = MARGIN, MARGIN, width - 16, height - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    if not xs:
        draw.text((left + 8, (top + bottom) // 2), "no data", fill="gray")
        return image
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
    points = [
        (left + (x - x_low) / x_span * (right - left), bottom - (y - y_low) / y_span * (bottom - top))
        for x, y in zip(xs, ys, strict=True)
    ]
    if len(points) > 1:
        draw.line(points, fill=color, width=2)
    for x, y in points:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    draw.text((4, top - 6), f"{y_high:.3g}", fill="black")
    draw.text((4, bottom - 6), f"{y_low:.3g}", fill="black")
    draw.text((left, bottom + 8), f"{x_low:g}", fill="black")
    draw.text((right - 40, bottom + 8), f"{x_high:g}", fill="black")
    return image


def save_training_curves(
    path: str | os.PathLike, train_log: Sequence[dict], eval_log: Sequence[dict], metric: str
) -> None:
    """Training task loss (auxiliary losses left out) per optimiser step beside the evaluation `metric` and
    loss per epoch, as one PNG."""
    panels = [
        _panel(
            "training task loss / step",
            [r["step"] for r in train_log],
            [r["task_loss"] for r in train_log],
            (31, 119, 180),
        ),
        _panel(f"eval {metric} / epoch", [r["epoch"] for r in eval_log], [r[metric] for r in eval_log], (44, 160, 44)),
        _panel("eval loss / epoch", [r["epoch"] for r in eval_log], [r["loss"] for r in eval_log], (214, 39, 40)),
    ]
    figure = Image.new("RGB", (PANEL[0] * len(panels), PANEL[1]), "white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * PANEL[0], 0))
    figure.save(path)


def label_colors(num_labels: int) -> np.ndarray:
    """(K, 3) uint8 colours, class 0 black."""
    rng = np.random.default_rng(0)
    colors = rng.integers(64, 256, size=(max(num_labels, 2), 3), dtype=np.uint8)
    colors[0] = 0
    return colors


def save_overlays(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
) -> None:
    """One row per image: the image, the ground truth over it (unless None), the prediction over it.

    images: (H, W, 3) uint8; truths / predictions: (H, W) class ids (binary: 0/1, shown green and red).
    """
    rows = []
    for image, truth, prediction in zip(images, truths, predictions, strict=True):
        shown_maps = [(m, c) for m, c in ((truth, (0, 200, 0)), (prediction, (220, 0, 0))) if m is not None]
        colors = label_colors(int(max(m.max() for m, _ in shown_maps)) + 1)
        row = [image]
        for label_map, binary_color in shown_maps:
            overlay = image.astype(np.float32)
            shown = (label_map > 0) & (label_map != 255)
            color = np.array(binary_color) if colors.shape[0] <= 2 else colors[np.clip(label_map, 0, len(colors) - 1)]
            overlay[shown] = 0.5 * overlay[shown] + 0.5 * (color[shown] if color.ndim == 3 else color)
            row.append(overlay.astype(np.uint8))
        rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(padded, axis=0)).save(path)
