"""Multi-class prompt-free heads on SAM 2 / 2.1 and SAM 3's tracker: checkpoint mapping, the decoder against
transformers', outputs, losses and errors as SAM 1's, training, save / reload, the binary head unchanged, and the
recipe's builder. Tiny random models: "sam2-tiny" at 128 px, "sam3-tiny" at 112 px (embeddings 8 x 8, masks 32 x 32).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import AutoPeftModel, LoraConfig, get_peft_model
from peft.utils import load_peft_weights
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder
from transformers.models.sam3_tracker.modeling_sam3_tracker import Sam3TrackerMaskDecoder

from sam_peft import (
    Sam2ForSemanticSegmentation,
    Sam3TrackerForSemanticSegmentation,
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    random_sam,
    sam_config,
)
from sam_peft.modeling.losses import semantic_set_loss
from sam_peft.modeling.semantic_sam2 import (
    Sam2SemanticMaskDecoder,
    Sam2SemanticSegmentationConfig,
    Sam3TrackerSemanticMaskDecoder,
    Sam3TrackerSemanticSegmentationConfig,
)

VARIANTS = ["sam2-tiny", "sam3-tiny"]
HEADS = {"sam2-tiny": Sam2ForSemanticSegmentation, "sam3-tiny": Sam3TrackerForSemanticSegmentation}
IMAGE_SIZE = {"sam2-tiny": 128, "sam3-tiny": 112}
NUM_LABELS = 3
# SamSemanticSegmentationConfig's documented task fields and defaults, which the later generations share.
TASK_DEFAULTS = {
    "num_mask_tokens": None,
    "semantic_loss": "structure",
    "semantic_loss_ignore_index": 255,
    "class_weight": 1.0,
    "mask_weight": 5.0,
    "dice_weight": 5.0,
    "no_object_weight": 0.1,
    "train_num_points": 12544,
    "oversample_ratio": 3.0,
    "importance_sample_ratio": 0.75,
    "moe_loss_weight": 1.0,
}
# Weights of the generation's checkpoint that a multi-class head drops.
DROPPED = (
    "mask_decoder.iou_prediction_head.",
    "mask_decoder.pred_obj_score_head.",
    "mask_decoder.output_hypernetworks_mlps.",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A saved random model of each generation, and the model."""
    root = tmp_path_factory.mktemp("checkpoints")
    saved = {}
    for variant in VARIANTS:
        base = random_sam(variant, seed=3)
        base.save_pretrained(root / variant)
        saved[variant] = (root / variant, base)
    return saved


def pixels(variant: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = IMAGE_SIZE[variant]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def shapes(variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images whose colour encodes the classes: a square (1), a disc (2), the rest 0; the bottom rows ignored."""
    size = IMAGE_SIZE[variant]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[0, 16:56, 16:56] = 1
    labels[1, 24:64, 40:80] = 1
    labels[0][(rows - 80) ** 2 + (cols - 80) ** 2 < 300] = 2
    labels[1][(rows - 80) ** 2 + (cols - 30) ** 2 < 300] = 2
    noise = 0.1 * torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 2 - 1 + noise
    labels[:, size - 8 :] = 255
    return images, labels


def test_the_configs_have_sam_1s_task_fields_and_checks():
    for config_class in (
        SamSemanticSegmentationConfig,
        Sam2SemanticSegmentationConfig,
        Sam3TrackerSemanticSegmentationConfig,
    ):
        config = config_class()
        assert {name: getattr(config, name) for name in TASK_DEFAULTS} == TASK_DEFAULTS
        assert config.num_labels == 1
        assert config_class(id2label={0: "background", 1: "glass", 2: "bottle"}).num_labels == 3
    with pytest.raises(ValueError, match=r"Unknown semantic_loss 'focal'; expected one of"):
        Sam2SemanticSegmentationConfig(semantic_loss="focal")
    with pytest.raises(ValueError, match=r"A binary model \(num_labels=1\) has one mask token, got num_mask_tokens=4"):
        Sam3TrackerSemanticSegmentationConfig(num_mask_tokens=4)
    # a plain config's generic two labels ("LABEL_0", "LABEL_1") are no task: binary
    assert Sam2ForSemanticSegmentation(sam_config("sam2-tiny")).config.num_labels == 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_k_class_head_loads_every_weight_of_the_checkpoint(variant, checkpoints, tmp_path):
    path, base = checkpoints[variant]
    model, info = HEADS[variant].from_pretrained(path, num_labels=NUM_LABELS, output_loading_info=True)
    assert info["missing_keys"] == {"mask_decoder.class_predictor.weight", "mask_decoder.class_predictor.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.name_or_path == str(path)
    assert (model.config.num_labels, model.config.num_mask_tokens) == (NUM_LABELS, 5)  # SAM 1's default

    expected, state = base.state_dict(), model.state_dict()
    # every weight of the checkpoint is kept but the heads and MLPs the multi-class decoder has not
    assert {key for key in expected if key not in state} == {
        key for key in expected if key.startswith(DROPPED) and not key.startswith(DROPPED[-1] + "0.")
    }
    assert any(key.startswith("vision_encoder.") for key in state) and any("conv_s0" in key for key in state)
    for key, value in state.items():
        if key == "mask_decoder.mask_tokens.weight" or "class_predictor" in key:
            continue
        assert torch.equal(value, expected[key]), key  # encoders, prompt encoder, MLP 0, conv_s0 / conv_s1 ...
    tokens = model.mask_decoder.mask_tokens.weight
    assert tokens.shape == (5, 32)
    assert all(torch.equal(row, base.mask_decoder.mask_tokens.weight[0]) for row in tokens)
    assert len(model.mask_decoder.output_hypernetworks_mlps) == 1
    assert model.mask_decoder.class_predictor.out_features == NUM_LABELS + 1

    id2label = {0: "background", 1: "glass", 2: "bottle", 3: "can"}
    named = HEADS[variant].from_pretrained(path, id2label=id2label, num_mask_tokens=7)
    assert (named.config.id2label, named.mask_decoder.mask_tokens.num_embeddings) == (id2label, 7)
    # a binary head's checkpoint (the generation's weights, num_mask_tokens=1 in its config) converts the same way
    HEADS[variant].from_pretrained(path).save_pretrained(tmp_path)
    from_binary = HEADS[variant].from_pretrained(tmp_path, num_labels=NUM_LABELS)
    assert from_binary.config.num_mask_tokens == 5
    assert all(torch.equal(value, state[key]) for key, value in from_binary.state_dict().items() if "class_" not in key)


def reference_decoder(decoder_class, base_decoder: torch.nn.Module) -> torch.nn.Module:
    """transformers' decoder with the checkpoint's weights, its four hypernetwork MLPs all set to the first."""
    reference = decoder_class(base_decoder.config)
    reference.load_state_dict(base_decoder.state_dict())
    for mlp in reference.output_hypernetworks_mlps[1:]:
        mlp.load_state_dict(reference.output_hypernetworks_mlps[0].state_dict())
    return reference.train()  # no dynamic mask selection (an eval-mode fallback of SAM 2's single-mask output)


@pytest.mark.parametrize(
    ("variant", "decoder_class", "semantic_class"),
    [
        ("sam2-tiny", Sam2MaskDecoder, Sam2SemanticMaskDecoder),
        ("sam3-tiny", Sam3TrackerMaskDecoder, Sam3TrackerSemanticMaskDecoder),
    ],
)
def test_the_decoder_is_the_generations_with_one_shared_mlp(variant, decoder_class, semantic_class, checkpoints):
    """With SAM 2's four mask tokens and its MLPs all equal to the first, transformers' decoder gives the masks of
    the multi-class decoder: mask 0 (single-mask output), masks 1..3 (multi-mask output); the class logits are the
    class head on the same token outputs. High-resolution skip features included."""
    base = checkpoints[variant][1].mask_decoder
    reference = reference_decoder(decoder_class, base)
    decoder = semantic_class(base.config, num_mask_tokens=4, num_labels=NUM_LABELS).train()
    missing, unexpected = decoder.load_state_dict(
        {k: v for k, v in base.state_dict().items() if not k.startswith(("iou_prediction", "pred_obj", "output_hyper"))}
        | {k: v for k, v in base.state_dict().items() if k.startswith("output_hypernetworks_mlps.0.")},
        strict=False,
    )
    assert sorted(missing) == ["class_predictor.bias", "class_predictor.weight"] and not unexpected
    generator = torch.Generator().manual_seed(0)
    batch, channels, grid = 2, 32, 8
    inputs = {
        "image_embeddings": torch.randn(batch, channels, grid, grid, generator=generator),
        "image_positional_embeddings": torch.randn(batch, channels, grid, grid, generator=generator),
        "sparse_prompt_embeddings": torch.randn(batch, 1, 2, channels, generator=generator),
        "dense_prompt_embeddings": torch.randn(batch, channels, grid, grid, generator=generator),
        "high_resolution_features": [
            torch.randn(batch, channels // 8, 4 * grid, 4 * grid, generator=generator),
            torch.randn(batch, channels // 4, 2 * grid, 2 * grid, generator=generator),
        ],
    }
    with torch.no_grad():
        masks, class_logits, tokens_out, object_scores = decoder(**inputs, multimask_output=False)
        single, _, single_token, _ = reference(**inputs, multimask_output=False)
        multi, _, multi_tokens, _ = reference(**inputs, multimask_output=True)
    assert masks.shape == (batch, 1, 4, 4 * grid, 4 * grid) and object_scores is None
    torch.testing.assert_close(masks, torch.cat([single, multi], dim=2), rtol=1e-5, atol=1e-5)
    reference_tokens = torch.cat([single_token, multi_tokens], dim=2)  # (B, 1, 4, C)
    torch.testing.assert_close(tokens_out, reference_tokens, rtol=1e-5, atol=1e-5)
    expected_classes = reference_tokens @ decoder.class_predictor.weight.T + decoder.class_predictor.bias
    torch.testing.assert_close(class_logits, expected_classes, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_and_loss_are_sam_1s(variant, checkpoints):
    path = checkpoints[variant][0]
    model = HEADS[variant].from_pretrained(path, num_labels=NUM_LABELS, class_weight=2.0, train_num_points=1024)
    model.eval()
    images, labels = shapes(variant)
    size = IMAGE_SIZE[variant]
    with torch.no_grad():
        torch.manual_seed(0)  # the point sampling of the loss
        outputs = model(pixel_values=images, labels=labels)
        torch.manual_seed(0)
        expected_loss = semantic_set_loss(
            outputs.masks_queries_logits,
            outputs.class_queries_logits,
            labels,
            ignore_index=255,
            class_weight=2.0,
            mask_weight=5.0,
            dice_weight=5.0,
            no_object_weight=0.1,
            num_points=1024,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
        )
        no_labels = model(pixel_values=images)
    assert outputs.masks_queries_logits.shape == (2, 5, 32, 32)
    assert outputs.class_queries_logits.shape == (2, 5, NUM_LABELS + 1)
    assert outputs.logits.shape == (2, NUM_LABELS, size, size)
    assert outputs.logits.min() >= 0 and outputs.logits.max() <= 1
    masks = F.interpolate(outputs.masks_queries_logits, size=(size, size), mode="bilinear", align_corners=False)
    for image in range(2):
        probabilities = outputs.class_queries_logits[image].softmax(-1)[:, :NUM_LABELS]  # (N, K)
        scores = (probabilities[:, :, None, None] * masks[image, :, None].sigmoid()).sum(0)
        torch.testing.assert_close(outputs.logits[image], scores)
    torch.testing.assert_close(outputs.task_loss, expected_loss)
    assert outputs.auxiliary_loss == 0 and outputs.loss == outputs.task_loss
    assert no_labels.loss is None
    torch.testing.assert_close(no_labels.logits, outputs.logits)

    # post-processing: label maps at the original size (the image was resized to `size` x 80, then padded)
    maps = model.post_process_semantic_segmentation(outputs, [(50, 40), (30, 60)], [(size, 80), (size, 80)])
    for image, (height, width) in enumerate([(50, 40), (30, 60)]):
        cropped = outputs.logits[image : image + 1, :, :, :80]
        resized = F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)[0]
        assert maps[image].dtype == torch.int64 and torch.equal(maps[image], resized.argmax(0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_invalid_labels_give_sam_1s_errors(variant, checkpoints):
    model = HEADS[variant].from_pretrained(checkpoints[variant][0], num_labels=NUM_LABELS)
    sam_1 = SamForSemanticSegmentation(
        SamSemanticSegmentationConfig.from_sam_config(sam_config("tiny"), num_labels=NUM_LABELS)
    )
    images = pixels(variant)
    labels = torch.zeros(2, *images.shape[-2:], dtype=torch.long)
    labels[0, 0, :3] = torch.tensor([3, 7, 255])  # 255 is ignored, 3 and 7 are out of range
    messages = []
    for bad in (labels, labels.float(), labels[:, :-1]):
        with pytest.raises(ValueError) as error:
            model(pixel_values=images, labels=bad)
        with pytest.raises(ValueError) as sam_1_error:
            sam_1(pixel_values=images, labels=bad)  # refused before the encoder: any image size
        assert str(error.value) == str(sam_1_error.value)
        messages.append(str(error.value))
    assert messages[0] == "Class ids must be in [0, num_labels=3) or equal to the ignore index 255, got [3, 7]."


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", ["config", "checkpoint"])
def test_decoder_only_training_lowers_the_loss(variant, source, checkpoints):
    """From a K-class config (as SAM 1's test: random mask tokens, N(0, 1), distinct) the loss falls by a quarter
    in 40 steps; from a checkpoint, whose tokens all start as its first (identical queries, which only the set
    matching tells apart, as on SAM 1), it falls in 10."""
    if source == "config":
        config = HEADS[variant].semantic_config(sam_config(variant), num_labels=NUM_LABELS, train_num_points=1024)
        torch.manual_seed(0)
        model = HEADS[variant](config)
        tokens = model.mask_decoder.mask_tokens.weight
        assert tokens.shape == (5, 32) and 0.5 < tokens.std() < 2
    else:
        model = HEADS[variant].from_pretrained(checkpoints[variant][0], num_labels=NUM_LABELS, train_num_points=1024)
    model.freeze_encoders().train()
    images, labels = shapes(variant)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def evaluate() -> float:
        torch.manual_seed(1)  # the same points for the point-sampled losses
        with torch.no_grad():
            return model(pixel_values=images, labels=labels).loss.item()

    initial = evaluate()
    for _ in range(40 if source == "config" else 10):
        loss = model(pixel_values=images, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = evaluate()
    assert final <= 0.75 * initial if source == "config" else final < initial - 0.1, (initial, final)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    assert all(p.grad is None for p in model.vision_encoder.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_reload_give_the_same_outputs(variant, checkpoints, tmp_path):
    model = HEADS[variant].from_pretrained(checkpoints[variant][0], num_labels=NUM_LABELS, num_mask_tokens=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # trained weights: tokens no longer equal, a class head
            if name.startswith("mask_decoder."):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))))
    model.save_pretrained(tmp_path)
    reloaded = HEADS[variant].from_pretrained(tmp_path)
    assert (reloaded.config.num_labels, reloaded.config.num_mask_tokens) == (NUM_LABELS, 4)
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    images = pixels(variant)
    with torch.no_grad():
        expected, actual = model.eval()(pixel_values=images), reloaded.eval()(pixel_values=images)
    assert torch.equal(actual.logits, expected.logits)
    assert torch.equal(actual.class_queries_logits, expected.class_queries_logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_binary_head_is_unchanged(variant, checkpoints):
    """Binary: the generation's weights under its names, and its own "no prompt" forward (tests/test_generations.py)."""
    path, base = checkpoints[variant]
    model = HEADS[variant].from_pretrained(path)
    assert model.state_dict().keys() == base.state_dict().keys()
    assert type(model.mask_decoder) is type(base.mask_decoder)
    images = pixels(variant)
    for mode in ("train", "eval"):  # eval: SAM 2's dynamic fallback to the best multi-mask output is kept
        with torch.no_grad():
            outputs = getattr(model, mode)()(pixel_values=images)
            masks = getattr(base, mode)()(pixel_values=images, multimask_output=False).pred_masks[:, 0]
        assert torch.equal(outputs.masks_queries_logits, masks) and outputs.class_queries_logits is None
        expected = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.equal(outputs.logits, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_k_class_decoder_is_refused_by_a_binary_model_with_the_fix(variant, checkpoints, tmp_path):
    path = checkpoints[variant][0]
    head = HEADS[variant]
    multiclass = head.from_pretrained(path, num_labels=NUM_LABELS)
    target = r"vision_encoder\.backbone\..*(qkv|q_proj|v_proj)$"
    adapted = get_peft_model(multiclass, LoraConfig(r=2, target_modules=target, modules_to_save=["mask_decoder"]))
    adapted.save_pretrained(tmp_path / "adapter")
    images = pixels(variant, batch=1)
    with torch.no_grad():
        expected = adapted.eval()(pixel_values=images).logits

    binary = head.from_pretrained(path)
    binary.load_state_dict(checkpoints[variant][1].state_dict())  # the generation's own weights: a binary decoder
    # The adapter's decoder, as torch gets it from peft: under the model's names, or in peft's modules_to_save
    # wrapper on an adapted binary model.
    saved = {k.removeprefix("base_model.model."): v for k, v in load_peft_weights(str(tmp_path / "adapter")).items()}
    decoder = {key: value for key, value in saved.items() if key.startswith("mask_decoder.")}
    assert "mask_decoder.class_predictor.weight" in decoder
    wrapped = get_peft_model(
        head.from_pretrained(path), LoraConfig(r=2, target_modules=target, modules_to_save=["mask_decoder"])
    )
    wrapped_decoder = {
        f"base_model.model.mask_decoder.modules_to_save.default.{key.removeprefix('mask_decoder.')}": value
        for key, value in decoder.items()
    }
    for model, weights in ((binary, decoder), (wrapped, wrapped_decoder)):
        with pytest.raises(ValueError) as error:
            model.load_state_dict(weights, strict=False)
        assert str(error.value).startswith(
            "The mask decoder weights being loaded are for num_labels=3 with num_mask_tokens=5, but this model has "
            f"num_labels=1 and num_mask_tokens=1. Build the base model for that task: {head.__name__}.from_pretrained("
            "base, num_labels=3) (with AutoPeftModel: AutoPeftModel.from_pretrained(adapter, num_labels=3, "
            "import_allowlist=['sam_peft']))"
        )
    # the fix the message names works and gives the saved model's outputs
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter", num_labels=3, import_allowlist=["sam_peft"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values=images).logits, expected)
    with pytest.raises(
        ValueError, match="are for num_labels=1 with num_mask_tokens=1, but this model has num_labels=3"
    ):
        multiclass.load_state_dict(binary.state_dict())


def test_the_recipe_builds_a_multiclass_sam_2_head_with_conv_lora(checkpoints):
    from sam_peft.training import build_model
    from sam_peft.training.arguments import ModelArguments

    path = str(checkpoints["sam2-tiny"][0])
    model = build_model(ModelArguments(base_model=path, num_labels=NUM_LABELS, num_mask_tokens=4)).train()
    base = model.get_base_model()
    assert isinstance(base, Sam2ForSemanticSegmentation)
    assert (base.config.num_labels, base.config.num_mask_tokens) == (NUM_LABELS, 4)
    images, labels = shapes("sam2-tiny")
    outputs = model(pixel_values=images, labels=labels)
    assert outputs.logits.shape == (2, NUM_LABELS, 128, 128)
    outputs.loss.backward()
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert any("conv_lora_A" in name for name in trained)
    assert any("class_predictor" in name for name in trained) and any("mask_tokens" in name for name in trained)
    missing = [name for name, p in trained.items() if p.grad is None]
    assert not missing
    with pytest.raises(ValueError, match=r"num_mask_tokens applies to multi-class SAM models \(num_labels > 1\)"):
        build_model(ModelArguments(base_model=path, num_mask_tokens=4))
