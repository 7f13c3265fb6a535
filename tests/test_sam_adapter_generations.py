"""SAM-Adapter on the later SAM generations: SAM 3's tracker (`Sam3TrackerModel`) is adapted, SAM 2 (Hiera) and
EdgeTAM are refused with their reasons.

On SAM 3 the prompt generator wraps `vision_encoder.backbone.embeddings.patch_embeddings` (the 14 px patch
convolution, before the tiled position embedding and the LayerNorm that precede the first block) and every
`vision_encoder.backbone.layers.<i>` gets a prompt. The forward is recomputed here in plain torch from the pixel
values, reading only weights. The PEFT contract runs on SAM 3 in tests/test_peft_contract.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

from sam_peft import SamAdapterConfig, auxiliary_loss, random_sam, sam_config
from sam_peft.tuners.sam_adapter import PromptedBlock, PromptGenerator, SamAdapterModel
from sam_peft.tuners.targets import default_target_modules

SCALE = 8  # the tiny SAM 3 is 32 wide: prompts of width d = 4
POINTS = {
    "input_points": torch.tensor([[[[40.0, 50.0], [90.0, 20.0]]], [[[60.0, 70.0], [10.0, 100.0]]]]),
    "input_labels": torch.tensor([[[1, 1]], [[1, 0]]]),
    "multimask_output": False,
}


def images(size: int = 112) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def adapted(config: SamAdapterConfig, seed: int = 0) -> PeftModel:
    """The tiny SAM 3 tracker with SAM-Adapter, every adapter weight and bias random and non-zero, in eval mode."""
    model = get_peft_model(random_sam("sam3-tiny", seed=0), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "sam_adapter_" in name:
                std = 0.5 if name.endswith("weight") else 0.1
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model.eval()


def high_pass(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """|real(ifft(fft(x) without the centred low-frequency square of half-side int(sqrt(H W ratio) // 2)))|."""
    height, width = x.shape[-2:]
    half = int(math.sqrt(height * width * ratio) // 2)
    keep = torch.ones(height, width)
    keep[height // 2 - half : height // 2 + half, width // 2 - half : width // 2 + half] = 0
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1)) * keep
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="forward").real.abs()


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


@pytest.mark.parametrize("embedding_feature", ["paper", "official"])
def test_the_adapted_sam3_encoder_matches_a_plain_torch_recomputation(embedding_feature):
    """Features from the pixel values, each block's input plus its prompt, the blocks as transformers runs them."""
    base = random_sam("sam3-tiny", seed=0)
    model = adapted(SamAdapterConfig(scale_factor=SCALE, embedding_feature=embedding_feature))
    backbone = model.base_model.model.vision_encoder.backbone
    generator = backbone.embeddings.patch_embeddings
    pixels = images()
    patch = sam_config("sam3-tiny").vision_config.backbone_config.patch_size
    with torch.no_grad():
        # the patch convolution (no bias), channels-last: (B, 8, 8, C), 8 = 112 // 14
        patches = F.conv2d(
            pixels, base.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight, stride=14
        )
        patches = patches.permute(0, 2, 3, 1)
        batch, height, width, channels = patches.shape
        assert (height, width, patch) == (8, 8, 14)
        if embedding_feature == "paper":
            tokens = patches
        else:  # the official code's reading: channels-last data reshaped as if channels-first
            tokens = patches.reshape(batch, channels, height * width).transpose(1, 2).reshape(batch, height, width, -1)
        embedding = linear(tokens, generator.sam_adapter_embedding["default"])
        conv = generator.sam_adapter_handcrafted["default"]
        handcrafted = F.conv2d(high_pass(pixels, 0.25), conv.weight, conv.bias, stride=14).permute(0, 2, 3, 1)
        features = embedding + handcrafted  # (B, 8, 8, d)
        assert features.shape == (2, 8, 8, 32 // SCALE)

        # SAM 3's input to the first block: tiled (4 x 4 -> 8 x 8) position embedding, then the LayerNorm
        embeddings = base.vision_encoder.backbone.embeddings
        position = embeddings.position_embeddings.reshape(1, 4, 4, channels).repeat(1, 2, 2, 1)
        norm = base.vision_encoder.backbone.layer_norm
        x = F.layer_norm(patches + position, (channels,), norm.weight, norm.bias, norm.eps)
        expected_inputs = []
        for block, prompted in zip(base.vision_encoder.backbone.layers, backbone.layers, strict=True):
            hidden = F.gelu(linear(features, prompted.sam_adapter_mlp["default"]))
            x = x + linear(hidden, generator.sam_adapter_shared["default"])
            expected_inputs.append(x)
            x = block(x)  # transformers' Sam3ViTLayer (windowed or global, rotary embeddings)

        captured = []
        hooks = [
            block.base_layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
            for block in backbone.layers
        ]
        output = model.base_model.model.vision_encoder(pixels)
        for hook in hooks:
            hook.remove()
        torch.testing.assert_close(generator.prompt_features.entries["default"][0], features)
        assert len(captured) == 4
        for actual, expected in zip(captured, expected_inputs, strict=True):
            torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(output.last_hidden_state, x.reshape(batch, height * width, channels))
        expected_levels = base.vision_encoder.neck(x.permute(0, 3, 1, 2))[0]
        torch.testing.assert_close(output.fpn_hidden_states[-1], expected_levels[-1])
        assert not torch.allclose(output.last_hidden_state, base.vision_encoder(pixels).last_hidden_state, atol=1e-3)


def test_default_targets_every_vit_block_and_wraps_the_patch_embedding_once():
    model = get_peft_model(random_sam("sam3-tiny"), SamAdapterConfig(scale_factor=SCALE))
    assert model.base_model.targeted_module_names == [f"vision_encoder.backbone.layers.{i}" for i in range(4)]
    generators = [name for name, module in model.named_modules() if isinstance(module, PromptGenerator)]
    assert generators == ["base_model.model.vision_encoder.backbone.embeddings.patch_embeddings"]
    blocks = [name for name, module in model.named_modules() if isinstance(module, PromptedBlock)]
    assert blocks == [f"base_model.model.vision_encoder.backbone.layers.{i}" for i in range(4)]  # not the decoder's
    backbone = model.base_model.model.vision_encoder.backbone
    features = backbone.embeddings.patch_embeddings.prompt_features
    assert all(block.prompt_features is features for block in backbone.layers)
    assert [block.window_size for block in backbone.layers] == [4, 0, 4, 0]  # read from the wrapped blocks

    model.add_adapter("other", SamAdapterConfig(scale_factor=16, layers_to_transform=[1, 3]))
    generators = [module for module in model.modules() if isinstance(module, PromptGenerator)]
    assert len(generators) == 1 and sorted(generators[0].sam_adapter_embedding) == ["default", "other"]
    both = ["default", "other"]
    assert [sorted(block.sam_adapter_mlp) for block in backbone.layers] == [["default"], both, ["default"], both]


def test_the_prompt_features_lie_on_the_72_x_72_grid_of_1008_px_images():
    """SAM 3's resolution: 14 px patches of a 1008 px image, 72 x 72 tokens (the tiny encoder's width, 32)."""
    model = get_peft_model(random_sam("sam3-tiny", image_size=1008), SamAdapterConfig(scale_factor=SCALE))
    embeddings = model.base_model.model.vision_encoder.backbone.embeddings
    with torch.no_grad():
        tokens = embeddings(torch.randn(1, 3, 1008, 1008, generator=torch.Generator().manual_seed(0)))
    assert tokens.shape == (1, 72 * 72, 32)
    features, shared = embeddings.patch_embeddings.prompt_features.entries["default"]
    assert features.shape == (1, 72, 72, 32 // SCALE) and shared.out_features == 32


def sam_adapter_count(hidden: int, patch: int, blocks: int, scale: int = 32) -> int:
    """shared Linear(d, C) + embedding Linear(C, d) + hand-crafted Conv(3, d, p, p) + one Linear(d, d) per block."""
    d = hidden // scale
    return (d * hidden + hidden) + (hidden * d + d) + (3 * patch * patch * d + d) + blocks * (d * d + d)


@pytest.mark.parametrize(("variant", "expected"), [("sam3", 119_232), ("sam3-tiny", 2_728)])
def test_exact_trainable_counts_on_meta(variant, expected):
    backbone = sam_config(variant).vision_config.backbone_config
    scale = 32 if variant == "sam3" else SCALE
    assert sam_adapter_count(backbone.hidden_size, backbone.patch_size, backbone.num_hidden_layers, scale) == expected
    model = get_peft_model(random_sam(variant, device="meta"), SamAdapterConfig(scale_factor=scale))
    assert model.get_nb_trainable_parameters()[0] == expected
    assert len(model.base_model.targeted_module_names) == backbone.num_hidden_layers


def test_a_few_steps_lower_the_prompted_loss():
    """As for the other methods on SAM 3 (tests/test_generations.py): the adapter and the mask decoder train (the
    random tiny decoder's masks start near 0 whatever the encoder gives), and every adapter weight learns."""
    torch.manual_seed(0)
    model = get_peft_model(
        random_sam("sam3-tiny"), SamAdapterConfig(scale_factor=SCALE, modules_to_save=["mask_decoder"])
    )
    adapter = {name: p.detach().clone() for name, p in model.named_parameters() if "sam_adapter_" in name}
    assert len(adapter) == 6 + 2 * 4 and all(p.requires_grad for n, p in model.named_parameters() if n in adapter)
    pixels = images()
    target = torch.zeros(2, 1, 32, 32)  # the decoder's low-resolution masks: 4 x the 8 x 8 embedding grid
    target[:, :, 8:16, 8:16] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        masks = model(pixel_values=pixels, **POINTS).pred_masks[:, 0]
        loss = F.binary_cross_entropy_with_logits(masks, target)
        optimizer.zero_grad()
        (loss + auxiliary_loss(model)).backward()
        assert all(torch.count_nonzero(p.grad) > 0 for n, p in model.named_parameters() if n in adapter)
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    trained = dict(model.named_parameters())
    assert all(not torch.equal(trained[name], start) for name, start in adapter.items())


def test_sam_2_and_edgetam_are_refused_with_their_reasons():
    with pytest.raises(
        ValueError,
        match=r"^SAM-Adapter cannot adapt SAM 2 \(Hiera encoder\): its blocks read four "
        r"widths .* separate method, SAM2-Adapter \(Chen et al. 2024",
    ):
        get_peft_model(random_sam("sam2-tiny"), SamAdapterConfig())
    with pytest.raises(ValueError, match=r"target 'vision_encoder.backbone.blocks.0' is not a block of a ViT"):
        get_peft_model(random_sam("sam2-tiny"), SamAdapterConfig(target_modules=r"vision_encoder\.backbone\.blocks\.0"))
    with pytest.raises(ValueError, match=r"^SAM-Adapter cannot adapt EdgeTAM \(RepViT encoder\): .*convolutional"):
        default_target_modules(
            "SAM-Adapter",
            SamAdapterModel.target_module_mapping,
            {"model_type": "edgetam"},
            SamAdapterModel.unsupported_architectures,
        )


def test_sam3_targets_that_are_not_blocks_are_refused():
    with pytest.raises(ValueError, match=r"target 'vision_encoder.backbone.layers.0.attention' is a Sam3ViTRoPEAtt"):
        get_peft_model(
            random_sam("sam3-tiny"),
            SamAdapterConfig(scale_factor=SCALE, target_modules=r"vision_encoder\.backbone\.layers\.0\.attention"),
        )
    with pytest.raises(ValueError, match=r"target 'vision_encoder.backbone.layer_norm' is not a block of a ViT"):
        get_peft_model(
            random_sam("sam3-tiny"),
            SamAdapterConfig(scale_factor=SCALE, target_modules=r"vision_encoder\.backbone\.layer_norm"),
        )
