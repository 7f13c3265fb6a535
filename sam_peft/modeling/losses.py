"""Training losses of the prompt-free SAM segmenter (`SamForSemanticSegmentation`).

Binary tasks (one logit map per image, labels 0 / 1 with an ignore index):

- `structure_loss`: PraNet's weighted BCE + weighted IoU, the default of the Conv-LoRA code;
- `balanced_bce_loss`: BCE with positives re-weighted by the negative/positive ratio (shadow detection);
- `bce_dice_loss`: plain BCE + soft dice;
- `bce_iou_loss`: plain BCE + soft IoU, the loss of the CAD and SAM-Adapter code.

Prompted (interactive) SAM: `prompted_mask_loss`, SAM's focal + dice mask loss with the IoU head's MSE, the
lowest-loss candidate of a multimask output trained for each prompt.

Multi-class tasks (N mask queries with class logits, Mask2Former style): `semantic_set_loss` builds one binary
target mask per class present in each label map and reuses transformers' `Mask2FormerLoss` (Hungarian matching,
point-sampled mask losses, no-object weight), extended so that pixels carrying the ignore index neither become a
segment nor count in the mask losses and matching costs.

Shapes: `B` images, `H x W` label resolution, `N` mask queries, `K` classes, `P` sampled points, `T` target
segments of one image, `M` matched (query, segment) pairs of a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerHungarianMatcher,
    Mask2FormerLoss,
    sample_point,
)

DEFAULT_IGNORE_INDEX = 255

# Keeps divisions finite for images whose pixels are all ignored; their numerators are then 0 as well.
_EPS = 1e-6


def _binary_targets(logits: Tensor, labels: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Aligns binary logits and labels.

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` logits.
        labels: `(B, H, W)` integer (or bool) labels: 0 background, 1 foreground, `ignore_index` ignored.
        ignore_index: label value that is ignored; `None` when every pixel counts.

    Returns:
        `(logits, target, valid)`, each float `(B, 1, H, W)`: target is 1 on foreground and 0 elsewhere (ignored
        pixels included), valid is 0 on ignored pixels and 1 elsewhere.
    """
    if logits.dim() == 3:
        logits = logits.unsqueeze(1)
    labels = labels.unsqueeze(1)
    if logits.shape != labels.shape:
        raise ValueError(
            f"Expected logits of shape (B, 1, H, W) matching labels (B, H, W); got logits {tuple(logits.shape)} "
            f"and labels {tuple(labels.shape[:1] + labels.shape[2:])}."
        )
    valid = torch.ones_like(logits) if ignore_index is None else (labels != ignore_index).to(logits.dtype)
    target = (labels == 1).to(logits.dtype)
    return logits, target, valid


def structure_loss(logits: Tensor, labels: Tensor, ignore_index: int | None = DEFAULT_IGNORE_INDEX) -> Tensor:
    """PraNet's structure loss: boundary-weighted BCE plus boundary-weighted IoU, averaged over images.

    With `g` the binary target, `p = sigmoid(logits)` and `w = 1 + 5 * |avgpool_31x31(g) - g|` (stride 1,
    padding 15, zero padding counted in the average), per image:

        wbce = sum(w * bce(logits, g)) / sum(w)
        wiou = 1 - (sum(w * p * g) + 1) / (sum(w * (p + g)) - sum(w * p * g) + 1)

    and the loss is the mean over images of `wbce + wiou`. The reference implementation (PraNet, and the
    Conv-LoRA code that copies it) calls `binary_cross_entropy_with_logits(..., reduce="none")`; that legacy
    argument is truthy, so its BCE is reduced to a plain mean over all pixels before the weighting, which then
    cancels out. This function uses the weighted form the formula states; with constant weights both agree.

    Ignored pixels count as background when the weights are pooled and then get weight 0, so they take no part
    in either term.

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` foreground logits.
        labels: `(B, H, W)` labels in {0, 1, `ignore_index`}.
        ignore_index: label value to ignore, or `None`.

    Returns:
        0-dim loss.
    """
    logits, target, valid = _binary_targets(logits, labels, ignore_index)
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, kernel_size=31, stride=1, padding=15) - target)
    weight = weight * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # (B, 1) per-image terms
    weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(_EPS)
    prob = torch.sigmoid(logits)
    intersection = (weight * prob * target).sum(dim=(2, 3))
    union = (weight * (prob + target)).sum(dim=(2, 3))
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (weighted_bce + weighted_iou).mean()


def balanced_bce_loss(logits: Tensor, labels: Tensor, ignore_index: int | None = DEFAULT_IGNORE_INDEX) -> Tensor:
    """Class-balanced BCE, used for shadow detection (SBU, ISTD).

    With `N_pos` / `N_neg` the numbers of foreground / background pixels of the whole batch (ignored pixels
    excluded), the BCE uses `pos_weight = N_neg / N_pos`, is averaged over the non-ignored pixels and scaled by
    `N_pos / (N_pos + N_neg)`. A batch without foreground pixels therefore gives 0, as in the reference.

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` foreground logits.
        labels: `(B, H, W)` labels in {0, 1, `ignore_index`}.
        ignore_index: label value to ignore, or `None`.

    Returns:
        0-dim loss.
    """
    logits, target, valid = _binary_targets(logits, labels, ignore_index)
    num_pos = (target * valid).sum()
    num_neg = ((1 - target) * valid).sum()
    pos_weight = num_neg / num_pos.clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    mean_bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    return num_pos / (num_pos + num_neg).clamp_min(1) * mean_bce


def _mean_bce_and_probabilities(logits: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """BCE averaged over the non-ignored pixels (0-dim), and the probabilities with ignored pixels at 0,
    `(B, 1, H, W)`: what the BCE + region losses share."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mean_bce = (bce * valid).sum() / valid.sum().clamp_min(1)
    return mean_bce, torch.sigmoid(logits) * valid


def bce_dice_loss(logits: Tensor, labels: Tensor, ignore_index: int | None = DEFAULT_IGNORE_INDEX) -> Tensor:
    """BCE averaged over the non-ignored pixels plus the soft dice loss averaged over images.

    Per image, `dice = 1 - (2 * sum(p * g) + 1) / (sum(p) + sum(g) + 1)` over the non-ignored pixels, with
    `p = sigmoid(logits)` (the smoothing of transformers' `dice_loss`).

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` foreground logits.
        labels: `(B, H, W)` labels in {0, 1, `ignore_index`}.
        ignore_index: label value to ignore, or `None`.

    Returns:
        0-dim loss.
    """
    logits, target, valid = _binary_targets(logits, labels, ignore_index)
    mean_bce, prob = _mean_bce_and_probabilities(logits, target, valid)
    # (B, 1) per-image terms
    numerator = 2 * (prob * target).sum(dim=(2, 3))
    denominator = prob.sum(dim=(2, 3)) + (target * valid).sum(dim=(2, 3))
    dice = 1 - (numerator + 1) / (denominator + 1)
    return mean_bce + dice.mean()


def bce_iou_loss(logits: Tensor, labels: Tensor, ignore_index: int | None = DEFAULT_IGNORE_INDEX) -> Tensor:
    """BCE averaged over the non-ignored pixels plus the soft IoU loss averaged over images (CAD's loss).

    Per image, `iou = 1 - (sum(p * g) + 1e-3) / (sum(p) + sum(g) - sum(p * g) + 1e-3)` over the non-ignored
    pixels, with `p = sigmoid(logits)`: the smoothing of the CAD and SAM-Adapter code.

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` foreground logits.
        labels: `(B, H, W)` labels in {0, 1, `ignore_index`}.
        ignore_index: label value to ignore, or `None`.

    Returns:
        0-dim loss.
    """
    logits, target, valid = _binary_targets(logits, labels, ignore_index)
    mean_bce, prob = _mean_bce_and_probabilities(logits, target, valid)
    target = target * valid
    # (B, 1) per-image terms
    intersection = (prob * target).sum(dim=(2, 3))
    union = prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) - intersection
    iou = 1 - (intersection + 1e-3) / (union + 1e-3)
    return mean_bce + iou.mean()


BINARY_LOSSES: dict[str, Callable[..., Tensor]] = {
    "structure": structure_loss,
    "balanced_bce": balanced_bce_loss,
    "bce_dice": bce_dice_loss,
    "bce_iou": bce_iou_loss,
}


def binary_segmentation_loss(
    logits: Tensor, labels: Tensor, loss_type: str = "structure", ignore_index: int | None = DEFAULT_IGNORE_INDEX
) -> Tensor:
    """The binary loss named `loss_type` ("structure", "balanced_bce", "bce_dice" or "bce_iou"); see `BINARY_LOSSES`.

    Args:
        logits: `(B, 1, H, W)` or `(B, H, W)` foreground logits.
        labels: `(B, H, W)` labels in {0, 1, `ignore_index`}.

    Returns:
        0-dim loss.
    """
    if loss_type not in BINARY_LOSSES:
        raise ValueError(f"Unknown binary loss {loss_type!r}; expected one of {sorted(BINARY_LOSSES)}.")
    return BINARY_LOSSES[loss_type](logits, labels, ignore_index=ignore_index)


def semantic_to_mask_labels(
    labels: Tensor, ignore_index: int | None = DEFAULT_IGNORE_INDEX
) -> tuple[list[Tensor], list[Tensor]]:
    """Splits label maps into Mask2Former targets: one binary mask per class present in each image.

    Pixels equal to `ignore_index` belong to no mask, so the ignore index never becomes a segment.

    Args:
        labels: `(B, H, W)` integer class ids.
        ignore_index: label value that is not a class, or `None`.

    Returns:
        `(mask_labels, class_labels)`: per image, float masks `(T, H, W)` and int64 class ids `(T,)`, sorted by
        class id (`T = 0` for an image whose pixels are all ignored).
    """
    mask_labels, class_labels = [], []
    for label_map in labels:
        classes = torch.unique(label_map)
        if ignore_index is not None:
            classes = classes[classes != ignore_index]
        classes = classes.long()
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
        class_labels.append(classes)
    return mask_labels, class_labels


def _sample_masked_targets(targets: Tensor, valid: Tensor, point_coordinates: Tensor) -> tuple[Tensor, Tensor]:
    """Samples target masks at points, leaving ignored pixels out of the interpolation.

    The point weight is the bilinear interpolation of the valid map (0 inside ignored regions, fractional on
    their border) and the point target is the interpolated target divided by it, i.e. the interpolation over
    the valid neighbours only (targets are 0 on ignored pixels). Targets are sampled as in Mask2Former (zero
    padding outside the image); without ignored pixels all weights are 1 and the targets are Mask2Former's.

    Args:
        targets: `(R, 1, H, W)` binary target masks (0 on ignored pixels).
        valid: `(R, 1, H, W)` or `(1, 1, H, W)` valid maps (1 = not ignored).
        point_coordinates: `(R, P, 2)` or `(1, P, 2)` coordinates in [0, 1] x [0, 1].

    Returns:
        `(point_targets, point_weights)`: `(R, P)` targets in [0, 1] and `(R or 1, P)` weights in [0, 1].
    """
    num_targets = targets.shape[0]
    target_coordinates = point_coordinates.expand(num_targets, -1, -1)
    point_targets = sample_point(targets, target_coordinates, align_corners=False).squeeze(1)
    # Border padding: without ignored pixels every weight is exactly 1, as in Mask2Former.
    point_weights = sample_point(valid, point_coordinates, align_corners=False, padding_mode="border").squeeze(1)
    point_targets = point_targets / point_weights.clamp_min(_EPS)
    return point_targets.clamp(0, 1), point_weights


class MaskedHungarianMatcher(Mask2FormerHungarianMatcher):
    """`Mask2FormerHungarianMatcher` whose mask costs skip ignored pixels.

    Same costs (class probability, mask BCE and dice on `num_points` uniformly sampled points, combined with
    `cost_class`, `cost_mask` and `cost_dice`), but every point is weighted by the interpolated valid map of
    its image (see `_sample_masked_targets`), so ignored pixels do not influence the assignment.
    """

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        valid_masks: Tensor,
    ) -> list[tuple[Tensor, Tensor]]:
        """Matches queries to target segments, image by image.

        Args:
            masks_queries_logits: `(B, N, h, w)` mask logits.
            class_queries_logits: `(B, N, K + 1)` class logits.
            mask_labels: per image `(T, H, W)` binary target masks.
            class_labels: per image `(T,)` class ids.
            valid_masks: `(B, H, W)` valid maps (1 = not ignored).

        Returns:
            Per image, `(query_indices, target_indices)`, int64 tensors of length `min(N, T)`.
        """
        indices = []
        for logits, class_logits, targets, classes, valid in zip(
            masks_queries_logits, class_queries_logits, mask_labels, class_labels, valid_masks, strict=True
        ):
            if classes.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            # (N, T): the class cost is the negative probability of the target class.
            cost_class = -class_logits.softmax(-1)[:, classes]
            point_coordinates = torch.rand(1, self.num_points, 2, device=logits.device)
            point_targets, point_weights = _sample_masked_targets(
                targets[:, None].to(logits), valid[None, None].to(logits), point_coordinates
            )
            point_logits = sample_point(
                logits[:, None], point_coordinates.expand(logits.shape[0], -1, -1), align_corners=False
            ).squeeze(1)
            cost_mask, cost_dice = _pairwise_mask_costs(point_logits, point_targets, point_weights[0])
            cost_matrix = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
            # As in transformers: NaN / inf costs become the largest value, so they are matched last.
            max_value = torch.finfo(cost_matrix.dtype).max
            cost_matrix = torch.nan_to_num(cost_matrix, nan=max_value, posinf=max_value, neginf=max_value)
            query_indices, target_indices = linear_sum_assignment(cost_matrix.float().cpu())
            indices.append(
                (torch.as_tensor(query_indices, dtype=torch.int64), torch.as_tensor(target_indices, dtype=torch.int64))
            )
        return indices


def _pairwise_mask_costs(point_logits: Tensor, point_targets: Tensor, point_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mask BCE and dice costs between every query and every target of one image.

    Args:
        point_logits: `(N, P)` query logits at the sampled points.
        point_targets: `(T, P)` targets in [0, 1] at the same points.
        point_weights: `(P,)` point weights.

    Returns:
        `(cost_mask, cost_dice)`, each `(N, T)`.
    """
    weighted_pos = F.softplus(-point_logits) * point_weights  # BCE against target 1, (N, P)
    weighted_neg = F.softplus(point_logits) * point_weights  # BCE against target 0, (N, P)
    total_weight = point_weights.sum().clamp_min(_EPS)
    cost_mask = (weighted_pos @ point_targets.T + weighted_neg @ (1 - point_targets).T) / total_weight
    probs = point_logits.sigmoid() * point_weights
    numerator = 2 * probs @ point_targets.T
    denominator = probs.sum(-1)[:, None] + (point_targets * point_weights).sum(-1)[None, :]
    cost_dice = 1 - (numerator + 1) / (denominator + 1)
    return cost_mask, cost_dice


class MaskedMask2FormerLoss(Mask2FormerLoss):
    """transformers' `Mask2FormerLoss` with an ignore region.

    Matching (`MaskedHungarianMatcher`), the classification loss (`loss_labels`, no-object weight), the
    uncertainty-based point sampling and the normalisation by the number of target masks are Mask2Former's; the
    mask BCE and dice losses weight every sampled point by the interpolated valid map (see
    `_sample_masked_targets`), so ignored pixels do not count. With no ignored pixel this is Mask2Former's loss.
    """

    def __init__(self, config: Mask2FormerConfig, weight_dict: dict[str, float]):
        super().__init__(config, weight_dict)
        self.matcher = MaskedHungarianMatcher(
            cost_class=config.class_weight,
            cost_mask=config.mask_weight,
            cost_dice=config.dice_weight,
            num_points=self.num_points,
        )

    def loss_masks(
        self,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: Tensor,
        valid_masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Point-sampled mask BCE and dice of the matched pairs, ignoring invalid pixels.

        Args:
            masks_queries_logits: `(B, N, h, w)` mask logits.
            mask_labels: per image `(T, H, W)` binary target masks.
            indices: the matcher's output.
            num_masks: number of target masks used for normalisation.
            valid_masks: `(B, H, W)` valid maps (1 = not ignored); `None` means all valid.

        Returns:
            `{"loss_mask": 0-dim, "loss_dice": 0-dim}`.
        """
        src_idx = self._get_predictions_permutation_indices(indices)
        tgt_idx = self._get_targets_permutation_indices(indices)
        pred_masks = masks_queries_logits[src_idx][:, None]  # (M, 1, h, w)
        target_masks, _ = self._pad_images_to_max_in_batch(mask_labels)
        target_masks = target_masks[tgt_idx][:, None].to(pred_masks)  # (M, 1, H, W)
        if valid_masks is None:
            valid = torch.ones_like(target_masks)
        else:
            valid = valid_masks[tgt_idx[0]][:, None].to(pred_masks)  # (M, 1, H, W)

        with torch.no_grad():
            point_coordinates = self.sample_points_using_uncertainty(
                pred_masks,
                self.calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )  # (M, P, 2)
            point_targets, point_weights = _sample_masked_targets(target_masks, valid, point_coordinates)
        point_logits = sample_point(pred_masks, point_coordinates, align_corners=False).squeeze(1)  # (M, P)

        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none")
        loss_mask = (bce * point_weights).sum(-1) / point_weights.sum(-1).clamp_min(_EPS)
        probs = point_logits.sigmoid() * point_weights
        numerator = 2 * (probs * point_targets).sum(-1)
        denominator = probs.sum(-1) + (point_targets * point_weights).sum(-1)
        loss_dice = 1 - (numerator + 1) / (denominator + 1)
        return {"loss_mask": loss_mask.sum() / num_masks, "loss_dice": loss_dice.sum() / num_masks}

    def forward(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        valid_masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Mask2Former's losses for one set of predictions.

        Args:
            masks_queries_logits: `(B, N, h, w)` mask logits (any resolution: points are sampled in normalised
                coordinates).
            class_queries_logits: `(B, N, K + 1)` class logits, the last one "no object".
            mask_labels: per image `(T, H, W)` binary target masks.
            class_labels: per image `(T,)` class ids.
            valid_masks: `(B, H, W)` valid maps (1 = not ignored); `None` means all valid.

        Returns:
            `{"loss_cross_entropy", "loss_mask", "loss_dice"}`, unweighted 0-dim losses.
        """
        if valid_masks is None:
            valid_masks = torch.ones((len(mask_labels), *mask_labels[0].shape[-2:]), device=masks_queries_logits.device)
        indices = self.matcher(masks_queries_logits, class_queries_logits, mask_labels, class_labels, valid_masks)
        num_masks = self.get_num_masks(class_labels, device=masks_queries_logits.device)
        return {
            **self.loss_masks(masks_queries_logits, mask_labels, indices, num_masks, valid_masks),
            **self.loss_labels(class_queries_logits, class_labels, indices),
        }


def semantic_set_loss(
    masks_queries_logits: Tensor,
    class_queries_logits: Tensor,
    labels: Tensor,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    class_weight: float = 1.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> Tensor:
    """Mask2Former-style set loss for N mask queries against semantic label maps.

    The label maps are split into one binary mask per class present (`semantic_to_mask_labels`); queries are
    matched to them with the Hungarian algorithm and the loss is
    `class_weight * CE + mask_weight * BCE + dice_weight * dice` (`MaskedMask2FormerLoss`), where unmatched
    queries are trained towards "no object" with weight `no_object_weight` and ignored pixels do not count.

    Args:
        masks_queries_logits: `(B, N, h, w)` mask logits, at any resolution.
        class_queries_logits: `(B, N, K + 1)` class logits, the last one "no object".
        labels: `(B, H, W)` integer class ids in [0, K) or `ignore_index`.
        ignore_index: label value that is ignored, or `None`.
        class_weight, mask_weight, dice_weight: weights of the three losses and matching costs.
        no_object_weight: cross-entropy weight of the "no object" class.
        num_points: points sampled per mask for the mask losses and the matching.
        oversample_ratio, importance_sample_ratio: Mask2Former's uncertainty-based point sampling.

    Returns:
        0-dim loss.
    """
    num_labels = class_queries_logits.shape[-1] - 1
    mask_labels, class_labels = semantic_to_mask_labels(labels, ignore_index)
    if ignore_index is None:
        valid_masks = torch.ones(labels.shape, device=labels.device)
    else:
        valid_masks = (labels != ignore_index).float()
    config = Mask2FormerConfig(
        num_labels=num_labels,
        class_weight=class_weight,
        mask_weight=mask_weight,
        dice_weight=dice_weight,
        no_object_weight=no_object_weight,
        train_num_points=num_points,
        oversample_ratio=oversample_ratio,
        importance_sample_ratio=importance_sample_ratio,
    )
    weight_dict = {"loss_cross_entropy": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    criterion = MaskedMask2FormerLoss(config, weight_dict).to(masks_queries_logits.device)
    losses = criterion(masks_queries_logits, class_queries_logits, mask_labels, class_labels, valid_masks)
    return sum(weight_dict[name] * loss for name, loss in losses.items())


def sigmoid_focal_terms(logits: Tensor, target: Tensor, alpha: float, gamma: float) -> Tensor:
    """The focal loss of each element (Lin et al., RetinaNet): `alpha_t (1 - p_t)^gamma BCE(logit, target)`, with
    `p_t` the probability given to the target class and `alpha_t` = `alpha` on targets 1, `1 - alpha` on 0.

    Args:
        logits: logits of any shape; `target` the same shape, 0 / 1.
    """
    probabilities = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = probabilities * target + (1 - probabilities) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return alpha_t * (1 - p_t) ** gamma * bce


def prompted_mask_loss(
    mask_logits: Tensor,
    iou_predictions: Tensor,
    labels: Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
) -> Tensor:
    """SAM's loss for prompted masks: `focal_weight` x focal + `dice_weight` x dice per candidate mask, the
    candidate of least mask loss trained for each prompt, plus `iou_weight` x MSE between the IoU head's predictions
    and the IoUs the candidates reach (SAM: focal and dice 20 : 1, IoU MSE weight 1, only the lowest-loss mask
    trained when several are output).

    Args:
        mask_logits: `(B, P, M, h, w)` low-resolution mask logits of M candidates for each of P prompts per image
            (transformers' `pred_masks`); upsampled (bilinear) to the labels' size.
        iou_predictions: `(B, P, M)` the IoU head's predictions (transformers' `iou_scores`).
        labels: `(B, P, H, W)` each prompt's target object: 1 object, 0 elsewhere, `ignore_index` ignored (padding).
        focal_alpha, focal_gamma: the focal loss's class balance and focusing parameters.

    Returns:
        0-dim loss: the mean over prompts of the chosen candidate's mask loss, plus the IoU term averaged over every
        candidate (each candidate's IoU is defined, so every prediction of the IoU head is trained). Focal is the
        mean over a prompt's valid pixels; dice is `1 - (2 |p t| + 1) / (|p| + |t| + 1)` on probabilities.
    """
    if mask_logits.dim() != 5 or iou_predictions.shape != mask_logits.shape[:3]:
        raise ValueError(
            "Expected mask_logits (B, P, M, h, w) and iou_predictions (B, P, M); got "
            f"{tuple(mask_logits.shape)} and {tuple(iou_predictions.shape)}."
        )
    if labels.dim() != 4 or labels.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            f"Expected labels (B, P, H, W) for mask_logits {tuple(mask_logits.shape)}; got {tuple(labels.shape)}."
        )
    batch, prompts, candidates = mask_logits.shape[:3]
    logits = F.interpolate(
        mask_logits.flatten(0, 1).float(), size=labels.shape[-2:], mode="bilinear", align_corners=False
    ).unflatten(0, (batch, prompts))  # (B, P, M, H, W)
    valid = torch.ones_like(labels, dtype=logits.dtype) if ignore_index is None else (labels != ignore_index).float()
    valid = valid.unsqueeze(2)  # (B, P, 1, H, W)
    target = (labels == 1).to(logits.dtype).unsqueeze(2)
    probabilities = logits.sigmoid()
    pixels = valid.sum(dim=(-2, -1)).clamp_min(1)  # (B, P, 1)
    focal_terms = sigmoid_focal_terms(logits, target.expand_as(logits), focal_alpha, focal_gamma)
    focal = (focal_terms * valid).sum(dim=(-2, -1)) / pixels  # (B, P, M)
    intersection = (probabilities * target * valid).sum(dim=(-2, -1))
    dice = 1 - (2 * intersection + 1) / (
        (probabilities * valid).sum(dim=(-2, -1)) + (target * valid).sum(dim=(-2, -1)) + 1
    )
    mask_loss = focal_weight * focal + dice_weight * dice  # (B, P, M)
    chosen = mask_loss.min(dim=2).values if candidates > 1 else mask_loss[..., 0]
    with torch.no_grad():
        hard = (logits > 0).to(logits.dtype) * valid
        union = ((hard + target * valid) > 0).to(logits.dtype).sum(dim=(-2, -1))
        reached = (hard * target).sum(dim=(-2, -1)) / union.clamp_min(1)  # (B, P, M)
    iou_error = F.mse_loss(iou_predictions.float(), reached)
    return chosen.mean() + iou_weight * iou_error
