"""The host engine: `ImageStatistics` of CPU images, image by image with numpy in `HostThreads`.

Each image, whatever its size, is one task of the thread pool. Its work (numpy, scipy and the compiled transform,
which release the GIL) writes into the thread's reused `Buffers`, and most of it goes a block of rows at a time,
so that the arrays it reads several times stay in the CPU's cache: the metrics are limited by memory traffic
more than by arithmetic, and two threads that stream whole maps through memory get little from the second core.
Only the small per-image results come back, to be stacked into torch tensors. Per image:
- uint8 (and bool) predictions take one of 256 levels, so all but the weighted F comes from one joint histogram
  of (S-alpha quadrant, level, ground truth): a single counting pass over the pixels. The reference's per-pixel
  arithmetic (normalisation, `uint8(pred * 255)`, thresholds) is applied to the 256 level values, so only the
  order of summation differs.
- floating point predictions: each block of the normalised map (float64, as the reference) gives S-alpha's
  column sums, the error map and the histogram of `uint8(pred * 255)` (the 256-threshold counts); the binary and
  adaptive counts come from masks.
- weighted F: the exact feature transform (`nearest_foreground_host`: the compiled one, about 4x faster than
  scipy's, or scipy's where it was not built), the decay weights looked up from the exact integer squared
  distances, and the Gaussian smoothing only over the foreground's bounding box, the only place where the
  smoothed error is used.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import correlate1d, distance_transform_edt

from .definitions import DECAY_RATE, GAUSSIAN_SIZE, NUM_THRESHOLDS, ImageStatistics, QuadrantSums, gaussian_weights
from .inputs import check_prediction_range
from .threads import Buffers, HostThreads

try:
    from ._edt import nearest_foreground as _compiled_transform
except ImportError:  # the optional extension was not built: scipy's transform, same results
    _compiled_transform = None

NUM_LEVELS = 256  # values of a uint8 prediction
_GREY_LEVELS = np.arange(NUM_LEVELS) / 255
_MASK_LEVELS = (np.arange(NUM_LEVELS) > 0).astype(np.float64)  # 0/1 masks: only levels 0 and 1 occur
_GAUSSIAN_WEIGHTS = gaussian_weights().numpy()
_GAUSSIAN_RADIUS = GAUSSIAN_SIZE // 2
_THREADED_PIXELS = 256 * 256  # mean pixels per image from which threads pay (1.3-1.45x at 350 x 350 on 2 cores)
_BLOCK_PIXELS = 1 << 17  # pixels of a block of rows: its float64 work arrays (1 MiB) stay in the CPU's cache


def host_transform() -> str:
    """Which feature transform `nearest_foreground_host` uses: "compiled" (`sam_peft.metrics.sod._edt`) or
    "scipy"."""
    return "scipy" if _compiled_transform is None else "compiled"


def nearest_foreground_host(gt: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`definitions.nearest_foreground` of one mask on CPU (`host_transform()` says with what; both give scipy's
    tie-breaking and release the GIL).

    Args:
        gt: (H, W) bool mask with at least one foreground pixel.
        out: (2, H, W) C-contiguous int32 array to write into.

    Returns:
        `out`: [0] the squared distance to the nearest foreground pixel (exact integers), [1] its flat index
        row * W + column.
    """
    squared, index = out
    if _compiled_transform is not None:
        _compiled_transform(np.ascontiguousarray(gt), squared, index)
        return out
    # scipy writes the nearest pixel's row into out[0] and its column into out[1]; both become the results.
    height, width = gt.shape
    distance_transform_edt(np.logical_not(gt), return_distances=False, return_indices=True, indices=out)
    feature_rows, feature_cols = out
    col_offset = feature_cols - np.arange(width, dtype=np.int32)
    index += feature_rows * np.int32(width)
    feature_rows -= np.arange(height, dtype=np.int32).reshape(height, 1)
    np.multiply(feature_rows, feature_rows, out=squared)
    squared += np.multiply(col_offset, col_offset, out=col_offset)
    return out


@dataclass
class HostImage:
    """One image for the host engine.

    Attributes:
        pred: (H, W) uint8, bool or floating point prediction (the range of floating point ones is checked here).
        gt: (H, W) bool mask.
        index: input position of the image, for error messages.
    """

    pred: np.ndarray
    gt: np.ndarray
    index: int


def image_statistics(
    images: list[HostImage], normalize: bool, threshold: float, threads: HostThreads
) -> ImageStatistics:
    """The statistics of CPU images of any sizes, one task of `threads` per image.

    Args:
        images: the B images.
        normalize: min-max normalise every prediction (not for the binary counts).
        threshold: the binary threshold of the raw prediction.
        threads: where the images are processed.

    Returns:
        Their statistics, on the CPU.

    Raises:
        ValueError: for floating point predictions with NaN or values outside [0, 1], naming the first one.
    """
    largest = max((image.gt.shape[0] - 1) ** 2 + (image.gt.shape[1] - 1) ** 2 for image in images)
    one_image = functools.partial(
        _image_statistics, normalize=normalize, threshold=threshold, decay=_decay_table(largest + 1)
    )
    # Smaller images are one by one in the calling thread: their numpy calls are too short, and threads would
    # spend their time waiting for the GIL.
    worth_threads = sum(image.gt.size for image in images) >= _THREADED_PIXELS * len(images)
    records = threads.map(one_image, images, worth_threads)
    checked = [(image.index, record) for image, record in zip(images, records, strict=True) if "low" in record]
    if checked:
        low, high = (torch.tensor([record[name] for _, record in checked]) for name in ("low", "high"))
        check_prediction_range(low, high, [index for index, _ in checked])

    def stacked(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array([record[name] for record in records]))

    return ImageStatistics(
        quadrants=QuadrantSums(*(stacked(name) for name in ("n", "p", "pp", "g", "pg", "fg_pp"))),
        counts=stacked("counts"),
        adaptive=stacked("adaptive"),
        curve=stacked("curve"),
        error_sum=stacked("error_sum"),
        weighted_sums=stacked("weighted_sums"),
    )


_DECAY_TABLE = [np.ones(1)]


def _decay_table(size: int) -> np.ndarray:
    """`exp(DECAY_RATE * sqrt(d2))` for the squared distances d2 = 0, 1, ..., at least `size` - 1: float64."""
    if len(_DECAY_TABLE[0]) < size:
        _DECAY_TABLE[0] = np.exp(DECAY_RATE * np.sqrt(np.arange(size, dtype=np.float64)))
    return _DECAY_TABLE[0]


@dataclass
class _Mask:
    """What the ground truth of an image tells before the prediction is read.

    Attributes:
        gt: (H, W) bool mask; gt_bytes: the same as uint8 0/1.
        n_fg: foreground pixels.
        cx, cy: 1-based rounded centroid (`definitions.centroid`): rows above `cy` and columns left of `cx` form
            the top and left quadrants.
        box: first and last foreground row, first and last foreground column (None without foreground).
    """

    gt: np.ndarray
    gt_bytes: np.ndarray
    n_fg: int
    cx: int
    cy: int
    box: tuple[int, int, int, int] | None

    @classmethod
    def from_gt(cls, gt: np.ndarray) -> _Mask:
        gt_bytes = gt.view(np.uint8)
        row_counts = gt_bytes.sum(axis=1, dtype=np.int32)
        col_counts = gt_bytes.sum(axis=0, dtype=np.int32)
        n_fg = int(row_counts.sum())
        (rows,), (cols,) = np.nonzero(row_counts), np.nonzero(col_counts)
        box = (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])) if n_fg else None

        def centroid(counts: np.ndarray) -> int:
            return int(np.round(counts.dot(np.arange(len(counts), dtype=np.int64)) / max(n_fg, 1))) + 1

        return cls(gt, gt_bytes, n_fg, centroid(col_counts), centroid(row_counts), box)


def _image_statistics(
    image: HostImage, buffers: Buffers, normalize: bool, threshold: float, decay: np.ndarray
) -> dict[str, np.ndarray]:
    """The statistics of one image, as numpy arrays named like the fields of `ImageStatistics` and
    `QuadrantSums` (without the batch dimension); for a floating point prediction outside [0, 1], only its `low`
    and `high` values."""
    floating_point = image.pred.dtype.kind == "f"
    if floating_point:
        low, high = np.float64(image.pred.min()), np.float64(image.pred.max())  # float64, as the reference
        if not 0 <= low <= high <= 1:  # NaN included
            return {"low": low, "high": high}
    mask = _Mask.from_gt(image.gt)
    error = buffers.get("error", image.gt.shape, np.float64)
    if floating_point:
        record = _float_statistics(image.pred, (low, high), mask, normalize, threshold, error, buffers)
        record.update(low=low, high=high)
    else:
        record = _level_statistics(image.pred, mask, normalize, threshold, error, buffers)
    record["weighted_sums"] = np.zeros(3) if mask.box is None else _weighted_f_sums(error, mask, decay, buffers)
    return record


def _row_blocks(height: int, width: int, split: int = 0) -> list[tuple[int, slice]]:
    """(part, rows) of blocks of at most `_BLOCK_PIXELS` pixels (at least one row) that cover `height` rows of
    `width` pixels: part 0 for the rows above `split`, 1 for the others (no block straddles `split`)."""
    step = max(1, _BLOCK_PIXELS // width)
    split = min(split, height)
    parts = ((0, split), (split, height))
    return [
        (part, slice(start, min(start + step, stop)))
        for part, (first, stop) in enumerate(parts)
        for start in range(first, stop, step)
    ]


def _count_bins(levels: np.ndarray, gt_bytes: np.ndarray, part: int, cx: int, hist: np.ndarray, buffers: Buffers):
    """Adds the pixels of a block of rows to the (2048,) int64 joint histogram `hist` of (S-alpha quadrant, level,
    ground truth): bin ((bottom * 2 + right) * 256 + level) * 2 + foreground.

    Args:
        levels, gt_bytes: (R, W) uint8 (or bool) levels and uint8 0/1 ground truth of the block.
        part: 1 if the block is below the centroid row, else 0.
        cx: the centroid column: columns from `cx` on are the right quadrants.
        hist: the histogram to add to.
        buffers: the thread's work arrays.

    Returns:
        (R, W) intp bin of every pixel (a buffer).
    """
    key = buffers.get("key", levels.shape, np.uint16)  # assembled in 2 bytes, then widened once
    np.multiply(levels, 2, out=key, dtype=np.uint16)
    np.add(key, gt_bytes, out=key, dtype=np.uint16)
    key += part * 4 * NUM_LEVELS
    key[:, cx:] += 2 * NUM_LEVELS
    bins = buffers.get("bins", levels.shape, np.intp)  # numpy counts intp only (it would convert into a new array)
    np.copyto(bins, key)
    hist += np.bincount(bins.reshape(-1), minlength=len(hist))
    return bins


def _above(by_threshold: np.ndarray) -> np.ndarray:
    """(2, 256) pixels at or above each of the thresholds 255, ..., 0, inside and outside the ground truth, from
    the (256, 2) [background, foreground] pixels of each quantised value."""
    return by_threshold[::-1, ::-1].cumsum(axis=0).T


def _confusion(true_pos: int, predicted: int, n_fg: int, n_pixels: int) -> np.ndarray:
    """(4,) TP, FP, FN, TN from the true positives, the predicted positives and the foreground pixels."""
    false_pos, false_neg = predicted - true_pos, n_fg - true_pos
    return np.array([true_pos, false_pos, false_neg, n_pixels - true_pos - false_pos - false_neg])


def _level_statistics(
    levels: np.ndarray, mask: _Mask, normalize: bool, threshold: float, error: np.ndarray, buffers: Buffers
) -> dict[str, np.ndarray]:
    """Statistics of a uint8 or bool prediction from its joint histogram, with its error map written into the
    (H, W) float64 `error`."""
    low, high = int(levels.min()), int(levels.max())
    values = _GREY_LEVELS if levels.dtype == np.uint8 and high > 1 else _MASK_LEVELS
    pred = values
    if normalize and values[high] > values[low]:  # the reference's per-pixel arithmetic on the level values
        pred = (values - values[low]) / (values[high] - values[low])
    # Error of every histogram bin: the prediction in the background, 1 - prediction in the foreground.
    table = np.tile(np.stack([pred, 1 - pred], axis=1).reshape(-1), 4)
    hist = np.zeros(8 * NUM_LEVELS, dtype=np.int64)
    for part, rows in _row_blocks(*levels.shape, mask.cy):
        bins = _count_bins(levels[rows], mask.gt_bytes[rows], part, mask.cx, hist, buffers)
        np.take(table, bins, out=error[rows], mode="clip")

    hist = hist.reshape(2, 2, NUM_LEVELS, 2)  # [top / bottom, left / right, level, background / foreground]
    by_level = hist.sum(axis=(0, 1))
    counts = hist.astype(np.float64)
    foreground = counts[..., 1]
    total_p = np.einsum("lf,l->", by_level, pred)
    predicted = by_level[values > threshold].sum(axis=0)
    adaptive = by_level[pred >= min(2 * total_p / levels.size, 1)].sum(axis=0)
    quantised = np.clip((pred * 255).astype(np.int64), 0, NUM_THRESHOLDS - 1)  # truncation, as astype(uint8)
    by_threshold = np.zeros((NUM_THRESHOLDS, 2), dtype=np.int64)
    np.add.at(by_threshold, quantised, by_level)  # levels that do not occur may fall outside [0, 255]: clipped
    return {
        "n": counts.sum(axis=(2, 3)),
        "p": np.einsum("brlf,l->br", counts, pred),
        "pp": np.einsum("brlf,l->br", counts, pred * pred),
        "g": foreground.sum(axis=2),
        "pg": np.einsum("brl,l->br", foreground, pred),
        "fg_pp": np.einsum("brl,l->", foreground, pred * pred),
        "counts": _confusion(int(predicted[1]), int(predicted.sum()), mask.n_fg, levels.size),
        "adaptive": adaptive[::-1, None],
        "curve": _above(by_threshold),
        "error_sum": np.einsum("lf,lf->", by_level, np.stack([pred, 1 - pred], axis=1)),
    }


def _float_statistics(
    raw: np.ndarray,
    value_range: tuple[np.float64, np.float64],
    mask: _Mask,
    normalize: bool,
    threshold: float,
    error: np.ndarray,
    buffers: Buffers,
) -> dict[str, np.ndarray]:
    """Statistics of a floating point prediction, whose min and max are `value_range`, with its error map written
    into the (H, W) float64 `error`.

    The normalised prediction is computed a block of rows at a time, and every block is read while it stays in
    the CPU's cache: S-alpha's column sums above and below the centroid, the error map and the histogram of
    `uint8(pred * 255)`; the adaptive threshold, which needs the mean, takes a second pass.
    """
    height, width = raw.shape
    gt, gt_bytes = mask.gt, mask.gt_bytes
    flags = buffers.get("flags", raw.shape, np.bool_)
    np.greater(raw, np.float64(threshold), out=flags)  # compared in float64, whatever the dtype of `raw`
    predicted = np.count_nonzero(flags)
    true_pos = np.count_nonzero(np.logical_and(flags, gt, out=flags))
    low, high = value_range
    rescale = normalize and high > low

    def normalized(rows: slice) -> np.ndarray:
        """The float64 prediction of a block of rows (a buffer), in float64 as the reference."""
        pred = buffers.get("pred", raw[rows].shape, np.float64)
        if rescale:
            return np.divide(np.subtract(raw[rows], low, out=pred), high - low, out=pred)
        np.copyto(pred, raw[rows])
        return pred

    column_sums = np.zeros((3, 2, width))  # sums of p, p^2 and p * g of each column, above and below the centroid
    fg_pp = 0.0
    hist = np.zeros(8 * NUM_LEVELS, dtype=np.int64)
    blocks = _row_blocks(height, width, mask.cy)
    for part, rows in blocks:
        pred, block_gt, block_error = normalized(rows), gt_bytes[rows], error[rows]
        pred_fg = np.multiply(pred, block_gt, out=block_error)  # the error's memory, until it is written
        fg_pp += np.einsum("ij,ij->", pred_fg, pred)
        column_sums[:, part] += np.einsum("ij->j", pred), np.einsum("ij,ij->j", pred, pred), np.einsum("ij->j", pred_fg)
        np.abs(np.subtract(pred, block_gt, out=block_error), out=block_error)
        levels = buffers.get("levels", pred.shape, np.uint8)
        np.multiply(pred, 255, out=levels, casting="unsafe")  # truncation, as numpy's astype(uint8)
        _count_bins(levels, block_gt, part, mask.cx, hist, buffers)
    # Each quadrant is summed directly, so a quadrant that holds only zeros sums to exactly 0.
    p, pp, pg = np.stack([column_sums[..., : mask.cx].sum(axis=-1), column_sums[..., mask.cx :].sum(axis=-1)], -1)
    total_p, total_pg = p.sum(), pg.sum()

    adaptive_threshold = min(2 * total_p / raw.size, 1.0)
    adaptive = adaptive_fg = 0
    for _, rows in blocks:
        at_or_above = np.greater_equal(normalized(rows), adaptive_threshold, out=flags[rows])
        adaptive += np.count_nonzero(at_or_above)
        adaptive_fg += np.count_nonzero(np.logical_and(at_or_above, gt[rows], out=at_or_above))
    hist = hist.reshape(2, 2, NUM_LEVELS, 2)
    return {
        "n": hist.sum(axis=(2, 3)).astype(np.float64),
        "p": p,
        "pp": pp,
        "g": hist[..., 1].sum(axis=2).astype(np.float64),
        "pg": pg,
        "fg_pp": fg_pp,
        "counts": _confusion(true_pos, predicted, mask.n_fg, raw.size),
        "adaptive": np.array([[adaptive_fg], [adaptive - adaptive_fg]]),
        "curve": _above(hist.sum(axis=(0, 1))),
        # sum of |pred - gt| = background pred + foreground (1 - pred)
        "error_sum": total_p - 2 * total_pg + mask.n_fg,
    }


def _gathered(source: np.ndarray, index: np.ndarray, buffers: Buffers) -> Iterator[tuple[slice, np.ndarray]]:
    """`source[index]` of a 1-D `source` and (R, C) int32 `index` (any strides), a block of rows at a time:
    (rows, values of those rows in a buffer). numpy gathers with intp indices only (it would convert int32 ones
    into a new array), so each block's are converted into a buffer."""
    for _, rows in _row_blocks(*index.shape):
        block_index = buffers.get("index", index[rows].shape, np.intp)
        np.copyto(block_index, index[rows])
        values = buffers.get("gathered", block_index.shape, source.dtype)
        yield rows, np.take(source, block_index, out=values, mode="clip")


def _weighted_f_sums(error: np.ndarray, mask: _Mask, decay: np.ndarray, buffers: Buffers) -> np.ndarray:
    """`definitions.weighted_f_sums` of one image with foreground: (3,) float64.

    The smoothed error is needed only on the foreground, so the error at the nearest foreground pixel is
    gathered and smoothed only over the foreground's bounding box grown by the Gaussian's radius (zero padded
    only where that box meets the image border, as in the reference).

    Args:
        error: (H, W) float64 |pred - gt|.
        mask: the image's ground truth.
        decay: `_decay_table` up to the image's largest squared distance.
        buffers: the thread's work arrays.
    """
    height, width = error.shape
    squared, index = nearest_foreground_host(mask.gt, buffers.get("nearest", (2, height, width), np.int32))
    top, bottom, left, right = mask.box
    rows = slice(max(top - _GAUSSIAN_RADIUS, 0), min(bottom + _GAUSSIAN_RADIUS + 1, height))
    cols = slice(max(left - _GAUSSIAN_RADIUS, 0), min(right + _GAUSSIAN_RADIUS + 1, width))
    box_index = index[rows, cols]
    smoothed = buffers.get("smoothed", box_index.shape, np.float64)
    along_rows = buffers.get("along_rows", box_index.shape, np.float64)
    for block, values in _gathered(error.reshape(-1), box_index, buffers):
        smoothed[block] = values
    correlate1d(smoothed, _GAUSSIAN_WEIGHTS, axis=0, mode="constant", output=along_rows)
    correlate1d(along_rows, _GAUSSIAN_WEIGHTS, axis=1, mode="constant", output=smoothed)
    box_error, box_gt = error[rows, cols], mask.gt_bytes[rows, cols]
    weighted_fg = np.multiply(np.minimum(smoothed, box_error, out=smoothed), box_gt, out=smoothed).sum()
    error_fg = np.multiply(box_error, box_gt, out=along_rows).sum()
    error_decay = sum(
        np.einsum("ij,ij->", error[block], values) for block, values in _gathered(decay, squared, buffers)
    )
    return np.array([weighted_fg, error_fg, error_decay])
