"""Throughput of the batched torch SOD metrics relative to PySODMetrics, measured side by side.

100 images of 352 x 352 by default (the issue; benchmarks.md uses `--images 200`), uint8 maps and masks as read
from PNG files. PySODMetrics steps through the images one by one with numpy (its normal use), once for S-alpha,
E-phi, weighted F and MAE (the benchmark row of benchmarks.md) and once for the whole set our module returns (plus
F-measure, IoU, Dice, accuracy, BER). Ours gets the same images as one (B, H, W) tensor and always computes the
whole set (`SODMetrics`, what the evaluate module runs), so the four-metric ratio is a lower bound. With
`--dtype float32` (or float64) ours gets the maps as probabilities `map / 255`, as a model's output would be,
which takes its per-pixel path instead of the 256-level histograms of uint8 maps; PySODMetrics still reads the
uint8 maps (float32 rounding moves the values by about 1e-8). Runs alternate A B C A B C after a warm-up and
the medians are reported (benchmarks.md). PySODMetrics runs on one thread (numpy); ours runs with `--threads`
torch threads (default 1, the like-for-like comparison) and, on CPU, again with `--parallel-threads` (default:
every core), which is what a user gets by default: the images' distance transforms then run in parallel. On
CPU, a third run of ours at `--threads` uses scipy's feature transform instead of the compiled one
(`sam_peft.metrics._edt`), which is what an install without a C compiler gets, and the transform alone is timed
both ways. The last line printed is the four-metric ratio, then the whole-set ratio, at `--threads`.

    python benchmarks/metrics_speed.py
    python benchmarks/metrics_speed.py --dtype float32
    python benchmarks/metrics_speed.py --device cuda --threads 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import py_sod_metrics
import torch
from _common import run_record

import sam_peft.metrics as metrics
from sam_peft.metrics import _distance


def make_images(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ellipses of varied size and position, predicted as a blurred, noisy copy: (count, size, size) uint8."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] / size
    preds, gts = [], []
    for _ in range(count):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.02, 0.35, 2)
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2
        gt = inside < 1
        pred = np.clip(1.2 / (1 + inside**2) + 0.15 * rng.standard_normal((size, size)), 0, 1)
        preds.append((pred * 255).astype(np.uint8))
        gts.append((gt * 255).astype(np.uint8))
    return np.stack(preds), np.stack(gts)


def pysod_four(preds: np.ndarray, gts: np.ndarray) -> dict[str, float]:
    M = py_sod_metrics
    s, e, w, m = M.Smeasure(), M.Emeasure(), M.WeightedFmeasure(), M.MAE()
    for pred, gt in zip(preds, gts, strict=True):
        for metric in (s, e, w, m):
            metric.step(pred, gt)
    return {
        "s_alpha": s.get_results()["sm"],
        "e_phi": e.get_results()["em"]["curve"].mean(),
        "f_beta_w": w.get_results()["wfm"],
        "mae": m.get_results()["mae"],
    }


def pysod_whole_set(preds: np.ndarray, gts: np.ndarray) -> None:
    M = py_sod_metrics
    s, e, w, m = M.Smeasure(), M.Emeasure(), M.WeightedFmeasure(), M.MAE()
    f = M.FmeasureV2({"f": M.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    binary = dict(with_dynamic=False, with_adaptive=False, with_binary=True)
    handlers = {name: cls(**binary) for name, cls in (("iou", M.IOUHandler), ("dice", M.DICEHandler))}
    handlers.update(accuracy=M.OverallAccuracyHandler(**binary), ber=M.BERHandler(**binary, sample_based=False))
    b = M.FmeasureV2(handlers)
    for pred, gt in zip(preds, gts, strict=True):
        for metric in (s, e, w, m, f):
            metric.step(pred, gt)
        b.step(pred / 255, gt > 128, normalize=False)


def ours(preds: torch.Tensor, gts: torch.Tensor, chunk_size: int) -> dict[str, float]:
    sod = metrics.SODMetrics(chunk_size=chunk_size)
    sod.update(preds, gts)
    return sod.compute()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def with_threads(count: int, fn):
    """`fn` run with `count` torch threads (the metrics' CPU threads follow torch's setting)."""

    def run():
        torch.set_num_threads(count)
        return fn()

    return run


def with_scipy_transform(fn):
    """`fn` run with scipy's feature transform, as where the compiled extension is not built."""

    def run():
        with mock.patch.object(_distance, "_compiled_transform", None):
            return fn()

    return run


def transform_all(masks: np.ndarray, out: np.ndarray) -> None:
    """The weighted F's feature transform of every (H, W) bool mask with foreground, one after another."""
    for mask in masks:
        _distance.nearest_foreground_host(mask, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of ours' like-for-like run")
    parser.add_argument(
        "--parallel-threads", type=int, default=os.cpu_count() or 1, help="torch threads of ours' second CPU run"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("uint8", "float32", "float64"), default="uint8", help="ours' maps")
    parser.add_argument("--output", default="benchmarks/results/metrics_speed.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # PySODMetrics' NaN S-alpha corner case

    preds_np, gts_np = make_images(args.images, args.size)
    preds, gts = torch.from_numpy(preds_np).to(args.device), torch.from_numpy(gts_np).to(args.device)
    if args.dtype != "uint8":
        preds = (preds.to(torch.float64) / 255).to(getattr(torch, args.dtype))
    four, whole = "pysodmetrics (S, E, wF, MAE)", "pysodmetrics (whole set)"
    mine = f"ours, whole set, {args.threads} thread{'s' * (args.threads > 1)}"
    runs = {
        four: lambda: pysod_four(preds_np, gts_np),
        whole: lambda: pysod_whole_set(preds_np, gts_np),
        mine: with_threads(args.threads, lambda: ours(preds, gts, args.chunk_size)),
    }
    parallel = fallback = None
    if args.device == "cpu" and args.parallel_threads > args.threads:
        parallel = f"ours, whole set, {args.parallel_threads} threads"
        runs[parallel] = with_threads(args.parallel_threads, lambda: ours(preds, gts, args.chunk_size))
    if args.device == "cpu" and _distance.host_transform() == "compiled":
        fallback = f"{mine}, scipy transform"
        runs[fallback] = with_scipy_transform(runs[mine])
        masks = np.ascontiguousarray(gts_np[(gts_np > 128).any(axis=(1, 2))] > 128)
        out = np.empty((2, args.size, args.size), dtype=np.int32)
        runs["feature transform alone, compiled"] = lambda: transform_all(masks, out)
        runs["feature transform alone, scipy"] = with_scipy_transform(lambda: transform_all(masks, out))
    reference, result = pysod_four(preds_np, gts_np), runs[mine]()  # warm-up
    pysod_whole_set(preds_np[:2], gts_np[:2])
    for name in (parallel, fallback):
        if name is not None:
            runs[name]()
    max_difference = max(abs(reference[name] - result[name]) for name in reference)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, args.device))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.images} images of {args.size} x {args.size}, {args.dtype} maps for ours, device {args.device}, "
        f"feature transform on CPU: {_distance.host_transform()}"
    )
    print(f"{'run':49s} {'median s':>9s} {'ms / image':>11s}")
    for name, median in medians.items():
        print(f"{name:49s} {median:9.3f} {median / args.images * 1e3:11.3f}")
    print(f"largest difference from PySODMetrics over S-alpha, E-phi, weighted F, MAE: {max_difference:.2e}")
    ratios = {
        name: {"s_e_wf_mae": medians[four] / medians[name], "whole_set": medians[whole] / medians[name]}
        for name in (mine, parallel, fallback)
        if name is not None
    }

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = run_record("metrics_speed", args, args.device, skip=("output",))
    record.update(
        times_s=times,
        median_s=medians,
        speedup=ratios,
        max_abs_difference_from_pysodmetrics=max_difference,
        goal=">= 20x on CPU (benchmarks.md); >= 5x (issue 4)",
        feature_transform=_distance.host_transform(),
        compiled_over_scipy=None
        if fallback is None
        else {
            "whole_set": medians[fallback] / medians[mine],
            "transform_alone": medians["feature transform alone, scipy"] / medians["feature transform alone, compiled"],
        },
        numpy=np.__version__,
        machine=platform.machine(),
    )
    output.write_text(json.dumps(record, indent=2))
    if parallel is not None:
        print(
            f"speed-up over PySODMetrics with {args.parallel_threads} threads: "
            f"{ratios[parallel]['s_e_wf_mae']:.2f}x (S, E, wF, MAE), {ratios[parallel]['whole_set']:.2f}x (whole set)"
        )
    if fallback is not None:
        print(
            f"compiled transform over scipy's: {record['compiled_over_scipy']['transform_alone']:.2f}x alone, "
            f"{record['compiled_over_scipy']['whole_set']:.2f}x for the whole set with {args.threads} "
            f"thread{'s' * (args.threads > 1)}"
        )
    print(
        f"speed-up over PySODMetrics with {args.threads} thread{'s' * (args.threads > 1)}: "
        f"{ratios[mine]['s_e_wf_mae']:.2f}x (S, E, wF, MAE), {ratios[mine]['whole_set']:.2f}x (whole set)"
    )


if __name__ == "__main__":
    main()
