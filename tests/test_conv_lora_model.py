"""Conv-LoRA as a PEFT method on transformers' SamModel: counts, the saved layout, prompts, precision.

The PEFT contract (adapters, saving and loading, disabling, unloading, merging, checkpointing, bfloat16) is checked
for every tuner in tests/test_peft_contract.py."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import SamHQConfig, SamHQModel

from sam_peft import ConvLoraConfig, auxiliary_loss, random_sam
from sam_peft.modeling import init_vision_weights_
from sam_peft.tuners.conv_lora import SAM_QKV_TARGET
from sam_peft.tuners.conv_lora import Linear as ConvLoraLinear


def masks(model, pixel_values, **prompts):
    return model(pixel_values=pixel_values, multimask_output=False, **prompts).pred_masks


def trained_copy(config: ConvLoraConfig, seed: int = 0) -> PeftModel:
    """A Conv-LoRA model with non-trivial adapter weights (B random, gates random)."""
    model = get_peft_model(random_sam("tiny", seed=0), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "conv_lora_gate" in name or "conv_lora_B" in name:
                param.normal_(std=0.5)
    return model.eval()


@pytest.mark.parametrize(("variant", "conv_lora", "lora"), [("vit-h", 514_560, 491_520), ("vit-b", 119_232, 110_592)])
def test_exact_trainable_counts_on_meta(variant, conv_lora, lora):
    model = get_peft_model(random_sam(variant, device="meta"), ConvLoraConfig())
    assert model.get_nb_trainable_parameters()[0] == conv_lora
    blocks = len(model.base_model.model.vision_encoder.layers)
    assert len(model.base_model.targeted_module_names) == blocks

    lora_model = get_peft_model(
        random_sam(variant, device="meta"), LoraConfig(r=3, lora_alpha=32, target_modules=SAM_QKV_TARGET)
    )
    assert lora_model.get_nb_trainable_parameters()[0] == lora


def test_default_targets_every_vision_qkv_only(tiny_sam):
    model = get_peft_model(tiny_sam, ConvLoraConfig())
    assert model.base_model.targeted_module_names == [f"vision_encoder.layers.{i}.attn.qkv" for i in range(4)]
    assert model.peft_config["default"].target_modules == SAM_QKV_TARGET


def test_layers_to_transform_with_regex_target(tiny_sam):
    model = get_peft_model(tiny_sam, ConvLoraConfig(layers_to_transform=[1, 3]))
    assert model.base_model.targeted_module_names == [
        "vision_encoder.layers.1.attn.qkv",
        "vision_encoder.layers.3.attn.qkv",
    ]


def test_target_matching_nothing_is_an_error(tiny_sam):
    with pytest.raises(ValueError, match=r"Target modules vision_encoder\\\.blocks.* not found in the base model"):
        get_peft_model(tiny_sam, ConvLoraConfig(target_modules=r"vision_encoder\.blocks\.\d+\.qkv"))


def test_non_linear_target_is_an_error(tiny_sam):
    with pytest.raises(ValueError, match=r"'vision_encoder.neck.conv1' is a Conv2d; only nn.Linear"):
        get_peft_model(tiny_sam, ConvLoraConfig(target_modules=["neck.conv1"]))


def test_fresh_adapter_leaves_outputs_unchanged(tiny_sam, pixel_values):
    with torch.no_grad():
        reference = masks(tiny_sam, pixel_values)
        model = get_peft_model(tiny_sam, ConvLoraConfig(modules_to_save=["mask_decoder"]))
        model.train()  # noisy routing, still identical because B = 0
        assert torch.equal(masks(model, pixel_values), reference)


def test_adapter_changes_outputs_and_reports_balance_loss(pixel_values):
    model = trained_copy(ConvLoraConfig())
    base = random_sam("tiny", seed=0)
    with torch.no_grad():
        assert not torch.allclose(masks(model, pixel_values), masks(base, pixel_values))
    model.train()
    masks(model, pixel_values)
    loss = auxiliary_loss(model)
    per_layer = [m.auxiliary_loss_slot.value for m in model.modules() if isinstance(m, ConvLoraLinear)]
    assert loss.ndim == 0 and loss.requires_grad
    torch.testing.assert_close(loss, torch.stack(per_layer).sum())


def test_auxiliary_loss_is_zero_without_layers_or_forward(tiny_sam):
    assert auxiliary_loss(tiny_sam).item() == 0.0
    model = get_peft_model(tiny_sam, ConvLoraConfig())
    assert auxiliary_loss(model).item() == 0.0


def test_deepcopy_and_state_dict_after_forward(pixel_values):
    model = trained_copy(ConvLoraConfig())
    model.train()
    out = masks(model, pixel_values)
    assert auxiliary_loss(model).requires_grad
    clone = copy.deepcopy(model)
    torch.save(model.state_dict(), io.BytesIO())
    torch.save(model, io.BytesIO())
    assert auxiliary_loss(clone).item() == 0.0  # the copy holds no graph of the original
    clone.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(masks(clone, pixel_values), masks(model, pixel_values))
    out.sum().backward()  # the original graph is intact


def test_saved_layout_stacks_each_layers_experts(tiny_sam):
    """A layer's adapter is saved as six tensors: A, B, the gate's two and the M experts stacked in two."""
    model = get_peft_model(tiny_sam, ConvLoraConfig())
    saved = get_peft_model_state_dict(model)
    layer = "base_model.model.vision_encoder.layers.0.attn.qkv."
    shapes = {k.removeprefix(layer): tuple(t.shape) for k, t in saved.items() if k.startswith(layer)}
    assert shapes == {
        "conv_lora_A.weight": (3, 32),
        "conv_lora_B.weight": (96, 3),
        "conv_lora_gate.weight": (3, 8),
        "conv_lora_gate.noise_weight": (3, 8),
        "conv_lora_experts.weight": (8, 3, 3, 3, 3),
        "conv_lora_experts.bias": (8, 3),
    }
    assert len(saved) == 4 * 6


def test_modules_to_save_trains_the_decoder(tiny_sam):
    decoder = sum(p.numel() for p in tiny_sam.mask_decoder.parameters())
    model = get_peft_model(tiny_sam, ConvLoraConfig(modules_to_save=["mask_decoder"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("mask_decoder.modules_to_save.default" in n for n in trainable)
    assert not any("vision_encoder" in n and "conv_lora" not in n for n in trainable)
    adapters = 4 * (3 * 32 + 3 * 96 + 2 * 3 * 8 + 8 * (3 * 3 * 9 + 3))
    assert model.get_nb_trainable_parameters()[0] == decoder + adapters


@pytest.mark.parametrize(
    "prompts",
    [
        {},
        {
            "input_points": torch.tensor([[[[40.0, 50.0]]]]).repeat(2, 1, 1, 1),
            "input_labels": torch.ones(2, 1, 1),
        },
        {"input_boxes": torch.tensor([[[10.0, 10.0, 90.0, 100.0]]]).repeat(2, 1, 1)},
    ],
    ids=["no-prompt", "points", "boxes"],
)
def test_trains_with_and_without_prompts(prompts, pixel_values):
    model = get_peft_model(random_sam("tiny", seed=0), ConvLoraConfig(init_weights=False))
    model.train()
    out = masks(model, pixel_values, **prompts)
    (out.square().mean() + auxiliary_loss(model)).backward()
    grads = [p.grad for n, p in model.named_parameters() if "conv_lora_A" in n]
    assert grads and all(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def test_float16_autocast(pixel_values):
    """(bfloat16 autocast is part of the contract, tests/test_peft_contract.py.)"""
    dtype = torch.float16
    model = trained_copy(ConvLoraConfig())
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        out = masks(model, pixel_values)
        loss = out.float().square().mean() + auxiliary_loss(model)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        full = masks(model, pixel_values)
        with torch.autocast("cpu", dtype=dtype):
            half = masks(model, pixel_values)
    similarity = torch.nn.functional.cosine_similarity(half.float().flatten(), full.flatten(), dim=0)
    assert similarity > 0.95


def test_padded_windows(pixel_values):
    """112 px -> 14 x 14 tokens, padded to 16 x 16 for 4 x 4 windows, as ViT-B pads 64 to 70."""
    sam = random_sam("tiny", image_size=112, seed=0)
    model = get_peft_model(sam, ConvLoraConfig(init_weights=False)).eval()
    with torch.no_grad():
        out = masks(model, pixel_values[:, :, :112, :112])
    assert out.shape[-2:] == (56, 56) and torch.isfinite(out).all()


def test_sam_hq_uses_the_same_targets(pixel_values):
    from sam_peft.modeling import sam_config

    tiny = sam_config("tiny")
    config = SamHQConfig(
        vision_config=tiny.vision_config.to_dict(),
        prompt_encoder_config=tiny.prompt_encoder_config.to_dict(),
        mask_decoder_config={**tiny.mask_decoder_config.to_dict(), "vit_dim": 32},
    )
    sam_hq = init_vision_weights_(SamHQModel(config))
    model = get_peft_model(sam_hq, ConvLoraConfig())
    assert len(model.base_model.targeted_module_names) == 4
    assert model.get_nb_trainable_parameters()[0] == 4 * (3 * 32 + 3 * 96 + 2 * 3 * 8 + 8 * (3 * 3 * 9 + 3))
