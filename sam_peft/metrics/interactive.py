"""Interactive segmentation benchmark numbers: mIoU and Dice per click, and the number of clicks to reach an IoU.

An interactive evaluation prompts a model with one object at a time: a first click (one positive point, usually at
the object's interior), then corrective clicks, each placed in the largest error region of the previous prediction
(positive in a missed region, negative in a false one), up to `max_clicks`. Separately, the object may be prompted
with its box. The loop records the IoU of the predicted mask with the object after every click; `InteractiveMetrics`
turns those IoU rows into the numbers papers report.

Definitions (one row of IoUs per object), those of RITM's evaluation (Sofiiuk et al., "Reviving Iterative Training
with Mask Guidance for Interactive Segmentation", ICIP 2022), whose click simulation SAM's point evaluation also
uses for its mIoU against the number of points (Kirillov et al., "Segment Anything", ICCV 2023):
- `miou@k`: the mean over objects of the IoU after k clicks (k = 1..max_clicks); `miou@1` is the one-point
  number. `mdice@k` likewise for Dice, computed per object from its IoU: for binary masks
  Dice = 2 |A and B| / (|A| + |B|) = 2 IoU / (1 + IoU) exactly, so IoUs carry everything needed.
  `iou_curve` and `dice_curve` list these means for k = 1..max_clicks.
- `miou_box`, `mdice_box`: the mean IoU and Dice of one box prompt, when the boxes' IoUs are given.
- `noc@85` (NoC@85%): the mean over objects of the number of clicks after which the IoU first is at least 0.85
  (>=, compared in the precision the IoUs are given in); an object that does not reach it within `max_clicks`
  counts `max_clicks`. Likewise for every threshold (`noc@90`, and e.g. `noc@87.5` for 0.875).
- `nof@85` (NoF, number of failures): how many objects never reach the threshold within `max_clicks`. RITM's
  code counts the objects whose NoC equals `max_clicks`, which also takes in those that reach the threshold at
  exactly the last click; here those are not failures.

Shorter rows: the loop may stop clicking an object early (typically once it reaches the highest threshold). Its
row then stops early: a tensor row ends in NaN, or a list row is shorter, or every row of the tensor has fewer
than `max_clicks` columns. The last recorded IoU is carried forward to `max_clicks`, as if the remaining clicks
changed nothing. RITM's evaluation does the same implicitly: it stops an object once its IoU reaches the target
and records only the clicks made.

The metric streams: `update` keeps sums over objects only, so the result does not depend on how the objects are
batched. With several processes, gather the rows before `update` (e.g. Accelerate's `pad_across_processes` along
the clicks with NaN, then `gather_for_metrics`), as with the other metrics of this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

INTERACTIVE_THRESHOLDS = (0.85, 0.90)


def threshold_name(threshold: float) -> str:
    """The suffix of a threshold's keys: 0.85 -> "85", 0.9 -> "90", 0.875 -> "87.5"."""
    return f"{round(threshold * 100, 6):g}"


def dice_from_iou(iou: torch.Tensor) -> torch.Tensor:
    """Dice of binary masks from their IoU (per object): 2 IoU / (1 + IoU)."""
    return 2 * iou / (1 + iou)


def mask_iou(predictions: Any, targets: Any) -> torch.Tensor:
    """IoU of binary masks, per object.

    Args:
        predictions: (N, H, W) or (H, W) masks, bool or 0/1 (any dtype; nonzero is foreground), on any device.
        targets: masks of the same shape.

    Returns:
        (N,) (or a 0-d) float64 IoU on the masks' device; 1 where both masks are empty.
    """
    predictions = torch.as_tensor(predictions) != 0
    targets = torch.as_tensor(targets).to(predictions.device) != 0
    if predictions.shape != targets.shape or predictions.ndim not in (2, 3):
        raise ValueError(
            f"Predictions and targets must be (N, H, W) or (H, W) masks of one shape, got "
            f"{tuple(predictions.shape)} and {tuple(targets.shape)}."
        )
    dims = (-2, -1)
    intersection = (predictions & targets).sum(dim=dims, dtype=torch.float64)
    union = (predictions | targets).sum(dim=dims, dtype=torch.float64)
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def _as_rows(ious: Any) -> torch.Tensor:
    """IoU rows as one (N, C) floating point tensor; a ragged list of rows is padded with NaN."""
    if isinstance(ious, torch.Tensor | np.ndarray):
        rows = torch.as_tensor(ious)
        if rows.ndim != 2:
            raise ValueError(f"`ious` must be (N objects, C clicks), got shape {tuple(rows.shape)}.")
    else:
        listed = [r if isinstance(r, torch.Tensor) else torch.as_tensor(np.asarray(r, dtype=np.float64)) for r in ious]
        if any(r.ndim != 1 for r in listed):
            raise ValueError("`ious` given as a list must hold one 1-D row of IoUs per object.")
        if not listed:
            return torch.zeros(0, 1, dtype=torch.float64)
        dtype = listed[0].dtype
        for row in listed[1:]:
            dtype = torch.promote_types(dtype, row.dtype)
        device = listed[0].device
        width = max(len(r) for r in listed)
        rows = torch.full((len(listed), width), math.nan, dtype=dtype, device=device)
        for index, row in enumerate(listed):
            rows[index, : len(row)] = row.to(device)
    if not rows.is_floating_point():
        raise TypeError(f"IoUs must be floating point, got {rows.dtype}.")
    return rows


def _check_range(values: torch.Tensor, name: str) -> None:
    bad = (values < 0) | (values > 1)
    if bad.any():
        raise ValueError(
            f"{name} must lie in [0, 1]; object {int(torch.nonzero(bad)[0][0])} has {float(values[bad][0])}."
        )


class InteractiveMetrics:
    """Streaming interactive segmentation metrics (see the module docstring for the definitions).

    Args:
        max_clicks: clicks per object (20 in RITM's and SAM's evaluations); rows are carried forward to it and an
            object that never reaches a threshold counts it.
        thresholds: IoU thresholds of NoC and NoF, each in (0, 1].
    """

    def __init__(self, max_clicks: int = 20, thresholds: Sequence[float] = INTERACTIVE_THRESHOLDS):
        if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 1:
            raise ValueError(f"`max_clicks` must be a positive int, got {max_clicks!r}.")
        thresholds = tuple(float(t) for t in thresholds)
        if not thresholds or any(not 0 < t <= 1 for t in thresholds):
            raise ValueError(f"`thresholds` must be IoUs in (0, 1], got {thresholds}.")
        if len({threshold_name(t) for t in thresholds}) != len(thresholds):
            raise ValueError(f"`thresholds` must differ, got {thresholds}.")
        self.max_clicks = max_clicks
        self.thresholds = thresholds
        self.reset()

    def reset(self) -> None:
        """Forgets every object seen so far."""
        self.num_objects = 0
        self.num_boxes = 0
        self._click_sums = torch.zeros(2, self.max_clicks, dtype=torch.float64)  # IoU, Dice per click
        self._box_sums = torch.zeros(2, dtype=torch.float64)  # IoU, Dice of the box prompt
        self._noc_sums = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self._failures = torch.zeros(len(self.thresholds), dtype=torch.int64)

    @torch.no_grad()
    def update(self, ious: Any, box_iou: Any = None) -> None:
        """Adds objects.

        Args:
            ious: the IoU of each object after clicks 1..C, C <= `max_clicks`: an (N, C) floating point tensor on
                any device (or numpy array), or a list of N 1-D rows of possibly different lengths. A row may end
                in NaN (clicks not made); the last IoU is carried forward to `max_clicks`.
            box_iou: (N,) IoU of each object prompted by its box, or None. Either every update gives it or none.

        Raises:
            ValueError: for a shape that does not fit, IoUs outside [0, 1], a row without a first IoU or with a
                number after a NaN, or boxes given in some updates only; nothing is added then.
            TypeError: for IoUs that are not floating point.
        """
        rows = _as_rows(ious)
        num, clicks = rows.shape
        if clicks > self.max_clicks:
            raise ValueError(f"`ious` has {clicks} clicks, more than max_clicks={self.max_clicks}.")
        missing = rows.isnan()
        _check_range(rows.nan_to_num(0.5), "IoUs")
        recorded = (~missing).sum(dim=1)
        if num and (recorded == 0).any():
            raise ValueError(f"Object {int(torch.nonzero(recorded == 0)[0])} has no IoU: every row needs click 1.")
        gaps = missing[:, :-1] & ~missing[:, 1:]
        if gaps.any():
            raise ValueError(
                f"Object {int(torch.nonzero(gaps)[0][0])} has an IoU after a NaN: NaN may only end a row "
                "(clicks not made)."
            )
        if box_iou is not None:
            box_iou = torch.as_tensor(box_iou).to(rows.device)
            if box_iou.shape != (num,):
                raise ValueError(f"`box_iou` must be ({num},), one IoU per object, got {tuple(box_iou.shape)}.")
            if not box_iou.is_floating_point():
                raise TypeError(f"`box_iou` must be floating point, got {box_iou.dtype}.")
            if box_iou.isnan().any():
                raise ValueError("`box_iou` contains NaN.")
            _check_range(box_iou, "`box_iou`")
        if self.num_objects and (box_iou is not None) != (self.num_boxes > 0):
            raise ValueError("Give `box_iou` in every update or in none, so that every object has a box IoU.")
        if num == 0:
            return

        last = rows[torch.arange(num, device=rows.device), recorded - 1]
        filled = torch.where(missing, last[:, None], rows)
        filled = torch.cat([filled, last[:, None].expand(num, self.max_clicks - clicks)], dim=1)
        # Compared in the IoUs' own precision, so that an IoU equal to a threshold there counts as reaching it.
        thresholds = torch.tensor(self.thresholds, dtype=rows.dtype, device=rows.device)
        reached = filled[:, :, None] >= thresholds  # (N, max_clicks, T)
        ever = reached.any(dim=1)
        first = reached.to(torch.uint8).argmax(dim=1) + 1
        noc = torch.where(ever, first, self.max_clicks)

        filled = filled.to(torch.float64)
        self._click_sums += torch.stack([filled.sum(dim=0), dice_from_iou(filled).sum(dim=0)]).cpu()
        self._noc_sums += noc.sum(dim=0, dtype=torch.float64).cpu()
        self._failures += (~ever).sum(dim=0).cpu()
        if box_iou is not None:
            box_iou = box_iou.to(torch.float64)
            self._box_sums += torch.stack([box_iou.sum(), dice_from_iou(box_iou).sum()]).cpu()
            self.num_boxes += num
        self.num_objects += num

    def compute(self) -> dict[str, Any]:
        """The dataset values.

        Returns:
            `num_objects`; `miou_box` and `mdice_box` (only if box IoUs were given); `miou@k` and `mdice@k` for
            k = 1..max_clicks; `miou_clicks`, their mean over k (the area under the IoU-vs-clicks curve, per
            click); `noc@T` (float) and `nof@T` (int) for every threshold (T as in `threshold_name`); `iou_curve`
            and `dice_curve`, lists of max_clicks floats.

        Raises:
            ValueError: if no object was added.
        """
        if self.num_objects == 0:
            raise ValueError("No objects were added: call `update` first.")
        iou_curve, dice_curve = (self._click_sums / self.num_objects).tolist()
        results: dict[str, Any] = {"num_objects": self.num_objects}
        if self.num_boxes:
            results["miou_box"], results["mdice_box"] = (self._box_sums / self.num_boxes).tolist()
        results.update({f"miou@{k}": value for k, value in enumerate(iou_curve, start=1)})
        results.update({f"mdice@{k}": value for k, value in enumerate(dice_curve, start=1)})
        results["miou_clicks"] = sum(iou_curve) / len(iou_curve)
        nocs = (self._noc_sums / self.num_objects).tolist()
        for threshold, noc, failures in zip(self.thresholds, nocs, self._failures.tolist(), strict=True):
            results[f"noc@{threshold_name(threshold)}"] = noc
            results[f"nof@{threshold_name(threshold)}"] = failures
        results["iou_curve"] = iou_curve
        results["dice_curve"] = dice_curve
        return results


def compute_interactive_metrics(ious: Any, box_iou: Any = None, **kwargs: Any) -> dict[str, Any]:
    """One-shot `InteractiveMetrics`: `kwargs` go to its constructor; see `InteractiveMetrics.compute` for the
    keys."""
    metrics = InteractiveMetrics(**kwargs)
    metrics.update(ious, box_iou)
    return metrics.compute()
