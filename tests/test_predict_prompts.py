"""Prediction with prompts (sam_peft.prompted_prediction and recipes/predict.py --prompts): coordinates scaled as
transformers' SamProcessor scales them, SAM's best-of-three for a single point, prompt order, instance label images,
prompts.json validation, skipped images, and the recipe on prompted and prompt-free runs. Tiny random SAM / SAM 2 /
SAM 3 models with untrained LoRA adapters stand in for trained runs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import SamProcessor

from sam_peft.data import sam_image_processor
from sam_peft.modeling import random_sam
from sam_peft.prediction import MANIFEST, OutputFolderError
from sam_peft.prompted_prediction import (
    AUTOMATIC_MASKS_UNAVAILABLE,
    Prompt,
    PromptedPrediction,
    PromptError,
    label_png,
    predict_folder_prompted,
    predict_prompted,
    read_prompts,
    run_task,
)
from sam_peft.training import ModelArguments, build_model, load_trained, save_trained, write_run_file

ROOT = Path(__file__).resolve().parents[1]
PREDICT = ROOT / "recipes" / "predict.py"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SAM, SAM 2 and SAM 3 tracker checkpoints."""
    folder = tmp_path_factory.mktemp("bases")
    paths = {}
    for variant in ("tiny", "sam2-tiny", "sam3-tiny"):
        random_sam(variant, seed=0).save_pretrained(folder / variant)
        paths[variant] = folder / variant
    return paths


def make_run(base: Path, run: Path, task: str, method: str = "lora") -> Path:
    """A run folder as recipes/train.py leaves it (untrained weights)."""
    model_args = ModelArguments(base_model=str(base), method=method, task=task)
    model = build_model(model_args)
    save_trained(model, run)
    image_size = model.config.prompt_encoder_config.image_size
    write_run_file(run, model_args, image_size=image_size, training={"epochs": 1, "steps": 1})
    return run


@pytest.fixture(scope="module")
def prompted_run(bases, tmp_path_factory) -> Path:
    return make_run(bases["tiny"], tmp_path_factory.mktemp("runs") / "prompted", "prompted")


@pytest.fixture(scope="module")
def prompt_free_run(bases, tmp_path_factory) -> Path:
    return make_run(bases["tiny"], tmp_path_factory.mktemp("runs") / "prompt-free", "prompt_free", "decoder_only")


@pytest.fixture(scope="module")
def model(prompted_run):
    return load_trained(prompted_run)


def prompted_model(base: Path):
    return build_model(ModelArguments(base_model=str(base), method="lora", task="prompted")).eval()


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(height, width, seed).save(path)


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


@torch.no_grad()
def direct(model, image: Image.Image, multimask: bool, **prompts):
    """The model called as transformers documents it: SamProcessor scales the prompts, post_process_masks brings
    the masks back. Returns masks `(P, M, H, W)` bool and scores `(P, M)`."""
    processor = SamProcessor(image_processor=sam_image_processor(model.config.prompt_encoder_config.image_size))
    inputs = processor(images=image, return_tensors="pt", **prompts)
    keys = ("pixel_values", "input_boxes", "input_points", "input_labels")
    call = {key: inputs[key].float() if key != "input_labels" else inputs[key] for key in keys if key in inputs}
    outputs = model(**call, multimask_output=multimask)
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks[0].numpy(), outputs.iou_scores[0].numpy()


# --- the Python API -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "sam2-tiny", "sam3-tiny"])
def test_box_prompts_on_a_wide_image_match_transformers_processor(bases, variant):
    model = prompted_model(bases[variant])
    image = random_image(60, 150)  # height 60, width 150: scaled by S / 150 on both axes
    boxes = [[20, 10, 90, 50], [100.5, 5, 149, 58]]
    result = predict_prompted(model, [image], [[{"box": box} for box in boxes]])[0]
    expected, scores = direct(model, image, False, input_boxes=[boxes])
    assert result.masks.shape == (2, 60, 150) and result.masks.dtype == bool
    np.testing.assert_array_equal(result.masks, expected[:, 0])
    np.testing.assert_allclose(result.scores, scores[:, 0], atol=1e-6)
    # the check has power: boxes given to the model unscaled give other masks
    unscaled, _ = direct(model, image, False, input_boxes=[[[v * 150 / 128 for v in box] for box in boxes]])
    assert (unscaled[:, 0] != expected[:, 0]).mean() > 0.01


def test_a_single_point_keeps_the_mask_with_the_highest_predicted_iou():
    model = random_sam("tiny", seed=0).eval()  # a bare SamModel
    image = random_image(90, 70, seed=1)
    point = (30, 40)
    iou_bias = model.mask_decoder.iou_prediction_head.proj_out.bias
    for best in (1, 2):  # mask tokens 1..3 answer an ambiguous prompt; make token best + 1 the most confident
        with torch.no_grad():
            iou_bias.zero_()
            iou_bias[best + 1] = 10.0
        masks, scores = direct(model, image, True, input_points=[[[point]]], input_labels=[[[1]]])
        assert scores[0].argmax() == best and (masks[0, best] != masks[0, 0]).any()
        result = predict_prompted(model, [image], [[Prompt(points=[point])]])[0]
        np.testing.assert_array_equal(result.masks[0], masks[0, best])
        assert result.scores[0] == pytest.approx(scores[0, best], abs=1e-5)
    # a negative point, or two points, is no ambiguous single click: the single-mask answer
    for points, labels in (([point], [0]), ([point, (5, 5)], [1, 0])):
        single, single_scores = direct(model, image, False, input_points=[[points]], input_labels=[[labels]])
        result = predict_prompted(model, [image], [[Prompt(points=points, labels=labels)]])[0]
        np.testing.assert_array_equal(result.masks[0], single[0, 0])
        assert result.scores[0] == pytest.approx(single_scores[0, 0], abs=1e-5)


def test_mixed_prompts_come_back_in_prompt_order_as_if_each_were_alone(model):
    images = [random_image(50, 80, seed=2), random_image(100, 40, seed=3), random_image(30, 30, seed=4)]
    prompts = [
        [
            Prompt(box=(5, 5, 60, 40), id="a"),
            Prompt(points=((20, 20),), id="b"),
            Prompt(box=(30, 10, 79, 49), id="c"),
            Prompt(points=((10, 10), (70, 40)), labels=(1, 0), id="d"),
            Prompt(box=(5, 5, 60, 40), points=((30, 20),), id="e"),
            Prompt(points=((40, 25),), id="f"),
        ],
        [{"box": [0, 0, 40, 100]}, {"points": [[20, 50]], "labels": [0]}],
        [],
    ]
    results = predict_prompted(model, images, prompts, batch_size=2, prompts_per_batch=1)
    batched = predict_prompted(model, images, prompts, batch_size=3)
    assert [r.masks.shape for r in results] == [(6, 50, 80), (2, 100, 40), (0, 30, 30)]
    assert [p.id for p in results[0].prompts] == list("abcdef")
    for image, image_prompts, result, other in zip(images, prompts, results, batched, strict=True):
        for index, prompt in enumerate(image_prompts):
            alone = predict_prompted(model, [image], [[prompt]])[0]
            assert (alone.masks[0] == result.masks[index]).mean() > 0.999
            assert alone.scores[0] == pytest.approx(result.scores[index], abs=1e-5)
        assert other.masks.shape == result.masks.shape
        assert np.count_nonzero(other.masks != result.masks) <= 0.001 * result.masks.size
    # the prompts differ, and so do their masks: order matters
    assert len({mask.tobytes() for mask in results[0].masks}) > 3


def test_instance_label_images_draw_later_prompts_over_earlier_ones(tmp_path):
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, :2] = True
    masks[1, 1:3, :2] = True
    masks[2, 3, 4] = True
    labels = PromptedPrediction(masks, np.zeros(3, np.float32)).label_image()
    expected = np.array(
        [[1, 1, 1, 1, 1], [2, 2, 1, 1, 1], [2, 2, 0, 0, 0], [0, 0, 0, 0, 3]],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8
    label_png(labels).save(tmp_path / "few.png")
    saved = Image.open(tmp_path / "few.png")
    assert saved.mode == "P"
    np.testing.assert_array_equal(np.asarray(saved), expected)

    many = np.zeros((300, 2, 200), dtype=bool)
    for index in range(300):
        many[index, index % 2, index // 2 :] = True
    labels = PromptedPrediction(many, np.zeros(300, np.float32)).label_image()
    assert labels.dtype == np.uint16 and labels.max() == 300 and labels[1, 199] == 300 and labels[0, 0] == 1
    label_png(labels).save(tmp_path / "many.png")
    saved = Image.open(tmp_path / "many.png")
    assert saved.mode.startswith("I")  # 16-bit greyscale
    np.testing.assert_array_equal(np.asarray(saved), labels)


def test_the_api_names_the_image_and_prompt_of_a_bad_prompt(model):
    images = [random_image(20, 30), random_image(40, 50)]
    with pytest.raises(PromptError, match=r"image 1, prompt 1: point \(51, 3\) lies outside the image \(50 x 40"):
        predict_prompted(model, images, [[], [{"box": [0, 0, 50, 40]}, {"points": [[51, 3]]}]])
    with pytest.raises(PromptError, match=r"image 0, prompt 0: empty box"):
        predict_prompted(model, images, [[{"box": [5, 5, 5, 9]}], []])
    with pytest.raises(ValueError, match="2 images but prompts for 1"):
        predict_prompted(model, images, [[]])


# --- prompts.json -------------------------------------------------------------------------------------------------


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    write_image(folder / "a.png", 30, 40)  # width 40, height 30
    write_image(folder / "sub" / "b.jpg", 20, 10, seed=1)
    write_image(folder / "c.png", 16, 16, seed=2)
    return folder


def test_prompts_are_read_by_relative_path_and_unprompted_images_left_out(inputs, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"sub/b.jpg": [{"points": [[10, 20]], "id": 7}], "a.png": [{"box": [0, 0, 40, 30]}]}))
    prompts = read_prompts(path, inputs)
    assert list(prompts) == ["a.png", "sub/b.jpg"]  # in the inputs' order; c.png has none
    assert prompts["a.png"] == [Prompt(box=(0, 0, 40, 30))]
    assert prompts["sub/b.jpg"] == [Prompt(points=((10, 20),), labels=(1,), id=7)]
    # a single image as the input is named by its file name
    assert read_prompts({"b.jpg": [{"box": [1, 1, 9, 19]}]}, inputs / "sub" / "b.jpg")["b.jpg"][0].box == (1, 1, 9, 19)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"a.png": [{"bbox": [0, 0, 5, 5]}]}, "image 'a.png', prompt 0: unknown key(s) 'bbox': a prompt takes box"),
        (
            {"a.png": [{"box": [0, 0, 5, 5]}, {"box": [10, 5, 4, 9]}]},
            "image 'a.png', prompt 1: empty box [10, 5, 4, 9]",
        ),
        (
            {"a.png": [{"box": [0, 0, 41, 5]}]},
            "image 'a.png', prompt 0: box corner (41, 5) lies outside the image (40 x 30",
        ),
        (
            {"sub/b.jpg": [{"points": [[5, -1]]}]},
            "image 'sub/b.jpg', prompt 0: point (5, -1) lies outside the image (10 x 20",
        ),
        (
            {"a.png": [{"points": [[1, 2], [3, 4]], "labels": [1]}]},
            "2 point(s) but 1 label(s): give one label per point",
        ),
        ({"a.png": [{"points": [[1, 2]], "labels": [2]}]}, "prompt 0: labels must be 1 (on the object) or 0 (off it)"),
        ({"a.png": [{"points": [[1, 2]], "labels": [True]}]}, "labels must be 1 (on the object) or 0 (off it)"),
        ({"a.png": [{"id": "x"}]}, "prompt 0: a prompt needs a box or points"),
        ({"a.png": [{"points": []}]}, "points must be a non-empty list of [x, y] pairs"),
        ({"a.png": [{"points": [[1, "2"]]}]}, "points must be a list of [x, y] pairs of numbers"),
        ({"a.png": [{"box": [1, 2, 3]}]}, "box must be 4 numbers [x0, y0, x1, y1]"),
        ({"a.png": [{"box": [1, 1, 5, 5], "id": "x"}, {"points": [[2, 2]], "id": "x"}]}, "prompt ids ['x'] repeat"),
        ({"a.png": {"box": [1, 1, 5, 5]}}, "image 'a.png': expected a list of prompts"),
        ({"a.png": [[1, 1, 5, 5]]}, 'prompt 0: a prompt is an object such as {"box"'),
        ({"a.png": []}, "gives no prompt to any of the 3 input(s)"),
    ],
)
def test_invalid_prompts_name_the_image_the_prompt_and_the_fix(inputs, prompts, message):
    with pytest.raises(PromptError) as error:
        read_prompts(prompts, inputs)
    assert message in str(error.value)


def test_images_that_are_not_inputs_are_named_with_how_names_are_formed(inputs, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"a": [{"box": [0, 0, 5, 5]}], "in/sub/b.jpg": [], "c.png": []}))
    with pytest.raises(PromptError) as error:
        read_prompts(path, inputs)
    text = str(error.value)
    assert str(path) in text and "2 image(s) that are not among the inputs" in text
    assert "'a', 'in/sub/b.jpg'" in text and "relative to the input folder, with its extension" in text
    assert "'a.png'" in text and "'sub/b.jpg'" in text  # the real names, as examples
    for content, message in (("[1, 2]", "must hold a JSON object mapping image paths"), ("{", "Cannot read")):
        path.write_text(content)
        with pytest.raises(PromptError, match=re.escape(message)):
            read_prompts(path, inputs)
    # every problem is listed at once
    problems = {"a.png": [{"box": [9, 9, 1, 1]}, {"points": [[99, 1]]}], "c.png": [{"labels": [1]}]}
    with pytest.raises(PromptError, match=r"3 problem\(s\) in the prompts:\n  image 'a.png', prompt 0.*\n.*prompt 1"):
        read_prompts(problems, inputs)


# --- folders ------------------------------------------------------------------------------------------------------


def test_a_folder_gets_label_images_and_unprompted_images_are_skipped(model, inputs, tmp_path):
    out = tmp_path / "out"
    prompts = {
        "a.png": [{"box": [2, 2, 30, 25], "id": "first"}, {"points": [[20, 15]]}, {"box": [0, 0, 40, 30]}],
        "sub/b.jpg": [{"points": [[5, 5], [5, 15]], "labels": [1, 0], "id": 3}],
    }
    report = predict_folder_prompted(model, inputs, out, prompts, overlays=True, progress=False)
    assert tree(out) == ["a.png", "a_overlay.png", MANIFEST, "sub/b.png", "sub/b_overlay.png"]
    assert report.predicted == [inputs / "a.png", inputs / "sub" / "b.jpg"] and not report.failed
    assert report.skipped == [inputs / "c.png"]
    expected = predict_prompted(model, [Image.open(inputs / "a.png")], [prompts["a.png"]])[0]
    labels = np.asarray(Image.open(out / "a.png"))
    assert Image.open(out / "a.png").size == (40, 30)
    np.testing.assert_array_equal(labels, expected.label_image())
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 3).any()  # the full box is drawn last
    assert Image.open(out / "a_overlay.png").size == (80, 30)
    assert np.asarray(Image.open(out / "sub" / "b.png")).shape == (20, 10)
    recorded = manifest(out)
    assert recorded["complete"] and recorded["task"] == "prompted" and recorded["skipped"] == ["c.png"]
    assert recorded["files"] == sorted(report.files) and recorded["prompts"] is None
    objects = recorded["objects"]
    assert [(o["label"], o["id"]) for o in objects["a.png"]] == [(1, "first"), (2, None), (3, None)]
    np.testing.assert_allclose([o["score"] for o in objects["a.png"]], expected.scores, atol=1e-5)
    assert objects["sub/b.png"][0]["id"] == 3
    summary = report.summary()
    assert summary.startswith(f"2 label images (4 masks) written to {out}")
    assert f"1 image(s) without prompts skipped:\n  {inputs / 'c.png'}" in summary


def test_a_folder_prediction_keeps_the_output_folder_rules(model, inputs, tmp_path):
    prompts = {"a.png": [{"box": [2, 2, 30, 25]}]}
    with pytest.raises(OutputFolderError, match="is the input"):
        predict_folder_prompted(model, inputs, inputs, prompts, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=re.escape("notes.txt")):
        predict_folder_prompted(model, inputs, out, prompts, progress=False)
    with pytest.raises(PromptError):  # invalid prompts: nothing written
        predict_folder_prompted(model, inputs, tmp_path / "new", {"a.png": [{"box": [0, 0, 99, 5]}]}, progress=False)
    assert not (tmp_path / "new").exists() and tree(out) == ["notes.txt"]


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


def test_run_task_reads_the_run_file(prompted_run, prompt_free_run, tmp_path):
    assert run_task(prompted_run) == "prompted" and run_task(prompt_free_run) == "prompt_free"
    old = tmp_path / "old"
    old.mkdir()
    record = json.loads((prompt_free_run / "sam_peft_run.json").read_text())
    del record["model"]["task"]  # a run recorded before prompted training existed
    (old / "sam_peft_run.json").write_text(json.dumps(record))
    assert run_task(old) == "prompt_free"


def test_recipe_end_to_end_and_rerun(prompted_run, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps(
            {
                "a.png": [{"box": [2, 2, 30, 25], "id": "car"}, {"points": [[20, 15]], "id": "dot"}],
                "sub/b.jpg": [{"box": [0, 0, 10, 20]}],
            }
        )
    )
    args = ["--adapter", str(prompted_run), "--input", str(inputs), "--output_dir", str(out)]
    result = run_recipe(*args, "--prompts", str(prompts), "--overlays")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"2 label images (3 masks) written to {out}" in result.stdout
    assert "1 image(s) without prompts skipped" in result.stdout and str(inputs / "c.png") in result.stdout
    assert tree(out) == ["a.png", "a_overlay.png", MANIFEST, "sub/b.png", "sub/b_overlay.png"]
    labels = np.asarray(Image.open(out / "a.png"))
    assert labels.shape == (30, 40) and set(np.unique(labels)) <= {0, 1, 2}
    recorded = manifest(out)
    assert recorded["adapter"] == str(prompted_run) and recorded["prompts"] == str(prompts.resolve())
    assert [o["id"] for o in recorded["objects"]["a.png"]] == ["car", "dot"]
    assert all(isinstance(o["score"], float) for o in recorded["objects"]["a.png"])
    assert recorded["skipped"] == ["c.png"]

    # a rerun into the same folder replaces the previous prediction: b.jpg's outputs and the overlays go
    prompts.write_text(json.dumps({"a.png": [{"box": [1, 1, 20, 20]}], "c.png": [{"points": [[8, 8]]}]}))
    status = load_recipe().main([*args, "--prompts", str(prompts)])
    assert status == 0, capsys.readouterr().err
    assert tree(out) == ["a.png", "c.png", MANIFEST] and not (out / "sub").exists()
    recorded = manifest(out)
    assert recorded["files"] == ["a.png", "c.png"] and recorded["skipped"] == ["sub/b.jpg"]
    assert set(np.unique(np.asarray(Image.open(out / "a.png")))) <= {0, 1}


def test_recipe_refuses_prompts_for_a_prompt_free_run(prompt_free_run, inputs, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.png": [{"box": [2, 2, 30, 25]}]}))
    args = ["--adapter", str(prompt_free_run), "--input", str(inputs), "--output_dir", str(tmp_path / "out")]
    assert load_recipe().main([*args, "--prompts", str(prompts)]) == 2
    error = capsys.readouterr().err
    assert "is a prompt-free run (task: prompt_free): it segments whole images and takes no prompts" in error
    assert not (tmp_path / "out").exists()


def test_recipe_refuses_a_prompted_run_without_prompts_saying_why(prompted_run, inputs, tmp_path, capsys):
    args = ["--adapter", str(prompted_run), "--input", str(inputs), "--output_dir", str(tmp_path / "out")]
    assert load_recipe().main(args) == 2
    error = capsys.readouterr().err
    assert "is a prompted run (task: prompted)" in error
    assert "--prompts prompts.json" in error and AUTOMATIC_MASKS_UNAVAILABLE in error and "torchvision" in error
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.png": [{"box": [2, 2, 30, 25]}]}))
    assert load_recipe().main([*args, "--prompts", str(prompts), "--save_probabilities"]) == 2
    assert "--save_probabilities is for prompt-free runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_recipe_checks_prompts_before_loading_the_model(prompted_run, inputs, tmp_path, capsys, monkeypatch):
    recipe = load_recipe()
    monkeypatch.setattr(recipe, "load_trained", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"a.png": [{"box": [2, 2, 30, 25]}], "sub/b.jpg": [{"points": [[11, 3]]}]}))
    args = ["--adapter", str(prompted_run), "--input", str(inputs), "--output_dir", str(tmp_path / "out")]
    assert recipe.main([*args, "--prompts", str(prompts)]) == 2
    error = capsys.readouterr().err
    assert "image 'sub/b.jpg', prompt 0: point (11, 3) lies outside the image (10 x 20 pixels" in error
    assert not (tmp_path / "out").exists()
    assert recipe.main([*args, "--prompts", str(tmp_path / "absent.json")]) == 2
    assert "Cannot read the prompts file" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_transformers_mask_generation_needs_torchvision():
    """Why a prompted run without prompts is refused: the pipeline's last step, duplicate removal, needs
    torchvision's batched_nms."""
    processor = sam_image_processor(128)
    masks = [torch.ones(4, 4, dtype=torch.bool)]
    with pytest.raises(ImportError, match=r"[Tt]orchvision"):
        processor.post_process_for_mask_generation(masks, torch.ones(1), torch.tensor([[0, 0, 3, 3]]), 0.7)
