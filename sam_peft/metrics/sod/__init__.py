"""Salient / camouflaged object detection and binary mask metrics, equal to PySODMetrics 1.6.

- `definitions`: the metrics, one batched torch function each (S-alpha, E-phi, weighted F, MAE, F-measure,
  binary counts), and the formulas that turn per-image statistics (`ImageStatistics`) into values.
- `inputs`: the accepted forms of predictions and references, checked with errors that name the image.
- `host`: the engine for CPU tensors, image by image with numpy in a thread pool (`threads`), the weighted F's
  feature transform compiled (`_edt.c`, optional) or scipy's.
- `device`: the engine for other devices, batched torch composed of `definitions`.
- `metrics`: `SODMetrics`, which validates, dispatches on the device of the predictions and reduces.
"""

from .definitions import (
    binary_counts,
    e_measure,
    f_measure,
    mean_absolute_error,
    normalize_predictions,
    s_measure,
    weighted_f_measure,
)
from .inputs import binarize_references, prepare_predictions
from .metrics import SOD_METRIC_NAMES, SODMetrics, compute_sod_metrics

__all__ = [
    "SOD_METRIC_NAMES",
    "SODMetrics",
    "binarize_references",
    "binary_counts",
    "compute_sod_metrics",
    "e_measure",
    "f_measure",
    "mean_absolute_error",
    "normalize_predictions",
    "prepare_predictions",
    "s_measure",
    "weighted_f_measure",
]
