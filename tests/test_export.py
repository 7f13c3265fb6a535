"""`sam_peft.export`: ONNX graphs of every method's tiny model run by onnxruntime on CPU give the eager outputs
(1e-4); the promptable model exports as an image encoder and a prompt decoder; `torch_export` round-trips; the
caller's model is left as it was; existing files are not replaced."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from peft import PeftModel

from sam_peft import export as export_module
from sam_peft.export import ExportError, export
from sam_peft.modeling import random_sam
from sam_peft.training import build_model, save_trained, write_run_file
from sam_peft.training.arguments import ModelArguments
from sam_peft.tuners.frequency import high_pass_magnitude, real_high_pass_magnitude

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "export.py"
ATOL = 1e-4
# small versions of the methods' adapters (the tiny model is 128 px, 4 blocks)
SMALL = {"r": 2, "num_experts": 2, "cad_image_size": 64}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "base"
    random_sam("tiny", seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def trained(base: str, method: str, **kwargs) -> torch.nn.Module:
    """The method's model with its trainable weights moved off their initialisation (LoRA's B is zero at first),
    so that the adapters change the outputs."""
    model = build_model(ModelArguments(base_model=base, method=method, **SMALL, **kwargs)).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def assert_matches(actual, expected) -> None:
    """Equal to `ATOL`, and to `ATOL` relative to the largest expected value (the tiny random model's outputs are
    small: a bare 1e-4 would hide a wrong graph)."""
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(actual, expected, atol=ATOL, rtol=0)
    assert np.abs(actual - expected).max() <= ATOL * np.abs(expected).max()


def session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("method", ["decoder_only", "lora", "cad", "sam_adapter", "slora", "bias_only", "conv_lora"])
def test_prompt_free_onnx_matches_eager(method, base, images, tmp_path):
    model = trained(base, method)
    before = state(model)
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    files = export(model, tmp_path, optimize=method == "lora")  # (onnxscript's optimizer doubles the time)
    assert list(files) == ["model"] and files["model"] == tmp_path / "model.onnx"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left
    graph = session(files["model"])
    assert [i.name for i in graph.get_inputs()] == ["pixel_values"] and graph.get_outputs()[0].name == "logits"
    (logits,) = graph.run(None, {"pixel_values": images.numpy()})
    assert_matches(logits, expected)
    (single,) = graph.run(None, {"pixel_values": images[:1].numpy()})  # the batch is dynamic
    assert_matches(single, expected[:1])

    # the caller's model is unchanged: not merged, same weights, same outputs
    after = state(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=images).logits, expected)
    initializers = [tensor.name for tensor in onnx.load(str(files["model"])).graph.initializer]
    if method == "lora":
        assert isinstance(model, PeftModel) and any("lora_A" in name for name in model.state_dict())
        assert not any("lora" in name for name in initializers)  # merged into the copy's weights
    if method == "conv_lora":
        assert model.peft_config["default"].expert_dispatch == "grouped"  # the dense dispatch was the copy's


@pytest.mark.parametrize(
    ("prompt", "inputs"),
    [
        ("boxes", {"input_boxes": torch.tensor([[[10.0, 20.0, 90.0, 100.0]]])}),
        (
            "points",
            {
                "input_points": torch.tensor([[[[40.0, 50.0], [70.0, 30.0]], [[100.0, 90.0], [20.0, 20.0]]]]),
                "input_labels": torch.tensor([[[1, 0], [1, 1]]]),
            },
        ),
    ],
)
def test_prompted_model_exports_an_image_encoder_and_a_prompt_decoder(prompt, inputs, base, images, tmp_path):
    model = trained(base, "lora", task="prompted")
    with torch.no_grad():
        embeddings = model.get_base_model().get_image_embeddings(images[:1])
        expected = model(image_embeddings=embeddings, multimask_output=False, **inputs)
    files = export(model, tmp_path, prompt=prompt, optimize=prompt == "boxes")
    assert files == {
        "image_encoder": tmp_path / "image_encoder.onnx",
        "prompt_decoder": tmp_path / "prompt_decoder.onnx",
    }
    (onnx_embeddings,) = session(files["image_encoder"]).run(None, {"pixel_values": images[:1].numpy()})
    assert_matches(onnx_embeddings, embeddings)
    decoder = session(files["prompt_decoder"])
    assert [i.name for i in decoder.get_inputs()] == ["image_embeddings", *inputs]
    feed = {"image_embeddings": onnx_embeddings} | {name: value.numpy() for name, value in inputs.items()}
    masks, scores = decoder.run(None, feed)
    assert_matches(masks, expected.pred_masks)
    assert_matches(scores, expected.iou_scores)
    assert isinstance(model, PeftModel) and any("lora_A" in name for name in model.state_dict())


def test_torch_export_round_trip_replaces_only_with_overwrite(base, images, tmp_path):
    model = trained(base, "cad")
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    (tmp_path / "model.pt2").write_text("not mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(model, tmp_path, format="torch_export")
    assert (tmp_path / "model.pt2").read_text() == "not mine"
    files = export(model, tmp_path, format="torch_export", overwrite=True)
    program = torch.export.load(files["model"])
    with torch.no_grad():
        assert_matches(program.module()(images).numpy(), expected)
        assert_matches(program.module()(images[:1]).numpy(), expected[:1])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt2"]


def test_existing_graphs_are_not_replaced(base, tmp_path):
    model = random_sam("tiny", seed=0)
    (tmp_path / "prompt_decoder.onnx").write_text("not mine")
    with pytest.raises(FileExistsError, match=r"prompt_decoder\.onnx"):
        export(model, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prompt_decoder.onnx"]


def test_bad_arguments_and_missing_onnx_are_reported(monkeypatch, tmp_path):
    model = random_sam("tiny", seed=0)
    with pytest.raises(ExportError, match="format must be one of"):
        export(model, tmp_path, format="tflite")
    with pytest.raises(ExportError, match="prompt must be one of"):
        export(model, tmp_path, prompt="masks")
    with pytest.raises(ExportError, match="neither"):
        export(torch.nn.Linear(2, 2), tmp_path)
    monkeypatch.setattr(export_module, "_missing", lambda name: name == "onnxscript")
    with pytest.raises(ImportError, match=r'onnxscript.*pip install "sam-peft\[export\]"'):
        export(model, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("size", [(16, 16), (15, 20), (64, 64)])
def test_real_high_pass_equals_the_fft_one(size):
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(real_high_pass_magnitude(images), high_pass_magnitude(images), atol=1e-5, rtol=0)
    doubles = images.double()
    torch.testing.assert_close(real_high_pass_magnitude(doubles), high_pass_magnitude(copy.copy(doubles)))


def test_recipe_exports_a_run_and_refuses_to_replace_files(base, images, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    model_args = ModelArguments(base_model=base, method="decoder_only")
    model = trained(base, "decoder_only")
    save_trained(model, tmp_path / "run")
    write_run_file(tmp_path / "run", model_args, 128)
    out = tmp_path / "out"
    args = ["--adapter", str(tmp_path / "run"), "--output_dir", str(out), "--format", "torch_export"]
    assert recipe.main(args) == 0
    assert f"model: {out / 'model.pt2'}" in capsys.readouterr().out
    with torch.no_grad():
        expected = model(pixel_values=images).logits
        assert_matches(torch.export.load(out / "model.pt2").module()(images).numpy(), expected)
    assert recipe.main(args) == 2
    assert "overwrite=True" in capsys.readouterr().err
