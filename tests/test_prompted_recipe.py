"""recipes/train.py with `task: prompted` end to end on the tiny SAM and generated instance images: the outputs, the
base model's evaluation beside the adapted one's (both re-computed from the saved files), kill-free resume, and two
processes."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file
from test_train_recipe import ROOT, run_evaluate, run_train
from torch.utils.data import DataLoader
from transformers import SamModel

from sam_peft.data import instance_dataset
from sam_peft.data.prompted import prepare_objects_for_sam, sam_objects_collate_fn
from sam_peft.training import evaluate_interactive, load_trained, read_run_file

QUICKSTART_PROMPTED = ROOT / "recipes" / "configs" / "quickstart_prompted.yaml"
SEED = 0  # the quickstart's
EVAL_IMAGES, MAX_OBJECTS, CLICKS = 4, 3, 3


def prompted_run(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """The prompted quickstart shrunk to seconds: 8 training and 4 evaluation images, 2 epochs of 2 steps."""
    return [
        str(QUICKSTART_PROMPTED),
        *("--base_model", str(tmp_path / "base"), "--output_dir", str(tmp_path / name)),
        *("--synthetic_train_size", "8", "--synthetic_eval_size", str(EVAL_IMAGES)),
        *("--batch_size", "4", "--eval_batch_size", "4", "--num_epochs", "2", "--report_to", "none"),
        *("--max_objects", str(MAX_OBJECTS), "--eval_max_clicks", str(CLICKS), "--num_correction_clicks", "2"),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prompted")
    run_train(prompted_run(tmp_path, "run"))
    return tmp_path


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _interactive(model) -> dict:
    """The recipe's evaluation of `model`, re-run here: the evaluation split as the recipe builds it."""
    data = instance_dataset(EVAL_IMAGES, seed=SEED + 1, split="validation")
    prepared = prepare_objects_for_sam(data, 128, max_objects=MAX_OBJECTS, seed=SEED)
    loader = DataLoader(prepared, batch_size=4, collate_fn=sam_objects_collate_fn)
    return evaluate_interactive(model, loader, max_clicks=CLICKS, progress=False)


def test_a_prompted_run_writes_the_adapter_the_click_curves_and_a_card_with_the_base_model(finished):
    run_dir = finished / "run"
    names = {p.name for p in run_dir.iterdir()}
    written = {"adapter_model.safetensors", "README.md", "metrics.json", "iou_vs_clicks.png", "training_curves.png"}
    assert written <= names
    assert "predictions.png" not in names  # the click curves are the prompted run's picture
    assert read_run_file(run_dir)["model"]["task"] == "prompted"
    metrics = _metrics(run_dir)
    assert [entry["step"] for entry in metrics["train_log"]] == [1, 2, 3, 4]
    for results in (metrics, metrics["untrained"]):
        assert len(results["iou_curve"]) == CLICKS
        assert results["miou_clicks"] == pytest.approx(sum(results["iou_curve"]) / CLICKS)
        assert {"miou_box", "miou@1", "noc@85", "noc@90", "nof@90"} <= results.keys()
    assert metrics["num_objects"] == metrics["untrained"]["num_objects"] > EVAL_IMAGES  # several objects per image
    # the adapter holds the encoder's Conv-LoRA and SAM's own promptable mask decoder (IoU head included)
    weights = load_file(run_dir / "adapter_model.safetensors")
    assert any("lora_" in key for key in weights)
    assert any("mask_decoder.iou_prediction_head" in key for key in weights)
    card = (run_dir / "README.md").read_text()
    assert "| metric | this adapter | base model |" in card
    row = f"| miou@1 | {metrics['miou@1']:.4f} | {metrics['untrained']['miou@1']:.4f} |"
    assert row in card
    assert "![mIoU against clicks](iou_vs_clicks.png)" in card
    assert "from transformers import SamModel" in card
    with Image.open(run_dir / "iou_vs_clicks.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 300


def test_the_metrics_are_those_of_the_saved_adapter_and_of_the_base_model(finished):
    """metrics.json's final values come from the saved adapter, and its "untrained" ones from the base checkpoint
    itself (the adapter disabled, the original mask decoder), both re-computed here from the files."""
    metrics = _metrics(finished / "run")
    model = load_trained(finished / "run")
    assert isinstance(model, PeftModel) and type(model.get_base_model()) is SamModel
    adapted = _interactive(model)
    base = _interactive(SamModel.from_pretrained(finished / "base").eval())
    for key in ("miou_box", "miou@1", f"miou@{CLICKS}", "noc@85", "num_objects"):
        assert adapted[key] == pytest.approx(metrics[key], abs=1e-6), key
        assert base[key] == pytest.approx(metrics["untrained"][key], abs=1e-6), key
    assert adapted["miou_box"] != pytest.approx(base["miou_box"], abs=1e-4)  # training changed something


def test_a_stopped_prompted_run_resumes_to_the_uninterrupted_result(finished, tmp_path):
    """Prompts are drawn from seeds carried by the samples, so the steps after a resume draw what the
    uninterrupted run drew."""
    (tmp_path / "base").symlink_to(finished / "base", target_is_directory=True)
    run_train(prompted_run(tmp_path, "run", "--max_steps", "2"))
    assert not (tmp_path / "run" / "metrics.json").exists()
    run_train(prompted_run(tmp_path, "run", "--resume_from_checkpoint", "latest"))
    expected, got = _metrics(finished / "run"), _metrics(tmp_path / "run")
    assert [e["loss"] for e in got["train_log"]] == pytest.approx([e["loss"] for e in expected["train_log"]], abs=1e-6)
    reference = load_file(finished / "run" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_processes_train_and_evaluate_every_object_once(finished, tmp_path):
    """Two processes of 2 images each against one of 4: the same learning rates, and the same base-model
    evaluation (each process evaluates its images; the gathered rows count every object once)."""
    (tmp_path / "base").symlink_to(finished / "base", target_is_directory=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534"]
    os.environ["ACCELERATE_USE_CPU"] = "1"
    try:
        run_train(prompted_run(tmp_path, "two", "--batch_size", "2", "--eval_batch_size", "2"), launcher=launcher)
    finally:
        del os.environ["ACCELERATE_USE_CPU"]
    one, two = _metrics(finished / "run"), _metrics(tmp_path / "two")
    assert [e["lr"] for e in two["train_log"]] == [e["lr"] for e in one["train_log"]]
    for key in ("num_objects", "miou_box", "miou@1", f"miou@{CLICKS}", "noc@90"):
        assert two["untrained"][key] == pytest.approx(one["untrained"][key], abs=1e-6), key
    assert two["num_objects"] == one["num_objects"]


def _square(x: int, y: int, side: int) -> list[float]:
    return [x, y, x + side, y, x + side, y + side, x, y + side]


def _write_objects(folder: Path, count: int = 6) -> tuple[Path, Path, Path]:
    """`count` 96x64 photos with two squares each: as 16-bit instance label images (ids 3 and 7) and as a COCO
    file of polygons; image 0 of the label folder has no object."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    for index in range(count):
        name = f"img{index}.png"
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(images / name)
        label = np.zeros((64, 96), np.uint16)
        squares = [(5 + index, 8, 20), (50, 30 - index, 16)]
        for object_id, (x, y, side) in zip((3, 7), squares, strict=True):
            if index:
                label[y : y + side, x : x + side] = object_id
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": [_square(x, y, side)],
                    "area": side * side,
                    "bbox": [x, y, side, side],
                }
            )
        Image.fromarray(label).save(labels / name)
        entries.append({"id": index + 1, "file_name": name, "width": 96, "height": 64})
    coco = folder / "instances.json"
    coco.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}))
    return images, labels, coco


@pytest.mark.parametrize("source", ["instance_folder", "coco"])
def test_prompted_runs_on_a_folder_of_instance_labels_and_on_a_coco_file(finished, tmp_path, source):
    (tmp_path / "base").symlink_to(finished / "base", target_is_directory=True)
    images, labels, coco = _write_objects(tmp_path)
    data = ["--image_dir", str(images)]
    data += (
        ["--mask_dir", str(labels), "--objects", "instance"]
        if source == "instance_folder"
        else ["--coco_annotations", str(coco)]
    )
    args = prompted_run(tmp_path, "run", *data, "--validation_fraction", "0.34", "--num_epochs", "1")
    result = run_train(args)
    metrics = _metrics(tmp_path / "run")
    # 2 of the 6 images are validation images, with 2 objects each (the label folder's empty image is skipped)
    assert metrics["num_objects"] == metrics["untrained"]["num_objects"] == 4
    if source == "instance_folder":  # the empty label image is named as skipped
        assert "1 of 6 image(s) have no object" in result.stderr and "were skipped: img0" in result.stderr


@pytest.fixture(scope="module")
def evaluate_main():
    """recipes/evaluate.py's main(), run in this process."""
    return runpy.run_path(str(ROOT / "recipes" / "evaluate.py"))["main"]


def test_evaluate_reproduces_a_prompted_run_and_scores_a_folder_of_objects(
    finished, tmp_path, evaluate_main, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # another working directory
    output = tmp_path / "again.json"
    args = ["--adapter", str(finished / "run"), "--max_clicks", str(CLICKS), "--output", str(output)]
    header, _, row = run_evaluate(evaluate_main, monkeypatch, capsys, *args)
    trained, again = _metrics(finished / "run"), json.loads(output.read_text())
    columns = "miou_box | miou@1 | miou@3 | miou_clicks | noc@85 | noc@90"
    assert header == f"| synthetic validation ({trained['num_objects']} objects) | {columns} |"
    for key in ("miou_box", "miou@1", f"miou@{CLICKS}", "noc@85", "num_objects"):
        assert again[key] == pytest.approx(trained[key], abs=1e-6), key
    assert row.startswith(f"| {finished / 'run'} | {100 * trained['miou_box']:.2f} | ")
    assert row.endswith(f" | {trained['noc@85']:.2f} | {trained['noc@90']:.2f} |")
    # a folder of instance label images, named here: scored whole, its empty image skipped
    images, labels, _ = _write_objects(tmp_path)
    folder = ["--adapter", str(finished / "run"), "--image_dir", str(images), "--mask_dir", str(labels)]
    header, _, _ = run_evaluate(evaluate_main, monkeypatch, capsys, *folder, "--objects", "instance")
    assert header.startswith(f"| {images} test (10 objects) | miou_box | miou@1 |")


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_prompted_runs_on_sam2_and_sam3_train_evaluate_and_reload(variant, tmp_path):
    args = prompted_run(tmp_path, "run", "--random_base", variant, "--num_epochs", "1", "--method", "lora")
    run_train(args)
    metrics = _metrics(tmp_path / "run")
    assert metrics["num_objects"] == metrics["untrained"]["num_objects"] > 0
    model = load_trained(tmp_path / "run")
    expected = {"sam2-tiny": "Sam2Model", "sam3-tiny": "Sam3TrackerModel"}[variant]
    assert type(model.get_base_model()).__name__ == expected
    assert "iou_vs_clicks.png" in {p.name for p in (tmp_path / "run").iterdir()}
