"""Losses of the prompt-free SAM segmenter, checked against values computed by hand with plain Python."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from sam_peft.modeling.losses import (
    balanced_bce_loss,
    bce_dice_loss,
    bce_iou_loss,
    binary_segmentation_loss,
    semantic_set_loss,
    semantic_to_mask_labels,
    structure_loss,
)

# A 4 x 4 example: logits x and binary target g (6 foreground pixels).
LOGITS = [
    [-2.0, -1.0, 0.0, 1.0],
    [2.0, 3.0, -3.0, 0.5],
    [1.5, -0.5, 0.0, 2.0],
    [-1.0, 1.0, -2.0, 0.0],
]
TARGET = [
    [0, 0, 1, 1],
    [0, 1, 1, 1],
    [0, 0, 1, 0],
    [0, 0, 0, 0],
]


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def bce(logit: float, target: float) -> float:
    return -(target * math.log(sigmoid(logit)) + (1 - target) * math.log(1 - sigmoid(logit)))


def pixels(ignored: set[tuple[int, int]] = frozenset()) -> list[tuple[float, int]]:
    """(logit, target) of the non-ignored pixels."""
    return [(LOGITS[i][j], TARGET[i][j]) for i in range(4) for j in range(4) if (i, j) not in ignored]


def as_tensors(ignored: set[tuple[int, int]] = frozenset()) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(LOGITS).view(1, 1, 4, 4)
    labels = torch.tensor(TARGET).view(1, 4, 4)
    for i, j in ignored:
        labels[0, i, j] = 255
    return logits, labels


def hand_structure_parts(ignored: set[tuple[int, int]] = frozenset()) -> tuple[float, float]:
    """(weighted BCE, weighted IoU) of the 4 x 4 example."""
    # On a 4 x 4 map every 31 x 31 window (zero padding 15, counted) covers the whole image: the pooled target is
    # sum(g) / 961 at every pixel. Ignored pixels pool as background and then get weight 0.
    pooled = sum(t for _, t in pixels(ignored)) / 961
    weighted = [(1 + 5 * abs(pooled - t), x, t) for x, t in pixels(ignored)]
    wbce = sum(w * bce(x, t) for w, x, t in weighted) / sum(w for w, _, _ in weighted)
    inter = sum(w * sigmoid(x) * t for w, x, t in weighted)
    union = sum(w * (sigmoid(x) + t) for w, x, t in weighted)
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return wbce, wiou


def hand_structure_loss(ignored: set[tuple[int, int]] = frozenset()) -> float:
    return sum(hand_structure_parts(ignored))


def test_structure_loss_matches_hand_computation():
    logits, labels = as_tensors()
    assert structure_loss(logits, labels).item() == pytest.approx(hand_structure_loss(), rel=1e-5)
    # (B, H, W) logits are accepted too.
    assert structure_loss(logits[:, 0], labels).item() == pytest.approx(hand_structure_loss(), rel=1e-5)


def test_structure_loss_ignores_pixels_and_averages_images():
    ignored = {(0, 3), (2, 0)}
    logits, labels = as_tensors(ignored)
    assert structure_loss(logits, labels).item() == pytest.approx(hand_structure_loss(ignored), rel=1e-5)

    full_logits, full_labels = as_tensors()
    batch_logits = torch.cat([full_logits, logits])
    batch_labels = torch.cat([full_labels, labels])
    expected = (hand_structure_loss() + hand_structure_loss(ignored)) / 2
    assert structure_loss(batch_logits, batch_labels).item() == pytest.approx(expected, rel=1e-5)


def test_structure_loss_uses_the_weighted_bce_not_the_legacy_plain_mean():
    # PraNet's legacy `reduce="none"` turns its BCE into a plain mean over pixels; the spec's weighted form
    # differs as soon as the weights vary.
    logits, labels = as_tensors()
    _, wiou = hand_structure_parts()
    legacy = sum(bce(x, t) for x, t in pixels()) / 16 + wiou
    assert abs(structure_loss(logits, labels).item() - legacy) > 1e-3


def test_balanced_bce_matches_hand_computation():
    ignored = {(1, 1)}
    logits, labels = as_tensors(ignored)
    values = pixels(ignored)
    num_pos = sum(t for _, t in values)
    num_neg = len(values) - num_pos
    pos_weight = num_neg / num_pos
    per_pixel = [-(pos_weight * t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x))) for x, t in values]
    expected = num_pos / (num_pos + num_neg) * sum(per_pixel) / len(values)
    assert balanced_bce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_bce_is_zero_without_foreground():
    logits = torch.tensor(LOGITS).view(1, 1, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert balanced_bce_loss(logits, labels).item() == 0.0


def test_bce_dice_matches_hand_computation():
    ignored = {(3, 3), (0, 2)}
    logits, labels = as_tensors(ignored)
    values = pixels(ignored)
    mean_bce = sum(bce(x, t) for x, t in values) / len(values)
    probs = [(sigmoid(x), t) for x, t in values]
    dice = 1 - (2 * sum(p * t for p, t in probs) + 1) / (sum(p for p, _ in probs) + sum(t for _, t in probs) + 1)
    assert bce_dice_loss(logits, labels).item() == pytest.approx(mean_bce + dice, rel=1e-5)


def test_bce_iou_matches_hand_computation():
    ignored = {(1, 1), (2, 0)}
    logits, labels = as_tensors(ignored)
    values = pixels(ignored)
    mean_bce = sum(bce(x, t) for x, t in values) / len(values)
    probs = [(sigmoid(x), t) for x, t in values]
    intersection = sum(p * t for p, t in probs)
    union = sum(p for p, _ in probs) + sum(t for _, t in probs) - intersection
    iou = 1 - (intersection + 1e-3) / (union + 1e-3)
    assert bce_iou_loss(logits, labels).item() == pytest.approx(mean_bce + iou, rel=1e-5)
    assert binary_segmentation_loss(logits, labels, "bce_iou") == bce_iou_loss(logits, labels)


def test_binary_segmentation_loss_dispatches_and_rejects_unknown_names():
    logits, labels = as_tensors()
    assert binary_segmentation_loss(logits, labels, "structure").item() == pytest.approx(hand_structure_loss(), 1e-5)
    assert binary_segmentation_loss(logits, labels, "bce_dice") == bce_dice_loss(logits, labels)
    with pytest.raises(ValueError, match=r"Unknown binary loss 'focal'; expected one of"):
        binary_segmentation_loss(logits, labels, "focal")


def test_binary_loss_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"Expected logits of shape \(B, 1, H, W\) matching labels"):
        structure_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_semantic_to_mask_labels_never_makes_a_segment_of_ignored_pixels():
    labels = torch.tensor([[[0, 0, 255], [2, 2, 0]], [[255, 255, 255], [255, 255, 255]]])
    mask_labels, class_labels = semantic_to_mask_labels(labels, ignore_index=255)
    assert class_labels[0].tolist() == [0, 2]
    assert mask_labels[0].tolist() == [[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]]
    assert class_labels[1].numel() == 0
    assert mask_labels[1].shape == (0, 2, 3)


def test_semantic_set_loss_matches_hand_computation():
    # One image, all pixels class 1, two queries with zero mask logits: the sampled BCE is log(2) whatever the
    # points and the matching follows the class probabilities (query 0 -> class 1, query 1 -> "no object").
    masks_queries_logits = torch.zeros(1, 2, 4, 4)
    class_queries_logits = torch.tensor([[[0.0, 3.0, 0.0], [0.0, 0.0, 2.0]]])
    labels = torch.ones(1, 8, 8, dtype=torch.long)
    loss = semantic_set_loss(
        masks_queries_logits, class_queries_logits, labels, class_weight=1.0, mask_weight=5.0, dice_weight=0.0
    )

    def cross_entropy(logits: list[float], target: int) -> float:
        return -logits[target] + math.log(sum(math.exp(v) for v in logits))

    # Cross-entropy weighted 1 for classes and 0.1 for "no object", averaged with those weights.
    ce = (1.0 * cross_entropy([0, 3, 0], 1) + 0.1 * cross_entropy([0, 0, 2], 2)) / 1.1
    assert loss.item() == pytest.approx(1.0 * ce + 5.0 * math.log(2), rel=1e-5)


def test_semantic_set_loss_equals_mask2former_loss_without_ignored_pixels():
    torch.manual_seed(0)
    masks_queries_logits = torch.randn(2, 4, 8, 8)
    class_queries_logits = torch.randn(2, 4, 4)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, :16, 8:] = 1
    labels[0, 20:, :12] = 2
    labels[1, 10:30, 5:25] = 2

    torch.manual_seed(1)
    loss = semantic_set_loss(masks_queries_logits, class_queries_logits, labels, num_points=256)

    config = Mask2FormerConfig(
        num_labels=3, class_weight=1.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, train_num_points=256
    )
    reference = Mask2FormerLoss(config, weight_dict={})
    mask_labels, class_labels = semantic_to_mask_labels(labels)
    torch.manual_seed(1)
    losses = reference(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
    expected = losses["loss_cross_entropy"] + 5.0 * losses["loss_mask"] + 5.0 * losses["loss_dice"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_semantic_set_loss_does_not_look_at_ignored_pixels():
    # Right half of the labels ignored; predictions changed deep inside it. With uniform point sampling
    # (importance_sample_ratio=0) and the same seed, our loss is unchanged while Mask2Former's own loss, which
    # treats those pixels as negatives of every mask, changes.
    torch.manual_seed(0)
    masks_queries_logits = torch.randn(1, 3, 16, 16)
    class_queries_logits = torch.randn(1, 3, 3)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 10:40, 5:25] = 1
    labels[0, :, 32:] = 255
    changed = masks_queries_logits.clone()
    changed[..., 10:] += 5.0

    kwargs = {"num_points": 512, "importance_sample_ratio": 0.0}
    torch.manual_seed(1)
    loss = semantic_set_loss(masks_queries_logits, class_queries_logits, labels, **kwargs)
    torch.manual_seed(1)
    loss_changed = semantic_set_loss(changed, class_queries_logits, labels, **kwargs)
    assert loss_changed.item() == pytest.approx(loss.item(), rel=1e-6)

    config = Mask2FormerConfig(num_labels=2, train_num_points=512, importance_sample_ratio=0.0)
    reference = Mask2FormerLoss(config, weight_dict={})
    mask_labels, class_labels = semantic_to_mask_labels(labels)
    torch.manual_seed(1)
    reference_loss = reference(masks_queries_logits, class_queries_logits, mask_labels, class_labels)["loss_mask"]
    torch.manual_seed(1)
    reference_changed = reference(changed, class_queries_logits, mask_labels, class_labels)["loss_mask"]
    assert reference_changed.item() != pytest.approx(reference_loss.item(), rel=1e-3)


def test_semantic_set_loss_handles_a_fully_ignored_image():
    masks_queries_logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    class_queries_logits = torch.randn(2, 3, 3, requires_grad=True)
    labels = torch.full((2, 16, 16), 255, dtype=torch.long)
    labels[0, :8] = 1
    loss = semantic_set_loss(masks_queries_logits, class_queries_logits, labels, num_points=64)
    loss.backward()
    assert torch.isfinite(loss)
    assert masks_queries_logits.grad[0].abs().sum() > 0
    # The fully ignored image only trains its queries towards "no object".
    assert masks_queries_logits.grad[1].abs().sum() == 0
    assert class_queries_logits.grad[1].abs().sum() > 0
