"""The device engine: `ImageStatistics` of a batch on any torch device (a GPU), composed of the definitions.

Every prediction is read as float64 values (uint8 and bool maps included) and every statistic comes from the
batched functions of `definitions`, the weighted F's feature transform included, so the maps never leave the
device. It runs on CPU tensors too, which is how the tests compare it with the host engine and PySODMetrics.
"""

from __future__ import annotations

import torch

from .definitions import (
    ImageStatistics,
    adaptive_counts,
    binary_counts,
    normalize_predictions,
    quadrant_sums,
    threshold_counts,
    weighted_f_sums,
)
from .inputs import predictions_as_float64


def batch_statistics(
    predictions: torch.Tensor, gt: torch.Tensor, normalize: bool = True, threshold: float = 0.5
) -> ImageStatistics:
    """The statistics of a batch of equally sized images.

    Args:
        predictions: (B, H, W) predictions checked by `inputs.check_predictions` (floating point, uint8 or bool).
        gt: (B, H, W) bool masks on the same device.
        normalize: min-max normalise every prediction (not for the binary counts).
        threshold: the binary threshold of the raw prediction.

    Returns:
        Their statistics, on the device of the inputs.
    """
    raw = predictions_as_float64(predictions)
    pred = normalize_predictions(raw) if normalize else raw
    error = (pred - gt.to(pred.dtype)).abs()
    return ImageStatistics(
        quadrants=quadrant_sums(pred, gt),
        counts=binary_counts(raw, gt, threshold),
        adaptive=adaptive_counts(pred, gt),
        curve=threshold_counts(pred, gt),
        error_sum=error.sum(dim=(1, 2)),
        weighted_sums=weighted_f_sums(error, gt),
    )
