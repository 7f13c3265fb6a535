"""Pictures of a run: training curves and prediction overlays, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

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
    loss per epoch (when the evaluation has a loss: the interactive one has none), as one PNG."""
    panels = [
        _panel(
            "training task loss / step",
            [r["step"] for r in train_log],
            [r["task_loss"] for r in train_log],
            (31, 119, 180),
        ),
        _panel(f"eval {metric} / epoch", [r["epoch"] for r in eval_log], [r[metric] for r in eval_log], (44, 160, 44)),
    ]
    if all("loss" in r for r in eval_log):
        losses = [r["loss"] for r in eval_log]
        panels.append(_panel("eval loss / epoch", [r["epoch"] for r in eval_log], losses, (214, 39, 40)))
    figure = Image.new("RGB", (PANEL[0] * len(panels), PANEL[1]), "white")
    for index, panel in enumerate(panels):
        figure.paste(panel, (index * PANEL[0], 0))
    figure.save(path)


SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))
CLICK_CHART = (560, 360)  # width, height of the IoU-against-clicks chart


def save_click_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Sequence[float]],
    thresholds: Sequence[float] = (0.85, 0.90),
    title: str = "mIoU / clicks",
) -> None:
    """mIoU against the number of clicks for several models on one chart, as one PNG.

    Args:
        path: the PNG's path.
        curves: per model (e.g. "base SAM", "adapted"), its mIoU after clicks 1, 2, ... (`InteractiveMetrics`'
            `iou_curve`); the curves may differ in length. The legend lists them in this order.
        thresholds: IoUs drawn as dashed grey lines (the NoC thresholds).
        title: written above the chart.
    """
    if not curves or any(len(values) == 0 for values in curves.values()):
        raise ValueError("`curves` must map at least one model to a non-empty list of IoUs.")
    width, height = CLICK_CHART
    image = Image.new("RGB", CLICK_CHART, "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    left, top, right, bottom = MARGIN, MARGIN, width - 16, height - MARGIN
    clicks = max(len(values) for values in curves.values())
    y_low = max(0.0, math.floor(min(min(min(v) for v in curves.values()), *thresholds) * 10) / 10)
    y_high = max(1.0, max(max(v) for v in curves.values()))
    x_span, y_span = max(clicks - 1, 1), (y_high - y_low) or 1.0

    def at(click: float, iou: float) -> tuple[float, float]:
        return left + (click - 1) / x_span * (right - left), bottom - (iou - y_low) / y_span * (bottom - top)

    for tick in range(round(y_low * 10), math.floor(y_high * 10 + 1e-9) + 1):
        y = at(1, tick / 10)[1]
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 6), f"{tick / 10:.1f}", fill="black")
    step = max(1, math.ceil(clicks / 10))
    for click in range(1, clicks + 1, step):
        x = at(click, y_low)[0]
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x - 3, bottom + 8), str(click), fill="black")
    draw.text(((left + right) // 2 - 12, height - 18), "clicks", fill="black")
    for threshold in thresholds:
        y = at(1, threshold)[1]
        for x in range(left, right, 8):
            draw.line([(x, y), (min(x + 4, right), y)], fill=(160, 160, 160))
        draw.text((left + 4, y - 12), f"{threshold:.2f}", fill=(120, 120, 120))
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")

    for index, values in enumerate(curves.values()):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        points = [at(click, iou) for click, iou in enumerate(values, start=1)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)

    entry = 16  # legend: one line per model, at the bottom right of the chart
    legend_width = 40 + 6 * max(len(name) for name in curves)
    legend_top = bottom - 8 - entry * len(curves)
    legend_left = right - 8 - legend_width
    draw.rectangle([legend_left - 4, legend_top - 4, right - 4, bottom - 4], fill="white", outline=(160, 160, 160))
    for index, name in enumerate(curves):
        color = SERIES_COLORS[index % len(SERIES_COLORS)]
        y = legend_top + index * entry + 6
        draw.line([(legend_left, y), (legend_left + 24, y)], fill=color, width=3)
        draw.text((legend_left + 32, y - 6), name, fill="black")
    image.save(path)


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
