"""Train several fine-tuning methods on the same data, seed and schedule, and compare them side by side.

    python benchmarks/compare_methods.py CONFIG.yaml --methods lora conv_lora cad sam_adapter decoder_only
    python benchmarks/compare_methods.py recipes/configs/lora_kvasir.yaml -- --data_dir data/Kvasir-SEG --num_epochs 5
    python benchmarks/compare_methods.py --quick                        # smoke run: tiny model, 3 methods, ~1 min
    python benchmarks/compare_methods.py CONFIG.yaml --device cuda      # the same on a GPU (auto: when there is one)

Each method `M` (any name `recipes/train.py --method` takes: `sam_peft.modeling.methods.recipe_methods()`) trains in
its own process, `accelerate launch --num_processes 1 recipes/train.py CONFIG --method M --output_dir
OUT/runs/M --report_to none --overwrite_output_dir true --push_to_hub false [--key value ...]`, where the `--key value`
pairs after `--` apply to every method (so data, seed and schedule stay the same). LoRA is the reference: it is added
when `--methods` leaves it out. Besides training, each method is measured, apart from its training run:

- trainable parameters: the parameters that require grad in the model the recipe builds for the method
  (`sam_peft.training.build_model`: the adapter and the fully trained mask decoder), and their share of the base
  SAM's parameters (the model's parameters but those the PEFT method adds: the same denominator for every method);
- weights file: the bytes on disk of the trained weights the run saves (`adapter_model.safetensors` for PEFT
  methods, `decoder_model.safetensors` for the others), and the tensor elements stored in it (`saved_elements`);
- peak training memory of one training step (forward with the recipe's loss, backward, gradient clipping, AdamW
  step), after a warm-up step, each method in a fresh process (`--memory-process shared`, the default with
  `--quick`: all methods in one process, one after the other, each model freed before the next is built): on CPU the
  peak resident set size during the step
  above the resident set before it (VmHWM reset through /proc/self/clear_refs, glibc's mmap threshold at 64 KiB so
  that freed tensors go back to the system; as benchmarks/memory.py), on a GPU `torch.cuda.max_memory_allocated()`
  during the step minus `memory_allocated()` before it. The training run's own peak (the maximum resident set of the
  `accelerate launch` process and its train.py child, from `wait4`: host memory, with data, evaluation and the
  interpreter) is in the JSON as `train_run_max_rss_mib`;
- training step time and inference time, as ratios to LoRA measured side by side: every method is built in one
  process on the first batch of the run's own training (and evaluation) data at the config's batch sizes; after
  `--warmup` steps each, `--repeats` rounds run the methods in turn (A B C A B C ...) and the median of each is
  divided by LoRA's. A training step is the one above; inference is one evaluation forward (prompt-free:
  `model(pixel_values)` under `torch.inference_mode()`; prompted: the interactive evaluation of one batch with
  its box and one click). The JSON also holds the median of each round's own ratio and, on CPU, the ratio of process
  CPU time (which what other jobs add to a shared machine's wall time does not reach);
- the task's metrics: each run's final evaluation (its best epoch) from its `metrics.json`: `metric_for_best_model`,
  and for `task: prompted` also `miou_box`, `miou@1` and `miou_clicks` (`--metrics` picks others).

Outputs go to `--output_dir` (default `benchmarks/results/compare_<config stem>`, `..._quick` with `--quick`):
`comparison.md` (one row per method), `comparison.json` (everything: the exact commands, the machine, library
versions, every timing), `comparison.png` (one bar chart per column), the runs under `runs/`, every child's output
under `logs/`. A second comparison into the same folder replaces these (each run with train.py's
`--overwrite_output_dir`, which removes only a run's own files) and nothing else; a folder holding any of these
names that this script did not write is refused. `--output FILE.json` also writes the JSON there (as
benchmarks/run_all.py asks; the folder then defaults to FILE's path without `.json`).

A method whose training or measurement fails is recorded (its exit status and the last lines of its stderr) and the
others go on; the exit status is 1 when any method failed. `--quick` is a smoke run: the tiny random SAM (created in
the output folder), 8 training and 4 evaluation images, one epoch of batches of 4, few timing repeats (the quickstart
config when no CONFIG is given, and by default lora, decoder_only and cad). The last line printed holds every
method's ratios to LoRA (`<method>_step=<ratio> <method>_inference=<ratio> <method>_memory=<ratio> ...`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import run_record, step_peak_memory
from PIL import Image, ImageDraw
from run_all import machine, machine_label, versions
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from sam_peft.modeling.methods import METHODS, recipe_methods
from sam_peft.training.checkpoints import DECODER_FILE
from sam_peft.training.files import write_atomically, write_json_atomic, write_text_atomic
from sam_peft.training.plots import SERIES_COLORS

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RECIPE = ROOT / "recipes" / "train.py"
QUICKSTART = ROOT / "recipes" / "configs" / "quickstart.yaml"
RESULTS = BENCHMARKS / "results"

REFERENCE = "lora"
DEFAULT_METHODS = ("lora", "conv_lora", "cad", "sam_adapter", "decoder_only")
QUICK_METHODS = ("lora", "decoder_only", "cad")
# what every quick run trains on: the tiny random SAM (created at OUT/TINY_BASE), a handful of images, one epoch
TINY_BASE = "tiny_base"
QUICK_OVERRIDES = {
    "random_base": "tiny",
    "synthetic_train_size": "8",
    "synthetic_eval_size": "4",
    "max_train_samples": "8",
    "max_eval_samples": "4",
    "num_epochs": "1",
    "batch_size": "4",
    "eval_batch_size": "4",
    "cad_image_size": "128",  # CAD's side network at the tiny model's input size (its default is 512 px)
}
QUICK_REPEATS, QUICK_WARMUP = 3, 1
PROMPTED_METRICS = ("miou_box", "miou@1", "miou_clicks")
ADAPTER_FILE = "adapter_model.safetensors"
WEIGHT_FILES = (ADAPTER_FILE, DECODER_FILE)

# what the script writes into its output folder (and nothing else): a folder holding any of these without MARKER was
# not written by it and is refused
OUTPUTS = ("comparison.json", "comparison.md", "comparison.png")
RUNS_DIR, LOGS_DIR = "runs", "logs"
MARKER = ".compare_methods"
OWNED = (*OUTPUTS, RUNS_DIR, LOGS_DIR, TINY_BASE)

RESULT_PREFIX = "COMPARE_METHODS_RESULT "  # a worker's result: the last line of its stdout that starts with it
TAIL_LINES = 20  # lines of a failed child's stderr kept
TAIL_BYTES = 64 * 1024
MIB = 2**20
# a child's output line worth showing on the progress bar: a progress bar's or an epoch's
PROGRESS_LINE = re.compile(r"\d+/\d+|^epoch ")


# ---------------------------------------------------------------------------------------------------------------
# Measuring workers: `--worker memory|timing --worker-spec JSON`, each in a fresh process.


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Subject:
    """One method's model as `recipes/train.py` builds it from the config, with its optimiser and one batch of the
    run's training and evaluation data; `train_step()` and `inference_step()` are what the measurements time."""

    def __init__(self, recipe_argv: Sequence[str], device: torch.device) -> None:
        from sam_peft.data import sam_collate_fn
        from sam_peft.data.prompted import sam_objects_collate_fn
        from sam_peft.modeling import input_image_size
        from sam_peft.training import (
            InteractiveTraining,
            InteractiveTrainingConfig,
            PromptSeeds,
            build_datasets,
            build_model,
            build_object_datasets,
            ensure_random_base,
            parse_args,
        )

        model_args, data_args, train_args = parse_args(list(recipe_argv))
        # one batch of each split is all that is read
        data_args.max_train_samples = train_args.batch_size
        data_args.max_eval_samples = train_args.eval_batch_size
        data_args.cache_embeddings = False  # the timed step runs the encoder (a cache is no part of the method)
        ensure_random_base(model_args)
        torch.manual_seed(train_args.seed)
        self.device = device
        self.model = build_model(model_args).to(device)
        self.prompted = model_args.task == "prompted"
        self.max_grad_norm = train_args.max_grad_norm
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_args.mixed_precision)
        self.autocast = lambda: torch.autocast(device.type, dtype=precision, enabled=precision is not None)
        self.image_size = image_size = data_args.image_size or input_image_size(self.model.config)
        if self.prompted:
            _, prepared = build_object_datasets(data_args, image_size, train_args.seed)
            config = InteractiveTrainingConfig.from_arguments(model_args, train_args)  # recipes/train.py's scheme
            self.trained = InteractiveTraining(self.model, config)
            train_split, collate = PromptSeeds(prepared["train"]), sam_objects_collate_fn
            self.eval_max_clicks = 1
        else:
            _, prepared = build_datasets(data_args, model_args.num_labels, image_size, train_args.seed)
            self.trained, train_split, collate = self.model, prepared["train"], sam_collate_fn
        eval_split = prepared[data_args.eval_split]
        self.train_batch = _to_device(
            collate([train_split[i % len(train_split)] for i in range(train_args.batch_size)]), device
        )
        self.eval_batch = collate([eval_split[i % len(eval_split)] for i in range(train_args.eval_batch_size)])
        if not self.prompted:
            self.eval_batch = _to_device(self.eval_batch, device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=train_args.learning_rate, weight_decay=train_args.weight_decay
        )

    def train_step(self) -> None:
        self.trained.train()
        with self.autocast():
            if self.prompted:
                loss = self.trained(**self.train_batch)["loss"]
            else:
                batch = self.train_batch
                loss = self.model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def inference_step(self) -> None:
        self.model.eval()
        if self.prompted:
            from sam_peft.training import evaluate_interactive

            with self.autocast():
                evaluate_interactive(self.model, [self.eval_batch], max_clicks=self.eval_max_clicks, progress=False)
            return
        with torch.inference_mode(), self.autocast():
            self.model(pixel_values=self.eval_batch["pixel_values"])

    def parameter_counts(self) -> dict[str, int]:
        """`trainable` parameters, and `base`: the model's parameters but those its PEFT adapter adds (whose names
        hold the adapter's name as a component, e.g. `lora_A.default.weight`, `modules_to_save.default.*`)."""
        adapters = set(getattr(self.model, "peft_config", {}) or {})
        total = added = 0
        for name, parameter in self.model.named_parameters():
            total += parameter.numel()
            if adapters & set(name.split(".")):
                added += parameter.numel()
        return {"trainable": sum(p.numel() for p in self.trainable), "base": total - added, "total": total}


def measure_memory(subject: Subject) -> dict:
    """Peak memory of one training step of `subject` after a warm-up step (see the module's docstring)."""
    device = subject.device
    subject.train_step()  # warm-up
    resident, peak, _ = step_peak_memory(subject.train_step, device)
    counts = subject.parameter_counts()
    return {
        "trainable_parameters": counts["trainable"],
        "base_parameters": counts["base"],
        "model_parameters": counts["total"],
        "resident_mib": resident / MIB,
        "peak_mib": peak / MIB,
        "peak_above_resident_mib": (peak - resident) / MIB,
        "image_size": subject.image_size,
    }


def memory_worker(spec: dict) -> dict:
    """`measure_memory` of each method in turn, each model freed before the next is built. A method that fails is
    left out, with its error."""
    device = torch.device(spec["device"])
    results, errors = {}, {}
    for method, recipe_argv in spec["recipe_argv"].items():
        try:
            subject = Subject(recipe_argv, device)
            results[method] = measure_memory(subject)
        except Exception as error:  # recorded: the other methods are still measured
            errors[method] = f"{type(error).__name__}: {error}"
        subject = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"results": results, "errors": errors}


STEPS = {"train_step": "train_step", "inference": "inference_step"}  # the timed phases: Subject's method of each


def timing_worker(spec: dict) -> dict:
    """Training-step and inference times of every method, built in this one process, run in turn (A B C A B C ...)
    after a warm-up. A method that fails to build or run is left out, with its error."""
    device = torch.device(spec["device"])
    subjects: dict[str, Subject] = {}
    errors: dict[str, str] = {}
    for method, recipe_argv in spec["recipe_argv"].items():
        try:
            subjects[method] = Subject(recipe_argv, device)
        except Exception as error:  # recorded: the other methods are still timed
            errors[method] = f"{type(error).__name__}: {error}"
    timings = {}
    for phase in ("train_step", "inference"):
        steps = {name: getattr(subject, STEPS[phase]) for name, subject in subjects.items() if name not in errors}
        wall = {name: [] for name in steps}
        cpu = {name: [] for name in steps}
        for round_index in range(spec["warmup"] + spec["repeats"]):
            for name, step in steps.items():
                if name in errors:
                    continue
                _synchronize(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                try:
                    step()
                    _synchronize(device)
                except Exception as error:
                    errors[name] = f"{phase}: {type(error).__name__}: {error}"
                    continue
                if round_index >= spec["warmup"]:
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        timings[phase] = {"seconds": wall, "cpu_seconds": cpu}
    for phase in timings.values():
        for kind in ("seconds", "cpu_seconds"):
            phase[kind] = {name: values for name, values in phase[kind].items() if name not in errors}
    return {"timings": timings, "errors": errors}


def run_worker(kind: str, spec_text: str) -> None:
    spec = json.loads(spec_text)
    result = memory_worker(spec) if kind == "memory" else timing_worker(spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Children: run with their output teed to a log, summarised on the progress bar, with their peak RSS.


def _lines(data: bytes) -> list[str]:
    """The non-empty lines of a child's output (progress bars' carriage returns split lines too)."""
    text = data.decode("utf-8", errors="replace")
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def run_child(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> dict:
    """Run `argv`, teeing its stdout and stderr into `log_path`; returns its exit status (None: killed after
    `timeout` seconds), wall seconds, max RSS (MiB, itself or any descendant it waited for: `wait4`), and the ends of
    its stdout and stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tails = {"stdout": bytearray(), "stderr": bytearray()}
    last = [""]
    lock = threading.Lock()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), start_new_session=True
        )

        def pump(stream, key: str) -> None:
            while chunk := stream.read1(65536):
                with lock:
                    log.write(chunk)
                    log.flush()
                    tails[key] += chunk
                    del tails[key][:-TAIL_BYTES]
                    lines = _lines(chunk)
                    if lines:
                        last[0] = lines[-1]

        threads = [
            threading.Thread(target=pump, args=(process.stdout, "stdout"), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, "stderr"), daemon=True),
        ]
        for thread in threads:
            thread.start()
        timed_out = False
        shown = ""
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if timeout is not None and time.perf_counter() - start > timeout and not timed_out:
                    timed_out = True
                    _kill_group(process.pid)
                if on_line is not None and last[0] != shown:
                    shown = last[0]
                    on_line(shown)
                time.sleep(0.1)
        except BaseException:  # KeyboardInterrupt: the child's process group goes too
            _kill_group(process.pid)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        for thread in threads:
            thread.join()
        process.stdout.close()
        process.stderr.close()
    return {
        "returncode": None if timed_out else process.returncode,
        "timed_out": timed_out,
        "seconds": round(time.perf_counter() - start, 2),
        "max_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "stdout": bytes(tails["stdout"]),
        "stderr": bytes(tails["stderr"]),
        "log": str(log_path),
    }


def _kill_group(pid: int) -> None:
    """End the process group this script started for one child (it leads it: start_new_session)."""
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            time.sleep(0.1)
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
        else:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, ChildProcessError):
        pass


def stderr_tail(child: Mapping[str, Any], lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a child's stderr (or stdout, if its stderr is empty), progress bars split."""
    found = _lines(child.get("stderr") or b"") or _lines(child.get("stdout") or b"")
    return "\n".join(found[-lines:])


def worker_result(child: Mapping[str, Any]) -> dict | None:
    for line in reversed((child.get("stdout") or b"").decode("utf-8", errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


# ---------------------------------------------------------------------------------------------------------------
# What a comparison plans: the commands of each method, from the config, the quick settings and the overrides.


def option_list(options: Mapping[str, str]) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", str(value))]


def recipe_argv(config: Path, method: str, shared: Sequence[str], frozen_encoder: bool, caches: bool) -> list[str]:
    """train.py's arguments for `method` (but its output folder): the config, the shared overrides, the method; a
    config that caches the frozen encoder's output (`cache_embeddings`) keeps it for the methods that freeze the
    encoder and turns it off for the others (which train.py refuses to cache)."""
    argv = [str(config), *shared, "--method", method]
    if caches and not frozen_encoder:
        argv += ["--cache_embeddings", "false"]
    return argv


def train_argv(recipe: Sequence[str], run_dir: Path, device: str, mixed_precision: str) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    launch += ["--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if device == "cpu":
        launch.append("--cpu")
    forced = {"output_dir": str(run_dir), "report_to": "none", "overwrite_output_dir": "true", "push_to_hub": "false"}
    return [*launch, str(RECIPE), *recipe, *option_list(forced)]


def worker_argv(kind: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-spec", json.dumps(spec)]


def shown_command(argv: Sequence[str]) -> str:
    """A command as typed from the repository root: `python` for this interpreter, `accelerate launch` for
    `python -m accelerate.commands.launch`, paths inside the repository relative to it."""
    parts = list(argv)
    if parts[:3] == [sys.executable, "-m", "accelerate.commands.launch"]:
        parts = ["accelerate", "launch", *parts[3:]]
    elif parts and parts[0] == sys.executable:
        parts[0] = "python"
    return shlex.join(_relative(part) for part in parts)


def _relative(part: str) -> str:
    path = Path(part)
    if path.is_absolute() and path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    return part


# ---------------------------------------------------------------------------------------------------------------
# Aggregation: one row per method, ratios to LoRA.


def _median(values: Sequence[float] | None) -> float | None:
    return statistics.median(values) if values else None


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _paired(values: Sequence[float] | None, reference: Sequence[float] | None) -> float | None:
    if not values or not reference:
        return None
    return statistics.median(v / r for v, r in zip(values, reference, strict=False) if r)


def weights_file(run_dir: Path) -> Path | None:
    """The trained weights a finished run saved: its adapter, or its trainable parameters."""
    return next((run_dir / name for name in WEIGHT_FILES if (run_dir / name).is_file()), None)


def saved_elements(path: Path) -> int:
    """The elements of the tensors stored in a safetensors file (read from its header)."""
    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def table_metrics(metrics: Sequence[dict], task: str, chosen: Sequence[str] | None) -> list[str]:
    """The metric columns: `chosen`, or the runs' metric_for_best_model, with the prompted summary for prompted runs."""
    if chosen:
        return list(chosen)
    names = [m["metric_for_best_model"] for m in metrics if "metric_for_best_model" in m][:1]
    if task == "prompted":
        names += [name for name in PROMPTED_METRICS if name not in names]
    return names


def aggregate(
    methods: Sequence[str],
    training: Mapping[str, dict],
    memory: Mapping[str, dict],
    timing: dict | None,
    metric_names: Sequence[str],
    cpu: bool,
    reference: str = REFERENCE,
) -> list[dict]:
    """One row per method from what its children left: `training[m]` (train.py's child: `returncode`, `seconds`,
    `max_rss_mib`, `run_dir`, `command`, `log`, `stderr_tail`, and `metrics` once read), `memory[m]` (the memory
    worker's child, with its `result`), `timing` (the timing worker's child, with its `result`: the median of each
    method's times is divided by `reference`'s). A row's `status` is `ok`, or what failed."""
    timings = (timing or {}).get("result") or {}
    phases = timings.get("timings", {})
    timing_errors = dict(timings.get("errors", {}))

    def phase_values(phase: str, kind: str, method: str) -> list[float] | None:
        return phases.get(phase, {}).get(kind, {}).get(method)

    reference_memory = ((memory.get(reference) or {}).get("result") or {}).get("peak_above_resident_mib")
    rows = []
    for method in methods:
        failures = []
        train = training.get(method) or {}
        if train.get("returncode") != 0:
            failures.append(
                {
                    "stage": "training",
                    "returncode": train.get("returncode"),
                    "timed_out": train.get("timed_out", False),
                    "error": train.get("stderr_tail") or train.get("error", "not run"),
                    "log": train.get("log"),
                }
            )
        elif train.get("metrics") is None:
            failures.append(
                {"stage": "training", "returncode": 0, "error": train.get("error"), "log": train.get("log")}
            )
        measured = memory.get(method) or {}
        found = measured.get("result")
        if found is None:
            failures.append(
                {
                    "stage": "memory",
                    "returncode": measured.get("returncode"),
                    "error": measured.get("stderr_tail") or "not run",
                    "log": measured.get("log"),
                }
            )
        found = found or {}
        if not timings:
            failures.append(
                {
                    "stage": "timing",
                    "returncode": (timing or {}).get("returncode"),
                    "error": (timing or {}).get("stderr_tail") or "not run",
                    "log": (timing or {}).get("log"),
                }
            )
        elif method in timing_errors:
            failures.append({"stage": "timing", "error": timing_errors[method], "log": (timing or {}).get("log")})

        row: dict[str, Any] = {
            "method": method,
            "title": METHODS[method].title if method in METHODS else method,
            "run_dir": train.get("run_dir"),
            "training": {
                key: train.get(key) for key in ("command", "returncode", "timed_out", "seconds", "log", "steps")
            },
            "train_run_max_rss_mib": train.get("max_rss_mib"),
            "trainable_parameters": found.get("trainable_parameters"),
            "base_parameters": found.get("base_parameters"),
            "trainable_percent": (
                100 * found["trainable_parameters"] / found["base_parameters"] if found.get("base_parameters") else None
            ),
            "weights_file": train.get("weights_file"),
            "weights_bytes": train.get("weights_bytes"),
            "saved_elements": train.get("saved_elements"),
            "peak_memory_mib": found.get("peak_above_resident_mib"),
            "peak_memory_ratio": _ratio(found.get("peak_above_resident_mib"), reference_memory),
            "resident_mib": found.get("resident_mib"),
        }
        for phase, key in (("train_step", "step"), ("inference", "inference")):
            wall = phase_values(phase, "seconds", method)
            reference_wall = phase_values(phase, "seconds", reference)
            row[f"{key}_seconds"] = _median(wall)
            row[f"{key}_ratio"] = _ratio(_median(wall), _median(reference_wall))
            row[f"{key}_paired_ratio"] = _paired(wall, reference_wall)
            row[f"{key}_cpu_ratio"] = (
                _ratio(
                    _median(phase_values(phase, "cpu_seconds", method)),
                    _median(phase_values(phase, "cpu_seconds", reference)),
                )
                if cpu
                else None
            )
        metrics = train.get("metrics") or {}
        row["metric_for_best_model"] = metrics.get("metric_for_best_model")
        row["metrics"] = {name: metrics.get(name) for name in metric_names}
        row["all_metrics"] = _scalars(metrics)
        row["untrained"] = _scalars(metrics.get("untrained") or {})
        row["failures"] = failures
        row["ok"] = not failures
        row["status"] = "ok" if not failures else "failed: " + ", ".join(_failure_label(f) for f in failures)
        rows.append(row)
    return rows


def _failure_label(failure: Mapping[str, Any]) -> str:
    if failure.get("timed_out"):
        return f"{failure['stage']} (timed out)"
    code = failure.get("returncode")
    return f"{failure['stage']} (exit {code})" if code not in (None, 0) else failure["stage"]


# ---------------------------------------------------------------------------------------------------------------
# Reports: Markdown, PNG, the final table.


def human_bytes(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[dict], metric_names: Sequence[str], memory_unit: str) -> list[str]:
    header = [
        "method",
        "trainable params",
        "% of model",
        "weights file",
        f"peak train memory {memory_unit} (×LoRA)",
        "step time ×LoRA",
        "inference ×LoRA",
        *metric_names,
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        memory = _number(row["peak_memory_mib"], ".1f")
        if row["peak_memory_ratio"] is not None:
            memory += f" ({row['peak_memory_ratio']:.2f})"
        cells = [
            row["method"],
            _number(row["trainable_parameters"], ","),
            _number(row["trainable_percent"], ".2f"),
            human_bytes(row["weights_bytes"]),
            memory,
            _number(row["step_ratio"], ".2f"),
            _number(row["inference_ratio"], ".2f"),
            *(_number(row["metrics"].get(name), ".4f") for name in metric_names),
            row["status"],
        ]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return lines


def markdown(report: dict) -> str:
    setup, info, measures = report["setup"], report["machine"], report["measures"]
    rows, metric_names = report["methods"], report["metric_names"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in info["gpus"]) or "none"
    quick = " `--quick`" if report["quick"] else ""
    library = {**report["versions"], **report["other_versions"]}
    lines = [
        f"# Method comparison: {setup['config']}",
        "",
        f"Written by `python benchmarks/compare_methods.py`{quick} on {report['date']} (UTC) in "
        f"{report['seconds']:.0f} s, on {report['device']} ({report['device_name']}).",
        "",
        f"- task: {setup['task']}, base model `{setup['base_model']}`, image size {setup['image_size']}, "
        f"epochs: {setup['num_epochs']}, batch {setup['batch_size']} (evaluation {setup['eval_batch_size']}), "
        f"seed {setup['seed']}, mixed precision {setup['mixed_precision']}",
        f"- data: {setup['data']}",
        f"- arguments given to every method: `{shlex.join(setup['shared_arguments']) or 'none'}`",
        f"- timing: warm-up {setup['warmup']}, {setup['repeats']} rounds; peak memory: {setup['memory_process']}",
        f"- machine: {info['cpu']}, {info['usable_cores']} usable cores, {info['memory_gib']} GiB; GPU: {gpus}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in library.items() if version),
        "",
        *table(rows, metric_names, "MiB"),
        "",
        "What each column is:",
        "",
        f"- trainable params: {measures['trainable_parameters']}; % of model: {measures['trainable_percent']}",
        f"- weights file: {measures['weights']}",
        f"- peak train memory: {measures['peak_memory']}",
        f"- step time ×LoRA: {measures['step_time']}",
        f"- inference ×LoRA: {measures['inference']}",
        f"- {', '.join(metric_names) or 'metrics'}: {measures['metrics']}",
        "",
        "Timings are ratios measured side by side on one machine; absolute times count only from a GPU run. "
        "comparison.json holds every timing, the measuring commands and each run's other metrics.",
    ]
    failed = [row for row in rows if not row["ok"]]
    if failed:
        lines += ["", "## Failures", ""]
        for row in failed:
            for failure in row["failures"]:
                lines += [f"{row['method']}, {_failure_label(failure)} (log: {failure.get('log')}):", "", "```"]
                lines += [str(failure.get("error") or "").strip() or "(no output)", "```", ""]
    lines += ["", "## Training commands", "", "```"]
    lines += [row["training"]["command"] for row in rows if row["training"].get("command")]
    lines += ["```", ""]
    return "\n".join(lines)


PANEL_WIDTH, BAR_HEIGHT, LABEL_WIDTH = 420, 22, 110


def bar_panel(title: str, labels: Sequence[str], values: Sequence[float | None], text: Callable, reference=None):
    """Horizontal bars, one per method (its colour), with the value written beside each; `reference` draws a dashed
    line at that value (1.0 for the ratios)."""
    height = 40 + BAR_HEIGHT * len(labels) + 16
    image = Image.new("RGB", (PANEL_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill="black")
    left, right, top = LABEL_WIDTH, PANEL_WIDTH - 80, 36
    known = [v for v in values if v is not None and math.isfinite(v)]
    high = max([*known, reference or 0.0, 1e-12])
    draw.line([(left, top - 4), (left, top + BAR_HEIGHT * len(labels))], fill="black")
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + index * BAR_HEIGHT
        draw.text((8, y + 4), label[:16], fill="black")
        if value is None or not math.isfinite(value):
            draw.text((left + 6, y + 4), "n/a", fill="gray")
            continue
        end = left + max(value, 0.0) / high * (right - left)
        draw.rectangle([left, y + 3, max(end, left + 1), y + BAR_HEIGHT - 3], fill=SERIES_COLORS[index % 6])
        draw.text((end + 6, y + 4), text(value), fill="black")
    if reference is not None:
        x = left + reference / high * (right - left)
        for y in range(top - 4, top + BAR_HEIGHT * len(labels), 6):
            draw.line([(x, y), (x, y + 3)], fill=(120, 120, 120))
    return image


def save_plot(path: Path, report: dict) -> None:
    """One bar chart per column of the table, 3 to a row, under a title line."""
    rows = report["methods"]
    labels = [row["method"] for row in rows]

    def ratio(value: float) -> str:
        return f"{value:.2f}x"

    panels = [
        bar_panel("trainable parameters", labels, [r["trainable_parameters"] for r in rows], lambda v: f"{v:,.0f}"),
        bar_panel("weights file", labels, [r["weights_bytes"] for r in rows], human_bytes),
        bar_panel("peak training memory / LoRA", labels, [r["peak_memory_ratio"] for r in rows], ratio, 1.0),
        bar_panel("training step time / LoRA", labels, [r["step_ratio"] for r in rows], ratio, 1.0),
        bar_panel("inference time / LoRA", labels, [r["inference_ratio"] for r in rows], ratio, 1.0),
    ]
    for name in report["metric_names"]:
        panels.append(bar_panel(name, labels, [r["metrics"].get(name) for r in rows], lambda v: f"{v:.4f}"))
    columns = 3
    panel_height = panels[0].height
    title_height = 28
    figure = Image.new(
        "RGB", (PANEL_WIDTH * columns, title_height + panel_height * math.ceil(len(panels) / columns)), "white"
    )
    ImageDraw.Draw(figure).text(
        (8, 8),
        f"{report['setup']['config']} on {report['device']}: ratios to LoRA, measured side by side",
        fill="black",
    )
    for index, panel in enumerate(panels):
        figure.paste(panel, ((index % columns) * PANEL_WIDTH, title_height + (index // columns) * panel_height))
    write_atomically(path, lambda temporary: figure.save(temporary, format="PNG"))


def last_line(rows: Sequence[dict]) -> str:
    parts = []
    for row in rows:
        for key, value in (
            ("step", row["step_ratio"]),
            ("inference", row["inference_ratio"]),
            ("memory", row["peak_memory_ratio"]),
        ):
            parts.append(f"{row['method']}_{key}={_number(value, '.3f')}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The comparison.


def check_output_dir(output_dir: Path) -> None:
    """Refuse a folder that holds any name this script writes but was not written by it."""
    if not output_dir.exists() or (output_dir / MARKER).is_file():
        return
    if not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is not a folder.")
    found = sorted(name for name in OWNED if (output_dir / name).exists())
    if found:
        raise ValueError(
            f"--output_dir {output_dir} holds {found}, which compare_methods.py did not write there (no {MARKER}); "
            "it never replaces files it did not create: choose another folder."
        )


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """This script's arguments, and train.py's `--key value` overrides after the first `--`."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def build_parser(available: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python benchmarks/compare_methods.py [CONFIG.yaml] [--methods M ...] [options] [-- --key value ...]",
    )
    parser.add_argument("config", nargs="?", type=Path, help="a recipes/train.py config (default: the quickstart's)")
    parser.add_argument(
        "--methods", nargs="+", metavar="METHOD", help=f"default: {' '.join(DEFAULT_METHODS)}; any of {available}"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 8 images, 1 epoch, 3 repeats")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    parser.add_argument("--output_dir", "--output-dir", type=Path, help="default: benchmarks/results/compare_<stem>")
    parser.add_argument("--output", type=Path, help="also write the comparison's JSON to this file (run_all.py)")
    parser.add_argument("--metrics", nargs="+", help="metric columns (default: metric_for_best_model, ...)")
    parser.add_argument("--warmup", type=int, default=None, help="timed steps dropped per method (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child process (default: none)")
    parser.add_argument(
        "--memory-process",
        choices=["per_method", "shared"],
        help="measure peak memory in a fresh process per method (default) or in one for all (default with --quick)",
    )
    parser.add_argument("--worker", choices=["memory", "timing"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-spec", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    own, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    available = recipe_methods()
    parser = build_parser(available)
    args = parser.parse_args(own)
    if args.worker:
        run_worker(args.worker, args.worker_spec)
        return 0

    from sam_peft.training import parse_args

    default = QUICK_METHODS if args.quick else DEFAULT_METHODS
    requested = list(dict.fromkeys(args.methods or [m for m in default if m in available]))
    unknown = [m for m in requested if m not in available]
    if unknown:
        parser.error(
            f"unknown method(s) {', '.join(map(repr, unknown))}; recipes/train.py trains: {', '.join(available)}"
        )
    if REFERENCE not in requested:
        print(f"Adding {REFERENCE}: the reference of every ratio.")
        requested.insert(0, REFERENCE)
    methods = requested
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("warmup", "repeats"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {value}")
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else 1)
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else 5)

    config = (args.config or QUICKSTART).resolve()
    if not config.is_file():
        parser.error(f"config {args.config} does not exist")
    tag = "_quick" if args.quick else ""
    if args.output_dir is not None:
        output_dir = args.output_dir.resolve()
    elif args.output is not None:
        output_dir = args.output.resolve().with_suffix("")
    else:
        output_dir = RESULTS / f"compare_{config.stem}{tag}"
    try:
        check_output_dir(output_dir)
    except ValueError as error:
        parser.error(str(error))

    shared = option_list({"base_model": str(output_dir / TINY_BASE), **QUICK_OVERRIDES}) if args.quick else []
    shared += overrides
    # every method's arguments are checked (and the run's settings read) before anything trains
    parsed = {}
    try:
        caches = _config_caches(config, shared, parse_args)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    for method in methods:
        frozen = getattr(METHODS[method], "frozen_encoder", False)
        argv_m = recipe_argv(config, method, shared, frozen, caches)
        try:
            parsed[method] = (argv_m, parse_args(list(argv_m)))
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"{method}: {error}")
    model_args, data_args, train_args = parsed[REFERENCE][1]

    shared_memory = args.memory_process == "shared" or (args.memory_process is None and args.quick)
    setup = {
        "config": _relative(str(config)),
        "overrides": list(overrides),
        "shared_arguments": list(shared),
        "task": model_args.task,
        "base_model": _relative(model_args.base_model),
        "image_size": data_args.image_size,
        "num_epochs": train_args.num_epochs,
        "batch_size": train_args.batch_size,
        "eval_batch_size": train_args.eval_batch_size,
        "seed": train_args.seed,
        "mixed_precision": train_args.mixed_precision,
        "data": describe_data(data_args),
        "eval_split": data_args.eval_split,
        "warmup": warmup,
        "repeats": repeats,
        "memory_process": "shared" if shared_memory else "per_method",
    }
    info = machine()  # before the runs: their load average at the start
    started = time.perf_counter()

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text("written by benchmarks/compare_methods.py\n")
    runs, logs = output_dir / RUNS_DIR, output_dir / LOGS_DIR
    for stale in logs.glob("*.log") if logs.is_dir() else ():  # an earlier comparison's (only this script's names)
        if stale.name.startswith(("memory", "timing", "train_")):
            stale.unlink()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    memory_env = dict(env, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")

    memory_groups = [list(methods)] if shared_memory else [[method] for method in methods]
    progress = tqdm(total=len(memory_groups) + 1 + len(methods), desc="compare", unit="job", dynamic_ncols=True)

    def show(line: str) -> None:
        if PROGRESS_LINE.search(line):
            progress.set_postfix_str(line[:50], refresh=True)

    def child_entry(child: dict, argv: Sequence[str]) -> dict:
        entry = {k: v for k, v in child.items() if k not in ("stdout", "stderr")}
        entry.update(command=shown_command(argv), argv=shlex.join(argv))
        entry["stderr_tail"] = stderr_tail(child) if child["returncode"] != 0 else ""
        return entry

    def measure(kind: str, group: Sequence[str], log: str, child_env: Mapping[str, str], extra: dict) -> dict:
        """Run a measuring worker on `group`; returns its entry, with its `result` (None when it failed)."""
        spec = {"recipe_argv": {method: parsed[method][0] for method in group}, "device": device, **extra}
        argv_w = worker_argv(kind, spec)
        child = run_child(argv_w, logs / log, child_env, args.timeout, show)
        entry = child_entry(child, argv_w)
        entry["result"] = worker_result(child) if child["returncode"] == 0 else None
        if child["returncode"] == 0 and entry["result"] is None:
            entry["stderr_tail"] = stderr_tail(child) or "no result line in its output"
        return entry

    memory: dict[str, dict] = {}
    memory_children = []
    for group in memory_groups:
        progress.set_description(f"memory {group[0] if len(group) == 1 else 'all'}")
        log = f"memory_{group[0]}.log" if len(group) == 1 else "memory.log"
        entry = measure("memory", group, log, memory_env, {})
        result = entry.pop("result") or {}
        memory_children.append(entry)
        for method in group:
            found = result.get("results", {}).get(method)
            error = result.get("errors", {}).get(method)
            memory[method] = {**entry, "result": found, "stderr_tail": error or entry["stderr_tail"]}
            note = f"{found['peak_above_resident_mib']:.1f} MiB" if found else f"FAILED, see {entry['log']}"
            tqdm.write(f"peak training memory, {method}: {note}")
        progress.update(1)

    progress.set_description("timing")
    timing = measure("timing", methods, "timing.log", env, {"warmup": warmup, "repeats": repeats})
    errors = (timing["result"] or {}).get("errors", {})
    note = "FAILED" if timing["result"] is None else "ok" if not errors else f"failed for {', '.join(errors)}"
    tqdm.write(f"step and inference times: {note}")
    progress.update(1)

    training: dict[str, dict] = {}
    for method in methods:
        progress.set_description(f"train {method}")
        run_dir = runs / method
        argv_r = train_argv(parsed[method][0], run_dir, device, parsed[method][1][2].mixed_precision)
        child = run_child(argv_r, logs / f"train_{method}.log", env, args.timeout, show)
        training[method] = entry = {**child_entry(child, argv_r), **run_results(run_dir, child["returncode"])}
        metrics = entry.get("metrics") or {}
        main_metric = metrics.get("metric_for_best_model")
        note = (
            f"{main_metric} {metrics.get(main_metric, float('nan')):.4f} in {child['seconds']:.0f} s"
            if metrics
            else f"FAILED ({child['returncode']}), see {entry['log']}"
        )
        tqdm.write(f"train {method}: {note}")
        progress.update(1)
    progress.close()

    metrics_found = [t["metrics"] for t in training.values() if t.get("metrics")]
    metric_names = table_metrics(metrics_found, model_args.task, args.metrics)
    rows = aggregate(methods, training, memory, timing, metric_names, cpu=device == "cpu")
    image_sizes = [m["result"]["image_size"] for m in memory.values() if m.get("result")]
    setup["image_size"] = setup["image_size"] or (image_sizes[0] if image_sizes else None)
    report = {
        **run_record("compare_methods", args, device, skip=("worker", "worker_spec")),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else machine_label(info),
        "machine": info,
        "other_versions": versions(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "reference": REFERENCE,
        "metric_names": metric_names,
        "setup": setup,
        "measures": measure_descriptions(device, model_args.task, shared_memory, data_args.eval_split),
        "children": {
            "memory": memory_children,
            "timing": {k: v for k, v in timing.items() if k != "result"},
        },
        "timings": (timing["result"] or {}).get("timings"),
        "methods": rows,
    }
    write_json_atomic(output_dir / "comparison.json", report)
    write_text_atomic(output_dir / "comparison.md", markdown(report))
    save_plot(output_dir / "comparison.png", report)
    if args.output is not None:
        write_json_atomic(args.output, report)

    print()
    print("\n".join(table(rows, metric_names, "MiB")))
    failed = [row["method"] for row in rows if not row["ok"]]
    print(f"wrote {_relative(str(output_dir))}/comparison.md, .json and .png in {report['seconds']:.0f} s")
    listed = f" ({' '.join(failed)})" if failed else ""
    print(f"methods_ok={len(rows) - len(failed)} methods_failed={len(failed)}{listed}")
    print(last_line(rows))
    return 1 if failed else 0


def run_results(run_dir: Path, returncode: int | None) -> dict:
    """What a finished run left: its metrics.json, the number of steps it logged, its weights file, the file's
    size and the tensor elements in it; `error` when a run that exited 0 left them unreadable."""
    found: dict[str, Any] = {"run_dir": str(run_dir)}
    if returncode != 0:  # an earlier run's files there are not this run's results
        return found
    try:
        found["metrics"] = read_metrics(run_dir)
        found["steps"] = len(found["metrics"].get("train_log", []))
        weights = weights_file(run_dir)
        if weights is not None:
            found.update(weights_file=weights.name, weights_bytes=weights.stat().st_size)
            found["saved_elements"] = saved_elements(weights)
    except (OSError, ValueError, SafetensorError) as error:
        found["metrics"] = None
        found["error"] = f"the finished run's results are unreadable: {error}"
    return found


def describe_data(data_args) -> str:
    if data_args.benchmark == "synthetic":
        sizes = data_args.synthetic_train_size, data_args.synthetic_eval_size
        data = "synthetic, {} training and {} evaluation images".format(*sizes)
    else:
        data = data_args.benchmark or data_args.image_dir or data_args.hub_dataset or "-"
    if data_args.max_train_samples or data_args.max_eval_samples:
        data += f" (at most {data_args.max_train_samples} / {data_args.max_eval_samples} images)"
    return data


def measure_descriptions(device: str, task: str, shared_memory: bool, eval_split: str) -> dict[str, str]:
    """What each measured field is, for the JSON and the Markdown."""
    where = "all methods in one process, one after the other" if shared_memory else "each method in a fresh process"
    if device == "cuda":
        peak = "torch.cuda.max_memory_allocated() during one training step minus memory_allocated() before it"
    else:
        peak = (
            "peak RSS during one training step above the RSS before it (VmHWM reset through /proc/self/clear_refs, "
            "glibc's mmap threshold at 64 KiB so that freed tensors go back to the system)"
        )
    inference = (
        "the interactive evaluation of one batch (box, then one click)"
        if task == "prompted"
        else "model(pixel_values) under torch.inference_mode()"
    )
    return {
        "trainable_parameters": "parameters that require grad in the model recipes/train.py builds for the method "
        "(its adapter and the trained mask decoder)",
        "trainable_percent": "trainable parameters / the base SAM's parameters (the model's parameters but those the "
        "PEFT method adds: the same for every method), in %",
        "weights": "bytes on disk of the run's trained-weights file (adapter_model.safetensors for PEFT methods, "
        "decoder_model.safetensors for the others); saved_elements: the tensor elements stored in it",
        "peak_memory": f"{peak}, after a warm-up step (a step: forward with the recipe's loss, backward, gradient "
        f"clipping, AdamW step), {where}, MiB; in parentheses / LoRA's",
        "step_time": "median wall time of one training step on the first batch of the run's training data / LoRA's; "
        "every method built in one process, run in turn (A B C A B C ...) after a warm-up",
        "inference": f"median wall time of one evaluation forward ({inference}) at the evaluation batch size / "
        "LoRA's, in turn as the training steps",
        "metrics": f"each run's final evaluation (its best epoch) on the {eval_split} split, from its metrics.json",
        "train_run_max_rss_mib": "max RSS of the training run (accelerate launch and its train.py child, from wait4): "
        "host memory, with data, evaluation and the interpreter",
    }


def _config_caches(config: Path, shared: Sequence[str], parse_args) -> bool:
    """Whether the config (with the overrides) caches the frozen encoder's output (read with a method that keeps
    the encoder frozen, for which train.py accepts it)."""
    frozen = [name for name in recipe_methods() if getattr(METHODS[name], "frozen_encoder", False)]
    if not frozen:
        return False
    return parse_args([str(config), *shared, "--method", frozen[0]])[1].cache_embeddings


if __name__ == "__main__":
    sys.exit(main())
