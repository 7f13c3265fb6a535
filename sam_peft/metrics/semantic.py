"""Streaming semantic segmentation metrics: mean IoU, pixel accuracy and Trans10K's MAE and mBER.

For every image `SemanticMetrics.update` counts the pixels of each (reference label, predicted label) pair
that occurs, a few numbers per image. These counts determine every metric for any `num_labels` and
`ignore_index`, so both can be given to `compute`, as with the Hub's `mean_iou`, even though the label maps
are not kept.

Definitions (C classes, background included, pixels whose reference is `ignore_index` left out):
- `per_category_iou[c]`: intersection over union of class c with the pixels of the whole dataset; NaN for
  a class absent from both references and predictions. `mean_iou`: mean over the classes that are not NaN.
- `accuracy`: correctly labelled pixels over all pixels. `mean_accuracy`: mean over classes present in the
  references of the per-class recall.
- `mae` and `mber` follow the evaluation code of TransLab (Xie et al., "Segmenting Transparent Objects in
  the Wild", ECCV 2020; github.com/xieenze/Segment_Transparent_Objects, `segmentron/utils/score.py`,
  `batch_mae`, `batch_ber` and `SegmentationMetric.get`), which the Trans10K papers report; Trans2Seg's
  public code computes only pixel accuracy and mIoU.
  - `mae`: per image, the mean of |predicted label - reference label| over its pixels (label ids as numbers,
    so it lies in [0, C - 1]), averaged over images.
  - `mber`: per image and non-background class c present in its reference, the balanced error rate
    `1 - (TP / N_p + TN / N_n) / 2`, with N_p the pixels of class c, N_n the others, TP the pixels of class c
    predicted as c and TN the other pixels predicted correctly (TransLab's definition: correct, not merely
    "not c"). Each class's BER is averaged over the images that contain it, and `mber` is the mean over
    classes. Returned as a fraction (TransLab prints percent).
  Differences from that code, which never meets these cases on Trans10K: ignored pixels are left out
  (it has no ignore label), an image made entirely of class c counts TN / N_n as 0 and a class absent from
  every image is skipped in the mean (both would be NaN there), and TransLab's hard-coded classes 1 and 2
  become classes 1 to C - 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._inputs import first_failing, group_by_size

_DENSE_BINS = 1 << 26  # largest joint histogram counted with bincount; beyond it, torch.unique
_UNSET: Any = object()


def joint_label_counts(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Pixels of every (reference, prediction) label pair that occurs, per image.

    Args:
        predictions: (B, H, W) non-negative integer label maps.
        references: (B, H, W) non-negative integer label maps.

    Returns:
        (N, 4) int64 rows `[image, reference label, predicted label, pixels]`, image in 0..B-1.
    """
    batch = predictions.shape[0]
    pred = predictions.to(torch.int64).flatten(1)
    ref = references.to(torch.int64).flatten(1)
    num_pred = int(pred.max()) + 1
    num_ref = int(ref.max()) + 1
    image = torch.arange(batch, device=pred.device).view(batch, 1)
    keys = ((image * num_ref + ref) * num_pred + pred).flatten()
    if batch * num_ref * num_pred <= _DENSE_BINS:
        counts = torch.bincount(keys, minlength=batch * num_ref * num_pred)
        keys = torch.nonzero(counts).flatten()
        counts = counts[keys]
    else:
        keys, counts = torch.unique(keys, return_counts=True)
    image, rest = keys.div(num_ref * num_pred, rounding_mode="floor"), keys % (num_ref * num_pred)
    ref_label, pred_label = rest.div(num_pred, rounding_mode="floor"), rest % num_pred
    return torch.stack([image, ref_label, pred_label, counts], dim=1).cpu()


def _check_labels(maps: torch.Tensor, indices: list[int], name: str) -> None:
    if maps.is_floating_point() or maps.is_complex() or maps.dtype == torch.bool:
        raise TypeError(f"{name} must be integer label maps, got {maps.dtype}.")
    bad = first_failing(indices, maps.flatten(1).amin(dim=1) < 0)
    if bad is not None:
        raise ValueError(f"{name[:-1]} {bad} contains negative label ids.")


def _nan_mean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return kept.mean().item() if len(kept) else math.nan


def _ratio_or_nan(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), math.nan)


def check_num_labels(num_labels: Any, fix: str = "SemanticMetrics(num_labels=K)") -> int:
    """`num_labels` as an int, or a ValueError that names `fix` (how to pass it) if it is missing or below 1."""
    if num_labels is None:
        raise ValueError(f"`num_labels` is required: pass the number of classes K, e.g. `{fix}`.")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int | np.integer) or num_labels < 1:
        raise ValueError(f"`num_labels` must be a positive int (the number of classes), got {num_labels!r}.")
    return int(num_labels)


class SemanticMetrics:
    """Streaming semantic segmentation metrics (see the module docstring for the definitions).

    Args:
        num_labels: number of classes C (labels 0..C-1, background included); required (a ValueError
            otherwise); `compute` may override it.
        ignore_index: reference label left out of every metric (None: none); `compute` may override it.
    """

    def __init__(self, num_labels: int, ignore_index: int | None = 255):
        self.num_labels = check_num_labels(num_labels)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forgets every image seen so far."""
        self.num_images = 0
        self._counts: list[torch.Tensor] = []

    def update(self, predictions: Any, references: Any) -> None:
        """Adds a batch.

        Args:
            predictions: list of H x W integer label maps with H, W >= 1 (tensors on any device, numpy
                arrays or nested lists), or one (B, H, W) array. Sizes may differ.
            references: the matching reference label maps.

        Raises:
            ValueError: for inputs that do not pair up, empty (0-pixel) maps or negative labels, naming the
                first offending image.
            TypeError: for floating point, complex or bool maps.
        """
        groups = group_by_size(predictions, references)
        for group in groups:
            _check_labels(group.predictions, group.indices, "Predictions")
            _check_labels(group.references, group.indices, "References")
        for group in groups:
            counts = joint_label_counts(group.predictions, group.references.to(group.predictions.device))
            positions = torch.tensor(group.indices, dtype=torch.int64)
            counts[:, 0] = positions[counts[:, 0]] + self.num_images
            self._counts.append(counts)
        self.num_images += sum(len(group.indices) for group in groups)

    def compute(self, num_labels: int | None = None, ignore_index: int | None = _UNSET) -> dict[str, Any]:
        """The dataset values.

        Args:
            num_labels: overrides the constructor's `num_labels` (None: keep it).
            ignore_index: overrides the constructor's `ignore_index` (None: no label is ignored).

        Returns:
            `mean_iou`, `accuracy`, `mean_accuracy`, `mae`, `mber` as floats and `per_category_iou` as a list
            of C floats.

        Raises:
            ValueError: if no image was added, `num_labels` is not a positive int, or a label id is >=
                `num_labels` outside ignored pixels (the message names the image).
        """
        num_labels = self.num_labels if num_labels is None else check_num_labels(num_labels)
        ignore_index = self.ignore_index if ignore_index is _UNSET else ignore_index
        if not self._counts:
            raise ValueError("No images were added: call `update` (or `add_batch`) first.")
        image, ref, pred, count = torch.cat(self._counts).unbind(dim=1)
        if ignore_index is not None:
            keep = ref != ignore_index
            image, ref, pred, count = image[keep], ref[keep], pred[keep], count[keep]
        for name, labels in (("reference", ref), ("prediction", pred)):
            bad = labels >= num_labels
            if bad.any():
                first = int(torch.nonzero(bad)[0])
                raise ValueError(
                    f"The {name} of image {int(image[first])} contains label id {int(labels[first])}, but "
                    f"num_labels is {num_labels} (ignore_index {ignore_index})."
                )
        return {
            **_confusion_metrics(ref, pred, count, num_labels),
            **_trans10k_metrics(image, ref, pred, count, num_labels, self.num_images),
        }


def _confusion_metrics(ref: torch.Tensor, pred: torch.Tensor, count: torch.Tensor, num_labels: int):
    confusion = torch.zeros(num_labels * num_labels, dtype=torch.float64)
    confusion.index_add_(0, ref * num_labels + pred, count.to(torch.float64))
    confusion = confusion.view(num_labels, num_labels)
    correct = confusion.diagonal()
    ref_total, pred_total = confusion.sum(dim=1), confusion.sum(dim=0)
    iou = _ratio_or_nan(correct, ref_total + pred_total - correct)
    return {
        "mean_iou": _nan_mean(iou),
        "per_category_iou": iou.tolist(),
        "accuracy": _ratio_or_nan(correct.sum(), confusion.sum()).item(),
        "mean_accuracy": _nan_mean(_ratio_or_nan(correct, ref_total)),
    }


def _trans10k_metrics(
    image: torch.Tensor,
    ref: torch.Tensor,
    pred: torch.Tensor,
    count: torch.Tensor,
    num_labels: int,
    num_images: int,
):
    count = count.to(torch.float64)
    per_image = torch.zeros(3, num_images, dtype=torch.float64)  # pixels, correct pixels, sum |pred - ref|
    per_image[0].index_add_(0, image, count)
    per_image[1].index_add_(0, image, count * (ref == pred))
    per_image[2].index_add_(0, image, count * (pred - ref).abs())
    pixels, correct, abs_error = per_image
    has_pixels = pixels > 0
    mae = (abs_error[has_pixels] / pixels[has_pixels]).mean().item() if has_pixels.any() else math.nan

    class_pixels = torch.zeros(num_images * num_labels, dtype=torch.float64)
    class_pixels.index_add_(0, image * num_labels + ref, count)
    class_correct = torch.zeros(num_images * num_labels, dtype=torch.float64)
    class_correct.index_add_(0, image * num_labels + ref, count * (ref == pred))
    positives = class_pixels.view(num_images, num_labels)[:, 1:]
    true_pos = class_correct.view(num_images, num_labels)[:, 1:]
    negatives = pixels[:, None] - positives
    true_neg = correct[:, None] - true_pos
    tnr = torch.where(negatives > 0, true_neg / negatives.clamp(min=1), 0.0)
    ber = 1 - (true_pos / positives.clamp(min=1) + tnr) / 2
    present = positives > 0
    images_per_class = present.sum(dim=0)
    class_ber = (ber * present).sum(dim=0) / images_per_class.clamp(min=1)
    mber = class_ber[images_per_class > 0].mean().item() if (images_per_class > 0).any() else math.nan
    return {"mae": mae, "mber": mber}


SEMANTIC_METRIC_NAMES = ("mean_iou", "per_category_iou", "accuracy", "mean_accuracy", "mae", "mber")


def compute_semantic_metrics(
    predictions: Any, references: Any, num_labels: int, ignore_index: int | None = 255
) -> dict[str, Any]:
    """One-shot `SemanticMetrics`; see `SemanticMetrics.compute` for the keys."""
    metrics = SemanticMetrics(num_labels=num_labels, ignore_index=ignore_index)
    metrics.update(predictions, references)
    return metrics.compute()
