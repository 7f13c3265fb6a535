"""SLoRA on SAM 2 / 2.1 (`Sam2Model`, Hiera) and SAM 3's tracker (`Sam3TrackerModel`): every adapted attention
module and the neck recomputed from the spec on the generation's own windows (windowed, padded and global blocks,
both prompt layouts), the default blocks and heat-map grids, the refusals, training, and the exact trainable counts
of the released sizes.

The PEFT contract (several adapters, save and reload, disable, unload, merge refused, bfloat16) runs on both in
tests/test_peft_contract.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import Sam2Model, Sam3TrackerModel

from sam_peft import Sam2ForSemanticSegmentation, SloraConfig, random_sam, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.tuners.slora import SloraAttention, SloraModel, SloraNeck, SloraSam2Neck, SloraSam3Neck
from sam_peft.tuners.slora.heat_map import points_to_heat_map
from sam_peft.tuners.targets import default_target_modules

# Two images, one point batch each; no point on the diagonal, so a transposed heat map would show.
POINTS = torch.tensor([[[[40.0, 50.0], [90.0, 20.0]]], [[[60.0, 70.0], [10.0, 100.0]]]])
LABELS = torch.tensor([[[1, 1]], [[1, 0]]])


def padded_sam2() -> Sam2Model:
    """The tiny SAM 2 with a third block in stage 2: blocks 2 (pools, 32 -> 64 channels), 3 (global) and 4 (6 x 6
    windows on the 8 x 8 grid: padded to 12 x 12, as Hiera-T's 14 x 14 windows pad its 64 x 64 grid)."""
    config = sam_config("sam2-tiny")
    backbone = config.vision_config.backbone_config
    backbone.blocks_per_stage, backbone.global_attention_blocks = [1, 1, 3, 1], [3]
    backbone.window_size_per_stage = [4, 2, 6, 2]
    torch.manual_seed(0)
    return init_vision_weights_(Sam2Model(config)).eval()


def padded_sam3() -> Sam3TrackerModel:
    """The tiny SAM 3 tracker with 3 x 3 windows: its 8 x 8 grid is padded to 9 x 9 in blocks 0 and 2."""
    config = sam_config("sam3-tiny")
    config.vision_config.backbone_config.window_size = 3
    torch.manual_seed(0)
    return init_vision_weights_(Sam3TrackerModel(config)).eval()


BASES: dict[str, Callable[[], nn.Module]] = {
    "sam2-tiny": lambda: random_sam("sam2-tiny"),
    "sam2-padded": padded_sam2,
    "sam3-tiny": lambda: random_sam("sam3-tiny"),
    "sam3-padded": padded_sam3,
}
IMAGE_SIZE = {"sam2-tiny": 128, "sam2-padded": 128, "sam3-tiny": 112, "sam3-padded": 112}

# (base, layers_to_transform, heat-map grid, the input each adapted attention module gets: (N, h, w, C) and its
# window, 0 for global). SAM 2 at 128 px: Hiera stages of 32, 16, 8 and 4 tokens a side (patch stride 4, then
# halved by each stage's first block); SAM 3 at 112 px: 8 x 8 tokens of 14 px. Batch 2.
CASES = [
    ("sam2-tiny", None, 8, {3: ((2, 8, 8, 64), 0)}),  # the default: stage 2's one adaptable block, global
    ("sam2-tiny", [0], 32, {0: ((2 * 64, 4, 4, 16), 4)}),  # stage 0: 64 windows of 4 x 4 per image
    ("sam2-padded", None, 8, {3: ((2, 8, 8, 64), 0), 4: ((2 * 4, 6, 6, 64), 6)}),
    ("sam3-tiny", None, 8, {i: ((8, 4, 4, 32), 4) if i % 2 == 0 else ((2, 8, 8, 32), 0) for i in range(4)}),
    ("sam3-padded", None, 8, {i: ((2 * 9, 3, 3, 32), 3) if i % 2 == 0 else ((2, 8, 8, 32), 0) for i in range(4)}),
]


def pixels(base: str) -> torch.Tensor:
    size = IMAGE_SIZE[base]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def randomised(model: PeftModel, seed: int = 0) -> PeftModel:
    """N(0, 0.5^2) added to every SLoRA weight (the zero-initialised B and neck projections included), so that
    each part of the adapter shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "slora_" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def prompt_features(model: PeftModel, heat_map: torch.Tensor) -> torch.Tensor:
    """H = ReLU(LN(Linear(heat map repeated to r channels))), (B, g, g, r)."""
    tuner = model.base_model
    r = tuner.slora_A["default"].out_features
    features = tuner.slora_prompt_linear["default"](heat_map[..., None].expand(-1, -1, -1, r))
    return F.relu(tuner.slora_prompt_norm["default"](features))


def in_windows(features: torch.Tensor, window: int, layout: str) -> torch.Tensor:
    """The features (B, g, g, r) a block with `window` gives its tokens, written out: as they are in a global block;
    "positional": zero-padded to whole windows and cut into them, window by window, row-major; "official": resized
    to one window by nearest neighbour (cell floor(i * g / window)) and repeated in every window of the image."""
    if window == 0:
        return features
    batch, grid, _, r = features.shape
    count = -(-grid // window)  # windows per side
    if layout == "official":
        cells = torch.arange(window) * grid // window
        return features[:, cells][:, :, cells].repeat_interleave(count * count, dim=0)
    padded = features.new_zeros(batch, count * window, count * window, r)
    padded[:, :grid, :grid] = features
    return padded.reshape(batch, count, window, count, window, r).transpose(2, 3).reshape(-1, window, window, r)


def attention_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """(x, the other positional and keyword arguments) of a call of an attention module (SAM 2's blocks pass
    `hidden_states=`, SAM 3's pass it and the rotary embeddings positionally)."""
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], args, {k: v for k, v in kwargs.items() if k != "hidden_states"}
    return args[0], args[1:], kwargs


def forward_and_record(model: PeftModel, images: torch.Tensor) -> tuple[dict, tuple, tuple]:
    """A prompted forward; the inputs and outputs of every adapted attention module (by block index), of the neck,
    and the vision encoder's FPN levels."""
    attention, neck, encoder = {}, [], []
    hooks = []
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, SloraAttention):
            index = int(name.split(".")[-2])
            hooks.append(
                module.register_forward_hook(
                    lambda m, args, kwargs, out, index=index: attention.update({index: (args, kwargs, out)}),
                    with_kwargs=True,
                )
            )
        elif isinstance(module, SloraNeck):
            hooks.append(module.register_forward_hook(lambda m, args, out: neck.append((args[0], out))))
    vision_encoder = model.base_model.model.vision_encoder
    # (the levels as the encoder returns them: the model then replaces them in its output with flattened ones)
    hooks.append(vision_encoder.register_forward_hook(lambda m, args, out: encoder.append(out.fpn_hidden_states)))
    with torch.no_grad():
        model(pixel_values=images, input_points=POINTS, input_labels=LABELS, multimask_output=False)
    for hook in hooks:
        hook.remove()
    return attention, neck[0], encoder[0]


def check_against_spec(
    model: PeftModel, recorded: tuple, heat_map: torch.Tensor, blocks: dict, layout: str, controls: bool
) -> None:
    """Each adapted attention module's output is `attn(x) + B(LN1(A x) + LN2(H at x's tokens))` and the neck's is
    `neck(x + In(H))` with Out(H) added to the level on the grid, for the heat map (B, g, g) of the forward whose
    inputs and outputs are `recorded` (`forward_and_record`). With `controls`, a misplaced H (transposed, or in the
    other layout's windows) must give another output: the heat map must vary enough over the grid to show it."""
    tuner = model.base_model
    attention_calls, (neck_input, neck_output), encoder_levels = recorded
    grid = heat_map.shape[-1]
    features = prompt_features(model, heat_map)  # (B, g, g, r)
    layers = {int(n.split(".")[-2]): m for n, m in tuner.model.named_modules() if isinstance(m, SloraAttention)}
    assert sorted(attention_calls) == sorted(layers) == sorted(blocks)
    for index, (args, kwargs, output) in attention_calls.items():
        shape, window = blocks[index]
        x, other_args, other_kwargs = attention_input(args, kwargs)
        assert tuple(x.shape) == shape
        layer = layers[index]
        attention = layer.base_layer(x, *other_args, **other_kwargs)
        attention = attention[0] if isinstance(attention, tuple) else attention
        bottleneck = layer.slora_norm_A["default"](tuner.slora_A["default"](x))

        def spec(h: torch.Tensor, placement: str = layout, window: int = window, layer=layer) -> torch.Tensor:
            placed = layer.slora_norm_prompt["default"](in_windows(h, window, placement))
            return attention + layer.slora_B["default"](bottleneck + placed)  # noqa: B023

        output = output[0] if isinstance(output, tuple) else output
        torch.testing.assert_close(output, spec(features), rtol=1e-4, atol=1e-5)
        if controls:
            assert not torch.allclose(output, spec(features.transpose(1, 2)), atol=1e-3)
            if window:
                other = "official" if layout == "positional" else "positional"
                assert not torch.allclose(output, spec(features, other), atol=1e-3)

    # the neck: neck(x + In(H)) + Out(H) on the FPN level of the adapted blocks' grid, every other level as the neck
    # computes it; H transposed with the official layout
    neck = tuner.model.vision_encoder.neck

    def neck_spec(h: torch.Tensor) -> tuple[list[torch.Tensor], tuple, list[torch.Tensor]]:
        """(the levels with In(h) in the input, their position encodings, Out(h) channels-first)."""
        update_in = neck.slora_neck_input["default"](h)
        if isinstance(neck_input, tuple):  # SAM 2: per-stage outputs, channels-last; In(H) joins the grid's stage
            assert isinstance(neck, SloraSam2Neck)
            assert [stage.shape[1] for stage in neck_input].count(grid) == 1
            shifted = tuple(stage + update_in if stage.shape[1] == grid else stage for stage in neck_input)
        else:  # SAM 3: the last block's output, channels-first
            assert isinstance(neck, SloraSam3Neck) and neck_input.shape[-2:] == (grid, grid)
            shifted = neck_input + update_in.permute(0, 3, 1, 2)
        levels, positions = neck.base_layer(shifted)
        return list(levels), positions, neck.slora_neck_output["default"](h).permute(0, 3, 1, 2)

    placed = features.transpose(1, 2) if layout == "official" else features
    expected, positions, update_out = neck_spec(placed)
    plain, _ = neck.base_layer(neck_input)
    levels, output_positions = neck_output
    assert [level.shape[-1] for level in levels].count(grid) == 1
    for k, (level, plain_level) in enumerate(zip(levels, plain, strict=True)):
        assert torch.equal(output_positions[k], positions[k])
        expected_level = expected[k]
        if level.shape[-1] == grid:
            torch.testing.assert_close(level, expected_level + update_out, rtol=1e-4, atol=1e-5)
            assert not torch.allclose(level, expected_level, atol=1e-3)
            if controls:
                wrong, _, wrong_out = neck_spec(placed.transpose(1, 2))
                assert not torch.allclose(level, wrong[k] + wrong_out, atol=1e-3)
        else:
            torch.testing.assert_close(level, expected_level, rtol=1e-4, atol=1e-5)
            if isinstance(neck, SloraSam2Neck):  # the other stages' levels: the frozen neck's (no top-down)
                assert torch.equal(level, plain_level)
    # the encoder returns the changed level (by default the image embedding the decoder attends to, see the test)
    at_grid = [level for level in encoder_levels if level.shape[-1] == grid]
    assert len(at_grid) == 1 and torch.equal(at_grid[0], next(lv for lv in levels if lv.shape[-1] == grid))


@pytest.mark.parametrize("layout", ["positional", "official"])
@pytest.mark.parametrize(
    ("base", "layers", "grid", "blocks"), CASES, ids=["sam2", "sam2-stage0", "sam2-padded", "sam3", "sam3-padded"]
)
def test_each_adapted_attention_and_the_neck_match_the_spec(base, layers, grid, blocks, layout):
    model = randomised(
        get_peft_model(BASES[base](), SloraConfig(r=4, layers_to_transform=layers, prompt_layout=layout))
    )
    assert model.peft_config["default"].layers_to_transform == sorted(blocks)
    images = pixels(base)
    with torch.no_grad():
        # the heat map of the forward's points, on the grid of the adapted blocks
        recorded = forward_and_record(model, images)
        check_against_spec(
            model, recorded, points_to_heat_map(POINTS, LABELS, IMAGE_SIZE[base], grid), blocks, layout, False
        )
        if layers is None:
            assert recorded[2][-1].shape[-1] == grid  # the level the decoder reads (`image_embeddings[-1]`)
        # a heat map that varies from cell to cell (the blurred points cover most of a small grid, where H is nearly
        # constant), so that a misplaced H would show
        heat_map = torch.rand(2, grid, grid, generator=torch.Generator().manual_seed(2)) * 2
        with model.base_model.prompt_heat_map(heat_map):
            recorded = forward_and_record(model, images)
        check_against_spec(model, recorded, heat_map, blocks, layout, True)


def test_defaults_adapt_the_blocks_on_the_image_embedding_grid():
    sam2 = get_peft_model(random_sam("sam2-tiny"), SloraConfig())
    tuner = sam2.base_model
    # Hiera-tiny's stage 2 is blocks 2 and 3; block 2 pools its queries and widens 32 -> 64 channels
    assert sam2.peft_config["default"].layers_to_transform == [3]
    assert tuner.targeted_module_names == ["vision_encoder.backbone.blocks.3.attn"]
    config = tuner.model.config
    assert tuner.grid_size == 128 // 16 == config.vision_config.backbone_feature_sizes[-1][0]
    assert (tuner.grid_size,) * 2 == tuner.model.prompt_encoder.image_embedding_size
    assert tuner.prompt_input_size == 128
    assert type(tuner.model.vision_encoder.neck) is SloraSam2Neck

    padded = get_peft_model(padded_sam2(), SloraConfig())
    assert padded.peft_config["default"].layers_to_transform == [3, 4]

    stage_0 = get_peft_model(random_sam("sam2-tiny"), SloraConfig(layers_to_transform=[0]))
    assert stage_0.base_model.grid_size == 128 // 4
    grid_error = r"\(batch, 32, 32\) \(the token grid of Hiera stage 0, whose blocks"
    with pytest.raises(ValueError, match=grid_error), stage_0.base_model.prompt_heat_map(torch.zeros(2, 8, 8)):
        pass

    sam3 = get_peft_model(random_sam("sam3-tiny"), SloraConfig())
    tuner = sam3.base_model
    assert sam3.peft_config["default"].layers_to_transform == [0, 1, 2, 3]  # the last five of four blocks
    assert tuner.targeted_module_names == [f"vision_encoder.backbone.layers.{i}.attention" for i in range(4)]
    assert tuner.grid_size == 112 // 14 and tuner.prompt_input_size == 112
    assert (tuner.grid_size,) * 2 == tuner.model.prompt_encoder.image_embedding_size
    assert type(tuner.model.vision_encoder.neck) is SloraSam3Neck

    without_prompts = get_peft_model(random_sam("sam3-tiny"), SloraConfig(prompt_augmentation=False))
    assert type(without_prompts.base_model.model.vision_encoder.neck).__name__ == "Sam3VisionNeck"


@pytest.mark.parametrize("base", ["sam2-tiny", "sam3-tiny"])
def test_a_fresh_adapter_is_the_identity_with_and_without_points(base):
    images = pixels(base)
    reference, model = BASES[base](), get_peft_model(BASES[base](), SloraConfig()).eval()
    with torch.no_grad():
        for prompts in ({}, {"input_points": POINTS, "input_labels": LABELS}):
            expected = reference(pixel_values=images, multimask_output=False, **prompts)
            output = model(pixel_values=images, multimask_output=False, **prompts)
            assert torch.equal(output.pred_masks, expected.pred_masks)


def test_blocks_of_several_widths_or_widening_blocks_are_refused():
    fix = (
        r"The blocks SLoRA can adapt, by stage: stage 0: \[0\]; stage 2: \[3\]\. Unset, `layers_to_transform` is \[3\]"
    )
    with pytest.raises(
        ValueError,
        match=r"layers_to_transform \[0, 3\] spans several widths of SAM 2's Hiera encoder: block 0 \(stage 0, 16 "
        r"channels\), block 3 \(stage 2, 64 channels\)\. SLoRA's down-projection A is shared .* one stage\. " + fix,
    ):
        get_peft_model(random_sam("sam2-tiny"), SloraConfig(layers_to_transform=[0, 3]))
    for block, stage, widths in ((2, 2, "32 -> 64"), (4, 3, "64 -> 128")):
        with pytest.raises(
            ValueError,
            match=rf"holds block {block} \(the first of stage {stage}: it pools its queries and widens the tokens "
            rf"{widths} channels\): SLoRA cannot adapt .* Leave it out\. " + fix,
        ):
            get_peft_model(random_sam("sam2-tiny"), SloraConfig(layers_to_transform=[block, 3]))
    with pytest.raises(ValueError, match=r"holds \[5\] but the vision encoder has 5 blocks \(0..4\)"):
        get_peft_model(random_sam("sam2-tiny"), SloraConfig(layers_to_transform=[5]))

    # a second adapter on another stage: refused before anything is added
    model = get_peft_model(random_sam("sam2-tiny"), SloraConfig())
    with pytest.raises(
        ValueError,
        match=r"\[0\] are blocks of stage 0 \(16 channels, 32 x 32 tokens\), but this model's SLoRA blocks are in "
        r"stage 2 \(64 channels, 8 x 8 tokens\): all SLoRA adapters of a model adapt blocks of one stage",
    ):
        model.add_adapter("other", SloraConfig(layers_to_transform=[0]))
    assert list(model.peft_config) == ["default"]
    assert [n for n, m in model.named_modules() if isinstance(m, SloraAttention)] == [
        "base_model.model.vision_encoder.backbone.blocks.3.attn"
    ]

    # a Hiera whose stage 2 is one widening block, and whose stage 3 grid (4 x 4) is too small for the 9 x 9 blur
    config = sam_config("sam2-tiny")
    config.vision_config.backbone_config.blocks_per_stage = [1, 1, 1, 2]
    with pytest.raises(ValueError, match=r"stage has no block SLoRA can adapt: .* stage 0: \[0\]; stage 3: \[4\]\.$"):
        get_peft_model(Sam2Model(config), SloraConfig())
    base = Sam2Model(config)
    with pytest.raises(ValueError, match=r"needs a grid longer than 4 cells per side; the adapted blocks' grid is 4"):
        get_peft_model(base, SloraConfig(layers_to_transform=[4]))
    assert not base._forward_pre_hooks and not base._forward_hooks  # refused before anything was added
    assert get_peft_model(Sam2Model(config), SloraConfig(layers_to_transform=[4], prompt_augmentation=False))

    with pytest.raises(ValueError, match=r"^SLoRA cannot adapt EdgeTAM \(RepViT encoder\): .*convolutional"):
        default_target_modules(
            "SLoRA", SloraModel.target_module_mapping, {"model_type": "edgetam"}, SloraModel.unsupported_architectures
        )


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_a_few_steps_lower_the_prompted_loss(variant):
    torch.manual_seed(0)
    model = get_peft_model(random_sam(variant), SloraConfig(modules_to_save=["mask_decoder"]))
    images = pixels(variant)
    target = torch.zeros(2, 1, 32, 32)  # the decoder's low-resolution masks: 4 x the embedding grid of 8 x 8
    target[:, :, 8:16, 8:16] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        masks = model(pixel_values=images, input_points=POINTS, input_labels=LABELS, multimask_output=False)
        loss = F.binary_cross_entropy_with_logits(masks.pred_masks[:, 0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    # the adapter trained too: its zero-initialised B and neck projections moved, and A got gradients
    tuner = model.base_model
    neck = tuner.model.vision_encoder.neck
    assert all(
        module.slora_B["default"].weight.abs().max() > 0
        for module in tuner.model.modules()
        if isinstance(module, SloraAttention)
    )
    assert neck.slora_neck_input["default"].weight.abs().max() > 0
    assert neck.slora_neck_output["default"].weight.abs().max() > 0
    assert tuner.slora_A["default"].weight.grad.abs().max() > 0


def test_the_prompt_free_sam2_head_takes_slora():
    model = get_peft_model(Sam2ForSemanticSegmentation(sam_config("sam2-tiny")), SloraConfig(r=4))
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    randomised(model).train()
    images = pixels("sam2-tiny")
    labels = (images[:, 0] > 0).long()
    model(pixel_values=images, labels=labels).loss.backward()  # no points: the zero heat map
    assert model.base_model.slora_A["default"].weight.grad.abs().max() > 0


def slora_count(r: int, width: int, blocks: int, neck_out: int) -> int:
    """Trainable parameters of one SLoRA adapter with prompt augmentation: the shared A (width -> r), per block B
    (r -> width) and LayerNorms LN1, LN2 (r each), the heat-map projection (r -> r) and its LayerNorm, the neck's
    In (r -> width) and Out (r -> neck_out); every Linear with bias."""
    shared = (width * r + r) + (r * r + r) + 2 * r
    per_block = (r * width + width) + 2 * 2 * r
    neck = (r * width + width) + (r * neck_out + neck_out)
    return shared + blocks * per_block + neck


def expected_adaptation(variant: str) -> tuple[list[int], int, int]:
    """(default adapted blocks, their width, heat-map grid) of a released size, from its config: SAM 3, the last
    five blocks on the 1008 / 14 = 72 grid; SAM 2, the last five of stage 2 (the first pools and widens), on the
    1024 / 4 / 2 / 2 = 64 grid."""
    vision = sam_config(variant).vision_config
    backbone = vision.backbone_config
    if variant == "sam3":
        count = backbone.num_hidden_layers
        return list(range(count - 5, count)), backbone.hidden_size, backbone.image_size // backbone.patch_size
    first, count = sum(backbone.blocks_per_stage[:2]), backbone.blocks_per_stage[2]
    assert count - 1 >= 5
    return list(range(first + count - 5, first + count)), backbone.embed_dim_per_stage[2], backbone.image_size[0] // 16


# Trainable parameters of SLoRA with the defaults (r = 10, prompt augmentation, five blocks), counted on the meta
# device: Hiera-T and -S adapt width 384, -B+ 448, -L 576, SAM 3 1024; the neck's output is 256 wide on all.
COUNTS = {
    "sam2-hiera-t": 32_340,
    "sam2-hiera-s": 32_340,
    "sam2-hiera-b+": 37_204,
    "sam2-hiera-l": 46_932,
    "sam3": 80_980,
}


@pytest.mark.parametrize("variant", list(COUNTS))
def test_exact_trainable_counts_of_the_released_sizes(variant):
    blocks, width, grid = expected_adaptation(variant)
    fpn = sam_config(variant).vision_config.fpn_hidden_size
    assert COUNTS[variant] == slora_count(10, width, len(blocks), fpn)
    model = get_peft_model(random_sam(variant, device="meta"), SloraConfig())
    assert model.peft_config["default"].layers_to_transform == blocks
    assert model.base_model.grid_size == grid
    assert model.get_nb_trainable_parameters()[0] == COUNTS[variant]
