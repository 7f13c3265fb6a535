"""sam-peft on SAM 2 / 2.1 (`Sam2Model`, Hiera) and SAM 3's tracker (`Sam3TrackerModel`): default targets per
architecture, Conv-LoRA's windows on each, CAD's side network on the last FPN level, exact parameter counts of the
released sizes, training, and clear errors where a method, the prompt-free head or the embedding cache does not
apply (yet).

The PEFT contract (several adapters, save and reload, disable, unload, merge refused, checkpointing, bfloat16) runs
on both in tests/test_peft_contract.py.
"""

from __future__ import annotations

import json
import math
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from transformers import Sam2Config

from sam_peft import (
    CadConfig,
    ConvLoraConfig,
    Sam2ForSemanticSegmentation,
    Sam3TrackerForSemanticSegmentation,
    SamAdapterConfig,
    SamForSemanticSegmentation,
    auxiliary_loss,
    random_sam,
    sam_config,
)
from sam_peft.modeling.losses import structure_loss
from sam_peft.training import load_trained
from sam_peft.training.embedding_cache import EmbeddingCache
from sam_peft.tuners.conv_lora import Linear as ConvLoraLinear
from sam_peft.tuners.targets import QKV_TARGETS, default_target_modules

IMAGE_SIZE = {"sam2-tiny": 128, "sam3-tiny": 112}
POINTS = {
    "input_points": torch.tensor([[[[40.0, 50.0], [90.0, 20.0]]], [[[60.0, 70.0], [10.0, 100.0]]]]),
    "input_labels": torch.tensor([[[1, 1]], [[1, 0]]]),
    "multimask_output": False,
}


def pixels(variant: str) -> torch.Tensor:
    size = IMAGE_SIZE[variant]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def adapted_layers(model) -> dict[str, ConvLoraLinear]:
    return {
        name.split("base_model.model.")[-1]: m for name, m in model.named_modules() if isinstance(m, ConvLoraLinear)
    }


def test_conv_lora_targets_each_generations_encoder_projections_only():
    sam2 = get_peft_model(random_sam("sam2-tiny"), ConvLoraConfig())
    assert sorted(adapted_layers(sam2)) == [f"vision_encoder.backbone.blocks.{i}.attn.qkv" for i in range(5)]
    sam3 = get_peft_model(random_sam("sam3-tiny"), ConvLoraConfig())
    expected = [f"vision_encoder.backbone.layers.{i}.attention.{p}_proj" for i in range(4) for p in "kqv"]
    assert sorted(adapted_layers(sam3)) == expected  # the mask decoder's q_proj layers are left alone


def test_layers_to_transform_selects_blocks_on_every_generation():
    sam2 = get_peft_model(random_sam("sam2-tiny"), ConvLoraConfig(layers_to_transform=[3, 4]))
    assert sorted(adapted_layers(sam2)) == [f"vision_encoder.backbone.blocks.{i}.attn.qkv" for i in (3, 4)]
    sam3 = get_peft_model(random_sam("sam3-tiny"), ConvLoraConfig(layers_to_transform=[0]))
    assert sorted(adapted_layers(sam3)) == [f"vision_encoder.backbone.layers.0.attention.{p}_proj" for p in "kqv"]


# What each adapted projection receives at 128 px (SAM 2) and 112 px (SAM 3), batch 2: windows of its block's own
# size, or whole images in global blocks. Hiera: stage grids 32, 16, 8, 4; the first block of a stage still runs on the
# previous stage's grid and window (its queries are pooled after the projection).
WINDOWS = {
    "sam2-tiny": {
        "vision_encoder.backbone.blocks.0.attn.qkv": (128, 4, 4, 16),  # 64 windows of 4 x 4 per image
        "vision_encoder.backbone.blocks.1.attn.qkv": (128, 4, 4, 16),  # stage 2's first block, stage 1's windows
        "vision_encoder.backbone.blocks.2.attn.qkv": (128, 2, 2, 32),
        "vision_encoder.backbone.blocks.3.attn.qkv": (2, 8, 8, 64),  # global
        "vision_encoder.backbone.blocks.4.attn.qkv": (8, 4, 4, 64),
    },
    "sam3-tiny": {
        **{f"vision_encoder.backbone.layers.{i}.attention.{p}_proj": (8, 4, 4, 32) for i in (0, 2) for p in "qkv"},
        **{f"vision_encoder.backbone.layers.{i}.attention.{p}_proj": (2, 8, 8, 32) for i in (1, 3) for p in "qkv"},
    },
}


def reference_expert(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: int) -> torch.Tensor:
    """One expert on one window z (1, r, h, w): bicubic up by `scale`, 3 x 3 conv, GELU, bicubic back."""
    h, w = z.shape[-2:]
    up = F.interpolate(z, size=(h * scale, w * scale), mode="bicubic", align_corners=False) if scale > 1 else z
    out = F.gelu(F.conv2d(up, weight, bias, padding=1))
    return F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False) if scale > 1 else out


def conv_lora_formula(layer: ConvLoraLinear, x: torch.Tensor) -> torch.Tensor:
    """`base(x) + alpha / r * B(z + E_g(z))` with z = A(x) on each window's own grid and g its top-1 expert (eval)."""
    a, b = layer.conv_lora_A["default"].weight, layer.conv_lora_B["default"].weight
    experts = layer.conv_lora_experts["default"]
    z = torch.einsum("nhwc,rc->nrhw", x, a)
    chosen = (z.mean(dim=(2, 3)) @ layer.conv_lora_gate["default"].weight).argmax(1)
    mixed = z + torch.cat(
        [
            reference_expert(z[n : n + 1], experts.weight[e], experts.bias[e], experts.scales[e])
            for n, e in enumerate(chosen.tolist())
        ]
    )
    return layer.base_layer(x) + layer.scaling["default"] * torch.einsum("nrhw,or->nhwo", mixed, b)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_conv_lora_convolves_each_window_on_its_own_grid(variant):
    model = get_peft_model(random_sam(variant), ConvLoraConfig(init_weights=False)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "conv_lora_gate" in name:
                parameter.normal_(std=3.0, generator=torch.Generator().manual_seed(len(name)))
    records = {}
    layers = adapted_layers(model)
    hooks = [
        layer.register_forward_hook(lambda module, args, output, name=name: records.update({name: (args[0], output)}))
        for name, layer in layers.items()
    ]
    with torch.no_grad():
        model(pixel_values=pixels(variant), **POINTS)
    for hook in hooks:
        hook.remove()
    assert {name: tuple(x.shape) for name, (x, _) in records.items()} == WINDOWS[variant]
    experts_used = set()
    for name, (x, output) in records.items():
        with torch.no_grad():
            torch.testing.assert_close(output, conv_lora_formula(layers[name], x), rtol=1e-4, atol=1e-5)
            z = torch.einsum("nhwc,rc->nrhw", x, layers[name].conv_lora_A["default"].weight)
            experts_used |= set((z.mean(dim=(2, 3)) @ layers[name].conv_lora_gate["default"].weight).argmax(1).tolist())
    assert len(experts_used) > 2, "the routing should exercise several expert scales"


def conv_lora_count(in_features: int, out_features: int, r: int = 3, experts: int = 8) -> int:
    """Parameters of one Conv-LoRA layer: A, B, the gate and its noise weights, the experts' 3 x 3 convs."""
    return r * in_features + out_features * r + 2 * r * experts + experts * (9 * r * r + r)


def hiera_projections(variant: str) -> list[tuple[int, int]]:
    """(in, out) of every Hiera block's qkv, from the config: a stage's first block reads the previous width."""
    backbone = sam_config(variant).vision_config.backbone_config
    widths, blocks = backbone.embed_dim_per_stage, backbone.blocks_per_stage
    return [
        (widths[stage - 1] if stage > 0 and block == 0 else widths[stage], 3 * widths[stage])
        for stage in range(4)
        for block in range(blocks[stage])
    ]


def sam3_projections() -> list[tuple[int, int]]:
    backbone = sam_config("sam3").vision_config.backbone_config
    width = backbone.hidden_size
    return [(width, width)] * (3 * backbone.num_hidden_layers)


# Trainable parameters of the released sizes (adapters only, r = 3, 8 experts), counted on the meta device.
COUNTS = {
    "sam2-hiera-t": (63_072, 54_432),
    "sam2-hiera-s": (84_384, 72_864),
    "sam2-hiera-b+": (143_952, 126_672),
    "sam2-hiera-l": (359_856, 325_296),
    "sam3": (658_944, 589_824),
}


@pytest.mark.parametrize("variant", list(COUNTS))
def test_exact_trainable_counts_of_the_released_sizes(variant):
    projections = sam3_projections() if variant == "sam3" else hiera_projections(variant)
    conv_lora, lora = COUNTS[variant]
    assert conv_lora == sum(conv_lora_count(i, o) for i, o in projections)
    assert lora == sum(3 * (i + o) for i, o in projections)
    model = get_peft_model(random_sam(variant, device="meta"), ConvLoraConfig())
    assert model.get_nb_trainable_parameters()[0] == conv_lora
    model_type = sam_config(variant).model_type
    lora_config = LoraConfig(r=3, lora_alpha=32, target_modules=QKV_TARGETS[model_type])
    assert get_peft_model(random_sam(variant, device="meta"), lora_config).get_nb_trainable_parameters()[0] == lora


def fpn_levels(model, images: torch.Tensor) -> list[torch.Tensor]:
    """The FPN levels the vision encoder of `model` gives for `images` (the decoder reads the last one)."""
    with torch.no_grad():
        return list(model.vision_encoder(images).fpn_hidden_states)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_cad_adds_its_side_network_to_the_decoders_image_embedding_only(variant):
    base = random_sam(variant)
    images = pixels(variant)
    expected = fpn_levels(base, images)
    assert len(expected) == 3
    model = get_peft_model(base, CadConfig(image_size=64, channels=32, scale=0.5))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "cad_adapter" in name:
                parameter.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    model.eval()
    levels = fpn_levels(model, images)
    for level, base_level in zip(levels[:-1], expected[:-1], strict=True):
        assert torch.equal(level, base_level)  # the high-resolution levels are the frozen encoder's
    layer = model.base_model.model.vision_encoder
    with torch.no_grad():
        side = 0.5 * layer.cad_adapter["default"](images, tuple(expected[-1].shape[-2:]))
    assert side.abs().max() > 0
    torch.testing.assert_close(levels[-1], expected[-1] + side)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
@pytest.mark.parametrize("method", ["conv_lora", "lora", "cad"])
def test_a_few_steps_lower_the_prompted_loss(variant, method):
    torch.manual_seed(0)
    model_type = sam_config(variant).model_type
    if method == "conv_lora":
        config = ConvLoraConfig(modules_to_save=["mask_decoder"])
    elif method == "cad":
        config = CadConfig(image_size=64, channels=32, modules_to_save=["mask_decoder"])
    else:
        config = LoraConfig(
            r=3, lora_alpha=32, target_modules=QKV_TARGETS[model_type], modules_to_save=["mask_decoder"]
        )
    model = get_peft_model(random_sam(variant), config)
    images = pixels(variant)
    size = 32  # the decoder's low-resolution masks: 4 x the embedding grid of 8 x 8
    target = torch.zeros(2, 1, size, size)
    target[:, :, 8:16, 8:16] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        masks = model(pixel_values=images, **POINTS).pred_masks[:, 0]
        loss = F.binary_cross_entropy_with_logits(masks, target)
        optimizer.zero_grad()
        (loss + auxiliary_loss(model)).backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize(
    ("variant", "config", "method"),
    [
        ("sam2-tiny", SamAdapterConfig, "SAM-Adapter"),  # SAM 3 is adapted (tests/test_sam_adapter_generations.py)
    ],
)
def test_methods_that_do_not_apply_say_which_architecture_and_why(variant, config, method):
    name = "SAM 2 (Hiera encoder)" if variant.startswith("sam2") else "SAM 3 (tracker"
    with pytest.raises(ValueError, match=rf"^{method} cannot adapt {re.escape(name)}.*: \w+"):
        get_peft_model(random_sam(variant), config())


def test_the_target_table_refuses_convolutional_and_unknown_encoders():
    with pytest.raises(ValueError, match=r"Conv-LoRA cannot adapt EdgeTAM \(RepViT encoder\): .*convolutional"):
        default_target_modules("Conv-LoRA", QKV_TARGETS, {"model_type": "edgetam"}, {"edgetam": "it is convolutional"})
    with pytest.raises(ValueError, match=r"no default targets for model_type 'vit'; it knows SAM, .* Pass `target_"):
        default_target_modules("Conv-LoRA", QKV_TARGETS, {"model_type": "vit"})


HEADS = {"sam2-tiny": Sam2ForSemanticSegmentation, "sam3-tiny": Sam3TrackerForSemanticSegmentation}


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_sam_1_is_never_built_from_a_later_generation(variant, tmp_path):
    head = HEADS[variant].__name__
    with pytest.raises(ValueError, match=rf"SamForSemanticSegmentation builds SAM and SAM-HQ models only .*{head}"):
        SamForSemanticSegmentation(sam_config(variant))
    random_sam(variant).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=rf"is a SAM \d .* config; SamForSemanticSegmentation builds .*{head} \(binary"
    ):
        SamForSemanticSegmentation.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="SAM 2"):
        SamForSemanticSegmentation(Sam2Config())


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
def test_prompt_free_heads_load_every_weight_and_segment_without_prompts(variant, tmp_path):
    base = random_sam(variant)
    base.save_pretrained(tmp_path)
    model = HEADS[variant].from_pretrained(tmp_path, semantic_loss="structure")
    expected = base.state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    images = pixels(variant)
    labels = torch.zeros(2, *images.shape[-2:], dtype=torch.long)
    labels[:, 20:60, 30:70] = 1
    labels[1, :4] = 255  # ignored
    with torch.no_grad():
        outputs = model(pixel_values=images, labels=labels)
        # the model's own "no prompt" forward, one mask, at the input size
        masks = base(pixel_values=images, multimask_output=False).pred_masks[:, 0]
    logits = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(outputs.logits, logits)
    torch.testing.assert_close(outputs.task_loss, structure_loss(logits, labels))
    assert outputs.auxiliary_loss == 0 and outputs.loss == outputs.task_loss
    with pytest.raises(ValueError, match=r"Binary labels \(num_labels=1\) must be 0, 1 or 255"):
        model(pixel_values=images, labels=labels * 2)
    multiclass = HEADS[variant].from_pretrained(tmp_path, num_labels=3)  # tests/test_semantic_sam2_multiclass.py
    assert multiclass.config.num_labels == 3 and multiclass.mask_decoder.class_predictor.out_features == 4


TRAIN = Path(__file__).resolve().parents[1] / "recipes" / "train.py"


def test_the_training_recipe_runs_on_sam_2_and_its_card_loads_the_adapter(tmp_path, monkeypatch):
    """`random_base: sam2-tiny` (as `base_model: facebook/sam2.1-hiera-tiny` would be): the recipe trains the SAM 2
    head with Conv-LoRA, the run reloads (`load_trained`), and the card's snippet loads the same adapter."""
    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "quickstart.yaml"
    argv = [str(config), "--random_base", "sam2-tiny", "--base_model", str(tmp_path / "base")]
    argv += ["--output_dir", str(tmp_path / "run"), "--num_epochs", "1", "--batch_size", "4"]
    argv += ["--synthetic_train_size", "8", "--synthetic_eval_size", "4", "--report_to", "none"]
    monkeypatch.setattr(sys, "argv", [str(TRAIN), *argv])
    runpy.run_path(str(TRAIN))["main"]()
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["iou"] <= 1 and len(metrics["train_log"]) == 2
    card = (run / "README.md").read_text()
    assert f'sam_peft.Sam2ForSemanticSegmentation.from_pretrained("{tmp_path / "base"}", num_labels=1)' in card
    trained = load_trained(run)
    base = Sam2ForSemanticSegmentation.from_pretrained(tmp_path / "base")
    from_card = PeftModel.from_pretrained(base, run).eval()
    images = pixels("sam2-tiny")
    with torch.no_grad():
        torch.testing.assert_close(from_card(pixel_values=images).logits, trained(pixel_values=images).logits)
    # the other recipes take the SAM 2 run as they take SAM's: evaluate on its data, predict a folder of images
    recipes = TRAIN.parent
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--adapter", str(run), "--output", str(tmp_path / "eval.json")])
    runpy.run_path(str(recipes / "evaluate.py"), run_name="__main__")
    assert 0 <= json.loads((tmp_path / "eval.json").read_text())["iou"] <= 1
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((50, 70, 3), 120, dtype=np.uint8)).save(tmp_path / "photos" / "a.png")
    predict = [
        "predict.py",
        "--adapter",
        str(run),
        "--input",
        str(tmp_path / "photos"),
        "--output_dir",
        str(tmp_path / "masks"),
    ]
    monkeypatch.setattr(sys, "argv", predict)
    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(recipes / "predict.py"), run_name="__main__")
    assert exit_code.value.code in (0, None)
    assert Image.open(tmp_path / "masks" / "a.png").size == (70, 50)
    # refused before the output folder (or the embedding cache's) is touched
    refusals = {
        "num_mask_tokens applies to multi-class SAM models": ["--num_mask_tokens", "3"],
    }
    for index, (message, extra) in enumerate(refusals.items()):
        output, cache = tmp_path / f"refused{index}", tmp_path / f"embeddings{index}"
        extra = [*extra, "--output_dir", str(output), "--embedding_cache_dir", str(cache)]
        monkeypatch.setattr(sys, "argv", [str(TRAIN), *argv, *extra])
        with pytest.raises(ValueError, match=message):
            runpy.run_path(str(TRAIN))["main"]()
        assert not output.exists() and not cache.exists()


def test_the_training_recipe_caches_sam_3_embeddings(tmp_path, monkeypatch):
    """`--cache_embeddings` on a later generation (decoder-only on the SAM 3 tracker): the run computes each image's
    levels once and reads them back in the final evaluation; a second run in the same cache reads everything."""
    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "quickstart.yaml"
    argv = [str(config), "--random_base", "sam3-tiny", "--base_model", str(tmp_path / "base"), "--image_size", "112"]
    argv += ["--method", "decoder_only", "--cache_embeddings", "true", "--embedding_cache_dir", str(tmp_path / "cache")]
    argv += ["--num_epochs", "1", "--batch_size", "4", "--hflip", "0", "--report_to", "none"]
    argv += ["--synthetic_train_size", "4", "--synthetic_eval_size", "2"]
    stats = []
    for run in ("first", "second"):
        monkeypatch.setattr(sys, "argv", [str(TRAIN), *argv, "--output_dir", str(tmp_path / run)])
        runpy.run_path(str(TRAIN))["main"]()
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert 0 <= metrics["iou"] <= 1
        stats.append(metrics["embedding_cache"])
    # first: the baseline evaluation and the epoch compute (2 + 4); the epoch's and the final evaluations read (2 + 2)
    assert (stats[0]["misses"], stats[0]["hits"]) == (6, 4)
    assert (stats[1]["misses"], stats[1]["hits"]) == (0, 10) and stats[1]["directory"] == stats[0]["directory"]


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
@pytest.mark.parametrize("method", ["decoder_only", "cad"])
def test_the_embedding_cache_stores_every_fpn_level_and_trains_as_without_it(variant, method, tmp_path):
    """The decoder of SAM 2 / SAM 3 reads three FPN levels (two through its own trained convolutions): the cache
    stores them all, bit for bit in float32, and a decoder-only or CAD head trains from them exactly as from the
    images (the same losses, step by step)."""
    images = pixels(variant)
    labels = (images[:, 0] > 0.3).long()

    def build():
        head = HEADS[variant](sam_config(variant))
        head.load_state_dict(random_sam(variant, seed=0).state_dict())
        if method == "cad":
            torch.manual_seed(0)
            return get_peft_model(head, CadConfig(image_size=64, channels=32)).train()
        return head.freeze_encoders().train()

    def train(model, cache=None) -> list[float]:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = []
        for _ in range(3):
            inputs = {"pixel_values": images} if cache is None else cache.model_inputs(images)
            loss = model(**inputs, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    model = build()
    cache = EmbeddingCache(tmp_path, model, dtype=torch.float32)
    levels = cache.get_or_compute(images)
    with torch.no_grad():
        expected = random_sam(variant, seed=0).vision_encoder(images).fpn_hidden_states
    assert len(levels) == len(expected) == 3
    assert all(torch.equal(level, fresh) for level, fresh in zip(levels, expected, strict=True))
    assert [level.shape[-1] for level in levels] == [
        4 * levels[-1].shape[-1],
        2 * levels[-1].shape[-1],
        levels[-1].shape[-1],
    ]
    assert len(cache) == 2 and len(list(cache.directory.glob("??/*.emb"))) == 2  # one file per image
    reference = train(build())
    assert train(model, cache) == reference
    assert (cache.stats.hits, cache.stats.misses) == (6, 2)
    assert reference[-1] < reference[0]


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
@pytest.mark.parametrize("method", ["conv_lora", "lora", "cad", "decoder_only"])
def test_the_recipes_methods_build_on_the_later_generations(variant, method, tmp_path):
    from sam_peft.training import build_model
    from sam_peft.training.arguments import ModelArguments

    random_sam(variant).save_pretrained(tmp_path)
    model = build_model(ModelArguments(base_model=str(tmp_path), method=method)).train()
    images = pixels(variant)
    labels = (torch.rand(2, *images.shape[-2:], generator=torch.Generator().manual_seed(0)) > 0.5).long()
    outputs = model(pixel_values=images, labels=labels)
    outputs.loss.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert any("mask_decoder" in name for name in trained)
    if variant == "sam2-tiny":
        with pytest.raises(ValueError, match=r"SAM-Adapter cannot adapt SAM 2 \(Hiera encoder\): .*SAM2-Adapter"):
            build_model(ModelArguments(base_model=str(tmp_path), method="sam_adapter"))
    else:  # SAM 3's tracker: prompts on every ViT block, beside the mask decoder of the prompt-free head
        adapted = build_model(ModelArguments(base_model=str(tmp_path), method="sam_adapter"))
        assert adapted.base_model.targeted_module_names == [f"vision_encoder.backbone.layers.{i}" for i in range(4)]
        assert any("sam_adapter_" in name for name, p in adapted.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ["sam2-tiny", "sam3-tiny"])
@pytest.mark.parametrize(
    "config", [lambda: ConvLoraConfig(init_weights=False), lambda: CadConfig(image_size=64, channels=32)]
)
def test_a_prompt_free_adapter_serves_the_prompted_model(variant, config, tmp_path):
    """`load_encoder_adapter`: the encoder layers of an adapter trained on the prompt-free head, on the generation's
    prompted model, give the same image embeddings; its own decoder then answers points."""
    from sam_peft import load_encoder_adapter

    random_sam(variant).save_pretrained(tmp_path / "base")
    trained = get_peft_model(HEADS[variant].from_pretrained(tmp_path / "base"), config())
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if parameter.requires_grad and "mask_decoder" not in name:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    trained.save_pretrained(tmp_path / "adapter")
    prompted = load_encoder_adapter(type(random_sam(variant)).from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    images = pixels(variant)
    trained.eval()
    expected, actual = fpn_levels(trained, images), fpn_levels(prompted, images)
    for level, expected_level in zip(actual, expected, strict=True):
        torch.testing.assert_close(level, expected_level)
    assert not torch.equal(expected[-1], fpn_levels(random_sam(variant), images)[-1])  # the adapter acts
    with torch.no_grad():
        assert prompted(pixel_values=images, **POINTS).pred_masks.shape[:3] == (2, 1, 1)
