"""SAM-Adapter's `embedding_feature="official"`: the official code's embedding feature, recomputed independently.

The reference below follows tianrun-chen/SAM-Adapter-PyTorch, `models/mmseg/models/sam/image_encoder.py`
(`ImageEncoderViT.forward`, `PromptGenerator.init_embeddings / init_handcrafted / get_prompt / fft`,
`PatchEmbed.forward`) step by step in plain torch, reading only the weights from the PEFT model.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model

from sam_peft._registration import register_tuner
from sam_peft.modeling import random_sam
from sam_peft.tuners.sam_adapter import SAM_ADAPTER, PromptGenerator, SamAdapterConfig, SamAdapterModel

register_tuner(SAM_ADAPTER, SamAdapterConfig, SamAdapterModel, SamAdapterModel.prefix)  # idempotent

SCALE = 8  # the tiny SAM is 32 wide: prompts of width d = 4


def adapted(embedding_feature: str, seed: int = 0) -> PeftModel:
    """The tiny SAM with SAM-Adapter, every adapter weight and bias random and non-zero."""
    config = SamAdapterConfig(scale_factor=SCALE, embedding_feature=embedding_feature)
    model = get_peft_model(random_sam("tiny", seed=0), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "sam_adapter_" in name:
                std = 0.5 if name.endswith("weight") else 0.1
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def official_encoder(sam, generator: PromptGenerator, mlps: list, pixel_values: torch.Tensor) -> torch.Tensor:
    """The official `ImageEncoderViT.forward` with SAM's blocks and neck from `sam` and the adapter's weights."""
    encoder = sam.vision_encoder
    embedding = generator.sam_adapter_embedding["default"]
    conv = generator.sam_adapter_handcrafted["default"]
    shared = generator.sam_adapter_shared["default"]
    # PatchEmbed.forward: conv, then B C H W -> B H W C
    x = F.conv2d(pixel_values, encoder.patch_embed.projection.weight, encoder.patch_embed.projection.bias, stride=8)
    x = x.permute(0, 2, 3, 1)
    # init_embeddings: the shape is read channels-first, the channels-last tensor is reshaped with it
    n, c, h, w = x.permute(0, 3, 1, 2).shape
    tokens = x.reshape(n, c, h * w).permute(0, 2, 1)  # (N, HW, C)
    embedding_feature = tokens @ embedding.weight.T + embedding.bias  # (N, HW, d)
    # init_handcrafted: fft (a centred square mask of half-side int(sqrt(H W rate) // 2), shifts over every dim)
    size_w, size_h = pixel_values.shape[-2:]
    line = int((size_w * size_h * 0.25) ** 0.5 // 2)
    mask = torch.zeros(pixel_values.shape)
    mask[:, :, size_w // 2 - line : size_w // 2 + line, size_h // 2 - line : size_h // 2 + line] = 1
    spectrum = torch.fft.fftshift(torch.fft.fft2(pixel_values, norm="forward")) * (1 - mask)
    inverse = torch.fft.ifft2(torch.fft.ifftshift(torch.complex(spectrum.real, spectrum.imag)), norm="forward")
    handcrafted = F.conv2d(inverse.real.abs(), conv.weight, conv.bias, stride=8)  # PatchEmbed2: (N, d, H, W)
    # get_prompt: hand-crafted tokens in row-major order, then lightweight_mlp_i (Linear + GELU) and shared_mlp
    d = handcrafted.shape[1]
    handcrafted = handcrafted.view(n, d, h * w).permute(0, 2, 1)  # (N, HW, d)
    prompts = []
    for mlp in mlps:
        hidden = F.gelu((handcrafted + embedding_feature) @ mlp.weight.T + mlp.bias)
        prompts.append(hidden @ shared.weight.T + shared.bias)  # (N, HW, C)
    # forward: position embedding, then each block's prompt reshaped to (B, H, W, C) and added before the block
    x = x + encoder.pos_embed
    for prompt, block in zip(prompts, encoder.layers, strict=True):
        x = block(prompt.reshape(n, h, w, -1) + x)
    return encoder.neck(x)


def test_config_default_and_validation():
    assert SamAdapterConfig().embedding_feature == "paper"
    assert SamAdapterConfig(embedding_feature="official").embedding_feature == "official"
    with pytest.raises(ValueError, match=r"embedding_feature must be one of 'paper', 'official', got 'transposed'"):
        SamAdapterConfig(embedding_feature="transposed")


def test_official_embedding_feature_reads_tokens_across_channels_and_positions():
    generator = adapted("official").base_model.model.vision_encoder.patch_embed
    batch, height, width, channels = 2, 16, 16, 32
    # every entry distinct: its value encodes (image, row, column, channel)
    patches = torch.arange(batch * height * width * channels, dtype=torch.float32).reshape(
        batch, height, width, channels
    )
    patches = patches / patches.numel()
    embedding = generator.sam_adapter_embedding["default"]
    with torch.no_grad():
        official = generator.embedding_feature("default", patches)
        # token t (row-major over (h, w)) reads entries t, t + hw, t + 2 hw, ... of each image's (h, w, C) flattening
        flat = patches.reshape(batch, -1)
        positions = torch.arange(height * width)[:, None] + torch.arange(channels)[None, :] * height * width
        expected = (flat[:, positions] @ embedding.weight.T + embedding.bias).reshape(batch, height, width, -1)
        torch.testing.assert_close(official, expected, rtol=1e-5, atol=1e-5)
        generator.sam_adapter_embedding_feature["default"] = "paper"
        paper = generator.embedding_feature("default", patches)
    torch.testing.assert_close(paper, patches @ embedding.weight.T + embedding.bias, rtol=1e-5, atol=1e-5)
    assert (paper - official).abs().max() > 0.1


def test_official_encoder_matches_the_official_computation(pixel_values):
    sam = random_sam("tiny", seed=0)
    model = adapted("official")
    paper = adapted("paper")
    assert paper.state_dict().keys() == model.state_dict().keys()
    paper.load_state_dict(model.state_dict())  # the same weights, the paper's embedding feature
    encoder = model.base_model.model.vision_encoder
    with torch.no_grad():
        patches = sam.vision_encoder.patch_embed(pixel_values)
        assert patches.unique().numel() == patches.numel()  # distinct per image, position and channel
        mlps = [layer.sam_adapter_mlp["default"] for layer in encoder.layers]
        expected = official_encoder(sam, encoder.patch_embed, mlps, pixel_values)
        output = encoder(pixel_values).last_hidden_state
        paper_output = paper.base_model.model.vision_encoder(pixel_values).last_hidden_state
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    assert (paper_output - expected).abs().max() > 1e-2  # the layout matters on this input: the test can fail


def test_official_setting_round_trips(tmp_path, pixel_values):
    model = adapted("official")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, multimask_output=False).pred_masks
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["embedding_feature"] == "official"
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, SamAdapterConfig) and config.embedding_feature == "official"
    loaded = PeftModel.from_pretrained(random_sam("tiny", seed=0), tmp_path).eval()
    assert loaded.base_model.model.vision_encoder.patch_embed.sam_adapter_embedding_feature == {"default": "official"}
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixel_values, multimask_output=False).pred_masks, expected)

    # a config saved before the option existed loads with the paper's feature, its behaviour then
    stored = json.loads((tmp_path / "adapter_config.json").read_text())
    del stored["embedding_feature"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(stored))
    assert PeftConfig.from_pretrained(tmp_path).embedding_feature == "paper"


def test_adapters_keep_their_own_setting(pixel_values):
    model = adapted("official")
    model.add_adapter("other", SamAdapterConfig(scale_factor=SCALE))
    generator = model.base_model.model.vision_encoder.patch_embed
    assert generator.sam_adapter_embedding_feature == {"default": "official", "other": "paper"}
    model.delete_adapter("other")
    assert generator.sam_adapter_embedding_feature == {"default": "official"}
