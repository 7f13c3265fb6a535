"""`prompted_mask_loss`: SAM's focal + dice + IoU-MSE loss for prompted masks, against a pixel-by-pixel
re-computation, with the lowest-loss candidate of a multimask output trained and ignored pixels left out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sam_peft.continual.prompting import DomainTrainingArguments, prompted_segmentation_loss
from sam_peft.modeling.losses import prompted_mask_loss


def case(seed: int = 0, candidates: int = 3):
    generator = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(2, 2, candidates, 4, 4, generator=generator) * 3
    iou_predictions = torch.rand(2, 2, candidates, generator=generator)
    labels = (torch.rand(2, 2, 8, 8, generator=generator) > 0.5).long()
    labels[0, 1, :2] = 255  # padding rows of one prompt's target
    return mask_logits, iou_predictions, labels


def reference(mask_logits, iou_predictions, labels, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0):
    """The loss by its definition, one prompt, one candidate and one pixel at a time."""
    alpha, gamma = 0.25, 2.0
    upsampled = F.interpolate(mask_logits.flatten(0, 1), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    upsampled = upsampled.unflatten(0, mask_logits.shape[:2])
    chosen, iou_errors = [], []
    for b in range(labels.shape[0]):
        for p in range(labels.shape[1]):
            losses = []
            for m in range(mask_logits.shape[2]):
                focal_sum = intersection = prob_sum = target_sum = hits = union = 0.0
                valid_count = 0
                for y in range(labels.shape[2]):
                    for x in range(labels.shape[3]):
                        label = int(labels[b, p, y, x])
                        if label == 255:
                            continue
                        valid_count += 1
                        logit = float(upsampled[b, p, m, y, x])
                        prob = 1 / (1 + math.exp(-logit))
                        t = float(label == 1)
                        p_t = prob if t else 1 - prob
                        a_t = alpha if t else 1 - alpha
                        focal_sum += -a_t * (1 - p_t) ** gamma * math.log(max(p_t, 1e-300))
                        intersection += prob * t
                        prob_sum += prob
                        target_sum += t
                        predicted = logit > 0
                        hits += float(predicted and t)
                        union += float(predicted or t)
                focal = focal_sum / max(valid_count, 1)
                dice = 1 - (2 * intersection + 1) / (prob_sum + target_sum + 1)
                losses.append(focal_weight * focal + dice_weight * dice)
                iou_errors.append((float(iou_predictions[b, p, m]) - hits / max(union, 1)) ** 2)
            chosen.append(min(losses))
    return sum(chosen) / len(chosen) + iou_weight * sum(iou_errors) / len(iou_errors)


@pytest.mark.parametrize("candidates", [1, 3])
def test_equals_the_definition_pixel_by_pixel(candidates):
    mask_logits, iou_predictions, labels = case(candidates=candidates)
    expected = reference(mask_logits, iou_predictions, labels)
    assert prompted_mask_loss(mask_logits, iou_predictions, labels).item() == pytest.approx(expected, rel=1e-5)
    weights = {"focal_weight": 1.0, "dice_weight": 10.0, "iou_weight": 0.5}
    expected = reference(mask_logits, iou_predictions, labels, **weights)
    assert prompted_mask_loss(mask_logits, iou_predictions, labels, **weights).item() == pytest.approx(expected, 1e-5)


def test_only_the_lowest_loss_candidate_of_each_prompt_gets_a_mask_gradient():
    mask_logits, iou_predictions, labels = case()
    mask_logits.requires_grad_(True)
    prompted_mask_loss(mask_logits, iou_predictions, labels).backward()
    touched = mask_logits.grad.flatten(3).abs().sum(-1) > 0  # (B, P, M)
    assert touched.sum(-1).tolist() == [[1, 1], [1, 1]]
    # the candidate trained is the one whose mask loss alone is lowest
    for b in range(2):
        for p in range(2):
            alone = [
                reference(
                    mask_logits[b : b + 1, p : p + 1, m : m + 1].detach(),
                    torch.zeros(1, 1, 1),
                    labels[b : b + 1, p : p + 1],
                    iou_weight=0,
                )
                for m in range(3)
            ]
            assert touched[b, p].nonzero().item() == min(range(3), key=alone.__getitem__)


def test_ignored_pixels_do_not_count():
    mask_logits, iou_predictions, labels = case()
    labels[:, :, :, :3] = 255
    changed = mask_logits.clone()
    changed[..., :1] += 50.0  # low-resolution column 0 upsamples into ignored label columns 0..2 only
    assert torch.equal(
        prompted_mask_loss(mask_logits, iou_predictions, labels), prompted_mask_loss(changed, iou_predictions, labels)
    )


def test_matches_samcl_with_its_weights_for_one_mask_and_full_labels():
    """With one mask per image, no ignored pixels and SAMCL's weights, SAM's loss is the continual recipe's."""
    mask_logits, iou_predictions, labels = case(candidates=1)
    labels = labels[:, :1].clamp_max(1)
    mask_logits, iou_predictions = mask_logits[:, :1], iou_predictions[:, :1]
    args = DomainTrainingArguments()
    weights = {"focal_weight": 1.0, "dice_weight": args.dice_weight, "iou_weight": args.iou_weight}
    weights |= {"focal_alpha": args.focal_alpha, "focal_gamma": args.focal_gamma}
    ours = prompted_mask_loss(mask_logits, iou_predictions, labels, **weights)
    samcl = prompted_segmentation_loss(mask_logits[:, 0], iou_predictions[:, 0], labels[:, 0], args)
    torch.testing.assert_close(ours, samcl)


def test_shapes_are_checked():
    mask_logits, iou_predictions, labels = case()
    with pytest.raises(ValueError, match=r"mask_logits \(B, P, M, h, w\) and iou_predictions \(B, P, M\)"):
        prompted_mask_loss(mask_logits[:, 0], iou_predictions, labels)
    with pytest.raises(ValueError, match=r"Expected labels \(B, P, H, W\)"):
        prompted_mask_loss(mask_logits, iou_predictions, labels[:, 0])
