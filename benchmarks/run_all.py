"""Run every benchmark of the project and write one results table (Markdown and JSON).

Every script in `benchmarks/` (but `_common.py`, other `_` files and this one) runs as a subprocess from the
repository root, on the CPU and, when `torch.cuda.is_available()`, with `--device cuda`. On a GPU, Conv-LoRA's cost
also runs at the settings of its acceptance (issue 9): ViT-B and ViT-H at 1024 px, batch 1 and 4, bf16 autocast, and
Conv-LoRA alone on ViT-H, batch 1, bf16 with activation checkpointing, for its peak memory against the paper's
21.7 GB. Each run writes its JSON to `<results-dir>/<run>.json` (the CPU runs to the scripts' usual file names);
`summary.md` and `summary.json` hold, for each run, the exact command, its exit status and wall time, its last
printed line (the ratio line), its JSON and the end of its output, with the machine (CPU model, cores, GPU) and
library versions. Runs from an earlier summary that are not run again stay in it, each with the machine and date it
was measured on (`--fresh` drops them). `--quick` runs reduced sizes as `<run>_quick` into `summary_quick.md` and
`summary_quick.json`, leaving the full results alone.

    python benchmarks/run_all.py                              # everything: about an hour on 2 CPU cores
    python benchmarks/run_all.py --quick                      # reduced sizes
    python benchmarks/run_all.py --only conv_lora_cost memory --devices cuda
    python benchmarks/run_all.py --dry-run                    # print the commands only

The last line printed is the number of runs that succeeded and failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from _common import run_record

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
OUTPUT_TAIL = 4000  # characters of each run's stdout and stderr kept in summary.json

# Reduced sizes for `--quick`, for the scripts that take them (a script missing here runs at its defaults).
QUICK_ARGS = {
    "cache_speed": ["--images", "2", "--repeats", "1"],
    "compare_methods": ["--quick"],
    "continual_overhead": ["--domains", "2", "--repeats", "3"],
    "conv_lora_cost": ["--image-size", "256", "--repeats", "3"],
    "memory": ["--image-size", "512"],
    "metrics_speed": ["--images", "20", "--repeats", "1"],
}
# Conv-LoRA's cost at the GPU acceptance settings: (run-name suffix, arguments).
CONV_LORA_GPU_RUNS = [
    (
        f"{variant}_1024_b{batch}_bf16",
        ["--variant", variant, "--image-size", "1024", "--batch-size", str(batch), "--dtype", "bfloat16"],
    )
    for variant in ("vit-b", "vit-h")
    for batch in (1, 4)
] + [
    (
        "vit-h_1024_b1_bf16_checkpointing_memory",
        [
            "--variant", "vit-h", "--image-size", "1024", "--batch-size", "1", "--dtype", "bfloat16",
            "--activation-checkpointing", "--methods", "conv_lora",
        ],
    ),
]  # fmt: skip


@dataclass
class Run:
    """One subprocess: `benchmarks/<script>.py <args> --output <results-dir>/<name>.json`."""

    name: str
    script: str
    device: str
    args: list[str] = field(default_factory=list)

    def output(self, results: Path) -> Path:
        return results / f"{self.name}.json"

    def argv(self, results: Path) -> list[str]:
        script = BENCHMARKS / f"{self.script}.py"
        return [sys.executable, str(script), *self.args, "--output", str(self.output(results))]

    def command(self, results: Path) -> str:
        """The command as typed from the repository root (with the repository on PYTHONPATH)."""
        argv = ["python", *(relative(part) for part in self.argv(results)[1:])]
        return shlex.join(argv)


def relative(part: str) -> str:
    path = Path(part)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else part


def discover() -> list[str]:
    """The benchmark scripts in `benchmarks/`, by name: every `*.py` but `_*.py` and this file."""
    return sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.stem != "run_all")


def plan(scripts: list[str], devices: list[str], quick: bool) -> list[Run]:
    runs = []
    tag = "_quick" if quick else ""
    for script in scripts:
        base = QUICK_ARGS.get(script, []) if quick else []
        for device in devices:
            if device == "cpu":
                runs.append(Run(f"{script}{tag}", script, device, list(base)))
                continue
            runs.append(Run(f"{script}_cuda{tag}", script, device, [*base, "--device", "cuda"]))
            if script == "conv_lora_cost":
                repeats = ["--repeats", "3"] if quick else []
                for suffix, extra in CONV_LORA_GPU_RUNS:
                    name = f"{script}_cuda_{suffix}{tag}"
                    runs.append(Run(name, script, device, [*extra, *repeats, "--device", "cuda"]))
    return runs


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model and cores, memory, GPUs, OS and Python of this machine, and its load when the runs started."""
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpus": [],
        "cuda": torch.version.cuda,
    }
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_gib"] = round(int(meminfo[0].split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        info["memory_gib"] = None
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)})
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def machine_label(info: dict) -> str:
    """A short name of the machine for the table: the GPU if any, and the CPU with its usable cores."""
    cpu = f"{info['cpu']} ({info['usable_cores']} cores)"
    return f"{info['gpus'][0]['name']}; {cpu}" if info["gpus"] else cpu


def versions() -> dict:
    found = {}
    for package in ("numpy", "scipy", "pysodmetrics"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def execute(run: Run, results: Path, timeout: float | None) -> dict:
    """Run one benchmark and return its summary entry."""
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    output = run.output(results)
    output.unlink(missing_ok=True)  # a stale JSON must not pass for this run's
    start = time.perf_counter()
    try:
        done = subprocess.run(run.argv(results), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        returncode = None
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        stderr = f"timed out after {timeout} s"
    seconds = time.perf_counter() - start
    result = None
    if output.exists():
        try:
            result = json.loads(output.read_text())
        except json.JSONDecodeError:
            result = None
    return {
        "name": run.name,
        "script": run.script,
        "device": run.device,
        "args": run.args,
        "command": run.command(results),
        "argv": shlex.join(run.argv(results)),
        "returncode": returncode,
        "ok": returncode == 0,
        "seconds": round(seconds, 1),
        "last_line": last_line(stdout) if returncode == 0 else last_line(stderr) or last_line(stdout),
        "output": relative(str(output)),
        "result": result,
        "stdout_tail": stdout[-OUTPUT_TAIL:],
        "stderr_tail": stderr[-OUTPUT_TAIL:],
    }


def markdown(summary: dict) -> str:
    header, info = summary["header"], summary["machine"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in info["gpus"]) or "none"
    library = {**header["versions"], **summary["other_versions"]}
    quick = " with `--quick` (reduced sizes)" if summary["quick"] else ""
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py`{quick} on {summary['updated']} (UTC).",
        "Each row is one subprocess run from the repository root with the repository on `PYTHONPATH`; its last printed",
        "line is the ratio line. Timings are ratios measured side by side on a shared machine; absolute figures count",
        "only from a GPU run.",
        "",
        f"- machine: {info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical cores, "
        f"{info['memory_gib']} GiB memory, load average at start {format_load(info['load_average'])}",
        f"- GPU: {gpus}" + (f" (CUDA {info['cuda']}, cuDNN {info.get('cudnn')})" if info["gpus"] else ""),
        f"- OS: {info['os']}, Python {info['python']}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in library.items() if version),
        "",
        "| run | device | result (last line) | status | s | measured on | date |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in summary["runs"]:
        status = "ok" if entry["ok"] else f"failed ({entry['returncode']})"
        result = entry["last_line"].replace("|", "\\|")
        lines.append(
            f"| {entry['name']} | {entry['device']} | `{result}` | {status} | {entry['seconds']:.0f} | "
            f"{entry['machine']} | {entry['date']} |"
        )
    lines += ["", "Commands:", "", "```"]
    lines += [f"{entry['command']}" for entry in summary["runs"]]
    lines += ["```", ""]
    return "\n".join(lines)


def format_load(load: list[float] | None) -> str:
    return " / ".join(f"{value:.2f}" for value in load) if load else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    available = discover()
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=available, help=f"scripts to run: {available}")
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cpu, and cuda when torch.cuda.is_available()",
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes where the scripts take them")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default: none)")
    parser.add_argument("--fresh", action="store_true", help="drop the runs of an earlier summary")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = parser.parse_args()

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available() and not args.dry_run:
        parser.error("--devices cuda: torch.cuda.is_available() is False on this machine")
    results = args.results_dir.resolve()
    runs = plan(args.only or available, devices, args.quick)
    if args.dry_run:
        for run in runs:
            print(f"{run.name}: PYTHONPATH=. {run.command(results)}")
        print(f"{len(runs)} runs planned, none run (--dry-run)")
        return

    info = machine()
    label = machine_label(info)
    stem = "summary_quick" if args.quick else "summary"
    summary_path = results / f"{stem}.json"
    previous = []
    if summary_path.exists() and not args.fresh:
        previous = json.loads(summary_path.read_text()).get("runs", [])
    entries = []
    for number, run in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] {run.name}: {run.command(results)}", flush=True)
        entry = execute(run, results, args.timeout)
        entry["machine"] = label
        entry["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
        entries.append(entry)
        print(f"    {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']:.0f} s: {entry['last_line']}", flush=True)

    names = {entry["name"] for entry in entries}
    kept = [entry for entry in previous if entry["name"] not in names]
    summary = {
        "header": run_record("run_all", args, label, skip=("dry_run",)),
        "machine": info,
        "other_versions": versions(),
        "updated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "runs": sorted(kept + entries, key=lambda entry: entry["name"]),
    }
    results.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    (results / f"{stem}.md").write_text(markdown(summary))
    failed = sum(not entry["ok"] for entry in entries)
    print(f"wrote {relative(str(results / stem))}.md and .json")
    print(f"runs_ok={len(entries) - failed} runs_failed={failed}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
