"""SLoRA as a PEFT method: heat maps, the forward against the spec, counts and file size, copies, errors.

The PEFT contract (adapters, saving and loading, disabling, unloading, merging, checkpointing with the points'
heat map, bfloat16) is checked for every tuner in tests/test_peft_contract.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import SamHQConfig, SamHQModel, SamModel
from transformers.models.sam.modeling_sam import SamVisionNeck

from sam_peft._registration import register_tuner
from sam_peft.modeling import SamForSemanticSegmentation, SamSemanticSegmentationConfig, random_sam, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.tuners.slora import (
    SLORA,
    SloraAttention,
    SloraConfig,
    SloraModel,
    SloraNeck,
    gaussian_blur,
    gaussian_kernel_1d,
    points_to_heat_map,
)

register_tuner(SLORA, SloraConfig, SloraModel, SloraModel.prefix)  # idempotent; `import sam_peft` does it

# The tiny SAM: 128 px input, 16 x 16 embedding grid (8 px cells), 4 blocks of width 32 (windows of 4, blocks 1 and
# 3 global), a 32-channel neck.
GRID, INPUT = 16, 128
# Two images, one point batch of three points each: positives, a negative and a padding point.
POINTS = torch.tensor([[[[40.0, 70.0], [125.0, 122.0], [8.0, 8.0]]], [[[100.0, 20.0], [3.0, 90.0], [0.0, 0.0]]]])
LABELS = torch.tensor([[[1, 1, 0]], [[1, 1, -10]]])


def counted(r: int, hidden: int, neck_out: int, blocks: int, prompts: bool = True) -> tuple[int, int]:
    """(parameters without LayerNorms, LayerNorm parameters) of one SLoRA adapter."""
    down = hidden * r + r
    up = blocks * (r * hidden + hidden)
    prompt_path = (r * r + r) + (r * hidden + hidden) + (r * neck_out + neck_out) if prompts else 0
    norms = blocks * (4 * r if prompts else 2 * r) + (2 * r if prompts else 0)
    return down + up + prompt_path, norms


def randomised(model: PeftModel, adapter_name: str = "default", seed: int = 0) -> PeftModel:
    """Every SLoRA weight of `adapter_name` drawn from N(0, 0.5^2), so that each part of the adapter shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "slora_" in name and f".{adapter_name}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def slora(config: SloraConfig | None = None, base: torch.nn.Module | None = None) -> PeftModel:
    return get_peft_model(base if base is not None else random_sam("tiny", seed=0), config or SloraConfig(r=4))


def masks(model, pixel_values, **prompts):
    return model(pixel_values=pixel_values, multimask_output=False, **prompts).pred_masks


def tiny_semantic(seed: int = 0) -> SamForSemanticSegmentation:
    torch.manual_seed(seed)
    model = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("tiny")))
    return init_vision_weights_(model)


def padded_window_sam(seed: int = 0) -> SamModel:
    """The tiny SAM with 5 x 5 windows: the 16 x 16 grid is padded to 20 x 20 in its windowed blocks 0 and 2."""
    config = sam_config("tiny")
    config.vision_config.window_size = 5
    torch.manual_seed(seed)
    return init_vision_weights_(SamModel(config)).eval()


# ----------------------------------------------------------------------------------------------------- heat maps


def test_heat_map_marks_the_cell_of_each_positive_point_row_y_column_x():
    heat = points_to_heat_map(POINTS[:1, :, :1], LABELS[:1, :, :1], INPUT, GRID)  # the point (x 40, y 70)
    assert heat.shape == (1, GRID, GRID) and heat.dtype == torch.float32
    assert divmod(int(heat[0].argmax()), GRID) == (70 // 8, 40 // 8)  # (row 8, column 5)
    # away from the border the blurred impulse is the outer product of the 1-D kernel, times the official code's 255
    # (`heatmap * 255` in SAMCL's utils.py; its modules are trained on that scale)
    kernel = gaussian_kernel_1d()
    expected = torch.zeros(GRID, GRID)
    expected[4:13, 1:10] = 255 * torch.outer(kernel, kernel)
    torch.testing.assert_close(heat[0], expected)
    assert torch.equal(kernel * 256, torch.tensor([4.0, 13, 30, 51, 60, 51, 30, 13, 4])) and kernel.sum() == 1
    # the table is close to a Gaussian sampled with OpenCV's nominal sigma for size 9, 0.3 * (4 - 1) + 0.8 = 1.7
    sampled = torch.exp(-(torch.arange(-4.0, 5.0) ** 2) / (2 * 1.7**2))
    torch.testing.assert_close(kernel, sampled / sampled.sum(), rtol=0, atol=3e-3)
    assert not torch.allclose(kernel, sampled / sampled.sum(), rtol=0, atol=5e-4)


def test_heat_map_keeps_positives_only_and_joins_point_batches():
    heat = points_to_heat_map(POINTS, LABELS, INPUT, GRID)
    positives_only = points_to_heat_map(POINTS[:, :, :2], None, INPUT, GRID)  # the same without negative / padding
    assert torch.equal(heat, positives_only)
    # the negative point (8, 8) and the padding point (0, 0) leave no mark in their cells
    assert heat[0, 1, 1] == 0 and heat[1, 0, 0] == 0
    # two point batches of one point each give the map of both points in one batch
    split = points_to_heat_map(POINTS[:, :, :2].reshape(2, 2, 1, 2), None, INPUT, GRID)
    assert torch.equal(split, heat)
    # a second point in the same cell changes nothing; a 3-D (B, N, 2) input is one point batch
    doubled = torch.cat([POINTS[:, :, :2], POINTS[:, :, :1] + 1.0], dim=2)
    assert torch.equal(points_to_heat_map(doubled, None, INPUT, GRID), heat)
    assert torch.equal(points_to_heat_map(POINTS[:, 0], LABELS[:, 0], INPUT, GRID), heat)
    # (128, 128), on the far edge of the input, is clamped into the last cell
    edge = points_to_heat_map(torch.tensor([[[[128.0, 128.0]]]]), None, INPUT, GRID)
    assert divmod(int(edge[0].argmax()), GRID) == (15, 15)


def test_blur_mirrors_the_border_without_repeating_it():
    """OpenCV's default border (BORDER_REFLECT_101): a mark in column 1 is mirrored into column -1, row 0 is its own
    mirror."""
    impulse = torch.zeros(1, GRID, GRID)
    impulse[0, 0, 1] = 1.0
    kernel = gaussian_kernel_1d()
    taps = F.pad(kernel, (0, 8))  # kernel[i] for i in 0..16, zero beyond 8
    expected = torch.stack([kernel[4] * (taps[column + 3] + taps[column + 5]) for column in range(7)])
    torch.testing.assert_close(gaussian_blur(impulse)[0, 0, :7], expected)


def test_blur_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(0)
    for size in (16, 64):
        impulses = (torch.rand(3, size, size, generator=generator) > 0.97).float()
        impulses[:, 0, 0] = impulses[:, -1, 3] = 1.0  # marks on the border
        expected = torch.stack([torch.from_numpy(cv2.GaussianBlur(m.numpy(), (9, 9), 0)) for m in impulses])
        torch.testing.assert_close(gaussian_blur(impulses), expected, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------- counts and size


@pytest.mark.parametrize(("variant", "blocks"), [("vit-b", [7, 8, 9, 10, 11]), ("vit-h", [27, 28, 29, 30, 31])])
def test_paper_defaults_and_exact_count_on_meta(variant, blocks):
    config = SloraConfig()
    assert (config.r, config.prompt_augmentation, config.layers_to_transform) == (10, True, None)
    model = get_peft_model(random_sam(variant, device="meta"), config)
    assert model.peft_config["default"].layers_to_transform == blocks
    assert model.base_model.targeted_module_names == [f"vision_encoder.layers.{i}.attn" for i in blocks]
    hidden = {"vit-b": 768, "vit-h": 1280}[variant]
    without_norms, norms = counted(10, hidden, 256, 5)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == without_norms + norms
    assert sum(v for n, v in trainable.items() if "norm" not in n) == without_norms
    if variant == "vit-b":
        # the paper's count, 61,304 = A 7,690 + 5 x B 8,448 + prompt path 11,374, part by part on the model

        def part(*modules: str) -> int:
            return sum(v for n, v in trainable.items() if any(f".{module}." in n for module in modules))

        assert (without_norms, norms) == (61_304, 220)
        assert part("slora_A") == 7_690
        assert [part(f"layers.{i}.attn.slora_B") for i in blocks] == [8_448] * 5
        assert part("slora_prompt_linear", "slora_neck_input", "slora_neck_output") == 11_374
    assert [n for n in trainable if "slora_A" in n] == [
        "base_model.slora_A.default.weight",
        "base_model.slora_A.default.bias",
    ]


def test_saved_vit_b_adapter_is_under_a_quarter_mib_with_a_stored_once(tmp_path):
    model = get_peft_model(random_sam("vit-b", device="meta"), SloraConfig())
    model.to_empty(device="cpu")  # allocates without initialising: only shapes and names matter here
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    saved = load_file(path)
    assert path.stat().st_size <= 0.25 * 2**20
    assert [k for k in saved if "slora_A" in k] == ["base_model.slora_A.bias", "base_model.slora_A.weight"]
    assert saved["base_model.slora_A.weight"].shape == (10, 768)
    assert sum(t.numel() for t in saved.values()) == 61_524 and len(saved) == 2 + 5 * 6 + 4 + 4


def test_semantic_model_trains_adapter_and_decoder_by_default(pixel_values):
    with torch.no_grad():
        reference = tiny_semantic()(pixel_values=pixel_values).logits
    model = get_peft_model(tiny_semantic(), SloraConfig(r=4))
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    decoder = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save.default" in n)
    assert model.get_nb_trainable_parameters()[0] == sum(counted(4, 32, 32, 4)) + decoder
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixel_values).logits, reference)  # a fresh adapter changes nothing

    randomised(model).train()
    labels = (pixel_values[:, 0] > 0).long()
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "slora_" in n}
    assert len(grads) == 6 + 4 * 6 + 4
    # no prompts: the heat map is zero, so the weight of its projection gets no gradient (its bias does)
    idle = {"base_model.slora_prompt_linear.default.weight"}
    assert all(g is not None and torch.count_nonzero(g) > 0 for n, g in grads.items() if n not in idle)
    assert all(torch.count_nonzero(grads[n]) == 0 for n in idle)


# -------------------------------------------------------------------------------------------------- the forward


def spec_embeddings(sam: SamModel, model: PeftModel, pixel_values, heat_map) -> torch.Tensor:
    """SAM's encoder with SLoRA written out from the spec, the updates computed on the whole grid (no windows).

    The base attention runs in its windows as SAM runs it; each token's update `B(LN1(A(y)) + LN2(H))` is taken
    from its own grid position, so a misaligned, transposed or wrongly padded H in the windows would show.
    """
    tuner = model.base_model
    adapted = tuner.model.vision_encoder
    r = tuner.slora_A["default"].out_features
    features = tuner.slora_prompt_linear["default"](heat_map[..., None].expand(-1, -1, -1, r))
    features = F.relu(tuner.slora_prompt_norm["default"](features))  # (B, g, g, r)
    encoder = sam.vision_encoder
    x = encoder.patch_embed(pixel_values) + encoder.pos_embed
    for index, block in enumerate(encoder.layers):
        y = block.layer_norm1(x)
        if block.window_size > 0:
            windows, padded = block.window_partition(y, block.window_size)
            attention = block.window_unpartition(block.attn(windows)[0], block.window_size, padded, (GRID, GRID))
        else:
            attention = block.attn(y)[0]
        layer = adapted.layers[index].attn
        if isinstance(layer, SloraAttention):
            bottleneck = layer.slora_norm_A["default"](tuner.slora_A["default"](y))
            attention = attention + layer.slora_B["default"](bottleneck + layer.slora_norm_prompt["default"](features))
        x = x + attention
        x = x + block.mlp(block.layer_norm2(x))
    neck = adapted.neck
    embeddings = encoder.neck(x + neck.slora_neck_input["default"](features))
    return embeddings + neck.slora_neck_output["default"](features).permute(0, 3, 1, 2)


def test_forward_matches_the_spec_in_padded_windows_and_at_the_neck(pixel_values):
    sam = padded_window_sam()
    model = randomised(slora(SloraConfig(r=4, layers_to_transform=[0, 1, 2, 3]), base=padded_window_sam()))
    assert [layer.window_size for layer in sam.vision_encoder.layers] == [5, 0, 5, 0]
    heat_map = points_to_heat_map(POINTS, LABELS, INPUT, GRID)
    with torch.no_grad():
        output = model.base_model.model.vision_encoder(pixel_values)  # no points: the zero heat map
        torch.testing.assert_close(output.last_hidden_state, spec_embeddings(sam, model, pixel_values, 0 * heat_map))
        with model.base_model.prompt_heat_map(heat_map):
            output = model.base_model.model.vision_encoder(pixel_values).last_hidden_state
        torch.testing.assert_close(output, spec_embeddings(sam, model, pixel_values, heat_map))
        transposed = spec_embeddings(sam, model, pixel_values, heat_map.transpose(1, 2))
        assert not torch.allclose(output, transposed, atol=1e-4)  # the check sees the orientation


@pytest.mark.parametrize("semantic", [False, True], ids=["SamModel", "SamForSemanticSegmentation"])
def test_fresh_adapter_is_the_identity(semantic, pixel_values):
    make = tiny_semantic if semantic else (lambda: random_sam("tiny", seed=0))
    prompts = [{}] if semantic else [{}, {"input_points": POINTS, "input_labels": LABELS}]
    base, model = make(), slora(base=make()).eval()
    with torch.no_grad():
        for prompt in prompts:
            expected, output = base(pixel_values=pixel_values, **prompt), model(pixel_values=pixel_values, **prompt)
            for key in ("logits",) if semantic else ("pred_masks", "iou_scores"):
                assert torch.equal(output[key], expected[key])


def test_points_of_a_forward_give_its_heat_map_and_the_explicit_api_matches(pixel_values):
    model = randomised(slora())
    tuner = model.base_model
    encoder = tuner.model.vision_encoder
    with torch.no_grad():
        plain = masks(model, pixel_values)
        prompted = masks(model, pixel_values, input_points=POINTS, input_labels=LABELS)
        assert not torch.allclose(plain, prompted, atol=1e-5)
        assert torch.equal(model(pixel_values, POINTS, LABELS, multimask_output=False).pred_masks, prompted)
        assert tuner._slora_state.heat_map is None  # forgotten after the forward
        zero_embeddings = encoder(pixel_values).last_hidden_state  # no points: zeros
        assert torch.equal(masks(model, None, image_embeddings=zero_embeddings), plain)

        # the encoder run on its own (as a continual model runs it in pieces), then the decoder with the points
        with tuner.prompts(POINTS, LABELS) as heat_map:
            assert torch.equal(heat_map, points_to_heat_map(POINTS, LABELS, INPUT, GRID))
            hidden = encoder.patch_embed(pixel_values) + encoder.pos_embed
            for block in encoder.layers:
                hidden = block(hidden)
            embeddings = encoder.neck(hidden)
        prompts = {"input_points": POINTS, "input_labels": LABELS}
        assert torch.equal(masks(model, None, image_embeddings=embeddings, **prompts), prompted)
        with tuner.prompt_heat_map(heat_map):
            assert torch.equal(encoder(pixel_values).last_hidden_state, embeddings)
            with tuner.prompt_heat_map(None):  # nested; inside a block the forward's points are not used
                zero_heat = masks(model, None, image_embeddings=zero_embeddings, **prompts)
                assert torch.equal(masks(model, pixel_values, **prompts), zero_heat)
            assert torch.equal(masks(model, pixel_values), masks(model, None, image_embeddings=embeddings))
            assert tuner._slora_state.heat_map is heat_map
        assert tuner._slora_state.heat_map is None
        with tuner.prompt_heat_map(heat_map[1]):  # one map for every image
            shared = encoder(pixel_values).last_hidden_state
        with tuner.prompt_heat_map(heat_map[[1, 1]]):
            assert torch.equal(encoder(pixel_values).last_hidden_state, shared)


def test_prompt_augmentation_off_leaves_the_neck_and_ignores_points(pixel_values):
    model = randomised(slora(SloraConfig(r=4, prompt_augmentation=False)))
    encoder = model.base_model.model.vision_encoder
    assert isinstance(encoder.neck, SamVisionNeck) and len(model.base_model.slora_prompt_linear) == 0
    assert all(len(block.attn.slora_norm_prompt) == 0 for block in encoder.layers)
    assert model.get_nb_trainable_parameters()[0] == sum(counted(4, 32, 32, 4, prompts=False))
    with torch.no_grad():
        plain = encoder(pixel_values).last_hidden_state
        with model.base_model.prompts(POINTS, LABELS):
            assert torch.equal(encoder(pixel_values).last_hidden_state, plain)
        frozen = random_sam("tiny", seed=0).vision_encoder(pixel_values).last_hidden_state
        assert not torch.allclose(plain, frozen, atol=1e-5)


# -------------------------------------------------------------------------- copies, SAM-HQ, loading, precision


def test_deepcopy_keeps_the_shared_weights_shared(pixel_values):
    model = randomised(slora())
    with torch.no_grad():
        masks(model, pixel_values, input_points=POINTS, input_labels=LABELS)
        clone = copy.deepcopy(model)
        state = clone.base_model._slora_state
        assert state is not model.base_model._slora_state and state.down is clone.base_model.slora_A
        assert clone.base_model.model.vision_encoder.layers[2].attn.shared_state is state
        for prompts in ({}, {"input_points": POINTS, "input_labels": LABELS}):
            assert torch.equal(masks(clone, pixel_values, **prompts), masks(model, pixel_values, **prompts))


def test_sam_hq_is_adapted_the_same_way(pixel_values):
    tiny = sam_config("tiny")
    config = SamHQConfig(
        vision_config=tiny.vision_config.to_dict(),
        prompt_encoder_config=tiny.prompt_encoder_config.to_dict(),
        mask_decoder_config={**tiny.mask_decoder_config.to_dict(), "vit_dim": 32},
    )
    torch.manual_seed(0)
    model = randomised(get_peft_model(init_vision_weights_(SamHQModel(config)), SloraConfig(r=4)))
    encoder = model.base_model.model.vision_encoder
    assert isinstance(encoder.neck, SloraNeck) and isinstance(encoder.layers[0].attn, SloraAttention)
    with torch.no_grad():
        output = encoder(pixel_values)
        with model.base_model.prompts(POINTS, LABELS):
            assert not torch.allclose(encoder(pixel_values).last_hidden_state, output.last_hidden_state, atol=1e-5)
    assert len(output.intermediate_embeddings) == 2  # the two global blocks


def test_adapter_trained_prompt_free_loads_on_a_promptable_sam(tmp_path, pixel_values):
    from sam_peft.modeling import load_encoder_adapter

    sam, semantic = random_sam("tiny", seed=0), tiny_semantic()
    semantic.vision_encoder.load_state_dict(sam.vision_encoder.state_dict())
    semantic = randomised(get_peft_model(semantic, SloraConfig(r=4)))
    semantic.save_pretrained(tmp_path)
    prompted = load_encoder_adapter(sam, tmp_path)
    with torch.no_grad():
        expected = semantic.base_model.model.vision_encoder(pixel_values).last_hidden_state
        assert torch.equal(prompted.base_model.model.vision_encoder(pixel_values).last_hidden_state, expected)
        assert masks(prompted, pixel_values, input_points=POINTS, input_labels=LABELS).shape == (2, 1, 1, 64, 64)


def test_adapter_stays_float32_on_a_bfloat16_model(pixel_values):
    model = randomised(slora(base=random_sam("tiny", seed=0).to(torch.bfloat16))).train()
    assert {p.dtype for n, p in model.named_parameters() if "slora_" in n} == {torch.float32}
    output = masks(model, pixel_values.to(torch.bfloat16), input_points=POINTS, input_labels=LABELS)
    output.float().square().mean().backward()
    assert output.dtype == torch.bfloat16
    assert model.base_model.slora_A["default"].weight.grad is not None


# ---------------------------------------------------------------------------------------------------------- errors


def test_errors_name_the_problem(pixel_values):
    for r in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"SloraConfig\.r must be a positive integer"):
            SloraConfig(r=r)
    for layers in ([-1], [], [2, "3"]):
        with pytest.raises(ValueError, match="layers_to_transform must be a non-negative block index"):
            SloraConfig(layers_to_transform=layers)
    with pytest.raises(ValueError, match=r"holds \[4, 12\] but the vision encoder has 4 blocks \(0..3\)"):
        slora(SloraConfig(layers_to_transform=[3, 4, 12]))
    target = r"mask_decoder\.transformer\.layers\.0\.self_attn"
    with pytest.raises(ValueError, match=r"SLoRA target '.*self_attn' is a SamAttention; SLoRA wraps the attention"):
        slora(SloraConfig(target_modules=target))

    with pytest.raises(ValueError, match=r"input_points must have shape \(batch, point_batch, points, 2\)"):
        points_to_heat_map(torch.zeros(2, 1, 3), None, INPUT, GRID)
    with pytest.raises(ValueError, match="give one label per point"):
        points_to_heat_map(POINTS, LABELS[:, :, :2], INPUT, GRID)
    with pytest.raises(ValueError, match=r"needs maps longer than 4 cells per side"):
        gaussian_blur(torch.zeros(1, 4, 4))

    model = slora()
    tuner = model.base_model
    grid_error = r"must have shape \(batch, 16, 16\) \(the image-embedding grid\)"
    with pytest.raises(ValueError, match=grid_error), tuner.prompt_heat_map(torch.zeros(2, 64, 64)):
        pass
    with pytest.raises(ValueError, match="do not fit the tokens"), tuner.prompt_heat_map(torch.zeros(3, GRID, GRID)):
        tuner.model.vision_encoder(pixel_values)
    assert model.base_model._slora_state.heat_map is None and not model.base_model._slora_state.pinned
