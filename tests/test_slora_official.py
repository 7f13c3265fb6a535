"""SLoRA against the official SAMCL computation (github INV-WZQ/SAMCL), re-derived here step by step in plain torch.

The reference below follows the authors' formulas, not sam-peft's code: the heat map is built as their
`generate_heatmap` builds it (a float64 map indexed [x][y], OpenCV's 9 x 9 blur written out with its mirrored border,
times 255), kept channels-first (B, r, X, Y) through the prompt projection, and placed on the tokens with their
permutes: `permute(0, 3, 2, 1)` in the blocks (after a nearest resize to one window, repeated for every window, in
windowed blocks), `permute(0, 2, 3, 1)` / `permute(0, 3, 1, 2)` at the neck.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import SamModel

from sam_peft import SloraConfig, random_sam, sam_config
from sam_peft.continual import ContinualSam
from sam_peft.data import binary_dataset, prepare_for_sam
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.tuners.slora import SloraAttention, points_to_heat_map

# The tiny SAM: 128 px input, 16 x 16 grid of 8 px cells, blocks 0 and 2 in 4 x 4 windows (16 per image), blocks 1
# and 3 global; SLoRA adapts all four by default.
GRID, INPUT, R = 16, 128, 10
# Three positive points per image, placed so that the map differs from its transpose.
POINTS = torch.tensor([[[[20.0, 100.0], [90.0, 30.0], [121.0, 77.0]]], [[[5.0, 60.0], [70.0, 12.0], [50.0, 50.0]]]])
LABELS = torch.ones(2, 1, 3, dtype=torch.int64)
# OpenCV's 9-tap Gaussian for ksize 9, sigma 0 (`cv2.getGaussianKernel(9, 0)`), in 256ths.
OPENCV_TAPS = [4, 13, 30, 51, 60, 51, 30, 13, 4]


def official_impulses(points: torch.Tensor) -> torch.Tensor:
    """The unblurred maps of `generate_heatmap`: (B, X, Y) float64, `img[x][y] = 1` at each point's cell."""
    maps = torch.zeros(points.shape[0], GRID, GRID, dtype=torch.float64)
    for b, image in enumerate(points[:, 0]):
        for x, y in image.tolist():
            maps[b, int(int(x) * GRID / INPUT), int(int(y) * GRID / INPUT)] = 1.0
    return maps


def official_heat_map(points: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """`generate_heatmap((9, 9), points, GRID, GRID).float()`: (B, 1, X, Y), float32, indexed [x][y]."""
    taps = torch.tensor(OPENCV_TAPS, dtype=torch.float64) / 256
    kernel = taps[:, None] * taps[None, :]  # (9, 9)
    # BORDER_REFLECT_101: index -k reads k, index GRID - 1 + k reads GRID - 1 - k
    index = torch.arange(-4, GRID + 4).abs()
    index = torch.where(index > GRID - 1, 2 * (GRID - 1) - index, index)
    maps = []
    for img in official_impulses(points):
        padded = img[index][:, index]
        blurred = torch.zeros_like(img)
        for i in range(GRID):
            for j in range(GRID):
                blurred[i, j] = (padded[i : i + 9, j : j + 9] * kernel).sum()
        maps.append(blurred * scale)
    return torch.stack(maps)[:, None].float()


def official_weights(model: PeftModel, name: str = "default") -> dict:
    """The adapter's modules under the official code's names."""
    tuner = model.base_model
    encoder = tuner.model.vision_encoder
    weights = {
        "A": tuner.slora_A[name],
        "extra.layer": tuner.slora_prompt_linear[name],
        "extra.norm": tuner.slora_prompt_norm[name],
        "extra.upward": encoder.neck.slora_neck_input[name],
        "extra.upward_": encoder.neck.slora_neck_output[name],
    }
    for index, block in enumerate(encoder.layers):
        if isinstance(block.attn, SloraAttention):
            weights[f"{index}.B"] = block.attn.slora_B[name]
            weights[f"{index}.norm1"] = block.attn.slora_norm_A[name]
            weights[f"{index}.norm2"] = block.attn.slora_norm_prompt[name]
    return weights


@torch.no_grad()
def reference(
    sam: SamModel,
    weights: dict,
    pixel_values: torch.Tensor,
    points: torch.Tensor,
    layout: str = "official",
    neck_layout: str | None = None,
    scale: float = 255.0,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(prompt features (B, r, X, Y), each block's output (B, g, g, C), image embeddings (B, C_out, g, g)).

    "official": the authors' placement; "positional": every token gets the features of its own position (the spec).
    `neck_layout` (default: `layout`) places the features at the neck independently, to show a transpose matters.
    """
    neck_layout = neck_layout or layout
    heat = official_heat_map(points, scale).repeat(1, R, 1, 1)  # (B, r, X, Y)
    prompt = weights["extra.layer"](heat.permute(0, 2, 3, 1))
    prompt = F.relu(weights["extra.norm"](prompt)).permute(0, 3, 1, 2)  # (B, r, X, Y)
    batch = prompt.shape[0]
    encoder = sam.vision_encoder
    x = encoder.patch_embed(pixel_values) + encoder.pos_embed
    outputs = []
    for index, block in enumerate(encoder.layers):
        y = block.layer_norm1(x)
        size = block.window_size
        if size > 0:
            y, padded = block.window_partition(y, size)
        attention = block.attn(y)[0]
        if f"{index}.B" in weights:
            if size > 0 and layout == "official":  # one window-sized map, repeated in each window of the image
                resized = F.interpolate(prompt, size=(size, size), mode="nearest")
                windows = y.shape[0] // batch
                expanded = torch.cat([resized[i].unsqueeze(0).repeat(windows, 1, 1, 1) for i in range(batch)])
                expanded = expanded.permute(0, 3, 2, 1)
            elif size > 0:  # the features of each window's own positions
                expanded = block.window_partition(prompt.permute(0, 3, 2, 1), size)[0]
            else:
                expanded = prompt.permute(0, 3, 2, 1)
            adapter = weights[f"{index}.norm1"](weights["A"](y)) + weights[f"{index}.norm2"](expanded)
            attention = attention + weights[f"{index}.B"](adapter)
        if size > 0:
            attention = block.window_unpartition(attention, size, padded, (GRID, GRID))
        x = x + attention
        x = x + block.mlp(block.layer_norm2(x))
        outputs.append(x)
    at_neck = prompt.permute(0, 2, 3, 1) if neck_layout == "official" else prompt.permute(0, 3, 2, 1)
    into_neck = weights["extra.upward"](at_neck).permute(0, 3, 1, 2)  # (B, C, g, g)
    beside_neck = weights["extra.upward_"](at_neck).permute(0, 3, 1, 2)
    embeddings = encoder.neck((x.permute(0, 3, 1, 2) + into_neck).permute(0, 2, 3, 1)) + beside_neck
    return prompt, outputs, embeddings


def randomised(model: PeftModel, seed: int = 0) -> PeftModel:
    """Every SLoRA weight (A, B, LayerNorms, prompt and neck projections) drawn from N(0, 0.5^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "slora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def slora(layout: str) -> PeftModel:
    return randomised(get_peft_model(random_sam("tiny", seed=0), SloraConfig(r=R, prompt_layout=layout)))


@torch.no_grad()
def ours(model: PeftModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """(prompt features (B, g, g, r), each block's output, image embeddings) of the model, prompted with POINTS."""
    tuner = model.base_model
    encoder = tuner.model.vision_encoder
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda m, a, out: outputs.append(out)) for block in encoder.layers]
    try:
        with tuner.prompts(POINTS, LABELS):
            features = tuner._slora_state.prompt_features("default")
            embeddings = encoder(pixel_values).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    return features, outputs, embeddings


@pytest.fixture(scope="module")
def models() -> dict[str, PeftModel]:
    return {layout: slora(layout) for layout in ("official", "positional")}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(1))


def test_the_tiny_sam_has_windowed_and_global_adapted_blocks(models):
    encoder = models["official"].base_model.model.vision_encoder
    assert [block.window_size for block in encoder.layers] == [4, 0, 4, 0]
    assert all(isinstance(block.attn, SloraAttention) for block in encoder.layers)
    # the points are not symmetric: the official map (indexed [x][y]) differs from its transpose
    heat = official_heat_map(POINTS)[:, 0]
    assert not torch.allclose(heat, heat.transpose(1, 2), atol=1e-3)


def padded_window_sam() -> SamModel:
    """The tiny SAM with 5 x 5 windows: the 16 x 16 grid is padded to 20 x 20 in blocks 0 and 2, as ViT-B's 64 x 64
    grid is padded to 70 x 70 for its 14 x 14 windows."""
    config = sam_config("tiny")
    config.vision_config.window_size = 5
    torch.manual_seed(0)
    return init_vision_weights_(SamModel(config)).eval()


@pytest.mark.parametrize("layout", ["official", "positional"])
@pytest.mark.parametrize("padded", [False, True], ids=["windows_4", "padded_windows_5"])
def test_prompt_features_and_blocks_match_the_official_formula(layout, padded, models, images):
    if padded:
        model = randomised(get_peft_model(padded_window_sam(), SloraConfig(r=R, prompt_layout=layout)))
        sam = padded_window_sam()
    else:
        model, sam = models[layout], random_sam("tiny", seed=0)  # the same base weights as the adapted model
    features, outputs, embeddings = ours(model, images)
    expected_features, expected_outputs, expected_embeddings = reference(
        sam, official_weights(model), images, POINTS, layout
    )
    # our features are (B, row y, column x, r); the official (B, r, x, y)
    torch.testing.assert_close(features, expected_features.permute(0, 3, 2, 1), rtol=1e-5, atol=1e-5)
    assert len(outputs) == len(expected_outputs) == 4
    for output, expected in zip(outputs, expected_outputs, strict=True):
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeddings, expected_embeddings, rtol=1e-5, atol=1e-5)


def test_the_checks_see_scale_window_layout_and_neck_transpose(models, images):
    """The layouts differ on this input, and so would a missing factor of 255 or a missing transpose at the neck."""
    sam = random_sam("tiny", seed=0)
    weights = official_weights(models["official"])
    _, outputs, embeddings = ours(models["official"], images)
    _, positional_outputs, positional_embeddings = ours(models["positional"], images)
    assert not torch.allclose(outputs[0], positional_outputs[0], atol=1e-3)  # the first (windowed) block differs
    assert not torch.allclose(embeddings, positional_embeddings, atol=1e-3)
    unscaled = reference(sam, weights, images, POINTS, "official", scale=1.0)
    assert not torch.allclose(outputs[0], unscaled[1][0], atol=1e-3)
    untransposed = reference(sam, weights, images, POINTS, "official", neck_layout="positional")
    torch.testing.assert_close(outputs[-1], untransposed[1][-1], rtol=1e-5, atol=1e-5)  # same blocks ...
    assert not torch.allclose(embeddings, untransposed[2], atol=1e-3)  # ... but not the same neck


def test_the_heat_map_is_at_the_official_scale_by_default(models):
    """A single point's blurred peak is 255 times the centre product of OpenCV's kernel: 255 * (60 / 256)^2."""
    point = torch.tensor([[[[60.0, 36.0]]]])  # cell (row 4, column 7), away from the border
    peak = 255 * (60 / 256) ** 2
    heat = points_to_heat_map(point, None, INPUT, GRID)
    assert divmod(int(heat[0].argmax()), GRID) == (4, 7)
    assert abs(float(heat.max()) - peak) < 1e-5
    assert abs(float(points_to_heat_map(point, None, INPUT, GRID, scale=1.0).max()) - peak / 255) < 1e-8
    assert torch.equal(models["official"].base_model.heat_map_from_points(point), heat)
    # the whole map of the test points: the official one, transposed to (row y, column x)
    torch.testing.assert_close(
        points_to_heat_map(POINTS, LABELS, INPUT, GRID), official_heat_map(POINTS)[:, 0].transpose(1, 2)
    )


def test_the_reference_blur_is_opencvs():
    cv2 = pytest.importorskip("cv2")
    blurred = [torch.from_numpy(cv2.GaussianBlur(img.numpy(), (9, 9), 0) * 255) for img in official_impulses(POINTS)]
    torch.testing.assert_close(official_heat_map(POINTS)[:, 0], torch.stack(blurred).float(), rtol=0, atol=1e-5)


def test_prompt_layout_is_validated():
    assert SloraConfig().prompt_layout == "positional"
    with pytest.raises(ValueError, match=r"prompt_layout must be one of 'positional', 'official', got 'windowed'"):
        SloraConfig(prompt_layout="windowed")


def test_prompt_layout_survives_save_and_load_and_is_kept_per_adapter(models, images, tmp_path):
    model = models["official"]
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["prompt_layout"] == "official"
    loaded = PeftModel.from_pretrained(random_sam("tiny", seed=0), tmp_path).eval()
    assert loaded.peft_config["default"].prompt_layout == "official"
    expected, actual = ours(model, images), ours(loaded, images)
    torch.testing.assert_close(actual[2], expected[2], rtol=0, atol=0)
    # a second adapter keeps its own layout in every layer, and deleting it removes it
    loaded.add_adapter("other", SloraConfig(r=R, prompt_layout="positional"))
    encoder = loaded.base_model.model.vision_encoder
    layers = [block.attn for block in encoder.layers] + [encoder.neck]
    assert all(layer.slora_prompt_layout == {"default": "official", "other": "positional"} for layer in layers)
    loaded.delete_adapter("other")
    assert all(layer.slora_prompt_layout == {"default": "official"} for layer in layers)


def test_continual_sam_keeps_the_prompt_layout(tmp_path):
    config = SloraConfig(r=4, layers_to_transform=[2, 3], prompt_layout="official")
    continual = ContinualSam(random_sam("tiny"), config, entries_per_domain=2, selector_epochs=1)
    continual.add_module("polyp")
    data = prepare_for_sam(
        binary_dataset(2, INPUT, seed=0, split="train", appearance="polyp"), INPUT, augmentation=None
    )
    continual.extend_buffer("polyp", data)
    continual.fit_selector()
    continual.save_pretrained(tmp_path)
    loaded = ContinualSam.from_pretrained(tmp_path, sam=random_sam("tiny"))
    assert loaded.module_config.prompt_layout == "official"
    assert loaded.vision_encoder.neck.slora_prompt_layout == {"polyp": "official"}
    assert loaded.vision_encoder.layers[2].attn.slora_prompt_layout == {"polyp": "official"}
