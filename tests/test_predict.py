"""Prediction on folders (sam_peft.prediction and recipes/predict.py): names, output-folder guard, failures,
probabilities. A tiny random SAM with an untrained conv_lora adapter stands in for a trained run."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam_peft import prediction
from sam_peft.modeling import random_sam
from sam_peft.prediction import (
    MANIFEST,
    OutputFolderError,
    PredictionInput,
    check_output_dir,
    list_inputs,
    predict_folder,
)
from sam_peft.training import ModelArguments, build_model, load_trained, save_trained, write_run_file

ROOT = Path(__file__).resolve().parents[1]
PREDICT = ROOT / "recipes" / "predict.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base") / "tiny-sam"
    random_sam("tiny", seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run_dir(base, tmp_path_factory) -> Path:
    """A run folder as recipes/train.py leaves it, with an untrained conv_lora adapter on the tiny SAM."""
    run = tmp_path_factory.mktemp("runs") / "run"
    model_args = ModelArguments(base_model=str(base), random_base=None, method="conv_lora")
    save_trained(build_model(model_args), run)
    write_run_file(run, model_args, 128)
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    return load_trained(run_dir)


def write_image(path: Path, height: int, width: int, channels: int = 3, seed: int = 0) -> bytes:
    """A random image `(height, width[, channels])` saved at `path` (format from its extension); returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width) if channels == 1 else (height, width, channels)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path.read_bytes()


def write_truncated_png(path: Path) -> None:
    """The first 100 bytes of a valid PNG (of random pixels: several kB)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[:100])


def tree(folder: Path) -> list[str]:
    """Every file below `folder`, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in tree(folder)}


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


# --- inputs and names ---------------------------------------------------------------------------------------------


def test_names_mirror_the_tree_and_keep_the_extension_only_where_outputs_clash(tmp_path):
    for name in ["a.png", "a.jpg", "b.PNG", "c.png", "c_overlay.png", "x.png", "x.jpg", "x.png.jpg"]:
        (tmp_path / name).touch()
    for name in ["sub/a.png", "sub/deep/d.tif", "notes.txt", ".hidden.png", ".cache/e.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    inputs = list_inputs(tmp_path)
    assert {item.image.relative_to(tmp_path).as_posix(): item.name for item in inputs} == {
        "a.jpg": "a.jpg",  # a.png and a.jpg share the stem: both keep their extension
        "a.png": "a.png",
        "b.PNG": "b",
        "c.png": "c.png",  # c's overlay would be c_overlay.png, the mask of c_overlay.png
        "c_overlay.png": "c_overlay.png",
        "sub/a.png": "sub/a",  # another folder: no clash with a.png
        "sub/deep/d.tif": "sub/deep/d",
        "x.jpg": "x.jpg",
        "x.png": "x.png",  # x.png -> x.png.png, which x.png.jpg's stem name would give too: it keeps its extension
        "x.png.jpg": "x.png.jpg",
    }
    outputs = [item.output(suffix) for item in inputs for suffix in prediction.ALL_SUFFIXES]
    assert len(outputs) == len(set(outputs))
    assert list_inputs(tmp_path / "sub" / "a.png") == [PredictionInput(tmp_path / "sub" / "a.png", "a")]


def test_a_missing_input_or_a_folder_without_images_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent is neither an image file nor a folder"):
        list_inputs(tmp_path / "absent")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").touch()
    with pytest.raises(FileNotFoundError, match=r"No images .* in .*empty"):
        list_inputs(tmp_path / "empty")


# --- predictions --------------------------------------------------------------------------------------------------


def test_masks_mirror_the_input_tree_at_each_image_size(model, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "rgba.png", 30, 70, channels=4)
    write_image(inputs / "grey.jpg", 90, 40, channels=1)
    write_image(inputs / "sub" / "deep" / "wide.png", 20, 130)
    report = predict_folder(model, inputs, out, batch_size=2, overlays=True, progress=False)
    assert tree(out) == [
        "grey.png",
        "grey_overlay.png",
        MANIFEST,
        "rgba.png",
        "rgba_overlay.png",
        "sub/deep/wide.png",
        "sub/deep/wide_overlay.png",
    ]
    for name, size in (("grey", (40, 90)), ("rgba", (70, 30)), ("sub/deep/wide", (130, 20))):
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "L" and mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{name}_overlay.png").size == (2 * size[0], size[1])  # image | prediction
    assert len(report.predicted) == 3 and not report.failed
    recorded = manifest(out)
    assert recorded["complete"] and recorded["failed"] == {} and recorded["files"] == sorted(report.files)
    assert "3 masks written to" in report.summary()


def test_the_input_folder_and_folders_inside_it_are_refused(model, tmp_path):
    inputs = tmp_path / "in"
    for index in range(3):
        write_image(inputs / f"image{index}.png", 16, 16, seed=index)
    (inputs / "sub").mkdir()
    before = snapshot(inputs)
    for output_dir in (inputs, inputs / "sub", inputs / "new" / "masks", tmp_path / "in" / ".." / "in"):
        with pytest.raises(OutputFolderError, match=re.escape(str(output_dir))):
            predict_folder(model, inputs, output_dir, progress=False)
    with pytest.raises(OutputFolderError, match="is the input"):  # a single image given as its own output folder
        check_output_dir(inputs / "image0.png", inputs / "image0.png")
    assert snapshot(inputs) == before and not (inputs / "new").exists()


def test_a_folder_with_files_predict_did_not_write_is_refused(model, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "a.png", 16, 16)
    write_image(out / "sub" / "a.png", 8, 8, seed=1)  # the name of an output, but not written by predict
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(OutputFolderError) as error:
        predict_folder(model, inputs, out, progress=False)
    assert str(out) in str(error.value) and "notes.txt" in str(error.value) and "sub/a.png" in str(error.value)
    assert snapshot(out) == before
    # a predictions.json of someone else, or one naming files outside the folder, makes no folder a prediction's
    for record in ({"files": ["notes.txt"]}, {"written_by": prediction.WRITTEN_BY, "files": ["../in/a.png"]}):
        (out / MANIFEST).write_text(json.dumps(record))
        with pytest.raises(OutputFolderError, match=re.escape(MANIFEST)):
            predict_folder(model, inputs, out, progress=False)
    assert (inputs / "a.png").is_file()
    # the output folder holding the input folder is refused too: the inputs are not predict's files
    with pytest.raises(OutputFolderError, match=re.escape("in/a.png")):
        predict_folder(model, inputs, tmp_path, progress=False)


def test_a_rerun_replaces_only_the_previous_prediction(model, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()  # an empty folder is accepted
    write_image(inputs / "a.png", 16, 16)
    write_image(inputs / "sub" / "b.png", 16, 16, seed=1)
    predict_folder(model, inputs, out, overlays=True, progress=False, adapter="first")
    assert tree(out) == ["a.png", "a_overlay.png", MANIFEST, "sub/b.png", "sub/b_overlay.png"]
    (inputs / "sub" / "b.png").unlink()
    (inputs / "sub").rmdir()
    predict_folder(model, inputs, out, progress=False, adapter="second")
    assert tree(out) == ["a.png", MANIFEST] and not (out / "sub").exists()  # the earlier outputs are gone
    assert manifest(out)["files"] == ["a.png"] and manifest(out)["adapter"] == "second"
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=re.escape("notes.txt")):
        predict_folder(model, inputs, out, progress=False)


def test_an_interrupted_run_leaves_a_folder_that_a_rerun_completes(model, tmp_path, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "out"
    for name in ("a", "b", "c"):
        write_image(inputs / f"{name}.png", 16, 16)
    calls = []
    original = prediction.mask_image

    def interrupted(labels, num_labels):
        calls.append(labels)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(labels, num_labels)

    monkeypatch.setattr(prediction, "mask_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(model, inputs, out, batch_size=1, progress=False)
    monkeypatch.undo()
    assert tree(out) == ["a.png", MANIFEST] and not manifest(out)["complete"]
    (out / f"{prediction.TEMPORARY_PREFIX}12345-b.png").write_bytes(b"half an image")  # as a kill leaves it
    report = predict_folder(model, inputs, out, batch_size=1, progress=False)
    assert tree(out) == ["a.png", "b.png", "c.png", MANIFEST] and len(report.predicted) == 3
    assert manifest(out)["complete"] and manifest(out)["files"] == ["a.png", "b.png", "c.png"]


def test_failing_images_are_listed_and_the_others_written(model, tmp_path, monkeypatch):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "a.png", 16, 16)
    write_truncated_png(inputs / "b.png")
    write_image(inputs / "c.png", 7, 7)  # makes its batch fail in the model: retried image by image
    write_image(inputs / "d.png", 16, 16)
    original = prediction.predict_logits

    def failing(model, processor, images):
        if any(image.size == (7, 7) for image in images):
            raise RuntimeError("CUDA out of\nmemory")
        return original(model, processor, images)

    monkeypatch.setattr(prediction, "predict_logits", failing)
    report = predict_folder(model, inputs, out, batch_size=4, progress=False)
    assert tree(out) == ["a.png", "d.png", MANIFEST]
    assert report.predicted == [inputs / "a.png", inputs / "d.png"]
    assert list(report.failed) == [inputs / "b.png", inputs / "c.png"]
    assert report.failed[inputs / "b.png"].startswith("DataFileError: Cannot read image file")
    assert report.failed[inputs / "c.png"] == "RuntimeError: CUDA out of memory"
    lines = report.summary().splitlines()
    assert lines[0] == f"2 masks written to {out}" and len(lines) == 4
    assert lines[2].startswith(f"  {inputs / 'b.png'}: DataFileError") and lines[3].startswith(f"  {inputs / 'c.png'}")
    assert manifest(out)["failed"] == {str(path): error for path, error in report.failed.items()}


def test_binary_probabilities_are_an_8_bit_png_that_agrees_with_the_mask(model, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "a.png", 24, 50)
    predict_folder(model, inputs, out, save_probabilities=True, progress=False)
    assert tree(out) == ["a.png", "a_prob.png", MANIFEST]
    mask, probability = (np.asarray(Image.open(out / name)) for name in ("a.png", "a_prob.png"))
    assert probability.dtype == np.uint8 and probability.shape == mask.shape == (24, 50)
    assert (probability[mask == 255] >= 127).all() and (probability[mask == 0] <= 128).all()


def test_multiclass_probabilities_are_a_float16_array_per_class(base, tmp_path):
    args = ModelArguments(base_model=str(base), random_base=None, method="decoder_only", num_labels=3)
    model = build_model(args).eval()
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "a.png", 24, 50)
    predict_folder(model, inputs, out, save_probabilities=True, overlays=True, progress=False)
    assert tree(out) == ["a.png", "a_overlay.png", "a_prob.npy", MANIFEST]
    mask = Image.open(out / "a.png")
    probabilities = np.load(out / "a_prob.npy")
    assert mask.mode == "P" and probabilities.dtype == np.float16 and probabilities.shape == (3, 24, 50)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=5e-3)
    labels = np.asarray(mask).astype(np.int64)
    chosen = np.take_along_axis(probabilities, labels[None], 0)[0]
    assert (chosen >= probabilities.max(0) - 2e-3).all()  # the mask's class is the most probable one


# --- the recipe ---------------------------------------------------------------------------------------------------


def load_recipe():
    spec = importlib.util.spec_from_file_location("predict_recipe", PREDICT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(PREDICT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_recipe_names_a_missing_input_before_loading_the_model(tmp_path, capsys):
    recipe = load_recipe()
    args = ["--adapter", str(tmp_path / "no-run"), "--input", str(tmp_path / "absent")]
    status = recipe.main([*args, "--output_dir", str(tmp_path / "out")])
    assert status == 2 and "absent is neither an image file nor a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_recipe_refuses_to_write_into_its_input_folder(run_dir, tmp_path):
    inputs = tmp_path / "in"
    for index in range(10):
        write_image(inputs / f"image{index}.png", 16, 16, seed=index)
    before = snapshot(inputs)
    result = run_recipe("--adapter", str(run_dir), "--input", str(inputs), "--output_dir", str(inputs))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"The output folder {inputs} is the input" in result.stderr
    assert snapshot(inputs) == before


def test_recipe_end_to_end(run_dir, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_image(inputs / "rgba.png", 30, 70, channels=4)
    write_image(inputs / "grey.jpg", 90, 40, channels=1)
    write_image(inputs / "grey.png", 20, 10, seed=1)
    write_image(inputs / "sub" / "deep.png", 33, 17)
    write_truncated_png(inputs / "broken.png")
    (inputs / "notes.txt").write_text("not an image")
    args = ["--adapter", str(run_dir), "--input", str(inputs), "--output_dir", str(out)]
    result = run_recipe(*args, "--overlays", "--save_probabilities", "--batch_size", "2")
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"4 masks written to {out}" in result.stderr
    failures = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(failures) == 1 and "DataFileError: Cannot read image file" in failures[0]
    names = {"rgba": (70, 30), "grey.jpg": (40, 90), "grey.png": (10, 20), "sub/deep": (17, 33)}
    expected = [f"{name}{suffix}" for name in names for suffix in (".png", "_overlay.png", "_prob.png")]
    assert tree(out) == sorted([*expected, MANIFEST])
    for name, size in names.items():
        mask = Image.open(out / f"{name}.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{name}_prob.png").size == size
    recorded = manifest(out)
    assert recorded["adapter"] == str(run_dir) and list(recorded["failed"]) == [str(inputs / "broken.png")]
