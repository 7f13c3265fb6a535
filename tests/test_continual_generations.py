"""SAMCL on SAM 2 / 2.1 (Hiera) and SAM 3's tracker: the split encoder, learning, routing, saving, the recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from continual_checks import assert_routed_equals_each_module
from transformers import Sam2Model, Sam3TrackerModel

from sam_peft import SloraConfig, random_sam
from sam_peft.continual import ContinualSam, DomainTrainingArguments, sample_point_prompts
from sam_peft.continual.prompting import batch_prompts
from sam_peft.data import binary_dataset, prepare_for_sam, sam_collate_fn
from sam_peft.modeling import encoder_prefix, encoder_suffix
from sam_peft.modeling.encoder_split import block_width

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("polyp", "shadow")
ARGS = DomainTrainingArguments(num_epochs=1, batch_size=8, eval_batch_size=8)
# variant: (input side, model class, default adapted blocks, default feature block, its width)
GENERATIONS = {
    # Hiera stages of 1, 1, 2, 1 blocks (widths 16..128): stage 2 (the embedding's, 8 x 8) adapts block 3 only,
    # block 2 pools and widens its tokens (32 -> 64 channels)
    "sam2-tiny": (128, Sam2Model, [3], 2, 64),
    # 4 ViT blocks of width 32 on 8 x 8 tokens: SLoRA's default (all four) after block 0
    "sam3-tiny": (112, Sam3TrackerModel, [1, 2, 3], 0, 32),
}


def domain_data(domain: str, size: int, count: int, seed: int, split: str = "train"):
    return prepare_for_sam(
        binary_dataset(count, size, seed=seed, split=split, appearance=domain), size, augmentation=None
    )


def batch_of(dataset, count: int) -> dict:
    return sam_collate_fn([dataset[i] for i in range(count)])


# ---------------------------------------------------------------------------------------------------------------
# The encoder in two parts


@pytest.mark.parametrize("variant", GENERATIONS)
def test_prefix_then_suffix_equals_the_encoder(variant):
    size = GENERATIONS[variant][0]
    encoder = random_sam(variant).vision_encoder
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    backbone = encoder.backbone
    blocks = backbone.blocks if hasattr(backbone, "blocks") else backbone.layers
    outputs = {}
    hooks = [
        block.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            full = encoder(pixel_values)
            full_outputs = dict(outputs)
            stage_ends = [index for index, block in enumerate(blocks) if index in getattr(backbone, "stage_ends", [])]
            for block_index in range(len(blocks)):
                outputs.clear()
                prefix = encoder_prefix(encoder, pixel_values, block_index)
                assert sorted(outputs) == list(range(block_index + 1))  # nothing after the feature block
                outputs.clear()
                levels = encoder_suffix(encoder, prefix.hidden_states, block_index, prefix.stage_outputs)
                assert sorted(outputs) == list(range(block_index + 1, len(blocks)))
                # exact: the encoder's own FPN levels (SAM 2: the `num_feature_levels` it keeps)
                assert len(levels) == len(full.fpn_hidden_states) == 3
                assert all(torch.equal(a, b) for a, b in zip(levels, full.fpn_hidden_states, strict=True))
                # the block's own output and its mean, and (Hiera) the outputs of the stages ended so far
                block_output = full_outputs[block_index]
                assert torch.equal(prefix.hidden_states, block_output)
                assert torch.equal(prefix.features, block_output.mean(dim=(1, 2)))
                assert prefix.features.shape == (2, block_width(encoder, block_index))
                kept = [full_outputs[i] for i in stage_ends if i <= block_index]
                assert len(prefix.stage_outputs) == len(kept)
                assert all(torch.equal(a, b) for a, b in zip(prefix.stage_outputs, kept, strict=True))
                hidden_states, features = prefix  # unpacks as SAM's (hidden_states, features)
                assert hidden_states is prefix.hidden_states and features is prefix.features
    finally:
        for hook in hooks:
            hook.remove()
    if variant == "sam2-tiny":
        assert stage_ends == [0, 1, 3, 4] and [block_width(encoder, i) for i in range(5)] == [16, 32, 64, 64, 128]
        with pytest.raises(ValueError, match=r"needs the 2 stage output\(s\)"):
            encoder_suffix(encoder, prefix.hidden_states, 2)


# ---------------------------------------------------------------------------------------------------------------
# Learning, routing, saving


@pytest.fixture(scope="module", params=list(GENERATIONS))
def learned(request, tmp_path_factory):
    """Two domains learned in turn on a tiny model of the generation, recorded with a saved base model; with a
    snapshot of the first module taken before the second was learned."""
    variant = request.param
    size = GENERATIONS[variant][0]
    base = tmp_path_factory.mktemp("base") / variant
    random_sam(variant).save_pretrained(base)
    continual = ContinualSam(
        random_sam(variant), entries_per_domain=8, selector_epochs=60, selector_batch_size=8, base_model=str(base)
    )
    continual.learn_domain(DOMAINS[0], domain_data(DOMAINS[0], size, 8, seed=0), ARGS, progress=False)
    first = {k: v.clone() for k, v in continual.peft_model.state_dict().items() if f".{DOMAINS[0]}" in k}
    continual.learn_domain(DOMAINS[1], domain_data(DOMAINS[1], size, 8, seed=1), ARGS, progress=False)
    return variant, continual, first


def test_defaults_follow_the_generations_encoder(learned):
    variant, continual, first = learned
    _, model_class, blocks, feature_block, width = GENERATIONS[variant]
    assert isinstance(continual.sam, model_class) and continual.domains == list(DOMAINS)
    assert (continual.adapted_blocks, continual.feature_block) == (blocks, feature_block)
    assert continual.peft_model.peft_config[DOMAINS[0]].layers_to_transform == blocks
    assert continual.buffer.feature_dim == continual.selector.feature_dim == width
    assert continual.buffer.features.shape == (16, width)
    after = continual.peft_model.state_dict()
    assert first and all(torch.equal(after[k], v) for k, v in first.items())  # the first module is untouched
    assert not any(p.requires_grad for p in continual.peft_model.parameters())


def test_routed_forward_equals_each_modules_own_forward(learned):
    variant, continual, _ = learned
    size = GENERATIONS[variant][0]
    polyp, shadow = (
        batch_of(domain_data(d, size, 2, seed=60 + i, split="validation"), 2) for i, d in enumerate(DOMAINS)
    )
    pixel_values = torch.cat([polyp["pixel_values"], shadow["pixel_values"]])
    points, labels = sample_point_prompts(torch.cat([polyp["labels"], shadow["labels"]]), 3, [1, 2, 3, 4])
    domains = ["polyp", "shadow", "polyp", None]
    outputs = ("pred_masks", "iou_scores", "object_score_logits")
    routed = assert_routed_equals_each_module(continual, pixel_values, points, labels, domains, outputs)
    assert routed.pred_masks.shape[:3] == (4, 1, 1)
    with torch.no_grad():
        # one module for the whole batch: the same as the module's forward on the batch
        with continual.use_module("shadow"):
            whole = continual.peft_model(
                pixel_values=pixel_values, input_points=points, input_labels=labels, multimask_output=False
            )
        torch.testing.assert_close(
            continual(pixel_values, points, labels, domains=["shadow"] * 4).pred_masks,
            whole.pred_masks,
            rtol=1e-5,
            atol=1e-5,
        )
        as_polyp = continual(pixel_values[:1], points[:1], labels[:1], domains=["polyp"]).pred_masks
        as_shadow = continual(pixel_values[:1], points[:1], labels[:1], domains=["shadow"]).pred_masks
    assert not torch.allclose(as_polyp, as_shadow)  # the modules differ


def test_save_and_load_give_identical_outputs(learned, tmp_path):
    variant, continual, _ = learned
    size, model_class = GENERATIONS[variant][:2]
    continual.save_pretrained(tmp_path)
    recorded = json.loads((tmp_path / "continual_config.json").read_text())
    assert recorded["base_signature"]["model_type"] == model_class.config_class.model_type
    loaded = ContinualSam.from_pretrained(tmp_path)  # the recorded base, loaded as its generation's class
    assert type(loaded.sam) is model_class and loaded.domains == list(DOMAINS)
    batch = batch_of(domain_data("shadow", size, 4, seed=90, split="validation"), 4)
    points, labels = batch_prompts(batch, ARGS)
    with torch.no_grad():
        expected = continual(batch["pixel_values"], points, labels)
        actual = loaded(batch["pixel_values"], points, labels)
    assert actual.domains == expected.domains
    for name in ("pred_masks", "iou_scores", "object_score_logits"):
        assert torch.equal(getattr(actual, name), getattr(expected, name)), name
    other = "sam3-tiny" if variant == "sam2-tiny" else "sam2-tiny"
    with pytest.raises(ValueError, match=r"trained on a SAM with .*differs \(model_type"):
        ContinualSam.from_pretrained(tmp_path, sam=random_sam(other))


def test_hiera_modules_adapt_one_stage_after_the_feature_block():
    sam = random_sam("sam2-tiny")
    with pytest.raises(ValueError, match=r"block 2 .*pools its queries"):
        ContinualSam(sam, SloraConfig(layers_to_transform=[2, 3]))
    with pytest.raises(ValueError, match=r"feature_block must come before the first adapted block \(3\)"):
        ContinualSam(sam, feature_block=3)
    continual = ContinualSam(sam, feature_block=1)  # an earlier stage's block: its width, 32
    assert continual.buffer.feature_dim == 32
    with pytest.raises(TypeError, match="SamModel, Sam2Model, Sam3TrackerModel"):
        ContinualSam(sam.vision_encoder)


# ---------------------------------------------------------------------------------------------------------------
# The recipe


def test_recipe_runs_on_sam2(tmp_path):
    config = tmp_path / "sam2.yaml"
    domain = "benchmark: synthetic, synthetic_train_size: 8, synthetic_eval_size: 4"
    config.write_text(
        "random_base: sam2-tiny\nnum_adapted_blocks: 2\nentries_per_domain: 8\nselector_epochs: 5\n"
        "num_epochs: 1\nbatch_size: 8\neval_batch_size: 8\nreport_to: null\n"
        f"domains:\n  - {{name: polyp, synthetic_appearance: polyp, {domain}}}\n"
        f"  - {{name: shadow, synthetic_appearance: shadow, {domain}}}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "recipes" / "continual.py"), str(config), "--progress", "false"]
    command += ["--base_model", str(tmp_path / "base"), "--output_dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((tmp_path / "run" / "continual_metrics.json").read_text())
    assert metrics["domains"] == ["polyp", "shadow"] and len(metrics["accuracy_matrix"]) == 2
    assert all(v is not None for row in metrics["accuracy_matrix"] for v in row)
    assert set(metrics["base_sam"]) == {"polyp", "shadow"} and 0 <= metrics["selector_accuracy"] <= 1
    model = ContinualSam.from_pretrained(tmp_path / "run")
    assert isinstance(model.sam, Sam2Model) and model.adapted_blocks == [3]  # the stage's one adaptable block
