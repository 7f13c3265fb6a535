"""Prompt-free SAM for semantic segmentation: parameter counts, SAM weight mapping, outputs, errors, learning."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from peft import AutoPeftModel, LoraConfig, PeftModel, get_peft_model
from transformers import SamConfig, SamHQConfig, SamHQModel, SamImageProcessor, SamModel, ViTConfig

from sam_peft.modeling.losses import balanced_bce_loss
from sam_peft.modeling.random_sam import init_vision_weights_, random_sam, sam_config
from sam_peft.modeling.semantic_sam import (
    DEFAULT_MULTICLASS_MASK_TOKENS,
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    post_process_semantic_segmentation,
)
from sam_peft.tuners.auxiliary import AuxiliaryLossSlot

IMAGE_SIZE = 128  # sam_config("tiny")


def semantic_config(variant: str = "tiny", **kwargs) -> SamSemanticSegmentationConfig:
    return SamSemanticSegmentationConfig.from_sam_config(sam_config(variant), **kwargs)


def tiny_model(num_labels: int = 1, seed: int = 0, **kwargs) -> SamForSemanticSegmentation:
    torch.manual_seed(seed)
    model = SamForSemanticSegmentation(semantic_config(num_labels=num_labels, **kwargs))
    return init_vision_weights_(model)


def meta_model(variant: str, num_labels: int) -> SamForSemanticSegmentation:
    with torch.device("meta"):
        return SamForSemanticSegmentation(semantic_config(variant, num_labels=num_labels))


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# SAM's mask decoder (width 256 for every ViT size) has 4,058,340 parameters. Dropped: the IoU head
# (256*256+256 + 256*256+256 + 256*4+4 = 132,612), three of the four mask tokens (3 * 256 = 768) and three of
# the four hypernetwork MLPs (3 * (256*256+256 + 256*256+256 + 256*32+32) = 419,424): 3,505,536 remain, the
# paper's "decoder-only 3.51M". A 12-class decoder adds DEFAULT_MULTICLASS_MASK_TOKENS - 1 = 4 tokens (1,024) and
# the class head Linear(256, 13) (3,341): 3,509,901. LoRA r=3 on the fused qkv Linear(C, 3C) of every block adds
# 3 * (C + 3C) = 12C per block: 32 * 12 * 1280 = 491,520 on ViT-H, 12 * 12 * 768 = 110,592 on ViT-B.
DECODER_ONLY = 3_505_536
DECODER_ONLY_12_CLASSES = DECODER_ONLY + 4 * 256 + (256 * 13 + 13)
LORA = {"vit-h": 32 * 12 * 1280, "vit-b": 12 * 12 * 768}


def test_decoder_count_derivation():
    assert DECODER_ONLY == 4_058_340 - 132_612 - 3 * 256 - 419_424
    assert DEFAULT_MULTICLASS_MASK_TOKENS == 5
    assert DECODER_ONLY_12_CLASSES == 3_509_901
    assert LORA == {"vit-h": 491_520, "vit-b": 110_592}
    sam = random_sam("vit-h", device="meta")
    assert sum(p.numel() for p in sam.parameters()) == 641_090_864  # the paper's 641.09M
    assert sum(p.numel() for p in sam.mask_decoder.parameters()) == 4_058_340


@pytest.mark.parametrize("variant", ["vit-h", "vit-b"])
def test_decoder_only_trainable_counts(variant):
    binary = meta_model(variant, num_labels=1).freeze_encoders()
    assert trainable(binary) == DECODER_ONLY
    assert trainable(binary) == trainable(binary.mask_decoder)
    multiclass = meta_model(variant, num_labels=12).freeze_encoders()
    assert multiclass.config.num_mask_tokens == DEFAULT_MULTICLASS_MASK_TOKENS
    assert trainable(multiclass) == DECODER_ONLY_12_CLASSES


@pytest.mark.parametrize(("variant", "expected"), [("vit-h", 3_997_056), ("vit-b", 3_616_128)])
def test_peft_lora_with_trained_decoder_count(variant, expected):
    model = meta_model(variant, num_labels=1)
    config = LoraConfig(
        r=3,
        lora_alpha=32,
        target_modules=r"vision_encoder\.layers\.\d+\.attn\.qkv",
        modules_to_save=["mask_decoder"],
    )
    peft_model = get_peft_model(model, config)
    assert expected == DECODER_ONLY + LORA[variant]
    assert peft_model.get_nb_trainable_parameters()[0] == expected


@pytest.mark.parametrize("num_labels", [1, 3])
def test_sam_checkpoint_weights_are_mapped(tmp_path, num_labels):
    sam = random_sam("tiny", seed=1)
    sam.save_pretrained(tmp_path / "sam")
    model = SamForSemanticSegmentation.from_pretrained(tmp_path / "sam", num_labels=num_labels)
    sam_state = sam.state_dict()
    model_state = model.state_dict()

    num_tokens = 1 if num_labels == 1 else DEFAULT_MULTICLASS_MASK_TOKENS
    assert model.config.num_labels == num_labels
    assert model.mask_decoder.mask_tokens.weight.shape == (num_tokens, 32)
    for row in model.mask_decoder.mask_tokens.weight:
        assert torch.equal(row, sam.mask_decoder.mask_tokens.weight[0])
    assert len(model.mask_decoder.output_hypernetworks_mlps) == 1
    assert not hasattr(model.mask_decoder, "iou_prediction_head")
    assert (model.mask_decoder.class_predictor is None) == (num_labels == 1)

    shared = [key for key in model_state if key != "mask_decoder.mask_tokens.weight" and "class_predictor" not in key]
    assert any(key.startswith("vision_encoder.") for key in shared)
    assert any(key.startswith("prompt_encoder.") for key in shared)
    assert any(key.startswith("mask_decoder.output_hypernetworks_mlps.0.") for key in shared)
    for key in shared:
        assert torch.equal(model_state[key], sam_state[key]), key
    assert model.config.name_or_path == str(tmp_path / "sam")

    model.save_pretrained(tmp_path / "semantic")
    reloaded = SamForSemanticSegmentation.from_pretrained(tmp_path / "semantic")
    assert reloaded.config.num_labels == num_labels
    assert reloaded.config.num_mask_tokens == num_tokens
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_num_mask_tokens_and_loss_options_come_from_kwargs(tmp_path):
    random_sam("tiny").save_pretrained(tmp_path)
    model, loading_info = SamForSemanticSegmentation.from_pretrained(
        tmp_path,
        num_labels=4,
        num_mask_tokens=7,
        semantic_loss="bce_dice",
        moe_loss_weight=0.5,
        output_loading_info=True,
    )
    assert model.mask_decoder.mask_tokens.weight.shape == (7, 32)
    assert model.mask_decoder.class_predictor.out_features == 5
    assert (model.config.semantic_loss, model.config.moe_loss_weight) == ("bce_dice", 0.5)
    assert loading_info["missing_keys"] == {"mask_decoder.class_predictor.weight", "mask_decoder.class_predictor.bias"}
    assert not loading_info["unexpected_keys"] and not loading_info["mismatched_keys"]


def test_generic_sam_id2label_is_not_a_task(tmp_path):
    # Hub SAM configs carry transformers' generic two-label id2label; it must not make the model 2-class.
    random_sam("tiny").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert SamForSemanticSegmentation.from_pretrained(tmp_path).config.num_labels == 1
    id2label = {0: "background", 1: "glass", 2: "bottle"}
    model = SamForSemanticSegmentation.from_pretrained(tmp_path, id2label=id2label)
    assert (model.config.num_labels, model.config.id2label[1]) == (3, "glass")


def test_sam_hq_checkpoint_loads(tmp_path):
    tiny = sam_config("tiny").to_dict()
    decoder = {**tiny["mask_decoder_config"], "vit_dim": 32}
    config = SamHQConfig(
        vision_config=tiny["vision_config"],
        prompt_encoder_config=tiny["prompt_encoder_config"],
        mask_decoder_config=decoder,
    )
    torch.manual_seed(0)
    sam_hq = init_vision_weights_(SamHQModel(config))
    sam_hq.save_pretrained(tmp_path)
    model = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=1)
    assert torch.equal(model.vision_encoder.layers[1].attn.qkv.weight, sam_hq.vision_encoder.layers[1].attn.qkv.weight)
    assert torch.equal(model.mask_decoder.mask_tokens.weight[0], sam_hq.mask_decoder.mask_tokens.weight[0])
    assert model(torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)).logits.shape == (1, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_binary_model_is_sam_without_prompts(tmp_path):
    # A SAM with a single mask token and MLP is exactly the binary model: same output with no prompt.
    config = sam_config("tiny")
    config.mask_decoder_config.num_multimask_outputs = 0
    torch.manual_seed(0)
    sam = init_vision_weights_(SamModel(config)).eval()
    sam.save_pretrained(tmp_path)
    model = SamForSemanticSegmentation.from_pretrained(tmp_path, num_labels=1)

    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = sam(pixel_values=pixel_values, multimask_output=False).pred_masks[:, 0]  # (2, 1, 64, 64)
        outputs = model(pixel_values)
    assert outputs.masks_queries_logits.shape == (2, 1, 64, 64)
    torch.testing.assert_close(outputs.masks_queries_logits, expected, rtol=1e-4, atol=1e-5)
    upsampled = F.interpolate(expected, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(outputs.logits, upsampled, rtol=1e-4, atol=1e-5)
    assert outputs.class_queries_logits is None


def test_multiclass_outputs_from_a_config():
    model = tiny_model(num_labels=3).eval()
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(pixel_values)
        from_embeddings = model(image_embeddings=model.get_image_embeddings(pixel_values))
    num_tokens = DEFAULT_MULTICLASS_MASK_TOKENS
    assert outputs.masks_queries_logits.shape == (2, num_tokens, 64, 64)
    assert outputs.class_queries_logits.shape == (2, num_tokens, 4)
    assert outputs.logits.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    masks = F.interpolate(outputs.masks_queries_logits, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    for image in range(2):
        semseg = torch.einsum(
            "nc,nhw->chw", outputs.class_queries_logits[image].softmax(-1)[..., :3], masks[image].sigmoid()
        )
        torch.testing.assert_close(outputs.logits[image], semseg)
    torch.testing.assert_close(from_embeddings.logits, outputs.logits)
    assert outputs.loss is None
    # Random tokens are distinct (N(0, 1), see `_init_weights`), so are the queries' masks.
    assert not torch.allclose(outputs.masks_queries_logits[:, 0], outputs.masks_queries_logits[:, 1])


def test_loss_adds_weighted_auxiliary_losses():
    model = tiny_model(num_labels=1, semantic_loss="balanced_bce", moe_loss_weight=0.5)
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    labels = torch.zeros(1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long)
    labels[:, 30:80, 40:90] = 1
    outputs = model(pixel_values, labels=labels)
    torch.testing.assert_close(outputs.loss, balanced_bce_loss(outputs.logits, labels))
    torch.testing.assert_close(outputs.task_loss, outputs.loss)
    assert outputs.auxiliary_loss.item() == 0.0

    slot = AuxiliaryLossSlot()
    slot.value = torch.tensor(2.0)
    model.mask_decoder.auxiliary_loss_slot = slot
    with_auxiliary = model(pixel_values, labels=labels)
    torch.testing.assert_close(with_auxiliary.loss, outputs.loss + 0.5 * 2.0)
    # The task loss stays apart from the auxiliary one, which is reported unweighted.
    torch.testing.assert_close(with_auxiliary.task_loss, outputs.loss)
    assert with_auxiliary.auxiliary_loss.item() == 2.0


def test_labels_of_a_plain_sam_config_are_kept_unless_generic():
    vision_config = sam_config("tiny").vision_config.to_dict()
    three_classes = SamForSemanticSegmentation(SamConfig(vision_config=vision_config, num_labels=3))
    assert three_classes.config.num_labels == 3
    assert three_classes.mask_decoder.class_predictor.out_features == 4
    named = SamConfig(vision_config=vision_config, id2label={0: "background", 1: "polyp"})
    assert SamForSemanticSegmentation(named).config.id2label == {0: "background", 1: "polyp"}
    # SamConfig()'s generic two labels mean nothing for SAM: binary.
    assert SamForSemanticSegmentation(SamConfig(vision_config=vision_config)).config.num_labels == 1


def test_decoder_of_another_task_is_refused_with_the_fix(tmp_path):
    random_sam("tiny").save_pretrained(tmp_path / "base")
    multiclass = SamForSemanticSegmentation.from_pretrained(tmp_path / "base", num_labels=3)
    adapted = get_peft_model(multiclass, LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["mask_decoder"]))
    adapted.save_pretrained(tmp_path / "adapter")
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = adapted.eval()(pixel_values=pixel_values).logits

    binary = SamForSemanticSegmentation.from_pretrained(tmp_path / "base")
    with pytest.raises(ValueError) as error:
        PeftModel.from_pretrained(binary, tmp_path / "adapter")
    assert str(error.value).startswith(
        "The mask decoder weights being loaded are for num_labels=3 with num_mask_tokens=5, but this model has "
        "num_labels=1 and num_mask_tokens=1. Build the base model for that task: "
        "SamForSemanticSegmentation.from_pretrained(base, num_labels=3) (with AutoPeftModel: "
        "AutoPeftModel.from_pretrained(adapter, num_labels=3, import_allowlist=['sam_peft']))"
    )
    # The fix the message names works and gives the saved model's outputs.
    loaded = AutoPeftModel.from_pretrained(tmp_path / "adapter", num_labels=3, import_allowlist=["sam_peft"])
    torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, expected)
    with pytest.raises(
        ValueError, match="are for num_labels=1 with num_mask_tokens=1, but this model has num_labels=3"
    ):
        multiclass.load_state_dict(binary.state_dict())


def test_post_processing_returns_original_sizes():
    processor = SamImageProcessor(
        size={"longest_edge": IMAGE_SIZE}, pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    images = [torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8).numpy(), torch.zeros(100, 60, 3).numpy()]
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["reshaped_input_sizes"].tolist() == [[77, 128], [128, 77]]

    for num_labels in (1, 3):
        model = tiny_model(num_labels=num_labels).eval()
        with torch.no_grad():
            outputs = model(inputs["pixel_values"])
        maps = model.post_process_semantic_segmentation(
            outputs, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        assert [tuple(m.shape) for m in maps] == [(48, 80), (100, 60)]
        if num_labels == 1:
            assert all(m.is_floating_point() and m.min() >= 0 and m.max() <= 1 for m in maps)
        else:
            assert all(m.dtype == torch.int64 and m.min() >= 0 and m.max() < 3 for m in maps)


def test_post_processing_crops_the_padding():
    # Logits +10 on the resized image and -10 on the padding: only the image part may reach the output.
    logits = torch.full((1, 1, IMAGE_SIZE, IMAGE_SIZE), -10.0)
    logits[:, :, :77, :] = 10.0
    outputs = type("Outputs", (), {"logits": logits})()
    (probabilities,) = post_process_semantic_segmentation(outputs, [[48, 80]], [[77, 128]])
    assert probabilities.shape == (48, 80)
    assert probabilities.min() > 0.99

    scores = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    scores[:, 1, :, :77] = 1.0  # class 1 on the image, class 0 wins on the padding
    scores[:, 0, :, 77:] = 2.0
    outputs = type("Outputs", (), {"logits": scores})()
    (label_map,) = post_process_semantic_segmentation(outputs, torch.tensor([[100, 60]]), torch.tensor([[128, 77]]))
    assert label_map.shape == (100, 60)
    assert (label_map == 1).all()


@pytest.mark.parametrize(
    ("num_labels", "labels", "message"),
    [
        (
            1,
            torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long),
            r"labels must have shape \(batch_size, "
            r"height, width\) = \(2, 128, 128\) to match the input, got \(2, 1, 128, 128\)",
        ),
        (1, torch.zeros(2, 64, 64, dtype=torch.long), r"= \(2, 128, 128\) to match the input, got \(2, 64, 64\)"),
        (1, torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE), r"labels must be an integer tensor .*, got torch.float32"),
        (
            1,
            torch.full((2, IMAGE_SIZE, IMAGE_SIZE), 2),
            r"Binary labels \(num_labels=1\) must be 0, 1 or 255 "
            r"\(ignored\), got values \[2\]",
        ),
        (
            3,
            torch.full((2, IMAGE_SIZE, IMAGE_SIZE), 3),
            r"Class ids must be in \[0, num_labels=3\) or equal to "
            r"the ignore index 255, got \[3\]",
        ),
        (3, torch.full((2, IMAGE_SIZE, IMAGE_SIZE), -1), r"Class ids must be in \[0, num_labels=3\).*got \[-1\]"),
        (3, [[0]], r"labels must be a torch.Tensor"),
    ],
)
def test_invalid_labels_are_rejected(num_labels, labels, message):
    model = tiny_model(num_labels=num_labels)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), labels=labels)


def test_valid_labels_with_ignored_pixels_are_accepted():
    labels = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    labels[:, 100:] = 255
    labels[:, :20] = 2
    assert torch.isfinite(tiny_model(num_labels=3)(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), labels=labels).loss)
    labels[:, :20] = 1
    assert torch.isfinite(tiny_model(num_labels=1)(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), labels=labels).loss)


def test_invalid_configs_and_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"A binary model \(num_labels=1\) has one mask token, got num_mask_tokens=4"):
        SamForSemanticSegmentation(semantic_config(num_labels=1, num_mask_tokens=4))
    with pytest.raises(ValueError, match=r"Unknown semantic_loss 'focal'; expected one of"):
        SamForSemanticSegmentation(semantic_config(semantic_loss="focal"))
    with pytest.raises(ValueError, match=r"Pass exactly one of pixel_values and image_embeddings"):
        tiny_model()()


def test_non_sam_checkpoints_are_rejected(tmp_path):
    ViTConfig().save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"is not a SAM checkpoint: its config has model_type='vit' and no "):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "vit")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({"model_type": "sam"}))
    with pytest.raises(ValueError, match=r"is not a SAM checkpoint: its config has model_type='sam' and no vision_con"):
        SamForSemanticSegmentation.from_pretrained(tmp_path / "bare")


def shapes_batch(num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 128 x 128 images: a square (class 1) and, for 3 classes, a disc (class 2); 3 classes ignore the bottom."""
    rows, cols = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
    labels = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.long)
    labels[0, 16:64, 16:64] = 1
    labels[1, 24:72, 40:88] = 1
    if num_labels == 3:
        labels[0][(rows - 90) ** 2 + (cols - 90) ** 2 < 400] = 2
        labels[1][(rows - 96) ** 2 + (cols - 40) ** 2 < 400] = 2
    generator = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    pixel_values = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 2 - 1 + noise
    if num_labels == 3:
        labels[:, 112:] = 255
    return pixel_values, labels


@pytest.mark.parametrize("num_labels", [1, 3])
def test_decoder_only_training_lowers_the_loss(num_labels):
    model = tiny_model(num_labels=num_labels).freeze_encoders()
    pixel_values, labels = shapes_batch(num_labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def evaluate() -> float:
        torch.manual_seed(1)  # the same points for the multi-class point-sampled losses
        with torch.no_grad():
            return model(pixel_values, labels=labels).loss.item()

    initial = evaluate()
    for _ in range(40):
        loss = model(pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert evaluate() <= 0.7 * initial
    assert all(p.grad is None for p in model.vision_encoder.parameters())


# Conv-LoRA r=3 with 8 experts adds 12C + 48 + 672 per block: 514,560 on ViT-H (32 blocks), 119,232 on ViT-B.
@pytest.mark.parametrize(
    ("variant", "num_labels", "expected"),
    [
        ("vit-h", 1, 4_020_096),  # the paper's Table 1: 4.02M
        ("vit-h", 12, 3_509_901 + 514_560),  # the paper's Table 2: 4.02M (+-5k with 5 mask tokens)
        ("vit-b", 1, DECODER_ONLY + 119_232),
    ],
)
def test_conv_lora_trains_the_decoder_by_default(variant, num_labels, expected):
    from sam_peft import ConvLoraConfig

    model = get_peft_model(meta_model(variant, num_labels), ConvLoraConfig())
    assert model.peft_config["default"].modules_to_save == ["mask_decoder"]
    assert model.get_nb_trainable_parameters()[0] == expected
    assert abs(expected - 4_020_096) <= 5_000 or variant == "vit-b"


def test_explicit_modules_to_save_overrides_the_default():
    from sam_peft import ConvLoraConfig

    model = get_peft_model(meta_model("vit-h", 1), ConvLoraConfig(modules_to_save=[]))
    assert model.get_nb_trainable_parameters()[0] == 514_560
    plain_sam = get_peft_model(random_sam("vit-b", device="meta"), ConvLoraConfig())
    assert plain_sam.peft_config["default"].modules_to_save is None


@pytest.mark.parametrize("num_labels", [1, 3])
@pytest.mark.parametrize("method", ["conv_lora", "lora"])
def test_adapter_training_lowers_the_loss(method, num_labels):
    from sam_peft import ConvLoraConfig, auxiliary_loss

    if method == "conv_lora":
        config = ConvLoraConfig()
    else:
        config = LoraConfig(r=3, lora_alpha=32, target_modules=r"vision_encoder\.layers\.\d+\.attn\.qkv")
        config.modules_to_save = ["mask_decoder"]  # peft's LoRA has no SAM default: name the head
    model = get_peft_model(tiny_model(num_labels=num_labels), config)
    pixel_values, labels = shapes_batch(num_labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def evaluate() -> float:
        model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            return model(pixel_values=pixel_values, labels=labels).loss.item()

    initial = evaluate()
    for _ in range(40):
        model.train()
        loss = model(pixel_values=pixel_values, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert evaluate() <= 0.7 * initial
    adapter_grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert adapter_grads and all(g is not None for g in adapter_grads)
    if method == "conv_lora":
        assert auxiliary_loss(model).item() > 0  # the layers report the balance loss the model adds


def test_converted_checkpoint_remembers_its_source(tmp_path):
    random_sam("tiny", seed=0).save_pretrained(tmp_path / "sam")
    model = SamForSemanticSegmentation.from_pretrained(tmp_path / "sam", num_labels=1)
    assert model.name_or_path == model.config.name_or_path == str(tmp_path / "sam")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["qkv"]))
    assert peft_model.peft_config["default"].base_model_name_or_path == str(tmp_path / "sam")
