"""`SODMetrics`: streaming dataset values from the per-image statistics of either engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._inputs import SizeGroup, group_by_size
from . import device, host
from .definitions import (
    NUM_THRESHOLDS,
    ImageStatistics,
    e_measure_from_counts,
    f_measure_from_counts,
    ratio,
    s_measure_from_sums,
    weighted_f_from_sums,
)
from .inputs import binarize_references, check_prediction_dtype, check_predictions
from .threads import HostThreads, single_torch_thread

SOD_METRIC_NAMES = (
    "s_alpha",
    "e_phi",
    "e_phi_adaptive",
    "e_phi_max",
    "f_beta_w",
    "mae",
    "f_beta_adaptive",
    "f_beta_mean",
    "f_beta_max",
    "iou",
    "dice",
    "jaccard_thresholded",
    "accuracy",
    "ber",
    "shadow_error",
    "non_shadow_error",
)
_PER_IMAGE = (
    "s_alpha",
    "e_phi_adaptive",
    "f_beta_w",
    "mae",
    "f_beta_adaptive",
    "iou",
    "dice",
    "jaccard_thresholded",
    "accuracy",
)
_CURVES = ("e_phi_curve", "f_beta_curve")
_IMAGES_PER_REDUCTION = 256  # images whose statistics are reduced together


def per_image_values(
    stats: ImageStatistics, f_beta2: float = 0.3, weighted_f_beta: float = 1.0, jaccard_threshold: float = 0.65
) -> dict[str, torch.Tensor]:
    """Every metric of every image of a batch, from its statistics.

    Returns:
        (B,) float64 values named like `_PER_IMAGE`, and the (B, 256) curves `e_phi_curve` and `f_beta_curve`
        (thresholds 255, ..., 0). The options are `SODMetrics`'.
    """
    n_fg, n_pixels = stats.n_fg, stats.n_pixels
    true_pos, false_pos, false_neg, true_neg = stats.counts.unbind(dim=1)
    iou = ratio(true_pos, true_pos + false_pos + false_neg)
    return {
        "s_alpha": s_measure_from_sums(stats.quadrants),
        "e_phi_adaptive": e_measure_from_counts(stats.adaptive, n_fg, n_pixels)[:, 0],
        "e_phi_curve": e_measure_from_counts(stats.curve, n_fg, n_pixels),
        "f_beta_w": weighted_f_from_sums(stats.weighted_sums, n_fg, stats.error_sum, weighted_f_beta),
        "mae": stats.error_sum / n_pixels,
        "f_beta_adaptive": f_measure_from_counts(stats.adaptive, n_fg, f_beta2)[:, 0],
        "f_beta_curve": f_measure_from_counts(stats.curve, n_fg, f_beta2),
        "iou": iou,
        "dice": ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
        "jaccard_thresholded": torch.where(iou < jaccard_threshold, 0.0, iou),
        "accuracy": ratio(true_pos + true_neg, stats.counts.sum(dim=1)),
    }


class SODMetrics:
    """Streaming salient / camouflaged object detection metrics and binary mask metrics.

    `update` computes the per-image statistics of a batch right away and keeps only their sums (and the
    statistics of at most a few hundred images, reduced together), so memory does not grow with the dataset;
    `compute` turns them into the dataset values. Because every statistic is a sum, the result does not depend
    on the order or batching of the images, so gathering batches from several processes (Accelerate's
    `gather_for_metrics`) before `update` gives the single-process result.

    The statistics are computed where the predictions are: CPU tensors (and numpy arrays, lists) by the host
    engine (`host`: image by image with numpy in `num_threads` threads, while torch runs on one thread, see
    `threads`), tensors on other devices by the device engine (`device`: batched torch, `chunk_size` images at
    a time). Both give the same values, those of PySODMetrics 1.6 apart from its degenerate cases (see
    `definitions`).

    Args:
        normalize: min-max normalise every prediction before S-alpha, E-phi, weighted F, MAE and F-measure,
            as PySODMetrics does by default.
        weighted_f_beta: the `beta` of the weighted F-measure (PySODMetrics' default 1; see
            `weighted_f_measure`).
        f_beta2: beta^2 of the F-measure.
        threshold: binarisation threshold of the raw prediction for IoU, Dice, T-Jac, accuracy and BER.
        jaccard_threshold: per-image Jaccard below it counts as 0 in T-Jac (0.65 in the ISIC 2017 challenge).
        chunk_size: images the device engine processes at once.
        num_threads: threads of the host engine; None: the CPUs this process may run on, for images of at least
            256 x 256 pixels on average (smaller ones are processed in the calling thread, where they are faster).
            The results do not depend on it.
    """

    def __init__(
        self,
        normalize: bool = True,
        weighted_f_beta: float = 1.0,
        f_beta2: float = 0.3,
        threshold: float = 0.5,
        jaccard_threshold: float = 0.65,
        chunk_size: int = 8,
        num_threads: int | None = None,
    ):
        self.normalize = normalize
        self.weighted_f_beta = weighted_f_beta
        self.f_beta2 = f_beta2
        self.threshold = threshold
        self.jaccard_threshold = jaccard_threshold
        self.chunk_size = chunk_size
        self._threads = HostThreads(num_threads)
        self.reset()

    def reset(self) -> None:
        """Forgets every image seen so far and frees the threads and their work arrays."""
        self._threads.close()
        self.num_images = 0
        self._totals = _Totals()
        self._pending: list[ImageStatistics] = []  # statistics of images not reduced yet

    @torch.no_grad()
    def update(self, predictions: Any, references: Any) -> None:
        """Adds a batch.

        Args:
            predictions: list of H x W maps with H, W >= 1 (tensors on any device, numpy arrays or nested
                lists), or one (B, H, W) array; sizes may differ. Each map is floating point in [0, 1], bool,
                or uint8: a uint8 map whose max is at most 1 is a 0/1 mask, any other uint8 map holds grey
                levels 0..255 (read as level / 255, as PySODMetrics reads PNGs).
            references: list of H x W masks, or one array: bool; 0/1 or 0/255 in any integer or floating point
                dtype (foreground 1 or 255); or floating point in [0, 1] (foreground > 0.5). Anything else is
                a ValueError (`binarize_references`).

        Raises:
            ValueError: for inputs that do not pair up, empty (0-pixel) maps, NaN, predictions outside
                [0, 1] or references of other values, naming the first offending image; nothing is added then.
            TypeError: for predictions of other dtypes (e.g. int64: pass 0/1 masks as bool or uint8).
        """
        totals, pending = _Totals(), list(self._pending)
        with single_torch_thread():
            groups = group_by_size(predictions, references)
            for stats in self._statistics(groups):
                pending.append(stats)
                if sum(len(part.counts) for part in pending) >= _IMAGES_PER_REDUCTION:
                    totals.add(self._reduce(pending))
                    pending = []
        # Committed only once the whole batch has passed validation.
        self._totals.add(totals)
        self._pending = pending
        self.num_images += sum(len(group.indices) for group in groups)

    def _statistics(self, groups: list[SizeGroup]) -> Iterator[ImageStatistics]:
        """The statistics of the images of `groups`, checked as they go: batches of the device engine for tensors
        off the CPU, of the host engine for the others."""
        host_images = []
        for group in groups:
            gt = binarize_references(group.references, group.indices).to(group.predictions.device)
            if group.predictions.device.type == "cpu":  # the host engine checks the range of float maps
                check_prediction_dtype(group.predictions.dtype)
                host_images += map(host.HostImage, _as_numpy(group.predictions), gt.numpy(), group.indices)
                continue
            check_predictions(group.predictions, group.indices)
            for start in range(0, len(gt), self.chunk_size):
                chunk = slice(start, start + self.chunk_size)
                yield device.batch_statistics(group.predictions[chunk], gt[chunk], self.normalize, self.threshold)
        for start in range(0, len(host_images), _IMAGES_PER_REDUCTION):
            images = host_images[start : start + _IMAGES_PER_REDUCTION]
            yield host.image_statistics(images, self.normalize, self.threshold, self._threads)

    def _reduce(self, parts: list[ImageStatistics]) -> _Totals:
        """The sums over the images of `parts` (on one device or several)."""
        totals = _Totals()
        for on_device in {part.counts.device for part in parts}:
            stats = ImageStatistics.concatenate([part for part in parts if part.counts.device == on_device])
            values = per_image_values(stats, self.f_beta2, self.weighted_f_beta, self.jaccard_threshold)
            totals.values += torch.stack([values[name].sum() for name in _PER_IMAGE]).cpu()
            totals.curves += torch.stack([values[name].sum(dim=0) for name in _CURVES]).cpu()
            totals.confusion += stats.counts.sum(dim=0).cpu()
        return totals

    def compute(self) -> dict[str, float]:
        """The dataset values: means over images, except the BER family, which pools all pixels.

        Returns:
            A dict of floats: `s_alpha`, `e_phi` (mean of the image-averaged 256-threshold curve, what papers
            report as E-phi), `e_phi_adaptive`, `e_phi_max`, `f_beta_w`, `mae`, `f_beta_adaptive`,
            `f_beta_mean`, `f_beta_max`, `iou`, `dice`, `jaccard_thresholded`, `accuracy`, `ber`,
            `shadow_error`, `non_shadow_error`.

        Raises:
            ValueError: if no image was added.
        """
        if self.num_images == 0:
            raise ValueError("No images were added: call `update` (or `add_batch`) first.")
        if self._pending:
            with single_torch_thread():
                self._totals.add(self._reduce(self._pending))
            self._pending = []
        means = self._totals.values / self.num_images
        e_curve, f_curve = self._totals.curves / self.num_images
        true_pos, false_pos, false_neg, true_neg = self._totals.confusion
        shadow_error = 1 - ratio(true_pos, true_pos + false_neg)
        non_shadow_error = 1 - ratio(true_neg, true_neg + false_pos)
        results = dict(zip(_PER_IMAGE, means.tolist(), strict=True))
        results.update(
            e_phi=e_curve.mean().item(),
            e_phi_max=e_curve.max().item(),
            f_beta_mean=f_curve.mean().item(),
            f_beta_max=f_curve.max().item(),
            ber=((shadow_error + non_shadow_error) / 2).item(),
            shadow_error=shadow_error.item(),
            non_shadow_error=non_shadow_error.item(),
        )
        return {name: results[name] for name in SOD_METRIC_NAMES}


@dataclass
class _Totals:
    """Sums over images, on the CPU: of the per-image metrics (`_PER_IMAGE`), of the 256-threshold curves
    (`_CURVES`), and the TP, FP, FN, TN counts pooled over pixels."""

    values: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_PER_IMAGE), dtype=torch.float64))
    curves: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_CURVES), NUM_THRESHOLDS, dtype=torch.float64))
    confusion: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.int64))

    def add(self, other: _Totals) -> None:
        self.values += other.values
        self.curves += other.curves
        self.confusion += other.confusion


def _as_numpy(predictions: torch.Tensor) -> np.ndarray:
    """The (B, H, W) numpy view of a CPU batch; half precision maps as float32 (exact; numpy cannot view bfloat16
    and computes float16 in software)."""
    predictions = predictions.detach()
    if predictions.dtype in (torch.float16, torch.bfloat16):
        predictions = predictions.to(torch.float32)
    return predictions.numpy()


def compute_sod_metrics(predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
    """One-shot `SODMetrics`: `kwargs` go to its constructor; see `SODMetrics.compute` for the keys."""
    metrics = SODMetrics(**kwargs)
    metrics.update(predictions, references)
    return metrics.compute()
