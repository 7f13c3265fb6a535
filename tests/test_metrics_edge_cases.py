"""Edge cases of the metric inputs: tiny (1 x 1, 1 x N, N x 1, 2 x 2) and empty maps, the one rule for reference
dtypes, uint8 0/1 predictions, and `num_labels` of the semantic metrics."""

from __future__ import annotations

import re
import warnings

import evaluate
import numpy as np
import pytest
import torch

import sam_peft.metrics
from sam_peft.metrics import (
    SemanticMetrics,
    SODMetrics,
    compute_semantic_metrics,
    compute_sod_metrics,
    e_measure,
    f_measure,
    mean_absolute_error,
    prepare_predictions,
    s_measure,
    weighted_f_measure,
)
from sam_peft.metrics.sod import inputs as inputs_module

EPS = np.spacing(1)


def _exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- Tiny images --------------------------------------------------------------------------------------------------


def _tiny_cases() -> dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]]:
    """(float64 prediction, bool reference) pairs per tiny shape: every reference of up to 4 pixels and six of
    the 1 x 5 and 5 x 1 ones (empty, full, one background pixel, one foreground pixel and two random ones), each
    with a random, a perfect, an inverted and a constant prediction."""
    rng = np.random.default_rng(0)
    cases = {}
    for shape in [(1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (5, 1)]:
        n = shape[0] * shape[1]
        patterns = range(2**n) if n <= 4 else [0, 31, 0b11011, 0b00100, *rng.choice([3, 5, 9, 10, 22, 26], 2)]
        cases[shape] = []
        for bits in patterns:
            gt = np.array([(int(bits) >> i) & 1 for i in range(n)], dtype=bool).reshape(shape)
            for pred in (rng.random(shape), gt.astype(float), 1 - gt.astype(float), np.full(shape, 0.5)):
                cases[shape].append((pred, gt))
    return cases


TINY_CASES = _tiny_cases()


def _normalized(pred: np.ndarray) -> np.ndarray:
    return (pred - pred.min()) / (pred.max() - pred.min()) if pred.max() > pred.min() else pred


def _e_phi(binary: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-phi of binarised maps (..., H, W), restated pixel by pixel: the enhanced alignment matrix summed, divided
    by H W - 1 (PySODMetrics; by 1 on a 1 x 1 image, where that is zero) and capped at 1."""
    if not gt.any():
        enhanced = (~binary).astype(float)
    elif gt.all():
        enhanced = binary.astype(float)
    else:
        a, b = binary - binary.mean(axis=(-2, -1), keepdims=True), gt - gt.mean()
        enhanced = ((2 * a * b / (a * a + b * b + EPS)) + 1) ** 2 / 4
    return np.minimum(enhanced.sum(axis=(-2, -1)) / max(gt.size - 1, 1), 1.0)


def _e_phi_values(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """Adaptive E-phi and the 256-threshold curve (thresholds 255 .. 0 on `uint8(pred * 255)`)."""
    levels = (pred * 255).astype(np.uint8)
    curve = _e_phi(levels[None] >= (255 - np.arange(256))[:, None, None], gt)
    return float(_e_phi(pred >= min(2 * pred.mean(), 1), gt)), curve


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    n = pred.size
    x, y = pred.mean(), gt.mean()
    sigma_x = ((pred - x) ** 2).sum() / (n - 1 + EPS)
    sigma_y = ((gt - y) ** 2).sum() / (n - 1 + EPS)
    sigma_xy = ((pred - x) * (gt - y)).sum() / (n - 1 + EPS)
    alpha, beta = 4 * x * y * sigma_xy, (x * x + y * y) * (sigma_x + sigma_y)
    return alpha / (beta + EPS) if alpha != 0 else float(beta == 0)


def _object(values: np.ndarray) -> float:
    std = values.std(ddof=1) if values.size > 1 else 0.0
    return 2 * values.mean() / (values.mean() ** 2 + 1 + std + EPS)


def _s_alpha(pred: np.ndarray, gt: np.ndarray) -> float:
    """S-alpha restated: object and region scores (Fan et al. 2017), empty quadrants contributing 0."""
    if not gt.any():
        return 1 - pred.mean()
    if gt.all():
        return pred.mean()
    height, width = gt.shape
    fg = gt.mean()
    object_score = _object(pred[gt]) * fg + _object(1 - pred[~gt]) * (1 - fg)
    cy, cx = (int(c) + 1 for c in np.argwhere(gt).mean(axis=0).round())
    region = 0.0
    for rows in (slice(0, cy), slice(cy, height)):
        for cols in (slice(0, cx), slice(cx, width)):
            if pred[rows, cols].size:
                region += _ssim(pred[rows, cols], gt[rows, cols].astype(float)) * pred[rows, cols].size / gt.size
    return max(0.0, 0.5 * object_score + 0.5 * region)


@pytest.mark.parametrize("shape", list(TINY_CASES))
def test_tiny_images_give_values_in_unit_interval_equal_to_a_restatement(shape):
    """Every image's E-phi, S-alpha and MAE equal a pixel-by-pixel restatement and, like the other metrics, lie
    in [0, 1]; the dataset values of the pipeline are the means of those per-image values. Before, a 1 x 1
    image's E-phi was about 4.5e15 and a perfect 1 x 2 map's 2."""
    preds = np.stack([pred for pred, _ in TINY_CASES[shape]])
    gts = np.stack([gt for _, gt in TINY_CASES[shape]])
    norm = np.stack([_normalized(pred) for pred in preds])
    expected_e = [_e_phi_values(p, g) for p, g in zip(norm, gts, strict=True)]
    e_adaptive, e_curve = e_measure(torch.from_numpy(norm), torch.from_numpy(gts))
    np.testing.assert_allclose(e_adaptive.numpy(), [adaptive for adaptive, _ in expected_e], rtol=0, atol=1e-12)
    np.testing.assert_allclose(e_curve.numpy(), np.stack([curve for _, curve in expected_e]), rtol=0, atol=1e-12)
    s_alpha = s_measure(torch.from_numpy(norm), torch.from_numpy(gts)).numpy()
    np.testing.assert_allclose(s_alpha, [_s_alpha(p, g) for p, g in zip(norm, gts, strict=True)], rtol=0, atol=1e-12)
    mae = mean_absolute_error(torch.from_numpy(norm), torch.from_numpy(gts)).numpy()
    np.testing.assert_allclose(mae, np.abs(norm - gts).mean(axis=(1, 2)), rtol=0, atol=1e-15)
    f_adaptive, f_curve = f_measure(torch.from_numpy(norm), torch.from_numpy(gts))
    weighted = weighted_f_measure(torch.from_numpy(norm), torch.from_numpy(gts))
    for values in (e_adaptive, e_curve, s_alpha, mae, f_adaptive, f_curve, weighted):
        values = torch.as_tensor(values)
        assert bool(((values >= 0) & (values <= 1)).all())

    results = compute_sod_metrics(list(torch.from_numpy(preds)), list(torch.from_numpy(gts)), chunk_size=7)
    curve = np.stack([curve for _, curve in expected_e]).mean(axis=0)
    assert results["e_phi"] == pytest.approx(curve.mean(), abs=1e-12)
    assert results["e_phi_max"] == pytest.approx(curve.max(), abs=1e-12)
    assert results["e_phi_adaptive"] == pytest.approx(np.mean([adaptive for adaptive, _ in expected_e]), abs=1e-12)
    assert results["s_alpha"] == pytest.approx(s_alpha.mean(), abs=1e-12)
    assert results["mae"] == pytest.approx(mae.mean(), abs=1e-12)
    assert all(0 <= value <= 1 for value in results.values()), results
    # uint8 and bool maps take the histogram path: values in [0, 1] too.
    for maps, normalize in (((preds * 255).astype(np.uint8), True), (preds > 0.5, False)):
        results = compute_sod_metrics(list(torch.from_numpy(maps)), list(torch.from_numpy(gts)), normalize=normalize)
        assert all(0 <= value <= 1 for value in results.values()), results


@pytest.mark.parametrize("shape", list(TINY_CASES))
def test_tiny_images_equal_pysodmetrics_with_its_degenerate_cases_fixed(shape):
    """Against PySODMetrics itself: equal wherever its value is defined and in [0, 1]; where it is above 1, ours is
    1; on a 1 x 1 image (its division by H W - 1 = 0) ours is the pixel's alignment; where its S-alpha is NaN (an
    empty quadrant), ours is the restatement's."""
    py_sod_metrics = pytest.importorskip("py_sod_metrics")
    norm = np.stack([_normalized(pred) for pred, _ in TINY_CASES[shape]])
    gts = np.stack([gt for _, gt in TINY_CASES[shape]])
    em, wfm, sm = py_sod_metrics.Emeasure(), py_sod_metrics.WeightedFmeasure(), py_sod_metrics.Smeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # its NaN S-alpha
        for pred, gt in zip(norm, gts, strict=True):
            for metric in (em, wfm, sm):
                metric.step(pred, gt, normalize=False)
    reference_curve, reference_adaptive = np.stack(em.changeable_ems), np.array(em.adaptive_ems)
    adaptive, curve = e_measure(torch.from_numpy(norm), torch.from_numpy(gts))
    if gts[0].size == 1:
        # PySODMetrics: the alignment sum (0 or 1) / EPS.
        assert set(np.unique(reference_curve)) == {0.0, 1 / EPS}
        np.testing.assert_array_equal(curve.numpy(), (reference_curve > 0).astype(float))
        np.testing.assert_array_equal(adaptive.numpy(), (reference_adaptive > 0).astype(float))
    else:
        assert reference_curve.max() == gts[0].size / (gts[0].size - 1 + EPS)  # above 1: a perfect map
        np.testing.assert_allclose(curve.numpy(), np.minimum(reference_curve, 1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(adaptive.numpy(), np.minimum(reference_adaptive, 1), rtol=0, atol=1e-12)
    expected_s = [_s_alpha(p, g) if np.isnan(v) else v for p, g, v in zip(norm, gts, sm.sms, strict=True)]
    np.testing.assert_allclose(s_measure(torch.from_numpy(norm), torch.from_numpy(gts)), expected_s, rtol=0, atol=1e-12)
    weighted = weighted_f_measure(torch.from_numpy(norm), torch.from_numpy(gts))
    np.testing.assert_allclose(weighted, np.array(wfm.weighted_fms, dtype=float), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("pred", "gt", "adaptive", "mean", "maximum"),
    [
        (1.0, True, 1, 1, 1),
        (1.0, False, 0, 0, 0),
        # Level 0 is foreground at the last threshold (0) and at the adaptive one, min(2 * 0, 1) = 0.
        (0.0, False, 0, 255 / 256, 1),
        (0.0, True, 1, 1 / 256, 1),
        # Level uint8(0.5 * 255) = 127 is foreground at the 128 thresholds 127 .. 0, not at the adaptive 1.
        (0.5, True, 0, 128 / 256, 1),
    ],
)
def test_e_phi_of_a_1x1_image_is_the_pixel_alignment(pred, gt, adaptive, mean, maximum):
    """Before: the alignment sum (0 or 1) divided by 1 - 1 + EPS, i.e. up to 4.5e15."""
    results = compute_sod_metrics([torch.tensor([[pred]], dtype=torch.float64)], [torch.tensor([[gt]])])
    assert (results["e_phi_adaptive"], results["e_phi"], results["e_phi_max"]) == (adaptive, mean, maximum)
    assert (results["mae"], results["s_alpha"]) == (abs(pred - gt), pred if gt else 1 - pred)


def test_e_phi_of_1x1_images_through_the_module(tmp_path):
    sod = sam_peft.metrics.load("sod", cache_dir=str(tmp_path))
    results = sod.compute(predictions=[[[1.0]], [[0.0]]], references=[[[True]], [[True]]])
    assert (results["e_phi_adaptive"], results["e_phi"], results["e_phi_max"]) == (1, (1 + 1 / 256) / 2, 1)
    assert all(0 <= value <= 1 for value in results.values()), results


# --- Empty maps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "refs", "message"),
    [
        (
            [torch.rand(3, 3)] * 3 + [torch.rand(0, 0)],
            [torch.ones(3, 3, dtype=torch.bool)] * 3 + [torch.ones(0, 0, dtype=torch.bool)],
            "Prediction 3 is empty (shape (0, 0)); every map needs at least one pixel (H, W >= 1).",
        ),
        (
            [torch.rand(2, 2), np.zeros((0, 5))],
            [torch.ones(2, 2), np.zeros((0, 5))],
            "Prediction 1 is empty (shape (0, 5)); every map needs at least one pixel (H, W >= 1).",
        ),
        (
            torch.rand(2, 4, 0),
            torch.zeros(2, 4, 0, dtype=torch.bool),
            "Prediction 0 is empty (shape (4, 0)); every map needs at least one pixel (H, W >= 1).",
        ),
        (
            np.zeros((0, 0)),
            np.zeros((0, 0), dtype=bool),
            "Prediction 0 is empty (shape (0, 0)); every map needs at least one pixel (H, W >= 1).",
        ),
        (
            [[]],
            [[]],
            "Prediction 0 must be a 2-D H x W map, got shape (0,).",
        ),
    ],
)
def test_empty_maps_are_value_errors_naming_the_image(preds, refs, message):
    """Before: an IndexError (SOD) or a RuntimeError of a reduction (semantic)."""
    metrics = SODMetrics()
    with pytest.raises(ValueError, match=_exactly(message)):
        metrics.update(preds, refs)
    assert metrics.num_images == 0
    as_labels = (
        [torch.as_tensor(np.asarray(p)).long() for p in preds]
        if isinstance(preds, list)
        else torch.as_tensor(np.asarray(preds)).long()
    )
    with pytest.raises(ValueError, match=_exactly(message)):
        SemanticMetrics(num_labels=2).update(as_labels, as_labels)


def test_empty_maps_through_the_modules(tmp_path):
    sod = sam_peft.metrics.load("sod", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=re.escape("Prediction 1 is empty (shape (0, 0))")):
        sod.add_batch(predictions=[torch.rand(2, 2), torch.rand(0, 0)], references=[torch.ones(2, 2)] * 2)
    semantic = sam_peft.metrics.load("semantic", num_labels=2, cache_dir=str(tmp_path))
    empty = torch.zeros(0, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("Prediction 0 is empty (shape (0, 0))")):
        semantic.compute(predictions=[empty], references=[empty])


# --- Reference dtypes ---------------------------------------------------------------------------------------------


def _sod_inputs(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Float predictions and bool references of a few sizes, one reference empty and one full."""
    generator = torch.Generator().manual_seed(seed)
    preds = [torch.rand(size, generator=generator) for size in [(6, 7), (6, 7), (5, 9), (1, 4)]]
    refs = [torch.rand(p.shape, generator=generator) > 0.6 for p in preds]
    refs[1][:] = False
    refs[2][:] = True
    return preds, refs


INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
FLOAT_DTYPES = [torch.float16, torch.float32, torch.float64]


@pytest.mark.parametrize(
    ("dtype", "foreground"),
    [
        (dtype, foreground)
        for dtype in INTEGER_DTYPES + FLOAT_DTYPES
        for foreground in (1, 255)
        if not (dtype == torch.int8 and foreground == 255)  # int8 cannot hold 255
    ],
)
def test_0_1_and_0_255_references_read_alike_in_every_dtype(dtype, foreground):
    """Before: uint8 0/1 references were refused, and int8..int64 0/255 ones too."""
    preds, refs = _sod_inputs()
    expected = compute_sod_metrics(preds, refs)
    as_dtype = [(ref.to(torch.int64) * foreground).to(dtype) for ref in refs]
    assert compute_sod_metrics(preds, as_dtype) == expected
    stacked = compute_sod_metrics(torch.stack(preds[:2]), torch.stack(as_dtype[:2]).numpy())
    assert stacked == compute_sod_metrics(preds[:2], refs[:2])


def test_soft_float_references_are_read_at_one_half():
    preds, refs = _sod_inputs(1)
    soft = [torch.where(ref, 0.75, 0.25) for ref in refs]
    assert compute_sod_metrics(preds, soft) == compute_sod_metrics(preds, refs)


_FORMS = (
    "a bool mask, a mask of 0s and 1s or of 0s and 255s (foreground 1 or 255; any integer or floating point "
    "dtype), or a floating point mask in [0, 1] (foreground > 0.5)"
)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (torch.tensor([[0, 7], [7, 0]]), "Reference 1 (torch.int64) has the values {0, 7}"),
        (torch.tensor([[1, 255], [0, 0]], dtype=torch.uint8), "Reference 1 (torch.uint8) has the values {0, 1, 255}"),
        (torch.tensor([[1, 255], [255, 1]], dtype=torch.int32), "Reference 1 (torch.int32) has the values {1, 255}"),
        (torch.tensor([[-1, 0], [0, 1]], dtype=torch.int8), "Reference 1 (torch.int8) has the values {-1, 0, 1}"),
        (
            torch.tensor([[0, 100], [200, 255]], dtype=torch.uint8),
            "Reference 1 (torch.uint8) has the values {0, 100, 200, 255}",
        ),
        (torch.tensor([[0.0, 2.5], [0, 0]]), "Reference 1 (torch.float32) has the values {0, 2.5}"),
        (
            torch.tensor([[-0.5, 0.5], [0, 0]], dtype=torch.float64),
            "Reference 1 (torch.float64) has the values {-0.5, 0, 0.5}",
        ),
        (
            torch.arange(16).view(2, 8),
            "Reference 1 (torch.int64) has the values {0, 1, 2, 3, 4, 5, ...} (16 distinct values)",
        ),
    ],
)
def test_other_reference_values_are_value_errors(ref, message):
    preds = [torch.rand(2, 2), torch.rand(ref.shape)]
    refs = [torch.ones(2, 2, dtype=torch.bool), ref]
    metrics = SODMetrics()
    fix = "Binarise a grey-level mask first (PySODMetrics reads `mask > 128`)."
    with pytest.raises(ValueError, match=_exactly(f"{message}; a reference must be {_FORMS}. {fix}")):
        metrics.update(preds, refs)
    assert metrics.num_images == 0


def test_validation_off_the_host(monkeypatch):
    """The torch reductions used for tensors numpy cannot view (e.g. on a GPU) give the same masks and errors."""
    preds, refs = _sod_inputs(2)
    as_255 = [ref.to(torch.int64) * 255 for ref in refs]
    mask = refs[0].to(torch.uint8)
    expected = compute_sod_metrics([mask, *preds[1:]], as_255)
    monkeypatch.setattr(inputs_module, "_on_host", lambda x: False)
    assert compute_sod_metrics([mask, *preds[1:]], as_255) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(compute_sod_metrics([refs[0].double(), *preds[1:]], refs), abs=1e-12)
    with pytest.raises(ValueError, match=re.escape("Reference 1 (torch.int64) has the values {1, 255}")):
        compute_sod_metrics(preds[:2], [as_255[0], torch.where(refs[0], 255, 1)])


def test_complex_references_are_type_errors():
    with pytest.raises(TypeError, match=re.escape("References must be a bool mask,")):
        compute_sod_metrics([torch.rand(2, 2)], [torch.ones(2, 2, dtype=torch.complex64)])


# --- Predictions --------------------------------------------------------------------------------------------------


def test_uint8_0_1_predictions_are_masks_not_near_zero_grey_levels():
    """Before: a uint8 0/1 mask read as levels 0 and 1/255, so without normalisation its IoU was 0 and its MAE
    near 1 for a perfect mask."""
    ref = torch.zeros(5, 6, dtype=torch.bool)
    ref[1:4, 2:5] = True
    mask = ref.to(torch.uint8)
    for normalize in (True, False):
        results = compute_sod_metrics([mask], [ref], normalize=normalize)
        assert results == pytest.approx(compute_sod_metrics([ref.double()], [ref], normalize=normalize), abs=1e-12)
        assert results["iou"] == 1.0 and results["mae"] == 0.0 and results["ber"] == 0.0
    # Image by image in one stack: a 0/1 mask and a map of grey levels (max above 1).
    grey = torch.randint(0, 256, (5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey[0, 0] = 255
    stacked = compute_sod_metrics(torch.stack([mask, grey]), torch.stack([ref, ref]), normalize=False)
    expected = compute_sod_metrics([ref.double(), grey.double() / 255], [ref, ref], normalize=False)
    assert stacked == pytest.approx(expected, abs=1e-12)
    # An all-zero uint8 map is both: it reads as 0 either way.
    zeros = torch.zeros(5, 6, dtype=torch.uint8)
    assert compute_sod_metrics([zeros], [ref]) == pytest.approx(
        compute_sod_metrics([torch.zeros(5, 6)], [ref]), abs=1e-12
    )


def test_prepare_predictions_reads_uint8_masks_as_0_1():
    maps = torch.tensor([[[0, 1], [1, 0]], [[0, 51], [255, 1]]], dtype=torch.uint8)
    expected = torch.tensor([[[0, 1], [1, 0]], [[0, 0.2], [1, 1 / 255]]], dtype=torch.float64)
    torch.testing.assert_close(prepare_predictions(maps, [0, 1]), expected, rtol=0, atol=0)


def test_other_integer_predictions_stay_type_errors():
    message = (
        "Predictions must be floating point maps in [0, 1] or uint8 maps (0/1 masks if the map's max is at most 1, "
        "else grey levels 0..255 read as level / 255) or bool masks, got torch.int64."
    )
    with pytest.raises(TypeError, match=_exactly(message)):
        compute_sod_metrics([torch.ones(4, 4, dtype=torch.int64)], [torch.ones(4, 4)])


# --- num_labels of the semantic metrics -------------------------------------------------------------------------


def test_semantic_module_without_num_labels_fails_at_load(tmp_path):
    """Before: `load("semantic")` succeeded and only `compute` failed."""
    message = (
        "`num_labels` is required: pass the number of classes K, e.g. "
        '`sam_peft.metrics.load("semantic", num_labels=K)`.'
    )
    with pytest.raises(ValueError, match=_exactly(message)):
        sam_peft.metrics.load("semantic", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=_exactly(message)):
        evaluate.load(sam_peft.metrics.path("semantic"), cache_dir=str(tmp_path))


def test_semantic_metrics_need_a_positive_num_labels():
    required = "`num_labels` is required: pass the number of classes K, e.g. `SemanticMetrics(num_labels=K)`."
    with pytest.raises(ValueError, match=_exactly(required)):
        SemanticMetrics(num_labels=None)
    positive = "`num_labels` must be a positive int (the number of classes), got 0."
    with pytest.raises(ValueError, match=_exactly(positive)):
        SemanticMetrics(num_labels=0)
    metrics = SemanticMetrics(num_labels=np.int64(3))
    assert metrics.num_labels == 3 and type(metrics.num_labels) is int
    metrics.update([torch.zeros(2, 2, dtype=torch.long)], [torch.zeros(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match=re.escape("got 2.5")):
        metrics.compute(num_labels=2.5)


def test_semantic_module_by_path_and_compute_override(tmp_path):
    preds = [torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 3], [0, 2]])]
    refs = [torch.tensor([[0, 1], [2, 1]]), torch.tensor([[1, 3], [0, 3]])]
    module = evaluate.load(sam_peft.metrics.path("semantic"), num_labels=4, cache_dir=str(tmp_path))
    results = module.compute(predictions=preds, references=refs)
    assert results == compute_semantic_metrics(preds, refs, num_labels=4)
    # (reference, prediction) pixels: (0,0) (1,1) (2,2) (1,2); (1,1) (3,3) (0,0) (3,2). IoU = TP / (ref + pred - TP):
    # class 0: 2 / (2 + 2 - 2); 1: 2 / (3 + 2 - 2); 2: 1 / (1 + 3 - 1); 3: 1 / (2 + 1 - 1).
    assert results["per_category_iou"] == [1.0, 2 / 3, 1 / 3, 0.5]
    # `compute` overrides the num_labels given to `load`.
    module = sam_peft.metrics.load("semantic", num_labels=3, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="The reference of image 1 contains label id 3, but num_labels is 3"):
        module.compute(predictions=preds, references=refs)
    assert module.compute(predictions=preds, references=refs, num_labels=4) == results
