"""The `evaluate` modules: offline loading by path, streaming `add_batch`, options, errors, and gathering
across processes as Accelerate's `gather_for_metrics` does (simulated, and a real two-process gloo run)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import evaluate
import pytest
import torch

import sam_peft.metrics
from sam_peft.metrics import compute_semantic_metrics, compute_sod_metrics

REPO = Path(__file__).resolve().parents[1]


def _sod_data(seed=0, sizes=((20, 24), (20, 24), (13, 17), (20, 24), (9, 30), (13, 17), (20, 24))):
    generator = torch.Generator().manual_seed(seed)
    preds = [torch.rand(size, generator=generator) for size in sizes]
    refs = [torch.rand(size, generator=generator) > 0.6 for size in sizes]
    return preds, refs


def _semantic_data(seed=0, count=7, size=(9, 11)):
    generator = torch.Generator().manual_seed(seed)
    refs = [torch.randint(0, 3, size, generator=generator) for _ in range(count)]
    refs[0][0, :4] = 255
    preds = [torch.where(torch.rand(size, generator=generator) < 0.7, r % 255, 1) for r in refs]
    return preds, refs


def test_sod_module_streams_and_returns_plain_floats(tmp_path):
    preds, refs = _sod_data()
    module = sam_peft.metrics.load("sod", cache_dir=str(tmp_path))
    for start in range(0, len(preds), 3):
        module.add_batch(predictions=preds[start : start + 3], references=refs[start : start + 3])
    module.add(prediction=preds[0], reference=refs[0])
    assert len(module) == len(preds) + 1
    results = module.compute()
    assert results == pytest.approx(compute_sod_metrics([*preds, preds[0]], [*refs, refs[0]]), abs=1e-12)
    assert all(type(value) is float for value in results.values())
    with pytest.raises(ValueError, match="No images were added"):
        module.compute()  # compute resets


def test_sod_module_by_path_with_options(tmp_path):
    preds, refs = _sod_data(seed=1)
    options = dict(normalize=False, weighted_f_beta=0.3, num_threads=2)
    module = evaluate.load(sam_peft.metrics.path("sod"), **options, cache_dir=str(tmp_path))
    expected = compute_sod_metrics(preds, refs, normalize=False, weighted_f_beta=0.3, num_threads=1)
    assert module.compute(predictions=preds, references=refs) == pytest.approx(expected, abs=1e-12)


def test_semantic_module_streams(tmp_path):
    preds, refs = _semantic_data()
    module = sam_peft.metrics.load("semantic", num_labels=3, cache_dir=str(tmp_path))
    for start in range(0, len(preds), 2):
        module.add_batch(predictions=preds[start : start + 2], references=refs[start : start + 2])
    results = module.compute()
    assert results == compute_semantic_metrics(preds, refs, num_labels=3)
    assert isinstance(results["per_category_iou"], list) and len(results["per_category_iou"]) == 3
    assert all(type(results[name]) is float for name in ("mean_iou", "accuracy", "mean_accuracy", "mae", "mber"))
    # num_labels is required by load; compute may override it and ignore_index, as with the Hub's mean_iou.
    with pytest.raises(ValueError, match=re.escape('e.g. `sam_peft.metrics.load("semantic", num_labels=K)`')):
        sam_peft.metrics.load("semantic", cache_dir=str(tmp_path))
    late = sam_peft.metrics.load("semantic", num_labels=2, cache_dir=str(tmp_path))
    results = late.compute(predictions=preds, references=refs, num_labels=3, ignore_index=255)
    assert results == compute_semantic_metrics(preds, refs, num_labels=3)
    by_path = evaluate.load(sam_peft.metrics.path("semantic"), num_labels=3, cache_dir=str(tmp_path))
    assert by_path.compute(predictions=preds, references=refs) == results


def test_module_errors(tmp_path):
    sod = sam_peft.metrics.load("sod", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Prediction 1 has shape"):
        sod.add_batch(predictions=[torch.rand(4, 4), torch.rand(4, 5)], references=[torch.ones(4, 4)] * 2)
    with pytest.raises(ValueError, match="must not be empty"):
        sod.add_batch(predictions=[], references=[])
    with pytest.raises(ValueError, match="Prediction 0 contains NaN"):
        sod.compute(predictions=[torch.full((3, 3), float("nan"))], references=[torch.ones(3, 3)])
    with pytest.raises(ValueError, match="Unexpected arguments"):
        sod.compute(predictions=[torch.rand(3, 3)], references=[torch.ones(3, 3)], normalize=False)
    with pytest.raises(ValueError, match="No images were added"):
        sod.compute()
    semantic = sam_peft.metrics.load("semantic", num_labels=2, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="The reference of image 1 contains label id 2, but num_labels is 2"):
        semantic.compute(
            predictions=[torch.zeros(2, 2, dtype=torch.long)] * 2,
            references=[torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 2)],
        )
    with pytest.raises(ValueError, match="Unknown metric module"):
        sam_peft.metrics.path("mean_iou")
    with pytest.raises(ValueError, match="gather_for_metrics"):
        sam_peft.metrics.load("sod", num_process=2, process_id=0, cache_dir=str(tmp_path))


def _gathered_stream(items, num_processes=2, batch_size=2):
    """What every process passes to `add_batch` after Accelerate's `gather_for_metrics`: batches dealt to the
    processes in turn, the last round padded by wrapping around, each step's batches concatenated in process
    order and the padding dropped."""
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    rounds = -(-len(batches) // num_processes)
    padded = batches + [batches[i] for i in range(rounds * num_processes - len(batches))]
    seen = 0
    for step in range(rounds):
        gathered = [item for batch in padded[step * num_processes : (step + 1) * num_processes] for item in batch]
        gathered = gathered[: len(items) - seen]
        seen += len(gathered)
        yield gathered


def test_gathered_shards_give_the_single_process_result(tmp_path):
    preds, refs = _sod_data(seed=2)
    sod = sam_peft.metrics.load("sod", cache_dir=str(tmp_path))
    for batch in _gathered_stream(list(zip(preds, refs, strict=True))):
        sod.add_batch(predictions=[p for p, _ in batch], references=[r for _, r in batch])
    assert sod.compute() == pytest.approx(compute_sod_metrics(preds, refs), abs=1e-12)

    preds, refs = _semantic_data(seed=2)
    semantic = sam_peft.metrics.load("semantic", num_labels=3, cache_dir=str(tmp_path))
    for batch in _gathered_stream(list(zip(preds, refs, strict=True)), batch_size=3):
        semantic.add_batch(predictions=[p for p, _ in batch], references=[r for _, r in batch])
    assert semantic.compute() == compute_semantic_metrics(preds, refs, num_labels=3)


_OFFLINE_SCRIPT = """
import json, sys, torch
import sam_peft.metrics
generator = torch.Generator().manual_seed(0)
preds = [torch.rand(12, 15, generator=generator) for _ in range(3)]
refs = [p > 0.5 for p in preds]
sod = sam_peft.metrics.load("sod")
sod.add_batch(predictions=preds[:2], references=refs[:2])
sod.add_batch(predictions=preds[2:], references=refs[2:])
semantic = sam_peft.metrics.load("semantic", num_labels=2)
labels = [r.long() for r in refs]
json.dump({"sod": sod.compute(), "semantic": semantic.compute(predictions=labels, references=labels)}, sys.stdout)
"""


@pytest.mark.slow
def test_modules_load_offline_in_a_fresh_cache(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    generator = torch.Generator().manual_seed(0)
    preds = [torch.rand(12, 15, generator=generator) for _ in range(3)]
    refs = [p > 0.5 for p in preds]
    assert results["sod"] == pytest.approx(compute_sod_metrics(preds, refs), abs=1e-12)
    assert results["sod"]["iou"] == 1.0
    assert results["semantic"]["mean_iou"] == 1.0


_WORKER = """
import json, os, sys, torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
import sam_peft.metrics

accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2, accelerator.state
generator = torch.Generator().manual_seed(0)
preds = torch.rand(7, 16, 18, generator=generator)
refs = torch.rand(7, 16, 18, generator=generator) > 0.6
labels = torch.randint(0, 3, (7, 16, 18), generator=generator)
loader = accelerator.prepare(DataLoader(list(zip(preds, refs, labels)), batch_size=2))
sod = sam_peft.metrics.load("sod", experiment_id=f"rank{accelerator.process_index}")
semantic = sam_peft.metrics.load("semantic", num_labels=3, experiment_id=f"rank{accelerator.process_index}")
for pred, ref, label in loader:
    pred, ref, label = accelerator.gather_for_metrics((pred, ref, label))
    sod.add_batch(predictions=pred, references=ref)
    semantic.add_batch(predictions=(pred * 3).long().clamp(max=2), references=label)
results = {"sod": sod.compute(), "semantic": semantic.compute(), "images": len(preds)}
json.dump(results, open(sys.argv[1], "w"))
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()  # a gloo group left to the interpreter's exit may abort it
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"rank{rank}.json")],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]

    generator = torch.Generator().manual_seed(0)
    preds = torch.rand(7, 16, 18, generator=generator)
    refs = torch.rand(7, 16, 18, generator=generator) > 0.6
    labels = torch.randint(0, 3, (7, 16, 18), generator=generator)
    expected_sod = compute_sod_metrics(preds, refs)
    expected_semantic = compute_semantic_metrics((preds * 3).long().clamp(max=2), labels, num_labels=3)
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert results["sod"] == pytest.approx(expected_sod, abs=1e-12)
        assert results["semantic"] == expected_semantic
