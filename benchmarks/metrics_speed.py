"""Throughput of the SOD metrics relative to PySODMetrics, measured side by side, idle and with a core taken.

Two inputs, 100 images each by default:
- uint8: 352 x 352 uint8 maps and 0/255 masks as read from PNG files, given to ours as one (B, H, W) tensor and to
  PySODMetrics image by image (its normal use).
- float stream: float32 probability maps (`--dtype`) of varied sizes (300..400 px per side, so that no two
  stack), as the evaluation loop passes them: a list of tensors, `update` per batch of 4, then one `compute`.
  PySODMetrics gets the same maps as float64 (exact copies of the float32 values), min-max normalised by numpy as
  its own reading of PNGs would (`normalize=False` then), so its values equal ours up to the order of summation.
PySODMetrics runs once for S-alpha, E-phi, weighted F and MAE (the benchmark row of benchmarks.md) and once for the
whole set ours returns (plus F-measure, IoU, Dice, accuracy, BER); ours always computes the whole set
(`SODMetrics`, what the evaluate module runs), so the four-metric ratio is a lower bound. Ours runs as a user gets
it (host engine threads over every available CPU, `--threads` to change), and again with scipy's feature transform
instead of the compiled one (`sam_peft.metrics.sod._edt`), which is what an install without a C compiler gets.

Every run is timed idle and loaded: loaded, a second process spins on one core (`while True: pass`) meanwhile, as
another job on a shared machine would. Runs alternate (idle block, loaded block, repeated) after a warm-up and the
medians are reported (benchmarks.md). The last lines printed are the ratios.

    python benchmarks/metrics_speed.py
    python benchmarks/metrics_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import py_sod_metrics
import torch
from _common import run_record

import sam_peft.metrics as metrics
from sam_peft.metrics.sod import host

FOUR = ("s_alpha", "e_phi", "f_beta_w", "mae")


def make_image(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse of random size and position, predicted as a blurred, noisy copy: (H, W) float probabilities in
    [0, 1] and the bool mask."""
    rows, cols = np.mgrid[:height, :width]
    rows, cols = rows / height, cols / width
    cy, cx = rng.uniform(0.2, 0.8, 2)
    ry, rx = rng.uniform(0.02, 0.35, 2)
    inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2
    pred = np.clip(1.2 / (1 + inside**2) + 0.15 * rng.standard_normal((height, width)), 0, 1)
    return pred, inside < 1


def uint8_images(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(count, size, size) uint8 maps and 0/255 masks, as read from PNG files."""
    rng = np.random.default_rng(seed)
    pairs = [make_image(rng, size, size) for _ in range(count)]
    return np.stack([(p * 255).astype(np.uint8) for p, _ in pairs]), np.stack([g * np.uint8(255) for _, g in pairs])


def float_stream(
    count: int, sizes: tuple[int, int], dtype: str = "float32", seed: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Probability maps of `dtype` and bool masks of sizes drawn from `sizes[0]..sizes[1]` per side."""
    rng = np.random.default_rng(seed)
    pairs = [make_image(rng, *rng.integers(sizes[0], sizes[1] + 1, 2)) for _ in range(count)]
    return [p.astype(dtype) for p, _ in pairs], [g for _, g in pairs]


def pysod(preds: list[np.ndarray], gts: list[np.ndarray], whole_set: bool) -> dict[str, float]:
    """PySODMetrics image by image: uint8 maps and 0/255 masks (its own reading), or float64 maps (normalised here,
    as its reading would) and bool masks."""
    M = py_sod_metrics
    s, e, w, m = M.Smeasure(), M.Emeasure(), M.WeightedFmeasure(), M.MAE()
    f = M.FmeasureV2({"f": M.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)})
    binary = dict(with_dynamic=False, with_adaptive=False, with_binary=True)
    handlers = {name: cls(**binary) for name, cls in (("iou", M.IOUHandler), ("dice", M.DICEHandler))}
    handlers.update(accuracy=M.OverallAccuracyHandler(**binary), ber=M.BERHandler(**binary, sample_based=False))
    b = M.FmeasureV2(handlers)
    measures = (s, e, w, m, f) if whole_set else (s, e, w, m)
    for pred, gt in zip(preds, gts, strict=True):
        if pred.dtype == np.uint8:
            for metric in measures:
                metric.step(pred, gt)
            raw, mask = pred / 255, gt > 128
        else:
            raw, mask = pred.astype(np.float64), gt
            low, high = raw.min(), raw.max()
            norm = (raw - low) / (high - low) if high > low else raw
            for metric in measures:
                metric.step(norm, mask, normalize=False)
        if whole_set:
            b.step(raw, mask, normalize=False)
    return {
        "s_alpha": s.get_results()["sm"],
        "e_phi": e.get_results()["em"]["curve"].mean(),
        "f_beta_w": w.get_results()["wfm"],
        "mae": m.get_results()["mae"],
        **(
            {"f_beta_max": f.get_results()["f"]["dynamic"].max(), "iou": b.get_results()["iou"]["binary"]}
            if whole_set
            else {}
        ),
    }


def ours(batches: list[tuple[object, object]], chunk_size: int, threads: int | None) -> dict[str, float]:
    sod = metrics.SODMetrics(chunk_size=chunk_size, num_threads=threads)
    for preds, gts in batches:
        sod.update(preds, gts)
    return sod.compute()


def with_scipy_transform(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` run with scipy's feature transform, as where the compiled extension is not built."""

    def run():
        with mock.patch.object(host, "_compiled_transform", None):
            return fn()

    return run


@contextlib.contextmanager
def busy_core(loaded: bool) -> Iterator[None]:
    """With `loaded`, a second process keeps one core busy meanwhile."""
    if not loaded:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)  # started and spinning
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=352, help="side of the uint8 maps")
    parser.add_argument("--stream-sizes", type=int, nargs=2, default=(300, 400), help="sides of the float maps")
    parser.add_argument("--batch-size", type=int, default=4, help="images per `update` of the float stream")
    parser.add_argument("--dtype", choices=("float32", "float64", "float16"), default="float32", help="float maps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=8, help="images per batch of the device engine")
    parser.add_argument("--threads", type=int, default=None, help="ours' num_threads (default: every CPU)")
    parser.add_argument("--idle-only", action="store_true", help="skip the runs with a core taken")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="benchmarks/results/metrics_speed.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # PySODMetrics' NaN S-alpha corner case

    uint8_preds, uint8_gts = uint8_images(args.images, args.size)
    stream_preds, stream_gts = float_stream(args.images, tuple(args.stream_sizes), args.dtype)
    stream = f"{args.dtype} stream"
    as_batches = {
        "uint8": [(torch.from_numpy(uint8_preds).to(args.device), torch.from_numpy(uint8_gts).to(args.device))],
        stream: [
            (
                [torch.from_numpy(p).to(args.device) for p in stream_preds[start : start + args.batch_size]],
                [torch.from_numpy(g).to(args.device) for g in stream_gts[start : start + args.batch_size]],
            )
            for start in range(0, args.images, args.batch_size)
        ],
    }
    as_numpy = {"uint8": (list(uint8_preds), list(uint8_gts)), stream: (stream_preds, stream_gts)}
    runs: dict[str, dict[str, Callable[[], object]]] = {}
    for name, batches in as_batches.items():
        preds, gts = as_numpy[name]
        runs[name] = {
            "pysod_four": lambda preds=preds, gts=gts: pysod(preds, gts, whole_set=False),
            "pysod_whole_set": lambda preds=preds, gts=gts: pysod(preds, gts, whole_set=True),
            "ours": lambda batches=batches: ours(batches, args.chunk_size, args.threads),
        }
        if args.device == "cpu" and host.host_transform() == "compiled":
            runs[name]["ours_scipy_transform"] = with_scipy_transform(runs[name]["ours"])
    masks = [gt > 128 for gt in uint8_gts if gt.any()]
    out = np.empty((2, args.size, args.size), dtype=np.int32)
    transform = {"compiled": lambda: [host.nearest_foreground_host(mask, out) for mask in masks]}
    transform["scipy"] = with_scipy_transform(transform["compiled"])

    differences = {}
    for name, named_runs in runs.items():  # warm-up, and the values compared
        reference, result = named_runs["pysod_whole_set"](), named_runs["ours"]()
        differences[name] = max(abs(reference[key] - result[key]) for key in reference)
        for run in named_runs.values():
            run()
    conditions = ("idle",) if args.idle_only else ("idle", "loaded")
    times = {f"{name}, {condition}": {run: [] for run in runs[name]} for name in runs for condition in conditions}
    transform_times = {kind: [] for kind in transform}
    for _ in range(args.repeats):
        for condition in conditions:
            with busy_core(condition == "loaded"):
                for name, named_runs in runs.items():
                    for run, fn in named_runs.items():
                        times[f"{name}, {condition}"][run].append(timed(fn, args.device))
        if args.device == "cpu":
            for kind, fn in transform.items():
                transform_times[kind].append(timed(fn, args.device))

    medians = {key: {run: statistics.median(values) for run, values in row.items()} for key, row in times.items()}
    ratios = {}
    for key, row in medians.items():
        ratios[key] = {"s_e_wf_mae": row["pysod_four"] / row["ours"], "whole_set": row["pysod_whole_set"] / row["ours"]}
        if "ours_scipy_transform" in row:
            ratios[key]["compiled_over_scipy"] = row["ours_scipy_transform"] / row["ours"]
    print(
        f"{args.images} images: uint8 {args.size} x {args.size} in one tensor; {args.dtype} {args.stream_sizes[0]}.."
        f"{args.stream_sizes[1]} px, `update` per {args.batch_size}. Device {args.device}, feature transform "
        f"{host.host_transform()}, ours' threads {args.threads or 'all CPUs'}; medians of {args.repeats}, ms / image"
    )
    print(
        "| input, condition | PySOD S,E,wF,MAE | PySOD whole set | ours | ours, scipy transform | "
        "speed-up S,E,wF,MAE | speed-up whole set | compiled / scipy |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, row in medians.items():
        per_image = [f"{row[run] / args.images * 1e3:.2f}" if run in row else "-" for run in runs["uint8"]]
        per_image += ["-"] * (4 - len(per_image))
        compiled = ratios[key].get("compiled_over_scipy")
        print(
            f"| {key} | {' | '.join(per_image)} | {ratios[key]['s_e_wf_mae']:.2f}x | {ratios[key]['whole_set']:.2f}x"
            f" | {'-' if compiled is None else f'{compiled:.2f}x'} |"
        )
    for name, difference in differences.items():
        print(f"largest difference from PySODMetrics, {name} (S-alpha, E-phi, wF, MAE, F max, IoU): {difference:.1e}")
    transform_ratio = None
    if transform_times["compiled"]:
        transform_ratio = statistics.median(transform_times["scipy"]) / statistics.median(transform_times["compiled"])
        print(f"compiled feature transform alone over scipy's (idle): {transform_ratio:.2f}x")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = run_record("metrics_speed", args, args.device, skip=("output",))
    record.update(
        times_s=times,
        median_s=medians,
        speedup=ratios,
        max_abs_difference_from_pysodmetrics=differences,
        transform_alone_compiled_over_scipy=transform_ratio,
        goal=">= 5x PySODMetrics for uint8 and float32 maps, idle and loaded (issue 18)",
        feature_transform=host.host_transform(),
        numpy=np.__version__,
        machine=platform.machine(),
    )
    output.write_text(json.dumps(record, indent=2))
    for key in medians:
        print(
            f"speed-up over PySODMetrics, {key}: {ratios[key]['s_e_wf_mae']:.2f}x (S, E, wF, MAE), "
            f"{ratios[key]['whole_set']:.2f}x (whole set)"
        )


if __name__ == "__main__":
    main()
