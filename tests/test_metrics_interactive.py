"""Interactive segmentation metrics: hand-made IoU rows with known mIoU@k, NoC and NoF, carry-forward of rows that
stop early, thresholds reached exactly, streaming, Dice from IoU against masks, input validation and the plot of
IoU against clicks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sam_peft.metrics import (
    InteractiveMetrics,
    compute_interactive_metrics,
    dice_from_iou,
    mask_iou,
    threshold_name,
)
from sam_peft.training.plots import SERIES_COLORS, save_click_curves

NAN = math.nan


def assert_same(results: dict, expected: dict, rel: float = 1e-12) -> None:
    assert results.keys() == expected.keys()
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, rel=rel), key


def test_perfect_after_two_clicks():
    ious = torch.tensor([[0.4, 1.0, 1.0, 1.0, 1.0]] * 3, dtype=torch.float64)
    results = compute_interactive_metrics(ious, max_clicks=5)
    assert results["num_objects"] == 3
    assert results["noc@90"] == 2
    assert results["noc@85"] == 2
    assert results["nof@85"] == results["nof@90"] == 0
    assert results["miou@1"] == pytest.approx(0.4)
    assert results["miou@2"] == 1.0
    assert results["mdice@2"] == 1.0
    assert results["mdice@1"] == pytest.approx(0.8 / 1.4)
    assert results["iou_curve"] == pytest.approx([0.4, 1, 1, 1, 1])
    assert results["miou_clicks"] == pytest.approx((0.4 + 4) / 5)
    assert len(results["dice_curve"]) == 5
    assert "miou_box" not in results


def test_object_that_never_reaches_the_threshold_counts_max_clicks():
    ious = torch.tensor(
        [
            [0.50, 0.70, 0.86, 0.91],  # 85 at click 3, 90 at click 4
            [0.95, 0.96, 0.97, 0.98],  # both at click 1
            [0.10, 0.20, 0.30, 0.80],  # never: max_clicks for both
        ],
        dtype=torch.float64,
    )
    results = compute_interactive_metrics(ious, max_clicks=4)
    assert results["noc@85"] == pytest.approx((3 + 1 + 4) / 3)
    assert results["noc@90"] == pytest.approx((4 + 1 + 4) / 3)
    # Object 0 reaches 0.90 at the last click: max_clicks clicks, but not a failure.
    assert results["nof@85"] == 1
    assert results["nof@90"] == 1
    assert results["miou@4"] == pytest.approx((0.91 + 0.98 + 0.80) / 3)
    assert results["miou@1"] == pytest.approx((0.50 + 0.95 + 0.10) / 3)


def test_noc_counts_max_clicks_when_the_loop_stops_below_the_threshold():
    results = compute_interactive_metrics(torch.tensor([[0.3, 0.6]], dtype=torch.float64), max_clicks=20)
    assert results["noc@85"] == results["noc@90"] == 20
    assert results["nof@85"] == results["nof@90"] == 1
    assert results["miou@20"] == pytest.approx(0.6)


def test_short_rows_carry_the_last_iou_forward():
    full = torch.tensor([[0.5, 0.8, 0.92, 0.92, 0.92, 0.92], [0.6, 0.86, 0.86, 0.87, 0.87, 0.87]], dtype=torch.float64)
    expected = compute_interactive_metrics(full, max_clicks=6)
    # The same objects recorded only until the loop stopped: NaN-padded rows, ragged lists, fewer columns.
    padded = torch.tensor([[0.5, 0.8, 0.92, NAN], [0.6, 0.86, 0.86, 0.87]], dtype=torch.float64)
    ragged = [[0.5, 0.8, 0.92], torch.tensor([0.6, 0.86, 0.86, 0.87], dtype=torch.float64)]
    for rows in (padded, ragged, padded.numpy()):
        assert_same(compute_interactive_metrics(rows, max_clicks=6), expected)
    assert expected["iou_curve"] == pytest.approx([0.55, 0.83, 0.89, 0.895, 0.895, 0.895])
    assert expected["noc@85"] == pytest.approx((3 + 2) / 2)
    assert expected["noc@90"] == pytest.approx((3 + 6) / 2)
    assert expected["nof@90"] == 1
    # Every row shorter than max_clicks: columns added.
    short = compute_interactive_metrics(torch.tensor([[0.9], [0.4]], dtype=torch.float64), max_clicks=3)
    assert short["iou_curve"] == pytest.approx([0.65] * 3)
    assert short["noc@90"] == pytest.approx((1 + 3) / 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_a_threshold_reached_exactly_counts(dtype):
    ious = torch.tensor([[0.5, 0.85, 0.9], [0.85, 0.9, 0.9]], dtype=dtype)
    results = compute_interactive_metrics(ious, max_clicks=3)
    assert results["noc@85"] == pytest.approx((2 + 1) / 2)
    assert results["noc@90"] == pytest.approx((3 + 2) / 2)
    assert results["nof@85"] == results["nof@90"] == 0
    # Below it (in that precision) does not.
    below = compute_interactive_metrics(torch.tensor([[0.84] * 2, [0.89] * 2], dtype=dtype), max_clicks=2)
    assert below["noc@85"] == pytest.approx((2 + 1) / 2)
    assert below["nof@85"] == 1
    assert below["noc@90"] == 2
    assert below["nof@90"] == 2


def test_box_prompt_and_dice():
    ious = torch.tensor([[0.5, 0.9], [0.7, 0.8]], dtype=torch.float64)
    results = compute_interactive_metrics(ious, box_iou=torch.tensor([0.6, 1.0], dtype=torch.float64), max_clicks=2)
    assert results["miou_box"] == pytest.approx(0.8)
    assert results["mdice_box"] == pytest.approx((1.2 / 1.6 + 1.0) / 2)
    assert results["mdice@1"] == pytest.approx((1.0 / 1.5 + 1.4 / 1.7) / 2)


def test_streaming_equals_one_update():
    generator = torch.Generator().manual_seed(0)
    ious = torch.rand(40, 7, generator=generator, dtype=torch.float64).sort(dim=1).values
    ious[::3, 5:] = NAN
    boxes = torch.rand(40, generator=generator, dtype=torch.float64)
    whole = compute_interactive_metrics(ious, box_iou=boxes, max_clicks=9, thresholds=(0.5, 0.85, 0.9))
    metrics = InteractiveMetrics(max_clicks=9, thresholds=(0.5, 0.85, 0.9))
    for part in (slice(0, 13), slice(13, 13), slice(13, 40)):
        metrics.update(ious[part], box_iou=boxes[part])
    streamed = metrics.compute()
    assert_same(streamed, whole)
    assert {"noc@50", "nof@50", "miou@9", "mdice@9", "miou_box"} <= streamed.keys()
    metrics.reset()
    with pytest.raises(ValueError, match="No objects"):
        metrics.compute()


def test_dice_from_iou_matches_dice_of_masks():
    rng = np.random.default_rng(0)
    predictions = rng.random((12, 9, 11)) < 0.5
    targets = rng.random((12, 9, 11)) < 0.4
    predictions[0] = targets[0]  # perfect
    predictions[1] = ~targets[1]  # disjoint
    intersection = (predictions & targets).sum(axis=(1, 2))
    dice = 2 * intersection / (predictions.sum(axis=(1, 2)) + targets.sum(axis=(1, 2)))
    iou = intersection / (predictions | targets).sum(axis=(1, 2))
    computed_iou = mask_iou(torch.from_numpy(predictions), torch.from_numpy(targets))
    assert computed_iou.numpy() == pytest.approx(iou, abs=1e-15)
    assert dice_from_iou(computed_iou).numpy() == pytest.approx(dice, abs=1e-15)
    results = compute_interactive_metrics(computed_iou[:, None], box_iou=computed_iou, max_clicks=1)
    assert results["mdice@1"] == pytest.approx(dice.mean(), abs=1e-15)
    assert results["mdice_box"] == pytest.approx(dice.mean(), abs=1e-15)


def test_mask_iou_of_empty_masks_and_integer_masks():
    empty = torch.zeros(2, 3, 3, dtype=torch.bool)
    target = empty.clone()
    target[1, 0, 0] = True
    assert mask_iou(empty, target).tolist() == [1.0, 0.0]
    assert float(mask_iou(torch.ones(3, 3, dtype=torch.uint8), torch.tensor([[1, 0, 0]] * 3))) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one shape"):
        mask_iou(empty, empty[0])


@pytest.mark.parametrize(
    ("ious", "kwargs", "error", "match"),
    [
        (torch.tensor([0.5, 0.6]), {}, ValueError, "N objects, C clicks"),
        (torch.tensor([[0.5, 1.2]]), {}, ValueError, r"\[0, 1\]"),
        (torch.tensor([[NAN, 0.5]]), {}, ValueError, "after a NaN"),
        (torch.tensor([[0.5, NAN, 0.7]]), {}, ValueError, "after a NaN"),
        (torch.tensor([[0.5, 0.6], [NAN, NAN]]), {}, ValueError, "Object 1 has no IoU"),
        (torch.tensor([[1, 0]]), {}, TypeError, "floating point"),
        (torch.full((1, 4), 0.5), {}, ValueError, "more than max_clicks=3"),
        (torch.tensor([[0.5]]), {"box_iou": torch.tensor([0.5, 0.6])}, ValueError, "one IoU per object"),
        (torch.tensor([[0.5]]), {"box_iou": torch.tensor([-0.1])}, ValueError, r"\[0, 1\]"),
    ],
)
def test_bad_inputs(ious, kwargs, error, match):
    metrics = InteractiveMetrics(max_clicks=3)
    with pytest.raises(error, match=match):
        metrics.update(ious, **kwargs)
    assert metrics.num_objects == 0


def test_boxes_in_some_updates_only_and_bad_options():
    metrics = InteractiveMetrics(max_clicks=2)
    metrics.update(torch.tensor([[0.5, 0.6]]), box_iou=torch.tensor([0.7]))
    with pytest.raises(ValueError, match="every update or in none"):
        metrics.update(torch.tensor([[0.5, 0.6]]))
    for options in ({"max_clicks": 0}, {"thresholds": (0.0,)}, {"thresholds": (0.9, 0.9)}, {"thresholds": ()}):
        with pytest.raises(ValueError):
            InteractiveMetrics(**options)
    assert [threshold_name(t) for t in (0.85, 0.9, 0.875, 1.0)] == ["85", "90", "87.5", "100"]


def test_click_curves_plot(tmp_path):
    base = compute_interactive_metrics(torch.linspace(0.3, 0.86, 10, dtype=torch.float64)[None], max_clicks=10)
    adapted = compute_interactive_metrics(torch.linspace(0.6, 0.95, 8, dtype=torch.float64)[None], max_clicks=8)
    path = tmp_path / "clicks.png"
    save_click_curves(path, {"base SAM": base["iou_curve"], "adapted": adapted["iou_curve"]})
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (360, 560)
    # Each model's colour is drawn (curve, markers and legend entry); a third colour is not.
    for color, present in zip(SERIES_COLORS[:3], (True, True, False), strict=True):
        assert bool((pixels == color).all(axis=-1).sum() > 50) is present
    # The adapted curve (higher IoU) lies above the base curve: smaller row of its colour's centre of mass.
    rows = [np.nonzero((pixels[:, 60:400] == color).all(axis=-1))[0].mean() for color in SERIES_COLORS[:2]]
    assert rows[1] < rows[0]
    with pytest.raises(ValueError, match="at least one model"):
        save_click_curves(tmp_path / "none.png", {})
