"""Nearest-foreground feature transform for the weighted F-measure.

The weighted F-measure needs, for every pixel, the Euclidean distance to the nearest foreground pixel and
the error at that pixel. Which of several equidistant foreground pixels counts as nearest changes the
result; the reference (PySODMetrics, through `scipy.ndimage.distance_transform_edt`, Maurer et al.'s
algorithm) takes the one with the smallest column and then the smallest row. Both versions below follow
that rule exactly:
- on CPU, scipy itself, image by image (`feature_transform_host`); an exact transform in torch or numpy ops is
  far slower than scipy's C code on CPU, because its row pass (the lower envelope of parabolas) is sequential,
  and brute force costs a pass over all columns per pixel. Its time grows with the number of columns that hold
  foreground (the sites of the row pass);
- on other devices, an exact torch version (column pass by cumulative max/min, row pass by brute force over
  the columns, chunked), which keeps the masks on the device.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ._scratch import Scratch

_ROW_PASS_ELEMENTS = 1 << 25  # elements of one (rows, W, W) chunk of the brute-force row pass
_CPU = torch.device("cpu")


def nearest_foreground(gt: torch.Tensor, scratch: Scratch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest foreground pixel of every pixel, with scipy's tie-breaking.

    Args:
        gt: (B, H, W) bool masks; every mask must contain at least one foreground pixel.
        scratch: work tensors to reuse (the results are among them).

    Returns:
        index: (B, H, W) int64 flat index (row * W + column) of the nearest foreground pixel (a foreground
            pixel is its own nearest).
        distance: (B, H, W) float64 Euclidean distance to it.
        Both on `gt.device`.
    """
    if gt.device.type == "cpu":
        return _nearest_foreground_scipy(gt, scratch or Scratch())
    return nearest_foreground_torch(gt)


def feature_transform_host(gt: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Nearest foreground pixel of every pixel of one mask, with scipy (which releases the GIL meanwhile, so
    several images can run in threads).

    Args:
        gt: (H, W) bool mask with at least one foreground pixel.
        features: (2, H, W) int32 array to write the result into.

    Returns:
        `features`: the row and the column of the nearest foreground pixel.
    """
    background = np.logical_not(gt)
    distance_transform_edt(background, return_distances=False, return_indices=True, indices=features)
    return features


def squared_distances(features: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distance from every pixel to its feature (exact integers).

    Args:
        features: (..., 2, H, W) int32 row and column of every pixel's nearest foreground pixel.
        out: (..., H, W) int32 tensor to write into (a new one by default).

    Returns:
        (..., H, W) int32.
    """
    height, width = features.shape[-2:]
    feature_rows, feature_cols = features.unbind(dim=-3)
    if out is None:
        out = torch.empty_like(feature_rows)
    rows = torch.arange(height, dtype=torch.int32, device=features.device).view(height, 1)
    cols = torch.arange(width, dtype=torch.int32, device=features.device)
    col_offset = feature_cols - cols
    torch.sub(feature_rows, rows, out=out).mul_(out)
    return out.addcmul_(col_offset, col_offset)


def _nearest_foreground_scipy(gt: torch.Tensor, scratch: Scratch) -> tuple[torch.Tensor, torch.Tensor]:
    batch, height, width = gt.shape
    features = scratch.get("features", (batch, 2, height, width), torch.int32, _CPU)
    for mask, out in zip(gt.numpy(), features.numpy(), strict=True):
        feature_transform_host(mask, out)
    index = torch.mul(features[:, 0].to(torch.int64), width).add_(features[:, 1])
    return index, squared_distances(features).to(torch.float64).sqrt_()


def nearest_foreground_torch(gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact torch version of `nearest_foreground` for any device (see the module docstring).

    Args:
        gt: (B, H, W) bool masks, each with at least one foreground pixel.

    Returns:
        index: (B, H, W) int64 flat index of the nearest foreground pixel; distance: (B, H, W) float64.
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
    best_row = column_row.gather(1, best_col)
    index = (best_row * width + best_col).view(batch, height, width)
    return index, best.to(torch.float64).sqrt().view(batch, height, width)
