"""The metrics, one batched torch function each, in the shape of PySODMetrics' classes.

Every function takes a batch of equally sized images on any device: predictions `pred` as (B, H, W) float64 maps
in [0, 1] (already min-max normalised where the reference normalises, see `normalize_predictions`) and ground
truth `gt` as (B, H, W) bool masks, and returns one value per image. The tests compare each to PySODMetrics 1.6
(`py_sod_metrics`, a port of the original MATLAB code):
- S-alpha (`s_measure`): Fan et al., "Structure-measure: A new way to evaluate foreground maps", ICCV 2017.
- E-phi (`e_measure`): Fan et al., "Enhanced-alignment measure for binary foreground map evaluation", IJCAI 2018.
- weighted F-beta (`weighted_f_measure`): Margolin et al., "How to evaluate foreground maps?", CVPR 2014.
- F-measure (`f_measure`): Achanta et al., "Frequency-tuned salient region detection", CVPR 2009.
- MAE (`mean_absolute_error`): Perazzi et al., "Saliency filters", CVPR 2012.
- IoU, Dice, accuracy, BER (`binary_counts`): confusion counts of the thresholded prediction.

Each metric is split into the per-image statistics it needs (sums and pixel counts, `ImageStatistics`) and a
formula on those statistics (`s_measure_from_sums`, `e_measure_from_counts`, ...). Both engines of `SODMetrics`
produce the same statistics (the device engine with the functions below, the host engine with numpy) and share
the formulas.

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

import torch
import torch.nn.functional as F

EPS = 2.220446049250313e-16  # numpy.spacing(1), the epsilon of the reference code
NUM_THRESHOLDS = 256  # E-phi and F curves: thresholds 255, 254, ..., 0 on uint8(pred * 255)
GAUSSIAN_SIZE, GAUSSIAN_SIGMA = 7, 5.0  # the weighted F's smoothing, MATLAB's fspecial('gaussian', 7, 5)
DECAY_RATE = math.log(0.5) / 5  # the weighted F's importance of background errors: 2 - exp(rate * distance)
_ROW_PASS_ELEMENTS = 1 << 25  # elements of one (rows, W, W) chunk of `nearest_foreground`'s row pass


def normalize_predictions(pred: torch.Tensor) -> torch.Tensor:
    """Min-max normalises each map to [0, 1] (MATLAB's `mapminmax`); constant maps are left unchanged.

    Args:
        pred: (B, H, W) float64 maps.

    Returns:
        (B, H, W) float64, `(pred - min) / (max - min)` per image where max > min.
    """
    low = pred.amin(dim=(1, 2), keepdim=True)
    high = pred.amax(dim=(1, 2), keepdim=True)
    varies = high > low
    return torch.where(varies, (pred - low) / torch.where(varies, high - low, 1.0), pred)


def mean_absolute_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, as PySODMetrics' `MAE`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        (B,) float64.
    """
    return (pred - gt.to(pred.dtype)).abs().mean(dim=(1, 2))


# --- S-alpha ------------------------------------------------------------------------------------------------------


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


def centroid(counts: torch.Tensor, n_fg: torch.Tensor) -> torch.Tensor:
    """MATLAB's 1-based rounded centroid along one axis: indices below it form the top (or left) quadrants.

    Args:
        counts: (B, L) foreground pixels of each row (or column).
        n_fg: (B,) foreground pixels.

    Returns:
        (B,) float64 (1 for an empty mask).
    """
    index = torch.arange(counts.shape[1], device=counts.device, dtype=torch.float64)
    return torch.round((counts.to(torch.float64) * index).sum(dim=1) / n_fg.clamp(min=1)) + 1


def _halves(split: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 2, length) float64 0/1 masks of the indices below (B,) `split` and of the others."""
    first = (torch.arange(length, device=split.device) < split[:, None]).to(torch.float64)
    return torch.stack([first, 1 - first], dim=1)


def quadrant_sums(pred: torch.Tensor, gt: torch.Tensor) -> QuadrantSums:
    """S-alpha's per-quadrant sums (see `QuadrantSums`) of (B, H, W) float64 `pred` and bool `gt`.

    Every quadrant is summed through 0/1 masks, so a quadrant that holds only zeros sums to exactly 0.
    """
    g = gt.to(pred.dtype)
    n_fg = g.sum(dim=(1, 2))
    rows = _halves(centroid(g.sum(dim=2), n_fg), pred.shape[1])  # (B, 2, H): top, bottom
    cols = _halves(centroid(g.sum(dim=1), n_fg), pred.shape[2]).transpose(1, 2)  # (B, W, 2): left, right

    def per_quadrant(x: torch.Tensor) -> torch.Tensor:
        return rows @ x @ cols

    return QuadrantSums(
        n=rows.sum(dim=2)[:, :, None] * cols.sum(dim=1)[:, None, :],
        p=per_quadrant(pred),
        pp=per_quadrant(pred * pred),
        g=per_quadrant(g),
        pg=per_quadrant(pred * g),
        fg_pp=(pred * pred * g).sum(dim=(1, 2)),
    )


def _object_score(mean: torch.Tensor, sum_squares: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """S-alpha's object similarity `2 m / (m^2 + 1 + std + eps)` of a region from its mean and sum of squares.

    A region of one pixel has std 0 (as in the reference), not the square root of a rounding residue."""
    variance = (sum_squares - mean * mean * count).clamp(min=0) / (count - 1).clamp(min=1)
    variance = torch.where(count > 1, variance, 0.0)
    return 2 * mean / (mean * mean + 1 + variance.sqrt() + EPS)


def _ssim(sums: QuadrantSums) -> torch.Tensor:
    """S-alpha's SSIM of the four quadrants: (B, 2, 2); empty quadrants score 0 (see the module docstring)."""
    n = sums.n
    safe_n = n.clamp(min=1)
    x = sums.p / safe_n
    y = sums.g / safe_n
    denominator = n - 1 + EPS
    sigma_x = (sums.pp - x * sums.p).clamp(min=0) / denominator
    sigma_y = (sums.g * (1 - y) ** 2 + (n - sums.g) * y * y) / denominator
    # With a constant ground truth the covariance is exactly 0 in the reference's two-pass formula.
    constant_gt = (sums.g == 0) | (sums.g == n)
    sigma_xy = torch.where(constant_gt, 0.0, sums.pg - y * sums.p) / denominator
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    ssim = torch.where(alpha != 0, alpha / (beta + EPS), (beta == 0).to(alpha.dtype))
    return torch.where(n > 0, ssim, 0.0)


def s_measure_from_sums(sums: QuadrantSums, alpha: float = 0.5) -> torch.Tensor:
    """S-alpha (B,) float64 from the quadrant sums (`quadrant_sums`)."""
    area = sums.n.sum(dim=(1, 2))
    n_fg = sums.g.sum(dim=(1, 2))
    region = (_ssim(sums) * sums.n).sum(dim=(1, 2)) / area  # each quadrant weighted by its share of the image

    # Object score: statistics of pred in the foreground and of 1 - pred in the background.
    total_p, total_pp, total_pg = sums.p.sum(dim=(1, 2)), sums.pp.sum(dim=(1, 2)), sums.pg.sum(dim=(1, 2))
    n_bg = area - n_fg
    bg_p = total_p - total_pg
    fg_ratio = n_fg / area
    foreground = _object_score(total_pg / n_fg.clamp(min=1), sums.fg_pp, n_fg)
    background = _object_score((n_bg - bg_p) / n_bg.clamp(min=1), n_bg - 2 * bg_p + (total_pp - sums.fg_pp), n_bg)
    object_score = foreground * fg_ratio + background * (1 - fg_ratio)

    score = (alpha * object_score + (1 - alpha) * region).clamp(min=0)
    mean_pred = total_p / area
    score = torch.where(n_fg == area, mean_pred, score)
    return torch.where(n_fg == 0, 1 - mean_pred, score)


def s_measure(pred: torch.Tensor, gt: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Structure measure S-alpha per image (Fan et al. 2017), as PySODMetrics' `Smeasure`.

    Object score: similarity of the prediction's mean and spread inside and outside the ground truth. Region
    score: SSIM of the four quadrants split at the ground-truth centroid, weighted by area.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        alpha: weight of the object score against the region score.

    Returns:
        (B,) float64.
    """
    return s_measure_from_sums(quadrant_sums(pred, gt), alpha)


# --- E-phi and F-measure --------------------------------------------------------------------------------------------


def adaptive_counts(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Predicted-foreground pixels at the adaptive threshold `min(2 * mean(pred), 1)`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        (B, 2, 1) int64: those inside and those outside the ground truth.
    """
    threshold = (2 * pred.mean(dim=(1, 2))).clamp(max=1)
    predicted = pred >= threshold[:, None, None]
    inside, outside = (predicted & gt).sum(dim=(1, 2)), (predicted & ~gt).sum(dim=(1, 2))
    return torch.stack([inside, outside], dim=1)[:, :, None]


def threshold_counts(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Predicted-foreground pixels at each of the 256 thresholds 255, 254, ..., 0 on `uint8(pred * 255)`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        (B, 2, 256) int64: column k counts the pixels with quantised value >= 255 - k inside and outside the
        ground truth.
    """
    batch = pred.shape[0]
    image = torch.arange(batch, device=pred.device).view(batch, 1, 1)
    levels = (pred * 255).to(torch.int64)  # truncation, as numpy's astype(uint8)
    bins = (image * 2 + (~gt).to(torch.int64)) * NUM_THRESHOLDS + levels
    hist = torch.bincount(bins.flatten(), minlength=batch * 2 * NUM_THRESHOLDS).view(batch, 2, NUM_THRESHOLDS)
    return hist.flip(dims=(2,)).cumsum(dim=2)


def e_measure_from_counts(counts: torch.Tensor, n_fg: torch.Tensor, n_pixels: torch.Tensor) -> torch.Tensor:
    """E-phi from the pixel counts of binarised predictions.

    Args:
        counts: (B, 2, T) predicted-foreground pixels inside and outside the ground truth at T thresholds.
        n_fg: (B,) ground-truth foreground pixels.
        n_pixels: (B,) pixels per image.

    Returns:
        (B, T) float64: the sum of the enhanced alignment matrix over (H W - 1) (over 1 on a 1 x 1 image, where
        the reference divides by zero), capped at 1.
    """
    fg_fg, fg_bg = counts.to(torch.float64).unbind(dim=1)
    n_fg, n_pixels = n_fg.to(torch.float64)[:, None], n_pixels.to(torch.float64)[:, None]
    pred_fg = fg_fg + fg_bg
    pred_bg = n_pixels - pred_fg
    bg_fg = n_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / n_pixels
    mean_gt = n_fg / n_pixels
    demeaned_pred = (1 - mean_pred, 0 - mean_pred)
    demeaned_gt = (1 - mean_gt, 0 - mean_gt)
    total = torch.zeros_like(mean_pred)
    for count, i, j in ((fg_fg, 0, 0), (fg_bg, 0, 1), (bg_fg, 1, 0), (bg_bg, 1, 1)):
        a, b = demeaned_pred[i], demeaned_gt[j]
        align = 2 * (a * b) / (a * a + b * b + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    total = torch.where(n_fg == n_pixels, pred_fg, total)
    total = torch.where(n_fg == 0, pred_bg, total)
    return (total / torch.where(n_pixels > 1, n_pixels - 1 + EPS, 1.0)).clamp(max=1)


def e_measure(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Enhanced-alignment measure E-phi per image (Fan et al. 2018), as PySODMetrics' `Emeasure`.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.

    Returns:
        adaptive: (B,) float64, E-phi at the adaptive threshold.
        curve: (B, 256) float64, E-phi at the thresholds 255, 254, ..., 0 (the reference's order).
        Capped at 1 (see `e_measure_from_counts` and the module docstring).
    """
    n_fg = gt.sum(dim=(1, 2))
    n_pixels = torch.full_like(n_fg, gt.shape[1] * gt.shape[2])
    adaptive = e_measure_from_counts(adaptive_counts(pred, gt), n_fg, n_pixels)
    return adaptive[:, 0], e_measure_from_counts(threshold_counts(pred, gt), n_fg, n_pixels)


def f_measure_from_counts(counts: torch.Tensor, n_fg: torch.Tensor, beta2: float = 0.3) -> torch.Tensor:
    """F-measure `(1 + beta2) P R / (beta2 P + R)` (B, T) from the counts of `e_measure_from_counts` and the (B,)
    foreground pixels; 0 wherever a ratio is 0 / 0."""
    true_pos = counts[:, 0].to(torch.float64)
    precision = true_pos / counts.sum(dim=1).clamp(min=1)
    recall = true_pos / n_fg[:, None].clamp(min=1)
    numerator = (1 + beta2) * precision * recall
    return torch.where(numerator == 0, 0.0, numerator / (beta2 * precision + recall))


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
    n_fg = gt.sum(dim=(1, 2))
    adaptive = f_measure_from_counts(adaptive_counts(pred, gt), n_fg, beta2)
    return adaptive[:, 0], f_measure_from_counts(threshold_counts(pred, gt), n_fg, beta2)


# --- Weighted F-measure ---------------------------------------------------------------------------------------------


def nearest_foreground(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest foreground pixel of every pixel, exactly, with scipy's tie-breaking.

    Which of several equidistant foreground pixels counts as nearest changes the weighted F; the reference
    (through `scipy.ndimage.distance_transform_edt`, Maurer et al.'s algorithm) takes the one with the smallest
    column, then the smallest row. Column pass by cumulative max / min, row pass by brute force over the
    columns (in chunks), so the masks stay on their device.

    Args:
        gt: (B, H, W) bool masks, each with at least one foreground pixel.

    Returns:
        index: (B, H, W) int64 flat index (row * W + column) of the nearest foreground pixel (a foreground
            pixel is its own nearest).
        distance: (B, H, W) float64 Euclidean distance to it.
    """
    batch, height, width = gt.shape
    device = gt.device
    far = height + width  # beyond any real distance
    rows = torch.arange(height, device=device).view(1, height, 1)
    # Column pass: nearest foreground row above (ties go up, as in scipy) and below.
    above = torch.where(gt, rows, -far).cummax(dim=1).values
    below = torch.where(gt, rows, 2 * far).flip(1).cummin(dim=1).values.flip(1)
    up, down = rows - above, below - rows
    column_row = torch.where(up <= down, above, below).flatten(0, 1)
    column_distance = torch.minimum(up, down).clamp(max=far).flatten(0, 1)

    # Row pass: min over columns c of (column - c)^2 + column_distance[c]^2; the first (smallest) column wins ties.
    squared = (column_distance * column_distance).to(torch.int32)
    cols = torch.arange(width, device=device, dtype=torch.int32)
    offsets = (cols.view(width, 1) - cols.view(1, width)) ** 2
    best = torch.empty_like(squared)
    best_col = torch.empty(squared.shape, dtype=torch.int64, device=device)
    step = max(1, _ROW_PASS_ELEMENTS // (width * width))
    for start in range(0, squared.shape[0], step):
        chunk = squared[start : start + step]
        best[start : start + step], best_col[start : start + step] = (chunk[:, None, :] + offsets).min(dim=2)
    index = column_row.gather(1, best_col) * width + best_col
    return index.view(batch, height, width), best.to(torch.float64).sqrt().view(batch, height, width)


def gaussian_weights() -> torch.Tensor:
    """(7,) float64 factor of MATLAB's `fspecial('gaussian', 7, 5)`, whose 2-D kernel is its outer product:
    `exp(-x^2 / (2 sigma^2))`, normalised to sum 1."""
    x = torch.arange(GAUSSIAN_SIZE, dtype=torch.float64) - (GAUSSIAN_SIZE - 1) / 2
    weights = torch.exp(-(x * x) / (2 * GAUSSIAN_SIGMA**2))
    return weights / weights.sum()


def weighted_f_sums(error: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The per-pixel sums behind the weighted F.

    Every background pixel takes the error of its nearest foreground pixel (`nearest_foreground`); that map is
    smoothed with the 7 x 7 Gaussian (zero padded), and each foreground pixel counts the smaller of its error and
    the smoothed one. Background errors are weighted by `2 - exp(DECAY_RATE * distance to the foreground)`.

    Args:
        error: (B, H, W) float64 |pred - gt|.
        gt: (B, H, W) bool masks.

    Returns:
        (B, 3) float64: the sum over the foreground of min(error, smoothed error), the sum of the error over the
        foreground, and the sum of error * exp(DECAY_RATE * distance) (1 in the foreground); zeros for images
        without foreground.
    """
    sums = torch.zeros(error.shape[0], 3, dtype=torch.float64, device=error.device)
    has_fg = gt.flatten(1).any(dim=1)
    if not bool(has_fg.any()):
        return sums
    error, gt = error[has_fg], gt[has_fg]
    index, distance = nearest_foreground(gt)
    error_at_nearest = error.flatten(1).gather(1, index.flatten(1)).view_as(error)
    weights = gaussian_weights().to(error.device)
    kernel = torch.outer(weights, weights)[None, None]
    smoothed = F.conv2d(error_at_nearest[:, None], kernel, padding=GAUSSIAN_SIZE // 2)[:, 0]
    g = gt.to(error.dtype)
    decay = torch.exp(DECAY_RATE * distance)
    per_image = [torch.minimum(smoothed, error) * g, error * g, error * decay]
    sums[has_fg] = torch.stack([x.sum(dim=(1, 2)) for x in per_image], dim=1)
    return sums


def weighted_f_from_sums(
    sums: torch.Tensor, n_fg: torch.Tensor, error_sum: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """Weighted F (B,) from `weighted_f_sums`' (B, 3), the (B,) foreground pixels and the (B,) sums of the error;
    0 for images without foreground."""
    n_fg = n_fg.to(torch.float64)
    weighted_fg, error_fg, error_decay = sums.unbind(dim=1)
    true_pos = n_fg - weighted_fg
    # sum over the background of error * (2 - decay) = 2 sum(error) - sum_fg(error) - sum(error * decay)
    false_pos = 2 * error_sum - error_fg - error_decay
    recall = 1 - weighted_fg / n_fg.clamp(min=1)
    precision = true_pos / (true_pos + false_pos + EPS)
    score = (1 + beta) * recall * precision / (recall + beta * precision + EPS)
    return torch.where(n_fg > 0, score, 0.0)


def weighted_f_measure(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Weighted F-measure per image (Margolin et al. 2014), as PySODMetrics' `WeightedFmeasure`.

    Images without foreground score 0.

    Args:
        pred: (B, H, W) float64 maps in [0, 1].
        gt: (B, H, W) bool masks.
        beta: PySODMetrics' `beta` (default 1): `Q = (1 + beta) R P / (R + beta P)`, so it plays the role
            of beta^2. AutoGluon's port, used by the Conv-LoRA code, defaults to 0.3.

    Returns:
        (B,) float64.
    """
    error = (pred - gt.to(pred.dtype)).abs()
    return weighted_f_from_sums(weighted_f_sums(error, gt), gt.sum(dim=(1, 2)), error.sum(dim=(1, 2)), beta)


# --- Binary metrics -------------------------------------------------------------------------------------------------


def binary_counts(pred: torch.Tensor, gt: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Confusion counts of `pred > threshold` against `gt`, per image.

    Args:
        pred: (B, H, W) float64 maps.
        gt: (B, H, W) bool masks.
        threshold: foreground is strictly above it.

    Returns:
        (B, 4) int64 columns TP, FP, FN, TN.
    """
    predicted = pred > threshold
    true_pos = (predicted & gt).sum(dim=(1, 2))
    false_pos = (predicted & ~gt).sum(dim=(1, 2))
    false_neg = (~predicted & gt).sum(dim=(1, 2))
    true_neg = gt.shape[1] * gt.shape[2] - true_pos - false_pos - false_neg
    return torch.stack([true_pos, false_pos, false_neg, true_neg], dim=1)


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """`numerator / denominator` with 0 where the denominator is 0 (PySODMetrics' convention)."""
    numerator = numerator.to(torch.float64)
    return torch.where(denominator == 0, 0.0, numerator / denominator.clamp(min=1))


# --- What the engines compute -------------------------------------------------------------------------------------


@dataclass
class ImageStatistics:
    """Everything `SODMetrics` needs of each image of a batch: its sums and pixel counts.

    Attributes:
        quadrants: S-alpha's sums (`quadrant_sums`) of the normalised prediction.
        counts: (B, 4) int64 TP, FP, FN, TN of the raw prediction at the binary threshold (`binary_counts`).
        adaptive: (B, 2, 1) int64 counts at the adaptive threshold (`adaptive_counts`).
        curve: (B, 2, 256) int64 counts at the 256 thresholds (`threshold_counts`).
        error_sum: (B,) float64 sum of |pred - gt| (H W times the MAE).
        weighted_sums: (B, 3) float64 sums of `weighted_f_sums`.
    """

    quadrants: QuadrantSums
    counts: torch.Tensor
    adaptive: torch.Tensor
    curve: torch.Tensor
    error_sum: torch.Tensor
    weighted_sums: torch.Tensor

    @property
    def n_fg(self) -> torch.Tensor:
        """(B,) float64 foreground pixels."""
        return self.quadrants.g.sum(dim=(1, 2))

    @property
    def n_pixels(self) -> torch.Tensor:
        """(B,) float64 pixels."""
        return self.quadrants.n.sum(dim=(1, 2))

    @classmethod
    def concatenate(cls, parts: list[ImageStatistics]) -> ImageStatistics:
        """The statistics of several batches (on one device) as one batch."""
        if len(parts) == 1:
            return parts[0]

        def cat(items: list) -> torch.Tensor | QuadrantSums:
            if isinstance(items[0], QuadrantSums):
                return QuadrantSums(*(cat([getattr(item, f.name) for item in items]) for f in fields(QuadrantSums)))
            return torch.cat(items)

        return cls(*(cat([getattr(part, f.name) for part in parts]) for f in fields(cls)))
