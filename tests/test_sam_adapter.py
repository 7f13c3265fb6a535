"""SAM-Adapter as a PEFT method: counts, the forward against the official recipe, gradients, copies, errors.

The PEFT contract (adapters, saving and loading, disabling, unloading, merging, checkpointing, bfloat16) is checked
for every tuner in tests/test_peft_contract.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import SamHQConfig, SamHQModel

from sam_peft._registration import register_tuner
from sam_peft.modeling import SamForSemanticSegmentation, SamSemanticSegmentationConfig, random_sam, sam_config
from sam_peft.modeling.random_sam import init_vision_weights_
from sam_peft.tuners.frequency import high_pass_magnitude
from sam_peft.tuners.sam_adapter import (
    SAM_ADAPTER,
    PromptedBlock,
    PromptGenerator,
    SamAdapterConfig,
    SamAdapterModel,
)

register_tuner(SAM_ADAPTER, SamAdapterConfig, SamAdapterModel, SamAdapterModel.prefix)  # idempotent

TINY = {"scale_factor": 8}  # the tiny SAM is 32 wide: prompts of width 4


def expected_count(hidden: int, patch: int, blocks: int, scale: int = 32) -> int:
    """shared Linear(d, C) + embedding Linear(C, d) + hand-crafted Conv(3, d, p, p) + one Linear(d, d) per block."""
    d = hidden // scale
    return (d * hidden + hidden) + (hidden * d + d) + (3 * patch * patch * d + d) + blocks * (d * d + d)


def prompted(config: SamAdapterConfig, seed: int = 0, base=None) -> PeftModel:
    """A SAM-Adapter model whose prompts visibly change the output (the official init makes them small)."""
    model = get_peft_model(base if base is not None else random_sam("tiny", seed=0), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "sam_adapter_" in name and name.endswith("weight"):
                param.normal_(std=0.5)
    return model.eval()


def masks(model, pixel_values, **prompts):
    return model(pixel_values=pixel_values, multimask_output=False, **prompts).pred_masks


@pytest.mark.parametrize(("variant", "expected"), [("vit-b", 63_312), ("vit-h", 186_960)])
def test_exact_counts_on_meta(variant, expected):
    hidden, blocks = {"vit-b": (768, 12), "vit-h": (1280, 32)}[variant]
    assert expected_count(hidden, 16, blocks) == expected
    model = get_peft_model(random_sam(variant, device="meta"), SamAdapterConfig())
    assert model.get_nb_trainable_parameters()[0] == expected
    assert model.base_model.targeted_module_names == [f"vision_encoder.layers.{i}" for i in range(blocks)]
    encoder = model.base_model.model.vision_encoder
    assert isinstance(encoder.patch_embed, PromptGenerator)
    assert all(isinstance(layer, PromptedBlock) for layer in encoder.layers)


def test_semantic_model_trains_the_decoder_by_default():
    with torch.device("meta"):
        semantic = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("vit-b")))
    model = get_peft_model(semantic, SamAdapterConfig())
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    assert model.get_nb_trainable_parameters()[0] == 63_312 + 3_505_536


def test_forward_matches_the_official_recipe(pixel_values):
    sam = random_sam("tiny", seed=0)
    model = prompted(SamAdapterConfig(**TINY), base=random_sam("tiny", seed=0))
    encoder = model.base_model.model.vision_encoder
    generator = encoder.patch_embed
    with torch.no_grad():
        patches = sam.vision_encoder.patch_embed(pixel_values)  # (B, h, w, C), before the position embedding
        handcrafted = generator.sam_adapter_handcrafted["default"](high_pass_magnitude(pixel_values, 0.25))
        features = generator.sam_adapter_embedding["default"](patches) + handcrafted.permute(0, 2, 3, 1)
        x = patches + sam.vision_encoder.pos_embed
        for block, prompted_block in zip(sam.vision_encoder.layers, encoder.layers, strict=True):
            hidden = F.gelu(prompted_block.sam_adapter_mlp["default"](features))
            x = block(x + generator.sam_adapter_shared["default"](hidden))
        expected = sam.vision_encoder.neck(x)
        output = encoder(pixel_values).last_hidden_state
        torch.testing.assert_close(output, expected)
        assert not torch.allclose(output, sam.vision_encoder(pixel_values).last_hidden_state)


def test_layers_to_transform_prompts_only_those_blocks(pixel_values):
    model = get_peft_model(random_sam("tiny", seed=0), SamAdapterConfig(**TINY, layers_to_transform=[1, 3]))
    assert model.base_model.targeted_module_names == ["vision_encoder.layers.1", "vision_encoder.layers.3"]
    layers = model.base_model.model.vision_encoder.layers
    assert [isinstance(layer, PromptedBlock) for layer in layers] == [False, True, False, True]
    assert model.get_nb_trainable_parameters()[0] == expected_count(32, 8, 2, scale=8)
    assert masks(model, pixel_values).shape == (2, 1, 1, 64, 64)


def test_gradients_reach_every_adapter_weight_and_no_encoder_weight(pixel_values):
    model = prompted(SamAdapterConfig(**TINY, modules_to_save=["mask_decoder"])).train()
    masks(model, pixel_values).square().mean().backward()
    adapter = {n: p.grad for n, p in model.named_parameters() if "sam_adapter_" in n}
    assert len(adapter) == 6 + 2 * 4
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in adapter.values())
    encoder = [p for n, p in model.named_parameters() if "vision_encoder" in n and "sam_adapter_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in encoder)


def test_deepcopy_after_a_forward_shares_fresh_prompt_features(pixel_values):
    model = prompted(SamAdapterConfig(**TINY)).train()
    masks(model, pixel_values).square().mean().backward()  # the prompt features hold tensors of that graph
    clone = copy.deepcopy(model).eval()
    encoder = clone.base_model.model.vision_encoder
    assert not encoder.patch_embed.prompt_features.entries  # not copied
    assert all(block.prompt_features is encoder.patch_embed.prompt_features for block in encoder.layers)
    model.eval()
    with torch.no_grad():
        assert torch.equal(masks(clone, pixel_values), masks(model, pixel_values))


def test_sam_hq_still_collects_its_global_block_embeddings(pixel_values):
    tiny = sam_config("tiny")
    config = SamHQConfig(
        vision_config=tiny.vision_config.to_dict(),
        prompt_encoder_config=tiny.prompt_encoder_config.to_dict(),
        mask_decoder_config={**tiny.mask_decoder_config.to_dict(), "vit_dim": 32},
    )
    model = get_peft_model(init_vision_weights_(SamHQModel(config)), SamAdapterConfig(**TINY))
    encoder = model.base_model.model.vision_encoder
    assert encoder.layers[1].window_size == 0  # read from the wrapped block
    with torch.no_grad():
        assert len(encoder(pixel_values).intermediate_embeddings) == 2  # the two global blocks


def test_errors_name_the_problem(tiny_sam):
    with pytest.raises(ValueError, match=r"SAM-Adapter target 'vision_encoder.neck' is not a block"):
        get_peft_model(tiny_sam, SamAdapterConfig(**TINY, target_modules=r"vision_encoder\.neck"))
    with pytest.raises(ValueError, match=r"SAM-Adapter target 'vision_encoder.layers.0.attn' is a Sam\w*Attention"):
        get_peft_model(random_sam("tiny"), SamAdapterConfig(**TINY, target_modules=r"vision_encoder\.layers\.0\.attn"))
    with pytest.raises(ValueError, match="scale_factor 64 exceeds the encoder width 32"):
        get_peft_model(random_sam("tiny"), SamAdapterConfig(scale_factor=64))
    with pytest.raises(ValueError, match="scale_factor must be a positive integer"):
        SamAdapterConfig(scale_factor=0)
    model = get_peft_model(random_sam("tiny"), SamAdapterConfig(**TINY))
    block = model.base_model.model.vision_encoder.layers[0]
    block.prompt_features.entries = {}
    with pytest.raises(RuntimeError, match="patch embedding must run"):
        block(torch.zeros(1, 16, 16, 32))
