"""What every benchmark records besides its numbers (its name, arguments, device and library versions), and the
process memory readings the memory measurements share."""

from __future__ import annotations

import argparse
import gc
import re
import time
from pathlib import Path

import peft
import torch
import transformers

import sam_peft


def run_record(benchmark: str, args: argparse.Namespace, device: str, skip: tuple[str, ...] = ()) -> dict:
    """The header of a benchmark's results JSON: `benchmark`, `config` (the arguments but `skip`), `device`,
    `versions` (torch, transformers, peft, sam_peft)."""
    return {
        "benchmark": benchmark,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip},
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "sam_peft": sam_peft.__version__,
        },
    }


def status_kib(field: str) -> int:
    """A field of this process's /proc status in KiB: "VmRSS" (resident now), "VmHWM" (peak resident)."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1))


def reset_peak_rss() -> None:
    """Reset this process's peak resident size (VmHWM) to its current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def step_peak_memory(step, device) -> tuple[int, int, float]:
    """Runs `step()` once and measures it: `(resident, peak, seconds)`, the memory held before it and the peak
    during it, in bytes (CUDA: allocated by torch; CPU: this process's resident size), and its wall time."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        resident = status_kib("VmRSS") * 1024
        reset_peak_rss()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_kib("VmHWM") * 1024
    return resident, peak, time.perf_counter() - start
