"""SOD and binary mask metrics against PySODMetrics 1.6 (the reference), plus inputs, streaming and errors."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from sam_peft.metrics import (
    SODMetrics,
    compute_sod_metrics,
    e_measure,
    f_measure,
    mean_absolute_error,
    normalize_predictions,
    s_measure,
    weighted_f_measure,
)
from sam_peft.metrics.sod import device, host
from sam_peft.metrics.sod import metrics as metrics_module
from sam_peft.metrics.sod.definitions import ImageStatistics, nearest_foreground, weighted_f_sums
from sam_peft.metrics.sod.inputs import binarize_references, check_predictions
from sam_peft.metrics.sod.threads import HostThreads

DATASET_TOLERANCE = 1e-10  # the acceptance criterion (issue 18)
IMAGE_TOLERANCE = 1e-10  # observed agreement is ~1e-13


def _disk(height, width, center, radius):
    rows, cols = np.mgrid[:height, :width]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 < radius**2


def generated_cases(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, reference) pairs: random maps in several sizes and dtypes, empty and full ground truth,
    tiny and border objects, constant, binary and perfect predictions."""
    rng = np.random.default_rng(seed)
    cases = []
    for height, width in [(24, 31), (37, 53), (17, 17), (40, 12), (2, 9)]:
        for dtype in (np.float32, np.float64, np.uint8):
            gt = _disk(height, width, rng.integers(0, [height, width]), rng.integers(1, max(height, width)))
            noise = rng.random((height, width))
            pred = np.clip(0.6 * gt + 0.5 * noise, 0, 1)
            pred = (pred * 255).astype(np.uint8) if dtype == np.uint8 else pred.astype(dtype)
            ref = (gt * 255).astype(np.uint8) if dtype == np.uint8 else gt.astype(np.float32)
            cases.append((pred, ref))
    height, width = 29, 35
    noise = rng.random((height, width)).astype(np.float32)
    empty = np.zeros((height, width), dtype=bool)
    full = np.ones((height, width), dtype=bool)
    tiny = empty.copy()
    tiny[7, 9] = True
    pair = empty.copy()
    pair[20, 3:5] = True
    right_edge = empty.copy()
    right_edge[4:9, width - 1] = True  # centroid on the last column: PySODMetrics' S-alpha is NaN
    bottom_edge = empty.copy()
    bottom_edge[height - 1, 10:14] = True
    blob = _disk(height, width, (14, 17), 8)
    l_shape = empty.copy()
    l_shape[2:13, 2:5] = True
    l_shape[2:5, 2:13] = True
    saturated = empty.copy()
    saturated[:5, :] = True
    saturated[15:26, :6] = True
    cases += [
        (noise, empty),
        (noise, full),
        (np.zeros_like(noise), empty),
        (np.ones_like(noise), full),
        (noise, tiny),
        (noise, pair),
        (noise, right_edge),
        (noise, bottom_edge),
        (blob.astype(np.float32), blob),  # perfect
        (1 - blob.astype(np.float32), blob),  # inverted
        (np.full_like(noise, 0.5), blob),  # constant (dyadic, so the reference's sums are exact)
        (np.zeros_like(noise), blob),
        (blob, blob),  # bool prediction
        (np.where(blob, 0.9, 0.1).astype(np.float32), blob),
        ((noise * 255).astype(np.uint8), (blob * 255).astype(np.uint8)),
        # Exact zeros, as in saturated predictions: the bottom-right quadrant (around the L-shaped object's
        # centroid) holds neither foreground nor prediction, while its rows do hold prediction further left.
        (np.where(saturated, noise, 0).astype(np.float32), l_shape),
        (np.where(_disk(height, width, (20, 25), 7), noise, 0).astype(np.float32), blob),
    ]
    return cases


def _prepared(pred: np.ndarray, ref: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's view of a case: raw prediction, (optionally min-max normalised) prediction, bool mask."""
    raw = pred / 255 if pred.dtype == np.uint8 else pred.astype(np.float64)
    gt = ref > 128 if ref.dtype == np.uint8 else ref > 0.5
    norm = raw
    if normalize and raw.max() != raw.min():
        norm = (raw - raw.min()) / (raw.max() - raw.min())
    return raw, norm, gt


@pytest.fixture(scope="module")
def pysod():
    """PySODMetrics, the reference of the parity tests: they are skipped without it, the others do not need it."""
    return pytest.importorskip("py_sod_metrics")


def _s_alpha_without_empty_regions(pysod, pred: np.ndarray, gt: np.ndarray) -> float:
    """PySODMetrics' S-alpha computed with its own functions, except that a zero-area quadrant counts 0
    instead of making the score NaN (the one deliberate difference)."""
    measure = pysod.Smeasure()
    height, width = gt.shape
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    cy, cx = int(cy) + 1, int(cx) + 1
    weights = [cx * cy, cy * (width - cx), (height - cy) * cx]
    weights = [w / (height * width) for w in weights] + [1 - sum(w / (height * width) for w in weights)]
    blocks = [(slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, width))]
    blocks += [(slice(cy, height), slice(0, cx)), (slice(cy, height), slice(cx, width))]
    region = sum(w * measure.ssim(pred[b], gt[b]) for w, b in zip(weights, blocks, strict=True) if pred[b].size)
    return max(0.0, 0.5 * measure.object(pred, gt) + 0.5 * region)


def pysod_results(pysod, cases, normalize: bool = True, weighted_f_beta: float = 1.0) -> tuple[dict, dict]:
    """Dataset values and per-image values of PySODMetrics on `cases`, mapped to our names."""
    M = pysod
    sm, em, wfm, mae = M.Smeasure(), M.Emeasure(), M.WeightedFmeasure(beta=weighted_f_beta), M.MAE()
    fm = M.FmeasureV2({"f": M.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    per_image_handlers = {
        name: handler(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True)
        for name, handler in (("iou", M.IOUHandler), ("dice", M.DICEHandler), ("accuracy", M.OverallAccuracyHandler))
    }
    pooled_handlers = {
        name: handler(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=False)
        for name, handler in (("ber", M.BERHandler), ("tpr", M.TPRHandler), ("tnr", M.TNRHandler))
    }
    binary = M.FmeasureV2({**per_image_handlers, **pooled_handlers})
    s_values = []
    for pred, ref in cases:
        raw, norm, gt = _prepared(pred, ref, normalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the reference's NaN S-alpha cases
            for metric in (sm, em, wfm, mae, fm):
                metric.step(norm, gt, normalize=False)
        if math.isnan(sm.sms[-1]):
            sm.sms[-1] = _s_alpha_without_empty_regions(pysod, norm, gt)
        s_values.append(sm.sms[-1])
        binary.step(raw, gt, normalize=False)
    # The other documented difference: E-phi above 1 (PySODMetrics divides by H W - 1) is capped at 1.
    e_curves = np.minimum(np.array(em.changeable_ems), 1)
    e_adaptive = np.minimum(np.array(em.adaptive_ems), 1)
    e_curve = e_curves.mean(axis=0)
    f = fm.get_results()["f"]
    b = binary.get_results()
    ious = np.array(per_image_handlers["iou"].binary_results)
    results = {
        "s_alpha": sm.get_results()["sm"],
        "e_phi": e_curve.mean(),
        "e_phi_adaptive": e_adaptive.mean(),
        "e_phi_max": e_curve.max(),
        "f_beta_w": wfm.get_results()["wfm"],
        "mae": mae.get_results()["mae"],
        "f_beta_adaptive": f["adaptive"],
        "f_beta_mean": f["dynamic"].mean(),
        "f_beta_max": f["dynamic"].max(),
        "iou": b["iou"]["binary"],
        "dice": b["dice"]["binary"],
        "jaccard_thresholded": np.where(ious < 0.65, 0, ious).mean(),
        "accuracy": b["accuracy"]["binary"],
        "ber": b["ber"]["binary"],
        "shadow_error": 1 - b["tpr"]["binary"],
        "non_shadow_error": 1 - b["tnr"]["binary"],
    }
    per_image = {
        "s_alpha": np.array(s_values),
        "e_adaptive": e_adaptive,
        "e_curve": e_curves,
        "f_beta_w": np.array(wfm.weighted_fms, dtype=np.float64),
        "mae": np.array(mae.maes),
        "f_adaptive": np.array(fm._metric_handlers["f"].adaptive_results),
        "f_curve": np.array(fm._metric_handlers["f"].dynamic_results),
    }
    return results, per_image


def _torch_cases(cases):
    return [torch.from_numpy(p) for p, _ in cases], [torch.from_numpy(r) for _, r in cases]


@pytest.fixture(scope="module")
def cases():
    return generated_cases()


@pytest.mark.parametrize("normalize", [True, False])
def test_every_value_equals_pysodmetrics(pysod, cases, normalize):
    expected, _ = pysod_results(pysod, cases, normalize=normalize)
    preds, refs = _torch_cases(cases)
    results = compute_sod_metrics(preds, refs, normalize=normalize, chunk_size=5)
    assert set(results) == set(expected)
    for name, value in results.items():
        assert isinstance(value, float)
        assert value == pytest.approx(float(expected[name]), abs=DATASET_TOLERANCE), name


def test_weighted_f_beta_is_a_parameter(pysod, cases):
    expected, _ = pysod_results(pysod, cases, weighted_f_beta=0.3)
    preds, refs = _torch_cases(cases)
    results = compute_sod_metrics(preds, refs, weighted_f_beta=0.3)
    assert results["f_beta_w"] == pytest.approx(expected["f_beta_w"], abs=DATASET_TOLERANCE)
    assert results["f_beta_w"] != pytest.approx(compute_sod_metrics(preds, refs)["f_beta_w"], abs=1e-3)


def test_per_image_values_equal_pysodmetrics(pysod, cases):
    _, expected = pysod_results(pysod, cases)
    for index, (pred, ref) in enumerate(cases):
        _, norm, gt = _prepared(pred, ref, normalize=True)
        norm, gt = torch.from_numpy(norm)[None], torch.from_numpy(gt)[None]
        e_adaptive, e_curve = e_measure(norm, gt)
        f_adaptive, f_curve = f_measure(norm, gt)
        ours = {
            "s_alpha": s_measure(norm, gt),
            "e_adaptive": e_adaptive,
            "e_curve": e_curve,
            "f_beta_w": weighted_f_measure(norm, gt),
            "mae": mean_absolute_error(norm, gt),
            "f_adaptive": f_adaptive,
            "f_curve": f_curve,
        }
        _assert_image_values_equal(ours, expected, index)


def _assert_image_values_equal(ours: dict[str, torch.Tensor], expected: dict[str, np.ndarray], index: int) -> None:
    """Our values of a one-image batch equal PySODMetrics' values of image `index` (`pysod_results`' per image)."""
    for name, value in ours.items():
        np.testing.assert_allclose(value[0].numpy(), expected[name][index], rtol=0, atol=IMAGE_TOLERANCE, err_msg=name)


def test_reference_is_nan_where_we_drop_empty_regions(pysod):
    """The documented difference: PySODMetrics' S-alpha is NaN when the centroid is on the last column."""
    pred = np.random.default_rng(1).random((12, 10))
    gt = np.zeros((12, 10), dtype=bool)
    gt[3:6, 9] = True
    reference = pysod.Smeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reference.step(pred, gt, normalize=False)
    assert math.isnan(reference.get_results()["sm"])
    ours = s_measure(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None]).item()
    assert ours == pytest.approx(_s_alpha_without_empty_regions(pysod, pred, gt), abs=IMAGE_TOLERANCE)


def test_reference_exceeds_one_where_we_cap_e_phi(pysod):
    """The documented difference: PySODMetrics divides E-phi's alignment sum by H W - 1, so a perfect map scores
    H W / (H W - 1); here 1."""
    gt = np.zeros((3, 4), dtype=bool)
    gt[1, 1:3] = True
    reference = pysod.Emeasure()
    reference.step(gt.astype(np.float64), gt, normalize=False)
    assert reference.adaptive_ems[0] == pytest.approx(12 / 11, abs=1e-12)
    adaptive, curve = e_measure(torch.from_numpy(gt.astype(np.float64))[None], torch.from_numpy(gt)[None])
    assert adaptive.item() == 1.0 and curve.max().item() == 1.0
    np.testing.assert_allclose(curve[0].numpy(), np.minimum(reference.changeable_ems[0], 1), rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_full_resolution_images_equal_pysodmetrics(pysod, dtype):
    rng = np.random.default_rng(3)
    cases = []
    for radius in (4, 40, 150):
        gt = _disk(352, 352, rng.integers(60, 290, 2), radius)
        pred = np.clip(0.7 * gt + 0.4 * rng.random((352, 352)), 0, 1)
        pred = (pred * 255).astype(np.uint8) if dtype == np.uint8 else pred.astype(dtype)
        cases.append((pred, (gt * 255).astype(np.uint8)))
    expected, _ = pysod_results(pysod, cases)
    results = compute_sod_metrics(*_torch_cases(cases))
    for name, value in results.items():
        assert value == pytest.approx(float(expected[name]), abs=DATASET_TOLERANCE), name


def test_hand_computed_binary_metrics():
    # 2 x 4 image: prediction 1 1 0 0 / 0 0 0 0, reference 1 0 0 0 / 1 0 0 0 -> TP 1, FP 1, FN 1, TN 5.
    pred = torch.tensor([[0.9, 0.6, 0.2, 0.0], [0.4, 0.1, 0.0, 0.5]])
    ref = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    # Second image: perfect.
    results = compute_sod_metrics([pred, ref.float()], [ref, ref])
    assert results["iou"] == pytest.approx((1 / 3 + 1) / 2)
    assert results["dice"] == pytest.approx((2 / 4 + 1) / 2)
    assert results["jaccard_thresholded"] == pytest.approx((0 + 1) / 2)  # 1/3 < 0.65 counts as 0
    assert results["accuracy"] == pytest.approx((6 / 8 + 1) / 2)
    # BER pools the two images: TP 3, FN 1, TN 11, FP 1.
    assert results["shadow_error"] == pytest.approx(1 - 3 / 4)
    assert results["non_shadow_error"] == pytest.approx(1 - 11 / 12)
    assert results["ber"] == pytest.approx(1 - (3 / 4 + 11 / 12) / 2)


def test_binary_metrics_ignore_normalization():
    """IoU and BER threshold the raw probabilities: a prediction below 0.5 everywhere finds nothing."""
    ref = torch.zeros(6, 6, dtype=torch.bool)
    ref[1:4, 1:4] = True
    pred = ref.float() * 0.4
    results = compute_sod_metrics([pred], [ref])
    assert results["iou"] == 0 and results["shadow_error"] == 1
    assert results["mae"] == 0  # min-max normalised, the map is perfect


def test_nearest_foreground_breaks_ties_like_scipy():
    """The device engine's torch transform and the host engine's transform pick the same nearest pixel: among
    equidistant foreground pixels, the smallest column and then the smallest row."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        height, width = rng.integers(1, 30, 2)
        masks = rng.random((3, height, width)) < rng.uniform(0.01, 0.4)
        masks[:, rng.integers(height), rng.integers(width)] = True
        index, distance = nearest_foreground(torch.from_numpy(masks))
        for mask, mask_index, mask_distance in zip(masks, index, distance, strict=True):
            squared, host_index = host.nearest_foreground_host(mask, np.empty((2, height, width), np.int32))
            assert np.array_equal(mask_index.numpy(), host_index)
            np.testing.assert_allclose(mask_distance.numpy(), np.sqrt(squared), rtol=1e-15, atol=0)
        b, row, col = (int(rng.integers(n)) for n in (3, height, width))
        fg_rows, fg_cols = np.nonzero(masks[b])
        d2 = (fg_rows - row) ** 2 + (fg_cols - col) ** 2
        best = min((c, r) for r, c, d in zip(fg_rows, fg_cols, d2, strict=True) if d == d2.min())
        assert divmod(int(index[b, row, col]), int(width)) == (best[1], best[0])


def _host_statistics(preds, gts, normalize: bool = True, threads: int = 1) -> ImageStatistics:
    """The host engine's statistics of (H, W) numpy predictions and bool masks."""
    images = [host.HostImage(pred, gt, index) for index, (pred, gt) in enumerate(zip(preds, gts, strict=True))]
    return host.image_statistics(images, normalize, 0.5, HostThreads(threads))


def _assert_same_statistics(actual: ImageStatistics, expected: ImageStatistics) -> None:
    """Counts exactly equal, sums to 1e-12."""
    for name in ("counts", "adaptive", "curve"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    for name in ("error_sum", "weighted_sums"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=1e-12, atol=1e-12)
    for name in ("n", "p", "pp", "g", "pg", "fg_pp"):
        actual_sums, expected_sums = getattr(actual.quadrants, name), getattr(expected.quadrants, name)
        torch.testing.assert_close(actual_sums, expected_sums, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("normalize", [True, False])
def test_device_engine_equals_the_host_engine_and_pysodmetrics(pysod, cases, normalize):
    """The device engine (batched torch, what runs on a GPU) called on CPU tensors: the same statistics as the host
    engine on every case (uint8, bool and float maps), and per-image values equal to PySODMetrics' (the dataset
    values without normalisation are compared in `test_every_value_equals_pysodmetrics`)."""
    expected = pysod_results(pysod, cases)[1] if normalize else None
    for index, (pred, ref) in enumerate(cases):
        pred_tensor = torch.from_numpy(pred)[None]
        gt = binarize_references(torch.from_numpy(ref)[None], [index])
        check_predictions(pred_tensor, [index])
        stats = device.batch_statistics(pred_tensor, gt, normalize)
        _assert_same_statistics(stats, _host_statistics([pred], gt.numpy(), normalize))
        if not normalize:
            continue  # S-alpha's one-pass variance of maps constant inside and outside the object: ~1e-9 apart
        values = metrics_module.per_image_values(stats)
        names = {"e_adaptive": "e_phi_adaptive", "e_curve": "e_phi_curve", "f_adaptive": "f_beta_adaptive"}
        names.update(f_curve="f_beta_curve", s_alpha="s_alpha", f_beta_w="f_beta_w", mae="mae")
        _assert_image_values_equal({name: values[ours] for name, ours in names.items()}, expected, index)


def _random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """(count, H, W) bool masks of a few disks and rectangles, some on the border, some single pixels."""
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            kind = rng.integers(3)
            if kind == 0:
                mask |= _disk(height, width, rng.integers(-3, [height + 3, width + 3]), rng.integers(1, 12))
            elif kind == 1:
                top, left = rng.integers(0, [height, width])
                mask[top : top + rng.integers(1, 15), left : left + rng.integers(1, 15)] = True
            else:
                mask[rng.integers(height), rng.integers(width)] = True
        mask[rng.integers(height), rng.integers(width)] = True
    return masks


def test_weighted_f_sums_on_the_host_equal_the_batched_sums():
    """The host engine's sums (the host transform image by image, in threads; smoothing only the foreground's box;
    decay looked up from squared distances) equal the definition's batched torch sums over whole images, also for
    objects on the border, and do not depend on the number of threads."""
    rng = np.random.default_rng(4)
    for height, width in [(40, 40), (23, 57), (64, 31)]:
        gt = _random_masks(rng, 6, height, width)
        gt[0] = False  # no foreground: zeros
        pred = rng.random(gt.shape)
        expected = weighted_f_sums(torch.from_numpy(np.abs(pred - gt)), torch.from_numpy(gt))
        single, threaded = (_host_statistics(pred, gt, normalize=False, threads=n).weighted_sums for n in (1, 3))
        torch.testing.assert_close(single, expected, rtol=1e-12, atol=0)
        assert torch.equal(single, threaded)


def test_threads_give_the_single_thread_results(cases):
    """`num_threads` changes where the per-image work runs, never the values."""
    preds, refs = _torch_cases(cases)
    single = SODMetrics(num_threads=1)
    single.update(preds, refs)
    threaded = SODMetrics(num_threads=4)
    threaded.update(preds, refs)
    restored = pickle.loads(pickle.dumps(threaded))  # with statistics not reduced yet
    assert threaded.compute() == single.compute()
    assert restored.compute() == single.compute()
    with pytest.raises(ValueError, match="num_threads must be at least 1"):
        SODMetrics(num_threads=0)


def test_update_runs_torch_on_one_thread_and_restores_the_count(cases, monkeypatch):
    """Torch's parallel regions stall when another process takes a core, so `update` runs torch on one thread (its
    parallelism is in its own threads) and gives the caller's count back, also when it raises."""
    preds, refs = _torch_cases(cases)
    seen = []

    def per_image_values(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return reduce(*args, **kwargs)

    reduce = metrics_module.per_image_values
    monkeypatch.setattr(metrics_module, "per_image_values", per_image_values)
    monkeypatch.setattr(metrics_module, "_IMAGES_PER_REDUCTION", 4)  # reduced during `update`
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metrics = SODMetrics()
        metrics.update(preds, refs)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="Prediction 1 has values outside"):
            metrics.update([preds[0], preds[1] + 2], refs[:2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_level_histograms_give_the_statistics_of_the_pixels():
    """uint8 and bool maps take the host engine's histogram path; it equals its per-pixel path on the same values
    and the device engine."""
    rng = np.random.default_rng(5)
    for height, width in [(31, 17), (8, 45)]:
        gt = _random_masks(rng, 5, height, width)
        gt[0] = False  # empty
        gt[1] = True  # full
        levels = rng.integers(0, 256, (5, height, width), dtype=np.uint8)
        levels[2] = 37  # constant
        levels[3] = np.where(gt[3], 200, 0)  # exact zeros outside the object
        for normalize in (True, False):
            for maps, values in ((levels, np.arange(256) / 255), (levels > 99, np.arange(256) > 0)):
                stats = _host_statistics(maps, gt, normalize)
                _assert_same_statistics(stats, _host_statistics(values[maps.astype(np.int64)] * 1.0, gt, normalize))
                on_device = device.batch_statistics(torch.from_numpy(maps), torch.from_numpy(gt), normalize)
                _assert_same_statistics(stats, on_device)


def test_uint8_and_float_maps_give_the_same_values(cases):
    rng = np.random.default_rng(6)
    preds = [torch.from_numpy(rng.integers(0, 256, (35, 29), dtype=np.uint8)) for _ in range(7)]
    preds += [torch.from_numpy(p) for p, _ in cases if p.dtype == np.uint8]
    refs = [torch.from_numpy(_random_masks(rng, 1, 35, 29)[0]) for _ in range(7)]
    refs += [torch.from_numpy(r) for p, r in cases if p.dtype == np.uint8]
    for normalize in (True, False):
        as_uint8 = compute_sod_metrics(preds, refs, normalize=normalize)
        as_float = compute_sod_metrics([p.to(torch.float64) / 255 for p in preds], refs, normalize=normalize)
        assert as_uint8 == pytest.approx(as_float, abs=1e-12)


def test_reductions_in_several_parts_give_the_same_values(cases, monkeypatch):
    preds, refs = _torch_cases(cases)
    expected = compute_sod_metrics(preds, refs, chunk_size=2)
    monkeypatch.setattr(metrics_module, "_IMAGES_PER_REDUCTION", 3)
    assert compute_sod_metrics(preds, refs, chunk_size=2) == pytest.approx(expected, abs=1e-12)


def test_inputs_of_several_sizes_dtypes_and_containers(cases):
    preds, refs = _torch_cases(cases)
    expected = compute_sod_metrics(preds, refs)
    as_numpy = compute_sod_metrics([p.numpy() for p in preds], [r.numpy() for r in refs], chunk_size=2)
    reordered = compute_sod_metrics(preds[::-1], refs[::-1])
    for name in expected:
        assert as_numpy[name] == pytest.approx(expected[name], abs=1e-12)
        assert reordered[name] == pytest.approx(expected[name], abs=1e-12)
    stacked = torch.rand(3, 10, 12)
    masks = stacked > 0.6
    one = compute_sod_metrics(stacked, masks)
    listed = compute_sod_metrics(stacked.tolist(), masks.tolist())
    assert one == pytest.approx(listed, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_read_as_their_values(dtype):
    """Half precision maps (bfloat16 cannot be viewed by numpy) give the values of the same numbers in float32."""
    generator = torch.Generator().manual_seed(7)
    preds = [torch.rand(size, generator=generator).to(dtype) for size in [(9, 13), (9, 13), (6, 4)]]
    refs = [torch.rand(p.shape, generator=generator) > 0.5 for p in preds]
    assert compute_sod_metrics(preds, refs) == compute_sod_metrics([p.float() for p in preds], refs)


def test_streaming_equals_one_shot(cases):
    preds, refs = _torch_cases(cases)
    metrics = SODMetrics()
    for start in range(0, len(preds), 4):
        metrics.update(preds[start : start + 4], refs[start : start + 4])
    streamed = metrics.compute()
    assert streamed == pytest.approx(compute_sod_metrics(preds, refs), abs=1e-12)
    assert metrics.num_images == len(preds)


def test_predictions_that_require_grad(cases):
    preds, refs = _torch_cases(cases)
    preds = [p.float().requires_grad_() if p.is_floating_point() else p for p in preds]
    expected = compute_sod_metrics([p.detach() for p in preds], refs)
    assert compute_sod_metrics(preds, refs) == pytest.approx(expected, abs=1e-12)


def test_normalize_predictions_is_per_image_min_max():
    pred = torch.tensor([[[0.2, 0.6], [0.4, 0.2]], [[0.3, 0.3], [0.3, 0.3]]], dtype=torch.float64)
    out = normalize_predictions(pred)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1.0], [0.5, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out[1], pred[1])  # constant maps stay as they are
    assert pred[0, 0, 1] == 0.6  # input untouched


def _with_nan(maps, image=None):
    """`maps` with one NaN pixel (in image `image` of a stack): once read as background, now an error."""
    maps = maps.clone() if isinstance(maps, torch.Tensor) else maps.copy()
    if image is None:
        maps[1, 2] = math.nan
    else:
        maps[image, 1, 2] = math.nan
    return maps


@pytest.mark.parametrize(
    ("preds", "refs", "message"),
    [
        ([], [], "must not be empty"),
        ([torch.rand(4, 4)], [], "must not be empty"),
        ([torch.rand(4, 4)] * 2, [torch.ones(4, 4)], "Got 2 predictions but 1 references"),
        ([torch.rand(4, 4), torch.rand(4, 5)], [torch.ones(4, 4), torch.ones(5, 4)], "Prediction 1 has shape"),
        ([torch.rand(4, 4), torch.rand(3, 4, 4)], [torch.ones(4, 4)] * 2, "Prediction 1 must be a 2-D"),
        ([torch.rand(4, 4), torch.full((4, 4), math.nan)], [torch.ones(4, 4)] * 2, "Prediction 1 contains NaN"),
        ([torch.rand(4, 4), torch.rand(4, 4) + 1], [torch.ones(4, 4)] * 2, "Prediction 1 has values outside"),
        ([-torch.rand(4, 4)], [torch.ones(4, 4)], "Prediction 0 has values outside"),
        (
            [torch.rand(4, 4)] * 2,
            [torch.ones(4, 4, dtype=torch.uint8), torch.full((4, 4), 7)],
            "Reference 1 \\(torch.int64\\) has the values \\{7\\}",
        ),
        ([torch.rand(4, 4)], [torch.full((4, 4), 2)], "Reference 0 \\(torch.int64\\) has the values \\{2\\}"),
        ([torch.rand(4, 4), torch.rand(0, 0)], [torch.ones(4, 4), torch.ones(0, 0)], "Prediction 1 is empty"),
        ([torch.rand(4, 4)] * 2, [torch.ones(4, 4), _with_nan(torch.zeros(4, 4))], "Reference 1 contains NaN"),
        ([torch.rand(3, 3), torch.rand(4, 4)], [torch.ones(3, 3), _with_nan(np.ones((4, 4)))], "Reference 1 contains"),
        (torch.rand(3, 4, 4), _with_nan(torch.zeros(3, 4, 4), image=2), "Reference 2 contains NaN"),
        (np.full((2, 4, 4), 0.5), _with_nan(np.zeros((2, 4, 4), np.float32), image=1), "Reference 1 contains NaN"),
        (None, [torch.ones(4, 4)], "`predictions` is missing"),
        ("not maps", [torch.ones(4, 4)], "must be a list of H x W maps"),
    ],
)
def test_bad_inputs_raise_value_errors(preds, refs, message):
    metrics = SODMetrics()
    with pytest.raises(ValueError, match=message):
        metrics.update(preds, refs)


def test_a_reference_with_nan_is_refused_before_any_image_is_counted():
    metrics = SODMetrics()
    refs = [torch.ones(5, 5), torch.full((5, 5), math.nan, dtype=torch.float64)]
    with pytest.raises(ValueError, match="Reference 1 contains NaN"):
        metrics.update([torch.rand(5, 5), torch.rand(5, 5)], refs)
    with pytest.raises(ValueError, match="Reference 0 contains NaN"):
        compute_sod_metrics([torch.rand(5, 5)], [np.full((5, 5), math.nan, np.float32)])
    assert metrics.num_images == 0


def test_integer_predictions_raise_type_error():
    with pytest.raises(TypeError, match="floating point maps in \\[0, 1\\] or uint8"):
        compute_sod_metrics([torch.ones(4, 4, dtype=torch.int64)], [torch.ones(4, 4)])


def test_failed_update_leaves_the_state_unchanged():
    metrics = SODMetrics(chunk_size=1)
    good = [torch.rand(5, 5)], [torch.rand(5, 5) > 0.5]
    metrics.update(*good)
    before = metrics.compute()
    with pytest.raises(ValueError, match="Prediction 1 has values outside"):
        metrics.update([torch.rand(5, 5), torch.rand(5, 5) * 3], [torch.ones(5, 5)] * 2)
    assert metrics.num_images == 1
    assert metrics.compute() == before


def test_compute_without_images_raises():
    with pytest.raises(ValueError, match="No images were added"):
        SODMetrics().compute()
