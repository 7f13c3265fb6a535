"""Validation of metric inputs and grouping of images by size.

Every metric takes a list of H x W maps (or one B x H x W array) per argument. Maps of one size (and dtype
and device) are stacked into a batch so that the metrics run batched; `group_by_size` returns those batches
with the positions of their images in the input, so that errors can name the offending image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class SizeGroup:
    """Images of one size, stacked.

    Attributes:
        indices: positions of the images in the input lists, shape (B,).
        predictions: (B, H, W) predictions, in the dtype they were given (a view of the input where B is 1).
        references: (B, H, W) references, in the dtype they were given (likewise).
    """

    indices: list[int]
    predictions: torch.Tensor
    references: torch.Tensor


def _as_tensor(array: Any) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array
    return torch.as_tensor(np.asarray(array))


def _as_list(maps: Any, name: str) -> list[torch.Tensor] | torch.Tensor:
    """A (B, H, W) tensor stays one tensor; anything else becomes a list of tensors."""
    if maps is None:
        raise ValueError(f"`{name}` is missing.")
    if isinstance(maps, torch.Tensor | np.ndarray):
        tensor = _as_tensor(maps)
        if tensor.ndim == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 3:
            raise ValueError(f"`{name}` must be H x W maps or one B x H x W array, got shape {tuple(tensor.shape)}.")
        return tensor
    if not isinstance(maps, Sequence) or isinstance(maps, str | bytes):
        raise ValueError(f"`{name}` must be a list of H x W maps or a B x H x W array, got {type(maps).__name__}.")
    return [_as_tensor(m) for m in maps]


def group_by_size(predictions: Any, references: Any) -> list[SizeGroup]:
    """Checks that `predictions` and `references` pair up and stacks the pairs of each size.

    Args:
        predictions: a list of H x W maps (tensors, arrays or nested lists) or one (B, H, W) array.
        references: the same for the references.

    Returns:
        One `SizeGroup` per distinct size, dtypes and devices, in order of first appearance.

    Raises:
        ValueError: if either input is empty, their lengths differ, a map is not 2-D, a map has no pixels
            (H or W is 0), a prediction and its reference have different shapes, or a floating point reference
            contains NaN (the message names the index). NaN in predictions is left to the metrics (the SOD
            metrics reject it).
    """
    preds = _as_list(predictions, "predictions")
    refs = _as_list(references, "references")
    if len(preds) == 0 or len(refs) == 0:
        raise ValueError("`predictions` and `references` must not be empty.")
    if len(preds) != len(refs):
        raise ValueError(f"Got {len(preds)} predictions but {len(refs)} references.")
    if isinstance(preds, torch.Tensor) and isinstance(refs, torch.Tensor) and preds.shape == refs.shape:
        indices = list(range(len(preds)))
        _check_not_empty(preds[0].shape, 0)
        _check_no_nan(refs, indices, "Reference")
        return [SizeGroup(indices, preds, refs)]

    groups: dict[tuple, list[int]] = {}
    for index, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        if pred.ndim != 2:
            raise ValueError(f"Prediction {index} must be a 2-D H x W map, got shape {tuple(pred.shape)}.")
        _check_not_empty(pred.shape, index)
        if pred.shape != ref.shape:
            raise ValueError(
                f"Prediction {index} has shape {tuple(pred.shape)} but reference {index} has shape {tuple(ref.shape)}."
            )
        key = (tuple(pred.shape), pred.dtype, ref.dtype, pred.device, ref.device)
        groups.setdefault(key, []).append(index)
    stacked = [SizeGroup(indices, _stack(preds, indices), _stack(refs, indices)) for indices in groups.values()]
    for group in stacked:
        _check_no_nan(group.references, group.indices, "Reference")
    return stacked


def _stack(maps: list[torch.Tensor], indices: list[int]) -> torch.Tensor:
    """(B, H, W) stack of the maps at `indices` (a view of the map itself when there is one)."""
    return maps[indices[0]][None] if len(indices) == 1 else torch.stack([maps[i] for i in indices])


def _check_not_empty(shape: torch.Size, index: int) -> None:
    """Raises ValueError if an H x W map of `shape` (image `index`) has no pixels: no metric is defined on it."""
    if shape.numel() == 0:
        raise ValueError(
            f"Prediction {index} is empty (shape {tuple(shape)}); every map needs at least one pixel (H, W >= 1)."
        )


def _check_no_nan(maps: torch.Tensor, indices: list[int], name: str) -> None:
    """Raises ValueError naming the first image of `maps` (B, H, W) that holds a NaN: it would read as background."""
    if not maps.is_floating_point() or maps.numel() == 0:
        return
    bad = first_failing(indices, maps.isnan().flatten(1).any(dim=1))
    if bad is not None:
        raise ValueError(f"{name} {bad} contains NaN; a mask must be defined at every pixel.")


def first_failing(indices: list[int], failing: torch.Tensor) -> int | None:
    """The input position of the first image flagged in `failing` (shape (B,)), or None if none is."""
    flagged = torch.nonzero(failing).flatten()
    return indices[int(flagged[0])] if len(flagged) else None
