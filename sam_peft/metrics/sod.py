"""Batched torch versions of the salient / camouflaged object detection metrics and the binary mask metrics.

Every function takes a batch of equally sized images: predictions `pred` as (B, H, W) float64 maps in
[0, 1] (already min-max normalised where the reference normalises, see `normalize_predictions`) and ground
truth `gt` as (B, H, W) bool masks, and returns one value per image. `SODMetrics` streams batches of any
sizes through them and averages over images the way PySODMetrics does.

The definitions are those of PySODMetrics 1.6 (`py_sod_metrics`, a port of the original MATLAB code), to
which the tests compare every value:
- S-alpha: Fan et al., "Structure-measure: A new way to evaluate foreground maps", ICCV 2017.
- E-phi: Fan et al., "Enhanced-alignment measure for binary foreground map evaluation", IJCAI 2018.
- weighted F-beta: Margolin et al., "How to evaluate foreground maps?", CVPR 2014.
- F-measure: Achanta et al., "Frequency-tuned salient region detection", CVPR 2009.
- MAE: Perazzi et al., "Saliency filters", CVPR 2012.

How `SODMetrics` computes them, a chunk of images at a time (on CPU, where its speed matters most, the
weighted F's feature transform takes about a third of the time with the compiled transform, two thirds with
scipy's):
- uint8 (and bool) predictions take one of 256 levels, so everything but the weighted F comes from one joint
  histogram per image of (S-alpha quadrant, ground truth, level) (`level_histograms`): a single counting pass
  over the pixels. The reference's per-pixel arithmetic (normalisation, `uint8(pred * 255)`, thresholds) is
  applied to the 256 level values, so only the order of summation differs.
- floating point predictions: on CPU with numpy, whose comparisons are several times faster than torch's,
  S-alpha's sums half an image at a time, and one histogram per image for the binary, adaptive and
  256-threshold counts; elsewhere with the batched per-pixel functions below (`pixel_statistics`).
- weighted F on CPU: image by image with the compiled feature transform (`_distance.nearest_foreground_host`;
  scipy's where the extension was not built), the decay weights looked up from the exact integer squared
  distances, and the Gaussian smoothing only over the foreground's bounding box, the only place where the
  smoothed error is used. On other devices: batched torch (`weighted_f_measure`).
- on CPU, the image-by-image transform, numpy and scipy work runs in `HostThreads` (as many threads as torch uses).
- the per-image values of up to a few hundred images are then reduced together.

Inputs (`SODMetrics.update`): H x W maps of any size with at least one pixel (a 1 x 1 map is valid). A
prediction is floating point in [0, 1], bool, or uint8, where a map whose max is at most 1 is a 0/1 mask and
any other holds grey levels 0..255 (level / 255, PySODMetrics' reading of PNGs). A reference is bool, or 0/1
or 0/255 in any integer or floating point dtype, or floating point in [0, 1] (foreground > 0.5); anything
else is refused with a ValueError that names the image (`binarize_references`).

Deliberate differences from PySODMetrics (every value is in [0, 1], for images of any size):
- S-alpha: when the ground-truth centroid falls on the last row or column, one of the four regions is empty
  and PySODMetrics (like the MATLAB code) returns NaN for the image, which turns the dataset mean into NaN.
  Here the empty region, whose weight is zero, contributes zero.
- E-phi: PySODMetrics divides the sum of the enhanced alignment matrix by (H W - 1), so a perfect map scores
  H W / (H W - 1) (2 on a 1 x 2 image, 4 / 3 on a 2 x 2 one) and a 1 x 1 image divides by zero (about 4.5e15).
  Here the value is capped at 1, and a 1 x 1 image scores its pixel's alignment (1 if right, 0 if wrong).
  Values of at most 1 are PySODMetrics' own.
- IoU, Dice, T-Jac, accuracy and BER threshold the raw prediction at 0.5 (`> 0.5`, as PySODMetrics' binary
  metrics and the Conv-LoRA code do), without min-max normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy.ndimage import correlate1d

from ._distance import nearest_foreground, nearest_foreground_host
from ._inputs import first_failing, group_by_size
from ._scratch import Scratch
from ._threads import HostThreads

EPS = 2.220446049250313e-16  # numpy.spacing(1), the epsilon of the reference code
NUM_THRESHOLDS = 256
NUM_LEVELS = 256  # values of a uint8 prediction
_GAUSSIAN_RADIUS = 3  # of the 7 x 7 Gaussian of the weighted F-measure


def normalize_predictions(pred: torch.Tensor) -> torch.Tensor:
    """Min-max normalises each map to [0, 1] (MATLAB's `mapminmax`); constant maps are left unchanged.

    Args:
        pred: (B, H, W) float64 maps.

    Returns:
        (B, H, W) float64, `(pred - min) / (max - min)` per image where max > min.
    """
    return _min_max_(pred.clone())


def _min_max_(pred: torch.Tensor) -> torch.Tensor:
    """In-place `normalize_predictions`."""
    low = pred.amin(dim=(1, 2), keepdim=True)
    high = pred.amax(dim=(1, 2), keepdim=True)
    varies = high > low
    shift = torch.where(varies, low, torch.zeros_like(low))
    scale = torch.where(varies, high - low, torch.ones_like(high))
    return pred.sub_(shift).div_(scale)


def mean_absolute_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        (B,) float64.
    """
    return (pred - gt.to(pred.dtype)).abs().mean(dim=(1, 2))


def _count(mask: torch.Tensor) -> torch.Tensor:
    """Per-image number of True pixels of a (B, H, W) bool mask, as (B,) int64.

    One full reduction per image: reducing over dimensions first converts the whole mask to int64.
    """
    return torch.stack([torch.count_nonzero(image) for image in mask])


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image sum of `x * y` for (B, H, W) tensors, without materialising the product.

    A loop of BLAS dot products: on CPU much faster than a batched matmul in float64.
    """
    return torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(x, y, strict=True)])


def _object_score(mean: torch.Tensor, sum_squares: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """S-alpha's object similarity `2 m / (m^2 + 1 + std + eps)` of a region from its mean and sum of squares.

    A region of one pixel has std 0 (as in the reference), not the square root of a rounding residue."""
    variance = (sum_squares - mean * mean * count).clamp(min=0) / (count - 1).clamp(min=1)
    variance = torch.where(count > 1, variance, 0.0)
    return 2 * mean / (mean * mean + 1 + variance.sqrt() + EPS)


def _ssim(
    n: torch.Tensor, sum_p: torch.Tensor, sum_pp: torch.Tensor, sum_g: torch.Tensor, sum_pg: torch.Tensor
) -> torch.Tensor:
    """S-alpha's SSIM of regions from their pixel counts and sums; empty regions score 0 (see the module docstring)."""
    safe_n = n.clamp(min=1)
    x = sum_p / safe_n
    y = sum_g / safe_n
    denominator = n - 1 + EPS
    sigma_x = (sum_pp - x * sum_p).clamp(min=0) / denominator
    sigma_y = (sum_g * (1 - y) ** 2 + (n - sum_g) * y * y) / denominator
    # With a constant ground truth the covariance is exactly 0 in the reference's two-pass formula.
    constant_gt = (sum_g == 0) | (sum_g == n)
    sigma_xy = torch.where(constant_gt, torch.zeros_like(sum_pg), sum_pg - y * sum_p) / denominator
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    ssim = torch.where(alpha != 0, alpha / (beta + EPS), (beta == 0).to(alpha.dtype))
    return torch.where(n > 0, ssim, torch.zeros_like(ssim))


def s_measure(pred: torch.Tensor, gt: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Structure measure S-alpha per image (Fan et al. 2017), as PySODMetrics' `Smeasure`.

    Object score: similarity of the prediction's mean and spread inside and outside the ground truth. Region
    score: SSIM of the four quadrants split at the ground-truth centroid, weighted by area. Both come from
    per-quadrant sums of pred, pred^2, pred * gt and gt, so the maps are read a few times in all.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        alpha: weight of the object score against the region score.

    Returns:
        (B,) float64.
    """
    return _s_measure(pred, gt.to(pred.dtype), alpha, Scratch())


def _s_measure(pred: torch.Tensor, g: torch.Tensor, alpha: float, scratch: Scratch) -> torch.Tensor:
    """`s_measure` with the ground truth `g` as (B, H, W) float64 0/1."""
    height, width = pred.shape[1:]
    pp = torch.mul(pred, pred, out=scratch.like("pred_squared", pred))
    pg = torch.mul(pred, g, out=scratch.like("pred_fg", pred))
    col_counts = g.sum(dim=1)
    n_fg = col_counts.sum(dim=1)
    cx = _centroid(col_counts, n_fg)
    left = (torch.arange(width, device=pred.device, dtype=pred.dtype) < cx[:, None]).to(pred.dtype)
    g_split = _split_rows(g, left)
    cy = _centroid(g_split.sum(dim=2), n_fg)
    top = torch.arange(height, device=pred.device, dtype=pred.dtype) < cy[:, None]
    rows = torch.stack([top, ~top], dim=1).to(pred.dtype)
    sums = QuadrantSums(
        n=rows.sum(dim=2)[:, :, None] * torch.stack([cx, width - cx], dim=1)[:, None, :],
        p=rows @ _split_rows(pred, left),
        pp=rows @ _split_rows(pp, left),
        g=rows @ g_split,
        pg=rows @ _split_rows(pg, left),
        fg_pp=_dot(pp, g),
    )
    return _s_measure_from_sums(sums, n_fg, cx, cy, (height, width), alpha)


def _centroid(counts: torch.Tensor, n_fg: torch.Tensor) -> torch.Tensor:
    """MATLAB's 1-based rounded centroid along one axis, from the (B, L) foreground pixels of each row (or
    column) and their (B,) total: (B,) float64. Indices below it form the top (or left) quadrants."""
    index = torch.arange(counts.shape[1], device=counts.device, dtype=torch.float64)
    return torch.round((counts.to(torch.float64) * index).sum(dim=1) / n_fg.clamp(min=1)) + 1


@dataclass
class QuadrantSums:
    """S-alpha's statistics of the four quadrants around the ground-truth centroid.

    Attributes:
        n, p, pp, g, pg: (B, 2, 2) float64 sums over each quadrant ([top, bottom] x [left, right]) of 1 (the
            pixel count), the prediction, its square, the ground truth and the prediction in the foreground.
        fg_pp: (B,) float64 sum of the squared prediction over the foreground.
    """

    n: torch.Tensor
    p: torch.Tensor
    pp: torch.Tensor
    g: torch.Tensor
    pg: torch.Tensor
    fg_pp: torch.Tensor


def _s_measure_from_sums(
    sums: QuadrantSums, n_fg: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, shape: tuple[int, int], alpha: float
) -> torch.Tensor:
    """S-alpha (B,) float64 from the quadrant sums, the (B,) foreground pixel counts, the centroid (`_centroid`)
    and the image size (H, W)."""
    height, width = shape
    area = height * width
    n_fg = n_fg.to(torch.float64)
    ssim = _ssim(sums.n, sums.p, sums.pp, sums.g, sums.pg)
    w_lt = cx * cy / area
    w_rt = cy * (width - cx) / area
    w_lb = (height - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    region = ssim[:, 0, 0] * w_lt + ssim[:, 0, 1] * w_rt + ssim[:, 1, 0] * w_lb + ssim[:, 1, 1] * w_rb

    # Object score: statistics of pred in the foreground and of 1 - pred in the background.
    total_p, total_pp, total_pg = sums.p.sum(dim=(1, 2)), sums.pp.sum(dim=(1, 2)), sums.pg.sum(dim=(1, 2))
    n_bg = area - n_fg
    bg_p = total_p - total_pg
    sum_bg = n_bg - bg_p
    sum_squares_bg = n_bg - 2 * bg_p + (total_pp - sums.fg_pp)
    fg_ratio = n_fg / area
    object_score = _object_score(total_pg / n_fg.clamp(min=1), sums.fg_pp, n_fg) * fg_ratio + _object_score(
        sum_bg / n_bg.clamp(min=1), sum_squares_bg, n_bg
    ) * (1 - fg_ratio)

    score = (alpha * object_score + (1 - alpha) * region).clamp(min=0)
    mean_pred = total_p / area
    score = torch.where(n_fg == area, mean_pred, score)
    return torch.where(n_fg == 0, 1 - mean_pred, score)


def _split_rows(x: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Row sums of (B, H, W) `x` left and right of a column split given as a (B, W) 0/1 mask: (B, H, 2).

    One matrix product per image (much faster on CPU than a batched product in float64). Both parts are
    summed directly, so a part that holds only zeros sums to exactly 0 (S-alpha treats that case specially).
    """
    split = torch.stack([left, 1 - left], dim=2)
    return torch.stack([image @ columns for image, columns in zip(x, split, strict=True)])


def _enhanced_alignment_sum(fg_fg: torch.Tensor, fg_bg: torch.Tensor, n_fg: torch.Tensor, n_total: int) -> torch.Tensor:
    """Sum of E-phi's enhanced alignment matrix of a binarised prediction, from its pixel counts.

    Args:
        fg_fg: (B, T) predicted-foreground pixels in the ground-truth foreground, one column per threshold.
        fg_bg: (B, T) predicted-foreground pixels in the ground-truth background.
        n_fg: (B, 1) ground-truth foreground pixels.
        n_total: pixels per image.

    Returns:
        (B, T) float64.
    """
    fg_fg, fg_bg, n_fg = fg_fg.to(torch.float64), fg_bg.to(torch.float64), n_fg.to(torch.float64)
    pred_fg = fg_fg + fg_bg
    pred_bg = n_total - pred_fg
    bg_fg = n_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / n_total
    mean_gt = n_fg / n_total
    demeaned_pred = (1 - mean_pred, 0 - mean_pred)
    demeaned_gt = (1 - mean_gt, 0 - mean_gt)
    parts = ((fg_fg, 0, 0), (fg_bg, 0, 1), (bg_fg, 1, 0), (bg_bg, 1, 1))
    total = torch.zeros_like(mean_pred)
    for count, i, j in parts:
        a, b = demeaned_pred[i], demeaned_gt[j]
        align = 2 * (a * b) / (a * a + b * b + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    total = torch.where(n_fg == n_total, pred_fg, total)
    return torch.where(n_fg == 0, pred_bg, total)


def threshold_histograms(
    pred: torch.Tensor, gt: torch.Tensor, scratch: Scratch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels at or above each of the 256 thresholds, inside and outside the ground truth.

    Args:
        pred: (B, H, W) float64 maps in [0, 1], quantised as `uint8(pred * 255)` like the reference.
        gt: (B, H, W) bool masks.
        scratch: work tensors to reuse.

    Returns:
        above_fg, above_bg: (B, 256) int64; column k counts the pixels with quantised value >= 255 - k.
    """
    scratch = scratch or Scratch()
    batch = pred.shape[0]
    offsets = torch.arange(batch, device=pred.device, dtype=torch.int32).view(batch, 1, 1) * 512
    scaled = torch.mul(pred, 255, out=scratch.like("scaled", pred))
    bins = scratch.like("bins", pred, torch.int32).copy_(scaled)  # truncation, as numpy's astype(uint8)
    bins.add_(gt.view(torch.uint8), alpha=256).add_(offsets)
    hist = torch.bincount(bins.flatten(), minlength=batch * 512).view(batch, 2, NUM_THRESHOLDS)
    above = hist.flip(dims=(2,)).cumsum(dim=2)
    return above[:, 1], above[:, 0]


def adaptive_counts(
    pred: torch.Tensor, gt: torch.Tensor, scratch: Scratch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted-foreground pixels at the adaptive threshold `min(2 * mean(pred), 1)`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        scratch: work tensors to reuse.

    Returns:
        fg_fg, fg_bg: (B, 1) int64 counts inside and outside the ground truth.
    """
    scratch = scratch or Scratch()
    threshold = (2 * pred.mean(dim=(1, 2))).clamp(max=1).view(-1, 1, 1)
    binary = torch.ge(pred, threshold, out=scratch.like("mask", gt))
    predicted = _count(binary)
    fg_fg = _count(binary.logical_and_(gt))
    fg_bg = predicted - fg_fg
    return fg_fg[:, None], fg_bg[:, None]


def e_measure(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Enhanced-alignment measure E-phi per image (Fan et al. 2018), as PySODMetrics' `Emeasure`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        adaptive: (B,) float64, E-phi at the adaptive threshold.
        curve: (B, 256) float64, E-phi at the thresholds 255, 254, ..., 0 (the reference's order).
        Like the reference, the sum of the enhanced alignment matrix is divided by (H W - 1), but the
        result is capped at 1: the reference gives a perfect map H W / (H W - 1), above 1 (2 for a 1 x 2
        image), and divides by zero on a 1 x 1 image, which here scores its one pixel's alignment (1 if
        the pixel is right, else 0). Every value is in [0, 1] and equals the reference's wherever that
        is at most 1.
    """
    return _e_measure(adaptive_counts(pred, gt), threshold_histograms(pred, gt), _count(gt), gt.shape[1] * gt.shape[2])


def _e_measure(
    adaptive: tuple[torch.Tensor, torch.Tensor],
    curve: tuple[torch.Tensor, torch.Tensor],
    n_fg: torch.Tensor,
    n_total: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`e_measure` from `adaptive_counts`, `threshold_histograms`, the (B,) foreground pixels and the image size."""
    denominator = n_total - 1 + EPS if n_total > 1 else 1.0  # 1 x 1: the reference divides by EPS
    scores = [
        (_enhanced_alignment_sum(*counts, n_fg[:, None], n_total) / denominator).clamp_(max=1)
        for counts in (adaptive, curve)
    ]
    return scores[0][:, 0], scores[1]


def _f_from_counts(true_pos: torch.Tensor, pred_pos: torch.Tensor, gt_pos: torch.Tensor, beta2: float):
    """F-measure `(1 + beta2) P R / (beta2 P + R)` with 0 wherever a ratio is 0 / 0."""
    true_pos = true_pos.to(torch.float64)
    precision = true_pos / pred_pos.clamp(min=1)
    recall = true_pos / gt_pos.clamp(min=1)
    numerator = (1 + beta2) * precision * recall
    denominator = beta2 * precision + recall
    return torch.where(numerator == 0, torch.zeros_like(numerator), numerator / denominator)


def f_measure(pred: torch.Tensor, gt: torch.Tensor, beta2: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """F-measure per image (Achanta et al. 2009), as PySODMetrics' `Fmeasure` / `FmeasureV2`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        beta2: the weight beta^2 of precision (0.3 in the salient object literature).

    Returns:
        adaptive: (B,) float64, F at the adaptive threshold.
        curve: (B, 256) float64, F at the thresholds 255, 254, ..., 0.
    """
    return _f_measure(adaptive_counts(pred, gt), threshold_histograms(pred, gt), _count(gt), beta2)


def _f_measure(
    adaptive: tuple[torch.Tensor, torch.Tensor],
    curve: tuple[torch.Tensor, torch.Tensor],
    n_fg: torch.Tensor,
    beta2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`f_measure` from `adaptive_counts`, `threshold_histograms` and the (B,) foreground pixels."""
    scores = [_f_from_counts(fg_fg, fg_fg + fg_bg, n_fg[:, None], beta2) for fg_fg, fg_bg in (adaptive, curve)]
    return scores[0][:, 0], scores[1]


def concatenate_images(parts: list):
    """Per-image statistics of several batches (instances of one dataclass whose fields are tensors or tuples of
    tensors, images along dim 0), concatenated field by field into one instance."""
    if len(parts) == 1:
        return parts[0]
    values = {}
    for field in fields(parts[0]):
        items = [getattr(part, field.name) for part in parts]
        if isinstance(items[0], tuple):
            values[field.name] = tuple(torch.cat(group) for group in zip(*items, strict=True))
        else:
            values[field.name] = torch.cat(items)
    return type(parts[0])(**values)


@dataclass
class BatchStatistics:
    """What `SODMetrics` keeps of every image of a batch, apart from the weighted F-measure.

    Attributes:
        counts: (B, 4) int64 TP, FP, FN, TN of the raw prediction at the binary threshold.
        adaptive: pair of (B, 1) int64 counts at the adaptive threshold (`adaptive_counts`).
        curve: pair of (B, 256) int64 counts at the 256 thresholds (`threshold_histograms`).
        n_fg: (B,) int64 foreground pixels.
        s_alpha: (B,) float64.
        error_sum: (B,) float64 sum of |pred - gt| (H W times the MAE).
    """

    counts: torch.Tensor
    adaptive: tuple[torch.Tensor, torch.Tensor]
    curve: tuple[torch.Tensor, torch.Tensor]
    n_fg: torch.Tensor
    s_alpha: torch.Tensor
    error_sum: torch.Tensor


@dataclass
class ErrorMaps:
    """The error |pred - gt| of a batch, for the weighted F-measure.

    Attributes:
        values: (B, H, W) float64 errors, or, with `table`, int32 indices into it.
        table: (K,) float64 error values, or None.
        boxes: (B, 4) int64 first and last row and first and last column with foreground.
        has_fg: (B,) bool, whether the image has foreground.
    """

    values: torch.Tensor
    table: torch.Tensor | None
    boxes: torch.Tensor
    has_fg: torch.Tensor

    def dense(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W) float64 errors: `values`, or the table looked up into `out` (a new tensor by default)."""
        if self.table is None:
            return self.values
        if out is None:
            out = torch.empty(self.values.shape, dtype=self.table.dtype, device=self.table.device)
        return torch.index_select(self.table, 0, self.values.view(-1), out=out.view(-1)).view(self.values.shape)


def _foreground_counts(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground pixels of every row and every column of (B, H, W) bool masks: (B, H) and (B, W) int32."""
    if gt.device.type == "cpu":  # numpy sums the bytes without first converting the whole mask
        gt_bytes = gt.numpy().view(np.uint8)
        return torch.from_numpy(gt_bytes.sum(axis=2, dtype=np.int32)), torch.from_numpy(
            gt_bytes.sum(axis=1, dtype=np.int32)
        )
    gt_bytes = gt.view(torch.uint8)
    return gt_bytes.sum(dim=2, dtype=torch.int32), gt_bytes.sum(dim=1, dtype=torch.int32)


def _foreground_boxes(row_counts: torch.Tensor, col_counts: torch.Tensor) -> torch.Tensor:
    """(B, 4) int64 first and last row and first and last column with foreground, from the (B, H) and (B, W)
    foreground pixels of every row and column (0, H - 1, 0, W - 1 for empty masks)."""
    rows, cols = (row_counts > 0).to(torch.uint8), (col_counts > 0).to(torch.uint8)
    first_row, first_col = rows.argmax(dim=1), cols.argmax(dim=1)
    last_row = rows.shape[1] - 1 - rows.flip(1).argmax(dim=1)
    last_col = cols.shape[1] - 1 - cols.flip(1).argmax(dim=1)
    return torch.stack([first_row, last_row, first_col, last_col], dim=1)


@dataclass
class LevelHistograms:
    """Per-image joint histograms of predictions that take at most 256 values (`level_histograms`).

    Attributes:
        hist: (B, 2, 2, 2, 256) int64 pixels per [top / bottom, left / right of the S-alpha centroid,
            background / foreground, level].
        cx, cy: (B,) float64 1-based centroid of the ground truth (`_centroid`).
        boxes: (B, 4) int64 foreground bounding boxes (see `ErrorMaps`).
        n_fg: (B,) int64 foreground pixels.
    """

    hist: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    boxes: torch.Tensor
    n_fg: torch.Tensor


def level_histograms(levels: torch.Tensor, gt: torch.Tensor, bins: torch.Tensor | None = None) -> LevelHistograms:
    """Counts the pixels of every (S-alpha quadrant, ground truth, level) of every image: one pass.

    Args:
        levels: (B, H, W) uint8 (or bool) level of every pixel.
        gt: (B, H, W) bool masks.
        bins: (B, H, W) int32 tensor to write every pixel's flat histogram bin into (a new one by default);
            it indexes `_level_error_table`.

    Returns:
        The histograms, the centroids and the foreground boxes.
    """
    batch, height, width = gt.shape
    device = gt.device
    gt_bytes = gt.view(torch.uint8)
    row_counts, col_counts = _foreground_counts(gt)
    n_fg = col_counts.sum(dim=1)
    cx, cy = _centroid(col_counts, n_fg), _centroid(row_counts, n_fg)
    # Flat bin: ((((image * 2 + bottom) * 2 + right) * 2 + foreground) * 256 + level).
    image = torch.arange(batch, device=device)[:, None] * (8 * NUM_LEVELS)
    row_bins = ((torch.arange(height, device=device) >= cy[:, None]) * (4 * NUM_LEVELS) + image).to(torch.int32)
    col_bins = ((torch.arange(width, device=device) >= cx[:, None]) * (2 * NUM_LEVELS)).to(torch.int32)
    if bins is None:
        bins = torch.empty(gt.shape, dtype=torch.int32, device=device)
    torch.add(row_bins[:, :, None], col_bins[:, None, :], out=bins)
    bins.add_(levels.view(torch.uint8)).add_(gt_bytes, alpha=NUM_LEVELS)
    hist = torch.bincount(bins.view(-1), minlength=batch * 8 * NUM_LEVELS).view(batch, 2, 2, 2, NUM_LEVELS)
    return LevelHistograms(hist, cx, cy, _foreground_boxes(row_counts, col_counts), n_fg.to(torch.int64))


def _level_predictions(hist: torch.Tensor, values: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(B, 256) float64 prediction of every level: `values`, min-max normalised over the levels that occur
    with the reference's per-pixel arithmetic. Levels that do not occur may fall outside [0, 1]."""
    values = values.to(device=hist.device, dtype=torch.float64).expand(hist.shape[0], NUM_LEVELS)
    if not normalize:
        return values
    present = (hist.sum(dim=(1, 2, 3)) > 0).to(torch.uint8)
    low = values.gather(1, present.argmax(dim=1, keepdim=True))
    high = values.gather(1, NUM_LEVELS - 1 - present.flip(1).argmax(dim=1, keepdim=True))
    varies = high > low
    return torch.where(varies, (values - low) / torch.where(varies, high - low, 1.0), values)


def _level_error_table(pred: torch.Tensor) -> torch.Tensor:
    """(B * 2048,) float64 error of every flat histogram bin (`level_histograms`): the prediction in the
    background, 1 - prediction in the foreground."""
    level_error = torch.stack([pred, 1 - pred], dim=1)
    return level_error[:, None, None].expand(-1, 2, 2, 2, NUM_LEVELS).reshape(-1)


def _level_statistics(
    histograms: LevelHistograms, pred: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], threshold: float
) -> BatchStatistics:
    """`BatchStatistics` from `level_histograms`, the level predictions (`_level_predictions`), the raw level
    `values`, the image size (H, W) and the binary threshold: sums over pixels become sums over levels."""
    hist = histograms.hist
    n_total = shape[0] * shape[1]
    by_gt = hist.sum(dim=(1, 2))  # (B, 2, 256): background, foreground
    n_fg = by_gt[:, 1].sum(dim=1)
    counts = by_gt.to(torch.float64)
    quadrants = hist.to(torch.float64)
    per_quadrant = quadrants.sum(dim=3)
    foreground = quadrants[:, :, :, 1]
    pred_squared = pred * pred
    sums = QuadrantSums(
        n=per_quadrant.sum(dim=3),
        p=torch.einsum("bijl,bl->bij", per_quadrant, pred),
        pp=torch.einsum("bijl,bl->bij", per_quadrant, pred_squared),
        g=foreground.sum(dim=3),
        pg=torch.einsum("bijl,bl->bij", foreground, pred),
        fg_pp=torch.einsum("bijl,bl->b", foreground, pred_squared),
    )
    s_alpha = _s_measure_from_sums(sums, n_fg, histograms.cx, histograms.cy, shape, 0.5)

    # Truncation, as numpy's astype(uint8); levels that do not occur may fall outside [0, 255].
    quantised = (pred * 255).to(torch.int64).clamp_(0, NUM_THRESHOLDS - 1)
    by_threshold = torch.zeros_like(by_gt).scatter_add_(2, quantised[:, None, :].expand_as(by_gt), by_gt)
    above = by_threshold.flip(dims=(2,)).cumsum(dim=2)
    adaptive_threshold = (2 * (counts.sum(dim=1) * pred).sum(dim=1) / n_total).clamp(max=1)
    at_adaptive = (by_gt * (pred >= adaptive_threshold[:, None])[:, None, :]).sum(dim=2)
    positive = (by_gt * (values.to(pred.device) > threshold)).sum(dim=2)
    true_pos, false_pos = positive[:, 1], positive[:, 0]
    false_neg = n_fg - true_pos
    return BatchStatistics(
        counts=torch.stack([true_pos, false_pos, false_neg, n_total - true_pos - false_pos - false_neg], dim=1),
        adaptive=(at_adaptive[:, 1:], at_adaptive[:, :1]),
        curve=(above[:, 1], above[:, 0]),
        n_fg=n_fg,
        s_alpha=s_alpha,
        error_sum=(counts * torch.stack([pred, 1 - pred], dim=1)).sum(dim=(1, 2)),
    )


def level_statistics(
    levels: torch.Tensor,
    values: torch.Tensor,
    gt: torch.Tensor,
    normalize: bool = True,
    threshold: float = 0.5,
    bins: torch.Tensor | None = None,
) -> tuple[BatchStatistics, ErrorMaps]:
    """Statistics of predictions that take at most 256 values, from one joint histogram per image.

    The histogram counts the pixels of each (S-alpha quadrant, ground truth, level); the reference's
    per-pixel arithmetic (min-max normalisation, `uint8(pred * 255)`, thresholds) is applied to the 256
    level values, and sums over pixels become sums over levels weighted by their counts.

    Args:
        levels: (B, H, W) uint8 (or bool) level of every pixel.
        values: (256,) float64 value in [0, 1] of every level (e.g. `arange(256) / 255` for uint8 maps).
        gt: (B, H, W) bool masks.
        normalize: min-max normalise every image, as the reference does by default.
        threshold: the binary threshold of the raw values (`counts`).
        bins: (B, H, W) int32 work tensor for the histogram bins (a new one by default).

    Returns:
        The batch's statistics, equal to `pixel_statistics`' on `values[levels]`, and its error maps.
    """
    if bins is None:
        bins = torch.empty(gt.shape, dtype=torch.int32, device=gt.device)
    histograms = level_histograms(levels, gt, bins)
    pred = _level_predictions(histograms.hist, values, normalize)
    stats = _level_statistics(histograms, pred, values, tuple(gt.shape[1:]), threshold)
    return stats, ErrorMaps(bins, _level_error_table(pred), histograms.boxes, histograms.n_fg > 0)


def pixel_statistics(
    raw: torch.Tensor,
    gt: torch.Tensor,
    normalize: bool = True,
    threshold: float = 0.5,
    scratch: Scratch | None = None,
    error: torch.Tensor | None = None,
    threads: HostThreads | None = None,
) -> tuple[BatchStatistics, ErrorMaps]:
    """Statistics of (B, H, W) float64 predictions `raw` in [0, 1] (overwritten when `normalize`), and their
    error maps (written into `error`, a (B, H, W) float64 tensor, if given); `gt`, `normalize` and `threshold`
    as in `level_statistics`. On CPU with numpy (`_pixel_statistics_host`, part of it image by image in
    `threads`), elsewhere with the batched per-pixel functions (`_pixel_statistics_torch`)."""
    scratch = scratch or Scratch()
    if error is None:
        error = torch.empty_like(raw)
    if raw.device.type == "cpu":
        return _pixel_statistics_host(raw, gt, normalize, threshold, scratch, error, threads=threads or HostThreads(1))
    return _pixel_statistics_torch(raw, gt, normalize, threshold, scratch, error)


def _pixel_statistics_torch(
    raw: torch.Tensor, gt: torch.Tensor, normalize: bool, threshold: float, scratch: Scratch, error: torch.Tensor
) -> tuple[BatchStatistics, ErrorMaps]:
    """`pixel_statistics` with the batched per-pixel functions (any device)."""
    counts = binary_counts(raw, gt, threshold, scratch)
    pred = _min_max_(raw) if normalize else raw
    g = scratch.like("gt", pred).copy_(gt)
    torch.sub(pred, g, out=error).abs_()
    row_counts, col_counts = _foreground_counts(gt)
    stats = BatchStatistics(
        counts=counts,
        adaptive=adaptive_counts(pred, gt, scratch),
        curve=threshold_histograms(pred, gt, scratch),
        n_fg=counts[:, 0] + counts[:, 2],
        s_alpha=_s_measure(pred, g, 0.5, scratch),
        error_sum=error.sum(dim=(1, 2)),
    )
    return stats, ErrorMaps(error, None, _foreground_boxes(row_counts, col_counts), col_counts.sum(dim=1) > 0)


def _pixel_statistics_host(
    raw: torch.Tensor,
    gt: torch.Tensor,
    normalize: bool,
    threshold: float,
    scratch: Scratch,
    error: torch.Tensor,
    threads: HostThreads,
) -> tuple[BatchStatistics, ErrorMaps]:
    """`pixel_statistics` on CPU tensors (numpy compares and reduces several times faster than torch there),
    with few passes over the float64 maps:

    - S-alpha's quadrant sums and the error maps, half an image at a time (`_quadrant_sums_host`, in
      `threads`); the adaptive threshold and the error sum follow from the sums.
    - One histogram per image of (S-alpha quadrant, at the adaptive threshold, above the binary threshold,
      ground truth, `uint8(pred * 255)`) gives the binary, adaptive and threshold counts and the foreground
      pixels of every quadrant. The five flags are assembled in bytes and added to the levels in one pass.
    """
    batch, height, width = gt.shape
    n_total = height * width
    gt_bytes = gt.numpy().view(np.uint8)
    row_counts, col_counts = _foreground_counts(gt)
    n_fg = col_counts.sum(dim=1).to(torch.int64)
    cx, cy = _centroid(col_counts, n_fg), _centroid(row_counts, n_fg)
    positive = np.greater(raw.numpy(), threshold, out=scratch.like("positive", gt).numpy())
    pred = _min_max_(raw) if normalize else raw
    pred_np = pred.numpy()

    p, pp, pg, fg_pp = _quadrant_sums_host(pred_np, gt_bytes, cx, cy, error.numpy(), threads)
    total_p, total_pg = p.sum(dim=(1, 2)), pg.sum(dim=(1, 2))

    # Flags of every pixel, one byte: foreground, positive, adaptive, bottom, right.
    adaptive_threshold = (2 * total_p / n_total).clamp(max=1).numpy()[:, None, None]
    adaptive = np.greater_equal(pred_np, adaptive_threshold, out=scratch.like("adaptive", gt).numpy())
    right = (torch.arange(width) >= cx[:, None]).to(torch.uint8).mul_(16)
    bottom = (torch.arange(height) >= cy[:, None]).to(torch.uint8).mul_(8)
    flags = scratch.like("flags", gt, torch.uint8)
    torch.add(bottom[:, :, None], right[:, None, :], out=flags)
    flags_np = flags.numpy()
    np.add(flags_np, gt_bytes, out=flags_np)
    np.add(flags_np, np.left_shift(positive.view(np.uint8), 1), out=flags_np)
    np.add(flags_np, np.left_shift(adaptive.view(np.uint8), 2), out=flags_np)
    bins = scratch.like("bins", gt, torch.int32)
    np.multiply(pred_np, 255, out=bins.numpy(), casting="unsafe")  # truncation, as numpy's astype(uint8)
    bins.add_(flags, alpha=NUM_LEVELS)
    hist = torch.stack([torch.bincount(image.view(-1), minlength=32 * NUM_LEVELS) for image in bins])
    hist = hist.view(batch, 2, 2, 2, 2, 2, NUM_LEVELS)  # right, bottom, adaptive, positive, foreground, level
    by_gt = hist.sum(dim=(1, 2, 3, 4))  # (B, 2, 256): background, foreground
    above = by_gt.flip(dims=(2,)).cumsum(dim=2)
    at_adaptive = hist[:, :, :, 1].sum(dim=(1, 2, 3, 5))
    positive_counts = hist[:, :, :, :, 1].sum(dim=(1, 2, 3, 5))
    g_sums = hist[..., 1, :].sum(dim=(3, 4, 5)).transpose(1, 2).to(torch.float64)

    sums = QuadrantSums(
        n=torch.stack([cy, height - cy], dim=1)[:, :, None] * torch.stack([cx, width - cx], dim=1)[:, None, :],
        p=p,
        pp=pp,
        g=g_sums,
        pg=pg,
        fg_pp=fg_pp,
    )
    true_pos, false_pos = positive_counts[:, 1], positive_counts[:, 0]
    false_neg = n_fg - true_pos
    stats = BatchStatistics(
        counts=torch.stack([true_pos, false_pos, false_neg, n_total - true_pos - false_pos - false_neg], dim=1),
        adaptive=(at_adaptive[:, 1:], at_adaptive[:, :1]),
        curve=(above[:, 1], above[:, 0]),
        n_fg=n_fg,
        s_alpha=_s_measure_from_sums(sums, n_fg, cx, cy, (height, width), 0.5),
        # sum of |pred - gt| = background pred + foreground (1 - pred)
        error_sum=total_p - 2 * total_pg + n_fg.to(torch.float64),
    )
    return stats, ErrorMaps(error, None, _foreground_boxes(row_counts, col_counts), n_fg > 0)


def _quadrant_sums_host(
    pred: np.ndarray, gt: np.ndarray, cx: torch.Tensor, cy: torch.Tensor, error: np.ndarray, threads: HostThreads
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """S-alpha's sums over the quadrants of CPU maps, and their errors, half an image at a time (a half stays
    in the CPU's cache while it is read several times; whole maps of a chunk do not), images in `threads`.

    Args:
        pred: (B, H, W) float64 predictions.
        gt: (B, H, W) uint8 0/1 ground truth.
        cx, cy: (B,) float64 centroids (`_centroid`): rows above `cy` and columns left of `cx` are the top and
            left quadrants.
        error: (B, H, W) float64 array to write |pred - gt| into.
        threads: where the images are processed (numpy only).

    Returns:
        p, pp, pg: (B, 2, 2) float64 sums of pred, pred^2 and pred in the foreground over [top, bottom] x
        [left, right]; fg_pp: (B,) float64 sum of pred^2 over the foreground. Each quadrant is summed directly,
        so a quadrant that holds only zeros sums to exactly 0 (S-alpha treats that case specially).
    """
    sums = np.zeros((3, len(pred), 2, 2))
    fg_pp = np.zeros(len(pred))
    centroids = list(zip(cx.to(torch.int64).tolist(), cy.to(torch.int64).tolist(), strict=True))

    def one_image(b: int) -> None:
        x, y = centroids[b]
        for i, rows in enumerate((slice(0, y), slice(y, None))):
            half, half_gt, half_error = pred[b, rows], gt[b, rows], error[b, rows]
            pred_fg = np.multiply(half, half_gt, out=half_error)  # the error's memory, until it is written
            fg_pp[b] += np.einsum("ij,ij->", pred_fg, half)
            columns = (half.sum(axis=0), np.einsum("ij,ij->j", half, half), pred_fg.sum(axis=0))
            for k, column_sums in enumerate(columns):
                sums[k, b, i] = column_sums[:x].sum(), column_sums[x:].sum()
            np.abs(np.subtract(half, half_gt, out=half_error), out=half_error)

    threads.map(one_image, range(len(pred)))
    p, pp, pg = torch.from_numpy(sums).unbind(0)
    return p, pp, pg, torch.from_numpy(fg_pp)


def _gaussian_weights(size: int = 7, sigma: float = 5.0) -> list[float]:
    """Normalised 1-D factor of MATLAB's `fspecial('gaussian', size, sigma)` (the 2-D kernel is its outer product)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (kernel / kernel.sum()).tolist()


_GAUSSIAN_WEIGHTS = _gaussian_weights()
_GAUSSIAN_WEIGHTS_NP = np.array(_GAUSSIAN_WEIGHTS)


def _gaussian_filter_(x: torch.Tensor, weights: list[float], scratch: Scratch) -> torch.Tensor:
    """Separable 'same' filtering of (B, H, W) `x` with zero padding (scipy's `mode="constant"`), written
    into `x`."""
    rows_done = _filter_axis(x, weights, dim=1, out=scratch.like("filtered_rows", x))
    return _filter_axis(rows_done, weights, dim=2, out=x)


def _filter_axis(x: torch.Tensor, weights: list[float], dim: int, out: torch.Tensor) -> torch.Tensor:
    """1-D correlation of `x` with the odd-length `weights` along `dim`, zero padded, into `out`."""
    radius = len(weights) // 2
    size = x.shape[dim]
    torch.mul(x, weights[radius], out=out)
    for k in range(1, min(radius, size - 1) + 1):
        out.narrow(dim, 0, size - k).add_(x.narrow(dim, k, size - k), alpha=weights[radius + k])
        out.narrow(dim, k, size - k).add_(x.narrow(dim, 0, size - k), alpha=weights[radius - k])
    return out


def weighted_f_measure(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Weighted F-measure per image (Margolin et al. 2014), as PySODMetrics' `WeightedFmeasure`.

    Background errors are taken at the nearest foreground pixel, smoothed with a 7 x 7 Gaussian (sigma 5)
    and weighted by `2 - exp(log(0.5) / 5 * distance)`; the nearest-foreground step is `nearest_foreground`.
    Images without foreground score 0.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        beta: PySODMetrics' `beta` (default 1): `Q = (1 + beta) R P / (R + beta P)`, so it plays the role
            of beta^2. AutoGluon's port, used by the Conv-LoRA code, defaults to 0.3.

    Returns:
        (B,) float64.
    """
    has_fg = _count(gt) > 0
    scores = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    if has_fg.any():
        pred, gt = pred[has_fg], gt[has_fg]
        g = gt.to(pred.dtype)
        error = (pred - g).abs_()
        scratch = Scratch()
        sums = _weighted_f_sums(error, g, nearest_foreground(gt, scratch), scratch)
        scores[has_fg] = _weighted_f_from_sums(g.sum(dim=(1, 2)), error.sum(dim=(1, 2)), sums, beta)
    return scores


def _weighted_f_sums(
    error: torch.Tensor, g: torch.Tensor, nearest: tuple[torch.Tensor, torch.Tensor], scratch: Scratch
) -> torch.Tensor:
    """The sums behind the weighted F of a batch of images with foreground, batched on their device.

    Args:
        error: (B, H, W) float64 |pred - gt|.
        g: (B, H, W) float64 ground truth.
        nearest: `nearest_foreground(gt)`, whose distances are overwritten.
        scratch: work tensors to reuse.

    Returns:
        (B, 3) float64: the sum over the foreground of min(error, smoothed error), the sum of the error over
        the foreground, and the sum of error * exp(log(0.5) / 5 * distance to the foreground).
    """
    index, distance = nearest
    error_at_nearest = scratch.like("error_at_nearest", error)
    torch.gather(error.flatten(1), 1, index.flatten(1), out=error_at_nearest.view(error.shape[0], -1))
    smoothed = _gaussian_filter_(error_at_nearest, _GAUSSIAN_WEIGHTS, scratch)
    # Foreground pixels count min(error, smoothed error); background pixels their error times the importance
    # 2 - decay, where decay = exp(log(0.5) / 5 * distance) is 1 in the foreground.
    weighted_fg = _dot(torch.minimum(smoothed, error, out=smoothed), g)
    decay = distance.mul_(math.log(0.5) / 5).exp_()
    return torch.stack([weighted_fg, _dot(error, g), _dot(error, decay)], dim=1)


def _weighted_f_from_sums(n_fg: torch.Tensor, error_sum: torch.Tensor, sums: torch.Tensor, beta: float) -> torch.Tensor:
    """Weighted F (B,) from the foreground pixels (B,), the error sums (B,) and `_weighted_f_sums`' (B, 3)
    (NaN for images without foreground)."""
    n_fg = n_fg.to(torch.float64)
    weighted_fg, error_fg, error_decay = sums.unbind(dim=1)
    true_pos = n_fg - weighted_fg
    # sum over the background of error * (2 - decay) = 2 sum(error) - sum_fg(error) - sum(error * decay)
    false_pos = 2 * error_sum - error_fg - error_decay
    recall = 1 - weighted_fg / n_fg
    precision = true_pos / (true_pos + false_pos + EPS)
    return (1 + beta) * recall * precision / (recall + beta * precision + EPS)


_DECAY_TABLE = [torch.ones(1, dtype=torch.float64)]


def _decay_table(size: int) -> torch.Tensor:
    """`exp(log(0.5) / 5 * sqrt(d2))` for the squared distances d2 = 0, 1, ..., at least `size` - 1: float64."""
    table = _DECAY_TABLE[0]
    if len(table) < size:
        table = _DECAY_TABLE[0] = torch.arange(size, dtype=torch.float64).sqrt_().mul_(math.log(0.5) / 5).exp_()
    return table


def _weighted_f_sums_host(
    error: torch.Tensor, gt: torch.Tensor, boxes: list[list[int]], scratch: Scratch, threads: HostThreads
) -> torch.Tensor:
    """The sums behind the weighted F of CPU images that all have foreground: the feature transform and the
    foreground sums image by image (in `threads`), then the decay sums.

    Args:
        error: (B, H, W) float64 |pred - gt|.
        gt: (B, H, W) bool masks.
        boxes: per image, first and last foreground row, first and last foreground column.
        scratch: work tensors to reuse.
        threads: where the per-image work runs.

    Returns:
        (B, 3) float64, the sums of `_weighted_f_sums`.
    """
    batch, height, width = gt.shape
    nearest = scratch.get("nearest", (batch, 2, height, width), torch.int32, error.device)
    error_np, gt_np, nearest_np = error.numpy(), gt.numpy(), nearest.numpy()

    def foreground_sums(b: int) -> tuple[float, float]:
        _, index = nearest_foreground_host(gt_np[b], nearest_np[b])
        return _foreground_sums_host(error_np[b], gt_np[b], index, boxes[b])

    sums = torch.empty(batch, 3, dtype=torch.float64)
    sums[:, :2] = torch.tensor(threads.map(foreground_sums, range(batch)), dtype=torch.float64)
    # Image by image: one image's maps stay in the CPU's cache, a whole chunk's do not.
    table = _decay_table(height * height + width * width)
    decay = scratch.get("decay", (height * width,), torch.float64, error.device)
    for b in range(batch):
        torch.index_select(table, 0, nearest[b, 0].view(-1), out=decay)
        sums[b, 2] = torch.dot(error[b].view(-1), decay)
    return sums


def _foreground_sums_host(error: np.ndarray, gt: np.ndarray, index: np.ndarray, box: list[int]) -> tuple[float, float]:
    """The foreground sums behind the weighted F of one image, in numpy and scipy only (it runs in
    `HostThreads`).

    The smoothed error is needed only on the foreground, so the error at the nearest foreground pixel is
    gathered and smoothed only over the foreground's bounding box grown by the Gaussian's radius (zero
    padded only where that box meets the image border, as in the reference).

    Args:
        error: (H, W) float64 |pred - gt|.
        gt: (H, W) bool mask.
        index: (H, W) int32 flat index of every pixel's nearest foreground pixel.
        box: first and last foreground row, first and last foreground column.

    Returns:
        The sum over the foreground of min(error, smoothed error) and the sum of the error over the foreground.
    """
    height, width = gt.shape
    top, bottom, left, right = box
    rows = slice(max(top - _GAUSSIAN_RADIUS, 0), min(bottom + _GAUSSIAN_RADIUS + 1, height))
    cols = slice(max(left - _GAUSSIAN_RADIUS, 0), min(right + _GAUSSIAN_RADIUS + 1, width))
    at_nearest = error.reshape(-1)[index[rows, cols]]
    smoothed = correlate1d(at_nearest, _GAUSSIAN_WEIGHTS_NP, axis=0, mode="constant")
    smoothed = correlate1d(smoothed, _GAUSSIAN_WEIGHTS_NP, axis=1, mode="constant")
    box_error, box_gt = error[rows, cols], gt[rows, cols].astype(np.float64)
    weighted_fg = np.einsum("ij,ij->", np.minimum(smoothed, box_error, out=smoothed), box_gt)
    return float(weighted_fg), float(np.einsum("ij,ij->", box_error, box_gt))


def binary_counts(
    pred: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5, scratch: Scratch | None = None
) -> torch.Tensor:
    """Confusion counts of `pred > threshold` against `gt`, per image.

    Args:
        pred: (B, H, W) float64 maps.
        gt: (B, H, W) bool masks.
        threshold: foreground is strictly above it.
        scratch: work tensors to reuse.

    Returns:
        (B, 4) int64 columns TP, FP, FN, TN.
    """
    scratch = scratch or Scratch()
    binary = torch.gt(pred, threshold, out=scratch.like("mask", gt))
    pred_pos = _count(binary)
    true_pos = _count(binary.logical_and_(gt))
    gt_pos = _count(gt)
    n_total = gt.shape[1] * gt.shape[2]
    false_pos = pred_pos - true_pos
    false_neg = gt_pos - true_pos
    return torch.stack([true_pos, false_pos, false_neg, n_total - true_pos - false_pos - false_neg], dim=1)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """`numerator / denominator` with 0 where the denominator is 0 (PySODMetrics' convention)."""
    numerator = numerator.to(torch.float64)
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator.clamp(min=1))


_PREDICTION_FORMS = (
    "floating point maps in [0, 1] or uint8 maps (0/1 masks if the map's max is at most 1, else grey levels "
    "0..255 read as level / 255) or bool masks"
)


def prepare_predictions(predictions: torch.Tensor, indices: list[int], scratch: Scratch | None = None) -> torch.Tensor:
    """Float64 copies of a batch of predictions, read by `_PREDICTION_FORMS`.

    Args:
        predictions: (B, H, W) floating point maps in [0, 1], uint8 maps (0/1 masks, or 0..255 grey levels
            when the map's max is above 1), or bool masks.
        indices: input positions of the B images, for error messages.
        scratch: work tensors to reuse (the result is one of them).

    Returns:
        (B, H, W) float64 in [0, 1], a new tensor unless `scratch` is given.

    Raises:
        TypeError: for other dtypes.
        ValueError: for NaN or values outside [0, 1], naming the first offending image.
    """
    if predictions.is_floating_point():
        low = predictions.amin(dim=(1, 2))
        high = predictions.amax(dim=(1, 2))
        bad = first_failing(indices, low.isnan() | high.isnan())
        if bad is not None:
            raise ValueError(f"Prediction {bad} contains NaN.")
        bad = first_failing(indices, (low < 0) | (high > 1))
        if bad is not None:
            raise ValueError(f"Prediction {bad} has values outside [0, 1]; pass probabilities, not logits.")
    elif predictions.dtype not in (torch.uint8, torch.bool):
        raise TypeError(f"Predictions must be {_PREDICTION_FORMS}, got {predictions.dtype}.")
    pred = (scratch or Scratch()).like("raw", predictions, torch.float64).copy_(predictions)
    if predictions.dtype == torch.uint8:
        grey = pred.amax(dim=(1, 2), keepdim=True) > 1
        pred.div_(torch.where(grey, 255.0, 1.0))
    return pred


def _uint8_masks_as_levels(predictions: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 predictions with the 0/1 masks among them (max at most 1) scaled to 0/255, so that every
    image reads as grey levels (level / 255) with the mask's values 0 and 1."""
    masks = _per_image(predictions, "max").to(predictions.device) <= 1
    if not bool(masks.any()):
        return predictions
    return torch.where(masks.view(-1, 1, 1), predictions * 255, predictions)


_NUMPY_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
)


def _on_host(x: torch.Tensor) -> bool:
    """Whether `x` is a CPU tensor that numpy can view: numpy's comparisons and integer reductions are several
    times faster than torch's on CPU."""
    return x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES


def _greater(x: torch.Tensor, value: float) -> torch.Tensor:
    """`x > value` as a bool tensor of the shape of `x`."""
    if _on_host(x):
        return torch.from_numpy(np.greater(x.detach().numpy(), value))
    return x > value


def _per_image(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-image "min" or "max" of a (B, H, W) tensor: (B,)."""
    if _on_host(x):
        return torch.from_numpy(getattr(x.detach().numpy().reshape(len(x), -1), reduction)(axis=1))
    return getattr(x.flatten(1), f"a{reduction}")(dim=1)


_REFERENCE_FORMS = (
    "a bool mask, a mask of 0s and 1s or of 0s and 255s (foreground 1 or 255; any integer or floating point "
    "dtype), or a floating point mask in [0, 1] (foreground > 0.5)"
)


def _only_0_and_255(x: torch.Tensor) -> torch.Tensor:
    """Per image of a (B, H, W) tensor without negative values, whether it holds only 0s and 255s: (B,) bool (on
    the CPU for CPU tensors). On the CPU image by image with numpy, whose full counts are several times faster than
    counts along an axis."""
    if _on_host(x):
        images = x.detach().numpy()
        return torch.tensor([np.count_nonzero(image) == np.count_nonzero(image == 255) for image in images])
    return _count(x != 0) == _count(x == 255)


def _distinct_values(x: torch.Tensor, shown: int = 6) -> str:
    """The distinct values of `x` for an error message: "{0, 7}", or the first `shown` and their number."""
    values = torch.unique(x.detach().cpu()).tolist()
    text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:shown])
    return f"{{{text}}}" if len(values) <= shown else f"{{{text}, ...}} ({len(values)} distinct values)"


def binarize_references(references: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Ground-truth masks as bool, by one rule for every dtype (`_REFERENCE_FORMS`).

    A reference is a bool mask; or, in any integer or floating point dtype, a mask of 0s and 1s or of 0s and
    255s (all-zero, all-one and all-255 maps included; 0/1 and 0/255 read the same way in every dtype); or,
    in a floating point dtype, a soft mask in [0, 1]. Foreground is `> 0.5`, i.e. the value 1 or 255
    (PySODMetrics' `> 128` on 0/255 PNG masks gives the same masks).

    Args:
        references: (B, H, W) masks of one dtype.
        indices: input positions of the B images, for error messages.

    Returns:
        (B, H, W) bool.

    Raises:
        TypeError: for complex masks.
        ValueError: for any other values (e.g. {0, 7}, {0, 1, 255}, negative values, grey levels 0..255),
            naming the first offending image, its values and the accepted forms.
    """
    if references.dtype == torch.bool:
        return references
    if references.is_complex():
        raise TypeError(f"References must be {_REFERENCE_FORMS}, got {references.dtype}.")
    if references.dtype not in _NUMPY_DTYPES:  # e.g. uint16, bfloat16: fewer torch kernels
        references = references.to(torch.float64 if references.is_floating_point() else torch.int64)
    high = _per_image(references, "max")
    bad = (
        torch.zeros_like(high, dtype=torch.bool)
        if references.dtype == torch.uint8
        else _per_image(references, "min") < 0
    )
    wide = high > 1  # must then hold only 0s and 255s
    if bool(wide.any()):
        bad |= wide & ~_only_0_and_255(references).to(wide.device)
    failing = first_failing(indices, bad)
    if failing is not None:
        image = references[indices.index(failing)]
        raise ValueError(
            f"Reference {failing} ({references.dtype}) has the values {_distinct_values(image)}; a reference "
            f"must be {_REFERENCE_FORMS}. Binarise a grey-level mask first (PySODMetrics reads `mask > 128`)."
        )
    # The same masks: valid integer masks hold only 0 and 1 or 255 (an integer comparison is much faster).
    return _greater(references, 0.5 if references.is_floating_point() else 0)


_LEVEL_VALUES = {
    torch.uint8: torch.arange(NUM_LEVELS, dtype=torch.float64) / 255,
    torch.bool: (torch.arange(NUM_LEVELS) > 0).to(torch.float64),  # only levels 0 and 1 occur
}


class SODMetrics:
    """Streaming salient / camouflaged object detection metrics and binary mask metrics.

    `update` computes the per-image statistics of a batch right away (on the batch's device) and keeps only
    their sums, so memory does not grow with the dataset; `compute` turns them into the dataset values.
    Because every statistic is a sum, the result does not depend on the order or batching of the images, so
    gathering batches from several processes (Accelerate's `gather_for_metrics`) before `update` gives the
    single-process result.

    Args:
        normalize: min-max normalise every prediction before S-alpha, E-phi, weighted F, MAE and F-measure,
            as PySODMetrics does by default.
        weighted_f_beta: the `beta` of the weighted F-measure (PySODMetrics' default 1; see
            `weighted_f_measure`).
        f_beta2: beta^2 of the F-measure.
        threshold: binarisation threshold of the raw prediction for IoU, Dice, T-Jac, accuracy and BER.
        jaccard_threshold: per-image Jaccard below it counts as 0 in T-Jac (0.65 in the ISIC 2017 challenge).
        chunk_size: images processed at once. A few (chunk_size, H, W) float64 work tensors are kept between
            `update` calls, because on CPU reusing them is much faster than allocating afresh; `reset` (which
            the evaluate module calls after `compute`) frees them.
        num_threads: on CPU, threads that compute the weighted F's distance transforms of a chunk's images in
            parallel (`HostThreads`); None follows `torch.get_num_threads()`. The results do not depend on it.
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
        """Forgets every image seen so far and frees the work tensors and threads."""
        self._scratch = Scratch()
        self._threads.close()
        self.num_images = 0
        self._sums = torch.zeros(len(_PER_IMAGE), dtype=torch.float64)
        self._curves = torch.zeros(2, NUM_THRESHOLDS, dtype=torch.float64)
        self._confusion = torch.zeros(4, dtype=torch.int64)

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
        sums = torch.zeros_like(self._sums)
        curves = torch.zeros_like(self._curves)
        confusion = torch.zeros_like(self._confusion)
        num_images = 0
        for group in group_by_size(predictions, references):
            values = _LEVEL_VALUES.get(group.predictions.dtype)
            shape = tuple(group.predictions.shape[1:])
            parts: list[Any] = []
            weighted: list[torch.Tensor] = []
            for start in range(0, len(group.indices), self.chunk_size):
                stop = start + self.chunk_size
                indices = group.indices[start:stop]
                part, errors, gt = self._chunk(
                    group.predictions[start:stop], group.references[start:stop], indices, values
                )
                parts.append(part)
                weighted.append(self._weighted_f_sums(errors, gt))
                num_images += len(indices)
                # The per-image statistics are reduced together, a few hundred images at a time.
                if stop >= len(group.indices) or len(parts) * self.chunk_size >= _IMAGES_PER_REDUCTION:
                    if values is not None:
                        histograms = concatenate_images([histograms for histograms, _ in parts])
                        pred = torch.cat([pred for _, pred in parts])
                        stats = _level_statistics(histograms, pred, values, shape, self.threshold)
                    else:
                        stats = concatenate_images(parts)
                    batch_sums, batch_curves, batch_confusion = self._batch_sums(stats, shape, torch.cat(weighted))
                    sums += batch_sums
                    curves += batch_curves
                    confusion += batch_confusion
                    parts, weighted = [], []
        # Committed only once the whole batch has passed validation.
        self._sums += sums
        self._curves += curves
        self._confusion += confusion
        self.num_images += num_images

    def _chunk(
        self, predictions: torch.Tensor, references: torch.Tensor, indices: list[int], values: torch.Tensor | None
    ) -> tuple[Any, ErrorMaps, torch.Tensor]:
        """Validates a (B, H, W) chunk and reads its pixels: the histograms and level predictions of uint8 or
        bool maps (whose level `values` are given), else their `BatchStatistics`; their error maps; and the
        (B, H, W) bool masks."""
        gt = binarize_references(references, indices).to(predictions.device)
        if values is not None:
            if predictions.dtype == torch.uint8:
                predictions = _uint8_masks_as_levels(predictions)
            bins = self._scratch.like("bins", gt, torch.int32)
            histograms = level_histograms(predictions, gt, bins)
            pred = _level_predictions(histograms.hist, values, self.normalize)
            errors = ErrorMaps(bins, _level_error_table(pred), histograms.boxes, histograms.n_fg > 0)
            return (histograms, pred), errors, gt
        raw = prepare_predictions(predictions, indices, self._scratch)
        error = self._scratch.like("error", gt, torch.float64)
        stats, errors = pixel_statistics(raw, gt, self.normalize, self.threshold, self._scratch, error, self._threads)
        return stats, errors, gt

    def _batch_sums(
        self, stats: BatchStatistics, shape: tuple[int, int], weighted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sums over the images of the per-image metrics, of the E-phi and F curves, and the pooled TP / FP /
        FN / TN counts, on the CPU; `weighted` holds the (B, 3) sums of `_weighted_f_sums`."""
        n_total = shape[0] * shape[1]
        e_adaptive, e_curve = _e_measure(stats.adaptive, stats.curve, stats.n_fg, n_total)
        f_adaptive, f_curve = _f_measure(stats.adaptive, stats.curve, stats.n_fg, self.f_beta2)
        true_pos, false_pos, false_neg, true_neg = stats.counts.unbind(dim=1)
        iou = _ratio(true_pos, true_pos + false_pos + false_neg)
        weighted_f = _weighted_f_from_sums(stats.n_fg, stats.error_sum, weighted, self.weighted_f_beta)
        per_image = {
            "s_alpha": stats.s_alpha,
            "e_phi_adaptive": e_adaptive,
            "f_beta_w": torch.where(stats.n_fg > 0, weighted_f, 0.0),
            "mae": stats.error_sum / n_total,
            "f_beta_adaptive": f_adaptive,
            "iou": iou,
            "dice": _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
            "jaccard_thresholded": torch.where(iou < self.jaccard_threshold, torch.zeros_like(iou), iou),
            "accuracy": _ratio(true_pos + true_neg, stats.counts.sum(dim=1)),
        }
        return (
            torch.stack([per_image[name].sum() for name in _PER_IMAGE]).cpu(),
            torch.stack([e_curve.sum(dim=0), f_curve.sum(dim=0)]).cpu(),
            stats.counts.sum(dim=0).cpu(),
        )

    def _weighted_f_sums(self, errors: ErrorMaps, gt: torch.Tensor) -> torch.Tensor:
        """(B, 3) float64 sums behind the weighted F (`_weighted_f_sums`; zeros for images without foreground):
        image by image on the CPU (`_weighted_f_sums_host`), batched on other devices."""
        has_fg = errors.has_fg
        sums = torch.zeros(len(gt), 3, dtype=torch.float64, device=gt.device)
        if not bool(has_fg.any()):
            return sums
        error = errors.dense(self._scratch.like("dense_error", gt, torch.float64))
        if self._uses_host(gt.device):
            images = torch.nonzero(has_fg).flatten().tolist()
            boxes = errors.boxes.tolist()
            if len(images) < len(gt):
                error, gt, boxes = error[images], gt[images], [boxes[b] for b in images]
            sums[images] = _weighted_f_sums_host(error, gt, boxes, self._scratch, self._threads)
            return sums
        gt = gt[has_fg]
        error = error[has_fg]
        sums[has_fg] = _weighted_f_sums(error, gt.to(error.dtype), nearest_foreground(gt, self._scratch), self._scratch)
        return sums

    @staticmethod
    def _uses_host(device: torch.device) -> bool:
        """Whether the weighted F of images on `device` is computed image by image on the host."""
        return device.type == "cpu"

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
        means = self._sums / self.num_images
        e_curve, f_curve = self._curves / self.num_images
        true_pos, false_pos, false_neg, true_neg = self._confusion
        shadow_error = 1 - _ratio(true_pos, true_pos + false_neg)
        non_shadow_error = 1 - _ratio(true_neg, true_neg + false_pos)
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

_IMAGES_PER_REDUCTION = 256

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


def compute_sod_metrics(predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
    """One-shot `SODMetrics`: `kwargs` go to its constructor; see `SODMetrics.compute` for the keys."""
    metrics = SODMetrics(**kwargs)
    metrics.update(predictions, references)
    return metrics.compute()
