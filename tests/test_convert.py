"""The converters of `sam_peft.convert`: tensor-by-tensor placement of the authors' checkpoints (built in their
exact layouts for the tiny SAM), save/load round trips, errors on bad input, and the command."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from convert_fixtures import (
    autogluon_checkpoint,
    cad_state,
    original_sam_shapes,
    sam_adapter_state,
    save_samcl_module,
)
from peft import PeftModel
from transformers import SamModel

from sam_peft.convert import ConversionError, ConversionWarning, convert_checkpoint, sam_key_to_transformers
from sam_peft.convert.__main__ import main
from sam_peft.modeling import SamForSemanticSegmentation, random_sam, sam_config

CONFIG = sam_config("tiny")  # width 32, 4 blocks, 8 px patches, 32-channel embedding and decoder
WIDE = sam_config("tiny")  # "another SAM size": a wider encoder
WIDE.vision_config.hidden_size = 48
PIXELS = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny SAM saved as a Hub-style folder: every converter's base model."""
    directory = tmp_path_factory.mktemp("base") / "tiny-sam"
    random_sam("tiny", seed=0).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def base_state(base_dir):
    return SamModel.from_pretrained(base_dir).state_dict()


@pytest.fixture
def samcl_file(tmp_path):
    path = tmp_path / "Kvasir.pth"
    save_samcl_module(path, width=32, rank=3, blocks=[1, 3], neck=32)
    return path


@pytest.fixture
def sam_adapter_file(tmp_path, base_state):
    path = tmp_path / "model_epoch_best.pth"
    torch.save(sam_adapter_state(CONFIG, base_state, size=4), path)
    return path


@pytest.fixture
def cad_file(tmp_path, base_state):
    path = tmp_path / "Oct04_120000.pth"
    torch.save(cad_state(CONFIG, base_state), path)
    return path


@pytest.fixture
def autogluon_file(tmp_path, base_state):
    path = tmp_path / "model.ckpt"
    torch.save(
        autogluon_checkpoint(CONFIG, base_state, blocks=[0, 2], rank=3, experts=2, num_labels=3, num_tokens=2), path
    )
    (tmp_path / "config.yaml").write_text("optim:\n  peft: conv_lora\n  lora:\n    r: 3\n    alpha: 12\n")
    return path


# The original SAM names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "vit-b", "vit-h"])
def test_original_sam_names_map_one_to_one_onto_transformers(variant):
    config = sam_config(variant)
    expected = {key: tuple(value.shape) for key, value in random_sam(variant, device="meta").state_dict().items()}
    mapped = {sam_key_to_transformers(key): shape for key, shape in original_sam_shapes(config).items()}
    assert len(mapped) == len(original_sam_shapes(config))  # no two original keys share a name
    # transformers ties the image-wide positional embedding to the prompt encoder's, which the original saves once
    assert set(expected) - set(mapped) == {"shared_image_embedding.positional_embedding"}
    assert mapped == {key: shape for key, shape in expected.items() if key in mapped}


@pytest.mark.parametrize(
    ("original", "renamed"),
    [
        ("image_encoder.blocks.3.norm2.bias", "vision_encoder.layers.3.layer_norm2.bias"),
        ("image_encoder.patch_embed.proj.weight", "vision_encoder.patch_embed.projection.weight"),
        ("image_encoder.neck.2.weight", "vision_encoder.neck.conv2.weight"),
        ("mask_decoder.output_upscaling.1.weight", "mask_decoder.upscale_layer_norm.weight"),
        (
            "mask_decoder.output_hypernetworks_mlps.2.layers.1.bias",
            "mask_decoder.output_hypernetworks_mlps.2.layers.0.bias",
        ),
        ("mask_decoder.iou_prediction_head.layers.2.weight", "mask_decoder.iou_prediction_head.proj_out.weight"),
        ("mask_decoder.transformer.norm_final_attn.weight", "mask_decoder.transformer.layer_norm_final_attn.weight"),
        ("prompt_encoder.mask_downscaling.6.bias", "prompt_encoder.mask_embed.conv3.bias"),
        ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embed.2.weight"),
    ],
)
def test_original_sam_names_examples(original, renamed):
    assert sam_key_to_transformers(original) == renamed


# SLoRA <- SAMCL ---------------------------------------------------------------------------------------------------


def samcl_tensors(path):
    """The SAMCL module file's tensors, read back with full pickle (the test's own file, trusted)."""
    from convert_fixtures import samcl_module_classes

    with samcl_module_classes():
        saved = torch.load(path, weights_only=False)
    return saved


def test_slora_places_every_samcl_tensor(samcl_file, base_dir):
    model = convert_checkpoint("slora", samcl_file, base_dir)
    saved = samcl_tensors(samcl_file)
    config = model.peft_config["default"]
    assert (config.r, config.layers_to_transform, config.prompt_augmentation) == (3, [1, 3], True)
    assert config.prompt_layout == "official"
    tuner, encoder = model.base_model, model.base_model.model.vision_encoder
    pairs = [
        (tuner.slora_A["default"], saved["A"]),
        (tuner.slora_prompt_linear["default"], saved["extra"].layer),
        (tuner.slora_prompt_norm["default"], saved["extra"].norm),
        (encoder.neck.slora_neck_input["default"], saved["extra"].upward),
        (encoder.neck.slora_neck_output["default"], saved["extra"].upward_),
    ]
    for i, block in enumerate([1, 3]):  # B_<i> goes to the i-th adapted block
        attention = encoder.layers[block].attn
        pairs.append((attention.slora_B["default"], saved[f"B_{i:03d}"]))
        pairs.append((attention.slora_norm_A["default"], saved[f"norm1_{i:03d}"]))
        pairs.append((attention.slora_norm_prompt["default"], saved[f"norm2_{i:03d}"]))
    for ours, theirs in pairs:
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


# SAM-Adapter ------------------------------------------------------------------------------------------------------


def test_sam_adapter_places_prompts_decoder_and_prompt_free_weights(sam_adapter_file, base_dir):
    model = convert_checkpoint("sam_adapter", sam_adapter_file, base_dir)
    state = torch.load(sam_adapter_file, weights_only=True)
    config = model.peft_config["default"]
    assert (config.scale_factor, config.embedding_feature) == (8, "official")  # 32 // 8 = 4 prompt channels
    assert set(config.modules_to_save) == {"mask_decoder", "prompt_encoder.no_mask_embed", "shared_image_embedding"}
    sam = model.base_model.model
    generator = sam.vision_encoder.patch_embed
    prefix = "image_encoder.prompt_generator."
    pairs = {
        "shared_mlp": generator.sam_adapter_shared["default"],
        "embedding_generator": generator.sam_adapter_embedding["default"],
        "prompt_generator.proj": generator.sam_adapter_handcrafted["default"],
    } | {f"lightweight_mlp_{i}.0": sam.vision_encoder.layers[i].sam_adapter_mlp["default"] for i in range(4)}
    for name, module in pairs.items():
        assert torch.equal(module.weight, state[f"{prefix}{name}.weight"])
        assert torch.equal(module.bias, state[f"{prefix}{name}.bias"])
    decoder = sam.mask_decoder.modules_to_save["default"].state_dict()
    originals = [key for key in state if key.startswith("mask_decoder.")]
    assert len(originals) == len(decoder)
    for key in originals:
        assert torch.equal(decoder[sam_key_to_transformers(key).removeprefix("mask_decoder.")], state[key]), key
    assert torch.equal(
        decoder["output_hypernetworks_mlps.2.layers.0.weight"],
        state["mask_decoder.output_hypernetworks_mlps.2.layers.1.weight"],
    )
    no_mask = sam.prompt_encoder.no_mask_embed.modules_to_save["default"].weight
    assert torch.equal(no_mask, state["no_mask_embed.weight"])
    embedding = sam.shared_image_embedding.modules_to_save["default"].positional_embedding
    assert torch.equal(embedding, state["pe_layer.positional_encoding_gaussian_matrix"])
    # the decoder sees their positional encoding: the image-wide one is built from it
    reference = SamModel.from_pretrained(base_dir)
    with torch.no_grad():
        reference.shared_image_embedding.positional_embedding.copy_(embedding)
    expected = reference.get_image_wide_positional_embeddings()
    torch.testing.assert_close(sam.get_image_wide_positional_embeddings(), expected)


# CAD --------------------------------------------------------------------------------------------------------------


def test_cad_places_adapter_and_decoder(cad_file, base_dir):
    model = convert_checkpoint("cad", cad_file, base_dir)
    state = torch.load(cad_file, weights_only=True)
    config = model.peft_config["default"]
    assert (config.channels, config.image_size, config.scale, config.modules_to_save) == (
        32,
        512,
        0.1,
        ["mask_decoder"],
    )
    adapter = model.base_model.model.vision_encoder.cad_adapter["default"]
    assert torch.equal(adapter.stem.weight, state["conv_adapter.conv_up.weight"])
    assert torch.equal(adapter.stem.bias, state["conv_adapter.conv_up.bias"])
    for k in (1, 2, 3):
        block = adapter.blocks[k - 1]
        assert torch.equal(block.conv.weight, state[f"conv_adapter.conv_block{k}.conv.weight"])
        assert torch.equal(block.conv.bias, state[f"conv_adapter.conv_block{k}.conv.bias"])
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(block.norm, name), state[f"conv_adapter.conv_block{k}.bn.{name}"])
    decoder = model.base_model.model.mask_decoder.modules_to_save["default"].state_dict()
    for key in (key for key in state if key.startswith("mask_decoder.")):
        assert torch.equal(decoder[sam_key_to_transformers(key).removeprefix("mask_decoder.")], state[key]), key


# Conv-LoRA <- AutoGluon -------------------------------------------------------------------------------------------


def test_conv_lora_places_experts_gates_and_decoder(autogluon_file, base_dir):
    model = convert_checkpoint("conv_lora", autogluon_file, base_dir)
    state = {
        k.removeprefix("model.model."): v
        for k, v in torch.load(autogluon_file, weights_only=True)["state_dict"].items()
    }
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.num_experts, config.layers_to_transform) == (3, 12.0, 2, [0, 2])
    assert (config.top_k, config.noisy_gating, config.expert_scales) == (1, True, [1, 2])
    sam = model.base_model.model
    assert isinstance(sam, SamForSemanticSegmentation)
    assert (sam.config.num_labels, sam.config.num_mask_tokens) == (3, 2)
    for i in (0, 2):
        qkv, theirs = sam.vision_encoder.layers[i].attn.qkv, f"vision_encoder.layers.{i}.attn.qkv."
        assert torch.equal(qkv.conv_lora_A["default"].weight, state[theirs + "lora_A"])
        assert torch.equal(qkv.conv_lora_B["default"].weight, state[theirs + "lora_B"])
        assert torch.equal(qkv.conv_lora_gate["default"].weight, state[theirs + "lora_moe_gating.w_gate"])
        assert torch.equal(qkv.conv_lora_gate["default"].noise_weight, state[theirs + "lora_moe_gating.w_noise"])
        experts = qkv.conv_lora_experts["default"]
        for j in range(2):
            assert torch.equal(experts.weight[j], state[theirs + f"lora_moe_experts.{j}.0.weight"])
            assert torch.equal(experts.bias[j], state[theirs + f"lora_moe_experts.{j}.0.bias"])
    decoder = sam.mask_decoder.modules_to_save["default"]
    assert torch.equal(decoder.class_predictor.weight, state["mask_decoder.output_classifier_mlps.weight"])
    assert torch.equal(decoder.mask_tokens.weight, state["mask_decoder.mask_tokens.weight"])
    assert torch.equal(
        decoder.output_hypernetworks_mlps[0].proj_out.bias,
        state["mask_decoder.output_hypernetworks_mlps.0.proj_out.bias"],
    )


def test_conv_lora_alpha_given_or_refused(tmp_path, base_state, base_dir):
    path = tmp_path / "model.ckpt"
    torch.save(autogluon_checkpoint(CONFIG, base_state, blocks=[0, 1, 2, 3], rank=2, experts=3), path)
    with pytest.raises(ConversionError, match=r"model\.ckpt: Conv-LoRA's scaling `lora_alpha` .*--lora_alpha"):
        convert_checkpoint("conv_lora", path, base_dir)
    config = convert_checkpoint("conv_lora", path, base_dir, lora_alpha=32).peft_config["default"]
    assert (config.lora_alpha, config.layers_to_transform, config.num_experts) == (32.0, None, 3)


# Round trips ------------------------------------------------------------------------------------------------------


def outputs(model, method):
    """What the authors' model computes: prompt-free masks (SAM-Adapter), whole-image box (CAD), points (SAMCL),
    semantic logits (Conv-LoRA)."""
    with torch.no_grad():
        if method == "conv_lora":
            return model(pixel_values=PIXELS).logits
        prompts = {
            "slora": {"input_points": torch.tensor([[[[40.0, 70.0]]]]), "input_labels": torch.tensor([[[1]]])},
            "cad": {"input_boxes": torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])},
            "sam_adapter": {},
        }[method]
        return model(pixel_values=PIXELS, multimask_output=False, **prompts).pred_masks


@pytest.mark.parametrize("method", ["slora", "sam_adapter", "cad", "conv_lora"])
def test_round_trip_gives_the_converted_outputs(method, request, tmp_path, base_dir):
    checkpoint = request.getfixturevalue(
        {"slora": "samcl_file", "sam_adapter": "sam_adapter_file", "cad": "cad_file", "conv_lora": "autogluon_file"}[
            method
        ]
    )
    converted = convert_checkpoint(method, checkpoint, base_dir, output_dir=tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    if method == "conv_lora":
        base = SamForSemanticSegmentation.from_pretrained(base_dir, num_labels=3, num_mask_tokens=2)
    else:
        base = SamModel.from_pretrained(base_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    expected = outputs(converted, method)
    torch.testing.assert_close(outputs(loaded, method), expected, rtol=1e-5, atol=1e-5)
    with converted.disable_adapter():
        assert not torch.allclose(outputs(converted, method), expected, rtol=1e-3, atol=1e-9)  # the adapter acts


# Bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "fixture", "message"),
    [
        (
            "sam_adapter",
            "cad_file",
            "is not a SAM-Adapter model checkpoint.*looks like a CAD model checkpoint: convert it with method 'cad'",
        ),
        ("cad", "sam_adapter_file", "is not a CAD model checkpoint.*method 'sam_adapter'"),
        ("slora", "cad_file", "is not a SAMCL module file.*method 'cad'"),
        ("conv_lora", "sam_adapter_file", "is not an AutoGluon SAM checkpoint.*method 'sam_adapter'"),
        ("sam_adapter", "autogluon_file", "is not SAM-Adapter's model state dict.*method 'conv_lora'"),
        (
            "cad",
            "samcl_file",
            "holds Python objects other than tensors.*looks like a SAMCL module file.*method 'slora'",
        ),
    ],
)
def test_checkpoint_of_another_method_is_named(method, fixture, message, request, base_dir):
    path = request.getfixturevalue(fixture)
    with pytest.raises(ConversionError, match=message) as error:
        convert_checkpoint(method, path, base_dir)
    assert str(path) in str(error.value)


def test_another_sam_size_is_refused(tmp_path, base_dir, base_state):
    save_samcl_module(tmp_path / "wide.pth", width=48, rank=3, blocks=[1, 3], neck=32)
    with pytest.raises(
        ConversionError, match=r"wide\.pth was trained on a SAM width 48 .* base model is a SAM width 32"
    ):
        convert_checkpoint("slora", tmp_path / "wide.pth", base_dir)
    wide_state = SamModel(WIDE).state_dict()
    torch.save(cad_state(WIDE, wide_state), tmp_path / "cad.pth")  # the adapter fits: only the encoder shows the size
    with pytest.raises(
        ConversionError, match=r"cad\.pth does not fit the base model .* differ in shape, e.g. 'image_encoder"
    ):
        convert_checkpoint("cad", tmp_path / "cad.pth", base_dir)
    torch.save(sam_adapter_state(WIDE, wide_state, size=6), tmp_path / "adapter.pth")
    with pytest.raises(ConversionError, match=r"adapter\.pth was trained on a SAM width 48"):
        convert_checkpoint("sam_adapter", tmp_path / "adapter.pth", base_dir)
    torch.save(autogluon_checkpoint(WIDE, wide_state, blocks=[3], rank=2, experts=2), tmp_path / "model.ckpt")
    with pytest.raises(ConversionError, match=r"model\.ckpt was trained on a SAM width 48"):
        convert_checkpoint("conv_lora", tmp_path / "model.ckpt", base_dir, lora_alpha=8)


def test_truncated_and_foreign_files_are_refused(tmp_path, cad_file, base_dir):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(cad_file.read_bytes()[: cad_file.stat().st_size // 2])
    with pytest.raises(
        ConversionError, match=r"truncated\.pth cannot be read as a PyTorch checkpoint: is it truncated, corrupt"
    ):
        convert_checkpoint("cad", truncated, base_dir)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match=r"list\.pth is not CAD's model state dict: it holds a list"):
        convert_checkpoint("cad", tmp_path / "list.pth", base_dir)
    torch.save({"weights": {"a": 1}}, tmp_path / "nested.pth")
    with pytest.raises(ConversionError, match=r"nested\.pth is not .*1 entries are not tensors, e.g. 'weights'"):
        convert_checkpoint("sam_adapter", tmp_path / "nested.pth", base_dir)
    with pytest.raises(ConversionError, match=r"missing\.pth: no such checkpoint file"):
        convert_checkpoint("slora", tmp_path / "missing.pth", base_dir)


class RunsCode:
    """A pickle that would call `print` when loaded with full pickle."""

    def __reduce__(self):
        return (print, ("checkpoint code ran",))


def test_code_in_a_checkpoint_never_runs(tmp_path, base_dir, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"A.weight": torch.zeros(3, 32), "payload": RunsCode()}, path)
    for method in ("slora", "cad"):
        with pytest.raises(
            ConversionError, match=r"evil\.pth holds Python objects other than tensors \(it refers to print\)"
        ):
            convert_checkpoint(method, path, base_dir)
    assert "checkpoint code ran" not in capfd.readouterr().out
    with open(path, "wb") as file:  # a plain (non-zip) pickle too
        pickle.dump({"x": RunsCode()}, file)
    with pytest.raises(ConversionError, match=r"evil\.pth"):
        convert_checkpoint("cad", path, base_dir)
    assert "checkpoint code ran" not in capfd.readouterr().out


def test_unplaced_and_missing_keys_are_listed(tmp_path, base_state, base_dir):
    state = sam_adapter_state(CONFIG, base_state, size=4)
    state["image_encoder.prompt_generator.proj_token.weight"] = torch.zeros(4, 4)
    state["decode_head.conv.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(
        ConversionError,
        match=r"extra\.pth: 2 keys .* no place in a sam-peft SAM-Adapter adapter .*: 'decode_head\.conv\.weight', "
        r"'image_encoder\.prompt_generator\.proj_token\.weight'\.",
    ):
        convert_checkpoint("sam_adapter", tmp_path / "extra.pth", base_dir)
    del state["image_encoder.prompt_generator.proj_token.weight"], state["decode_head.conv.weight"]
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(
        ConversionError, match=r"short\.pth lacks 1 weights of the adapter: .*mask_decoder\.iou_token\.weight"
    ):
        convert_checkpoint("sam_adapter", tmp_path / "short.pth", base_dir)


def test_samcl_inconsistencies_are_refused(tmp_path, samcl_file, base_dir):
    save_samcl_module(tmp_path / "far.pth", width=32, rank=3, blocks=[2, 9], neck=32)
    with pytest.raises(
        ConversionError, match=r"far\.pth adapts blocks \[9\], but the base model's encoder has 4 blocks"
    ):
        convert_checkpoint("slora", tmp_path / "far.pth", base_dir)
    from convert_fixtures import samcl_module_classes

    with samcl_module_classes():
        saved = torch.load(samcl_file, weights_only=False)
        del saved["extra"].upward, saved["extra"].upward_  # SAMCL_2.py's Extra (SAM 2) has no neck projections
        torch.save(saved, tmp_path / "sam2.pth")
    with pytest.raises(ConversionError, match=r"sam2\.pth is a SAMCL module for SAM 2"):
        convert_checkpoint("slora", tmp_path / "sam2.pth", base_dir)


def test_frozen_weights_that_differ_from_the_base_are_reported(tmp_path, base_state, base_dir):
    state = cad_state(CONFIG, base_state)
    state["image_encoder.blocks.2.attn.qkv.weight"] = state["image_encoder.blocks.2.attn.qkv.weight"] + 0.5
    torch.save(state, tmp_path / "other_sam.pth")
    with pytest.warns(
        ConversionWarning,
        match=r"1 frozen SAM weights in .*other_sam\.pth differ .*'image_encoder\.blocks\.2\.attn\.qkv\.weight'",
    ):
        model = convert_checkpoint("cad", tmp_path / "other_sam.pth", base_dir)
    qkv = model.base_model.model.vision_encoder.base_layer.layers[2].attn.qkv.weight
    assert torch.equal(qkv, base_state["vision_encoder.layers.2.attn.qkv.weight"])  # the base's weights are kept


def test_plain_lora_and_another_task_are_refused(tmp_path, base_state, base_dir, autogluon_file):
    checkpoint = autogluon_checkpoint(CONFIG, base_state, blocks=[1], rank=2, experts=2)
    state = {key: value for key, value in checkpoint["state_dict"].items() if "lora_moe" not in key}
    torch.save({"state_dict": state}, tmp_path / "lora.ckpt")
    with pytest.raises(ConversionError, match=r"lora\.ckpt holds no Conv-LoRA experts .*AutoGluon LoRA checkpoint"):
        convert_checkpoint("conv_lora", tmp_path / "lora.ckpt", base_dir, lora_alpha=8)
    binary = SamForSemanticSegmentation.from_pretrained(base_dir)
    with pytest.raises(ConversionError, match=r"model\.ckpt holds a mask decoder for num_labels=3, num_mask_tokens=2"):
        convert_checkpoint("conv_lora", autogluon_file, binary)


def test_unknown_method_and_option(samcl_file, base_dir):
    with pytest.raises(ValueError, match="Unknown method 'lora'"):
        convert_checkpoint("lora", samcl_file, base_dir)
    with pytest.raises(ValueError, match="Method 'slora' takes no option lora_alpha"):
        convert_checkpoint("slora", samcl_file, base_dir, lora_alpha=3)


# The command ------------------------------------------------------------------------------------------------------


def test_command_writes_the_adapter(samcl_file, base_dir, tmp_path, capsys):
    output = tmp_path / "kvasir-slora"
    argv = [
        "--method",
        "slora",
        "--checkpoint",
        str(samcl_file),
        "--base_model",
        str(base_dir),
        "--output_dir",
        str(output),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConversionWarning)
        assert main(argv) == 0
    assert json.loads((output / "adapter_config.json").read_text())["peft_type"] == "SLORA"
    assert (output / "adapter_model.safetensors").is_file()
    assert "Saved the slora adapter" in capsys.readouterr().out


def test_command_help_and_errors(samcl_file, base_dir, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("usage: python -m sam_peft.convert")
    description = lines[lines.index("") + 1]
    assert description.startswith("Convert") and lines[lines.index("") + 2] == ""
    argv = ["--checkpoint", str(samcl_file), "--base_model", str(base_dir), "--output_dir", str(tmp_path / "out")]
    assert main(["--method", "cad", *argv]) == 1
    assert "convert it with method 'slora'" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["--method", "slora", *argv, "--push_to_hub", "me/kvasir-slora"]) == 1
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # Hub access is checked before converting
