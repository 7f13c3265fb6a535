"""Segmentation metrics and their `evaluate` modules.

Salient / camouflaged object detection and binary masks (`SODMetrics`, equal to PySODMetrics 1.6; numpy threads
for CPU tensors, batched torch on a GPU), semantic segmentation (`SemanticMetrics`: mIoU, pixel accuracy,
Trans10K's MAE and mBER) and interactive segmentation (`InteractiveMetrics`: mIoU / Dice from a box and after
each click, NoC@85 / NoC@90, from every object's IoU after each click). All stream: `update` keeps per-image
(per-object) statistics only. The first two as `evaluate` modules, loadable offline:

    import evaluate
    import sam_peft.metrics

    sod = sam_peft.metrics.load("sod")  # same as evaluate.load(sam_peft.metrics.path("sod"))
    for batch in loader:
        sod.add_batch(predictions=probabilities, references=masks)
    results = sod.compute()  # {"s_alpha": ..., "e_phi": ..., "f_beta_w": ..., "mae": ..., ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .interactive import (
    INTERACTIVE_THRESHOLDS,
    InteractiveMetrics,
    compute_interactive_metrics,
    dice_from_iou,
    mask_iou,
    threshold_name,
)
from .semantic import SEMANTIC_METRIC_NAMES, SemanticMetrics, compute_semantic_metrics, joint_label_counts
from .sod import (
    SOD_METRIC_NAMES,
    SODMetrics,
    binarize_references,
    binary_counts,
    compute_sod_metrics,
    e_measure,
    f_measure,
    mean_absolute_error,
    normalize_predictions,
    prepare_predictions,
    s_measure,
    weighted_f_measure,
)

MODULES = ("sod", "semantic")


def path(name: str) -> str:
    """Path of the script of the `evaluate` module `name` ("sod" or "semantic"), for `evaluate.load`."""
    if name not in MODULES:
        raise ValueError(f"Unknown metric module {name!r}; expected one of {MODULES}.")
    return str(Path(__file__).parent / "modules" / f"{name}.py")


def load(name: str, **kwargs: Any):
    """`evaluate.load(path(name), **kwargs)`: the module's options (e.g. `normalize=False`, `num_labels=3`)
    and evaluate's own (`experiment_id`, ...) go in `kwargs`."""
    import evaluate

    return evaluate.load(path(name), **kwargs)


__all__ = [
    "INTERACTIVE_THRESHOLDS",
    "MODULES",
    "SEMANTIC_METRIC_NAMES",
    "SOD_METRIC_NAMES",
    "InteractiveMetrics",
    "SODMetrics",
    "SemanticMetrics",
    "binarize_references",
    "binary_counts",
    "compute_interactive_metrics",
    "compute_semantic_metrics",
    "compute_sod_metrics",
    "dice_from_iou",
    "e_measure",
    "f_measure",
    "joint_label_counts",
    "load",
    "mask_iou",
    "mean_absolute_error",
    "normalize_predictions",
    "path",
    "prepare_predictions",
    "s_measure",
    "threshold_name",
    "weighted_f_measure",
]
