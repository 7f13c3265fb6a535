"""benchmarks/compare_methods.py: one row per method, measured fields that match the runs' files, failures recorded
while the other methods go on, and arguments checked before anything trains. No timing is asserted."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sam_peft.modeling.methods import recipe_methods

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_methods.py"
QUICKSTART = ROOT / "recipes" / "configs" / "quickstart.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def compare(monkeypatch):
    """The script as a module (benchmarks/ on sys.path, as when it runs)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module("compare_methods")


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of the Markdown table's rows (header and separator left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| method |")
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]


@pytest.mark.slow
def test_quick_comparison_writes_one_row_per_method(tmp_path):
    out = tmp_path / "compare"
    command = [sys.executable, str(SCRIPT), str(QUICKSTART), "--quick", "--methods", "lora", "decoder_only", "cad"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--output_dir", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    rows = table_rows((out / "comparison.md").read_text())
    assert [row[0] for row in rows] == ["lora", "decoder_only", "cad"]  # exactly one row per method
    markdown = (out / "comparison.md").read_text()
    assert "| step time ×LoRA | inference ×LoRA | iou | status |" in markdown
    lora = rows[0]
    assert lora[4].endswith("(1.00)") and lora[5] == "1.00" and lora[6] == "1.00" and lora[-1] == "ok"
    assert all(row[-1] == "ok" for row in rows)

    report = json.loads((out / "comparison.json").read_text())
    assert report["benchmark"] == "compare_methods" and report["device"] == "cpu" and report["quick"]
    assert report["versions"]["torch"] and report["machine"]["usable_cores"] >= 1
    by_method = {row["method"]: row for row in report["methods"]}
    assert list(by_method) == ["lora", "decoder_only", "cad"]
    for method, row in by_method.items():
        run_dir = Path(row["run_dir"])
        assert row["ok"] and not row["failures"]
        assert row["training"]["returncode"] == 0 and row["training"]["command"].startswith("accelerate launch")
        assert f"--method {method}" in row["training"]["command"]
        assert row["trainable_parameters"] > 0 and 0 < row["trainable_percent"] <= 100
        weights = run_dir / row["weights_file"]
        assert row["weights_bytes"] == weights.stat().st_size
        assert row["peak_memory_mib"] > 0 and row["step_seconds"] > 0 and row["inference_seconds"] > 0
        assert row["train_run_max_rss_mib"] > 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert row["metrics"] == {"iou": metrics["iou"]}
        assert row["untrained"]["iou"] == metrics["untrained"]["iou"]
        assert row["training"]["steps"] == len(metrics["train_log"]) == 2  # 8 images, batches of 4, one epoch
    assert by_method["lora"]["weights_file"] == "adapter_model.safetensors"
    assert by_method["decoder_only"]["weights_file"] == "decoder_model.safetensors"
    # what the recipe's model trains is what the run saved (CAD also saves its normalisation buffers)
    for method in ("lora", "decoder_only"):
        assert by_method[method]["saved_elements"] == by_method[method]["trainable_parameters"]
    assert by_method["decoder_only"]["trainable_parameters"] < by_method["lora"]["trainable_parameters"]
    lora_row = by_method["lora"]
    assert lora_row["step_ratio"] == lora_row["inference_ratio"] == lora_row["peak_memory_ratio"] == 1.0
    assert all(len(report["timings"]["train_step"]["seconds"][m]) == 3 for m in by_method)  # --quick: 3 rounds

    png = (out / "comparison.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(out / "comparison.png") as image:
        assert image.format == "PNG" and image.width > 0
    last = done.stdout.strip().splitlines()[-1]
    assert "lora_step=1.000" in last and "cad_inference=" in last


def fake_child(fail: str):
    """A stand-in for `run_child`: measuring workers answer at once, training runs write a finished run's files,
    and the method `fail` exits 3 with a traceback."""
    metrics = {"metric_for_best_model": "iou", "iou": 0.5, "mae": 0.2, "untrained": {"iou": 0.1}, "train_log": [{}]}

    def run(argv, log_path, env, timeout=None, on_line=None):
        child = {"returncode": 0, "timed_out": False, "seconds": 0.1, "max_rss_mib": 100.0, "log": str(log_path)}
        child.update(stdout=b"", stderr=b"")
        if "--worker" in argv:
            kind, spec = argv[argv.index("--worker") + 1], json.loads(argv[argv.index("--worker-spec") + 1])
            methods = list(spec["recipe_argv"])
            if kind == "memory":
                measured = {"trainable_parameters": 10, "base_parameters": 100, "model_parameters": 110}
                measured.update(resident_mib=50.0, peak_mib=60.0, peak_above_resident_mib=10.0, image_size=128)
                result = {"results": dict.fromkeys(methods, measured), "errors": {}}
            else:
                times = {m: [0.2, 0.2, 0.2] for m in methods}
                phase = {"seconds": times, "cpu_seconds": times}
                result = {"timings": {"train_step": phase, "inference": phase}, "errors": {}}
            child["stdout"] = b"noise\nCOMPARE_METHODS_RESULT " + json.dumps(result).encode() + b"\n"
            return child
        method = argv[argv.index("--method") + 1]
        run_dir = Path(argv[len(argv) - 1 - argv[::-1].index("--output_dir") + 1])
        if method == fail:
            child["returncode"] = 3
            child["stderr"] = b"training: 50%|##   | 1/2\rTraceback (most recent call last):\nRuntimeError: boom\n"
            return child
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        save_file({"weight": torch.zeros(3, 4)}, run_dir / "adapter_model.safetensors")
        return child

    return run


def test_a_failing_method_is_recorded_and_the_others_are_written(compare, monkeypatch, tmp_path):
    monkeypatch.setattr(compare, "run_child", fake_child(fail="decoder_only"))
    out = tmp_path / "compare"
    # an earlier comparison's finished run: a failed run must not report its stale results
    (out / "runs" / "decoder_only").mkdir(parents=True)
    (out / ".compare_methods").write_text("")
    (out / "runs" / "decoder_only" / "metrics.json").write_text(json.dumps({"iou": 0.9}))

    assert compare.main(["--quick", "--methods", "lora", "decoder_only", "--output_dir", str(out)]) == 1

    rows = table_rows((out / "comparison.md").read_text())
    assert [row[0] for row in rows] == ["lora", "decoder_only"]
    assert rows[0][-1] == "ok" and rows[1][-1] == "failed: training (exit 3)"
    assert "RuntimeError: boom" in (out / "comparison.md").read_text()
    report = json.loads((out / "comparison.json").read_text())
    lora, decoder = report["methods"]
    assert lora["ok"] and lora["metrics"] == {"iou": 0.5} and lora["all_metrics"]["mae"] == 0.2
    weights = out / "runs" / "lora" / "adapter_model.safetensors"
    assert lora["weights_bytes"] == weights.stat().st_size and lora["saved_elements"] == 12
    assert lora["step_ratio"] == 1.0
    assert not decoder["ok"] and decoder["metrics"] == {"iou": None} and decoder["weights_bytes"] is None
    (failure,) = decoder["failures"]
    assert failure["stage"] == "training" and failure["returncode"] == 3
    assert failure["error"].splitlines()[-1] == "RuntimeError: boom"
    assert decoder["trainable_parameters"] == 10  # measured all the same
    assert (out / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)


def test_aggregate_marks_each_failed_stage_and_keeps_ratios_to_lora(compare):
    measured = {"peak_above_resident_mib": 20.0, "trainable_parameters": 5, "base_parameters": 50}
    memory = {
        "lora": {"result": {**measured, "peak_above_resident_mib": 10.0}},
        "cad": {"result": measured},
        "sam_adapter": {"result": None, "returncode": 1, "stderr_tail": "MemoryError"},
    }
    timing = {
        "result": {
            "timings": {
                phase: {
                    "seconds": {"lora": [1.0, 2.0, 3.0], "cad": [2.0, 4.0, 6.0]},
                    "cpu_seconds": {"lora": [1.0, 1.0, 1.0], "cad": [2.0, 2.0, 2.0]},
                }
                for phase in ("train_step", "inference")
            },
            "errors": {"sam_adapter": "RuntimeError: no"},
        }
    }
    metrics = {"metric_for_best_model": "iou", "iou": 0.4}
    training = {
        "lora": {"returncode": 0, "metrics": metrics},
        "cad": {"returncode": None, "timed_out": True, "stderr_tail": "killed"},
        "sam_adapter": {"returncode": 0, "metrics": metrics},
    }
    rows = compare.aggregate(["lora", "cad", "sam_adapter"], training, memory, timing, ["iou"], cpu=True)
    lora, cad, adapter = rows
    assert lora["ok"] and lora["step_ratio"] == 1.0 and lora["peak_memory_ratio"] == 1.0
    assert cad["step_ratio"] == 2.0 and cad["step_paired_ratio"] == 2.0 and cad["step_cpu_ratio"] == 2.0
    assert cad["peak_memory_ratio"] == 2.0 and cad["trainable_percent"] == 10.0
    assert cad["status"] == "failed: training (timed out)" and cad["metrics"] == {"iou": None}
    assert adapter["status"] == "failed: memory (exit 1), timing" and adapter["step_ratio"] is None
    assert adapter["metrics"] == {"iou": 0.4}
    # without LoRA's measurements there is no ratio
    (alone,) = compare.aggregate(["cad"], {"cad": training["lora"]}, {"cad": memory["cad"]}, None, ["iou"], True)
    assert alone["peak_memory_ratio"] is None and alone["step_ratio"] is None
    assert alone["status"] == "failed: timing"


def test_unknown_method_is_an_error_listing_the_available_ones(compare, tmp_path, capsys):
    out = tmp_path / "compare"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--quick", "--methods", "lora", "no_such_method", "--output_dir", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "no_such_method" in error and all(name in error for name in recipe_methods())
    assert not out.exists()


def test_bad_override_is_an_error_before_anything_trains(compare, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare, "run_child", lambda *a, **k: pytest.fail("nothing may run"))
    out = tmp_path / "compare"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--quick", "--output_dir", str(out), "--", "--no_such_key", "1"])
    assert exit_info.value.code == 2 and "no_such_key" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_with_files_it_did_not_write_is_refused(compare, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "comparison.md").write_text("someone else's")
    with pytest.raises(ValueError, match="did not write"):
        compare.check_output_dir(foreign)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("unrelated")
    compare.check_output_dir(tmp_path / "other")  # names it does not write are left alone
    (foreign / ".compare_methods").write_text("")
    compare.check_output_dir(foreign)  # its own earlier outputs


def test_children_report_status_stderr_peak_memory_and_timeouts(compare, tmp_path):
    code = "import sys; x = b'1' * (64 * 2**20); print('out'); print('line 1\\nValueError: bad', file=sys.stderr)"
    child = compare.run_child([sys.executable, "-c", code + "; sys.exit(4)"], tmp_path / "a.log", os.environ)
    assert child["returncode"] == 4 and not child["timed_out"] and child["max_rss_mib"] > 64
    assert compare.stderr_tail(child).splitlines()[-1] == "ValueError: bad"
    assert "out" in (tmp_path / "a.log").read_text()
    slow = compare.run_child([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", os.environ, 1)
    assert slow["returncode"] is None and slow["timed_out"] and slow["seconds"] < 30
