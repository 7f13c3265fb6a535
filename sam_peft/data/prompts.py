"""Prompts sampled from ground-truth masks: boxes, points and corrective clicks, as transformers' SAM models take them.

Every function takes one binary mask per object, `(N, H, W)` bool or 0/1, in the model's input frame (`S x S`, the
images after `prepare_for_sam`'s resizing and padding), and returns tensors on the masks' device for
`SamModel` / `Sam2Model` / `Sam3TrackerModel` with the objects on the batch axis (one prompt set per object):
`input_points` `(N, 1, k, 2)` float, `input_labels` `(N, 1, k)` int64, `input_boxes` `(N, 1, 4)` float. An optional
`valid` mask, `(N, H, W)` or `(H, W)`, marks the pixels that count (False on the padding): nothing is drawn outside
it. Randomness comes from a `torch.Generator` (a CPU one) or an int seed: the same seed gives the same prompts,
whatever the masks' device. The work runs on the CPU (numpy/scipy: connected components, distance transforms).

Coordinates are those of the prompt encoder: (x, y) = (column, row) pixel indices of the input frame. The encoder
adds 0.5 itself (`points + 0.5  # Shift to center of pixel` in `SamPromptEncoder._embed_points` / `_embed_boxes`), so
a point `(c, r)` lands on the centre of pixel `(r, c)`, and a box `(x0, y0, x1, y1)` holds the first and last
column and row of the object (inclusive, as SAM's `batched_mask_to_box`, MedSAM and transformers' SAM fine-tuning
notebook make them): its corners land on the centres of the object's extreme pixels. Padding points (where an
object has fewer pixels than asked for, or its prediction is perfect) carry `PADDING_POINT_LABEL` (-10, the value
`SamProcessor` pads with and the prompt encoders zero out) at (0, 0).

The interactive scheme (SAM's training and RITM's evaluation protocol): a first prompt, then `num_clicks` corrective
clicks, each from the largest error region of the previous prediction, whose low-resolution logits come back as
the mask prompt. For `SamModel` (`Sam2Model` takes `image_embeddings` as its list of feature levels)::

    from sam_peft.data.prompts import next_click, sample_points

    generator = torch.Generator().manual_seed(seed)
    embeddings = model.get_image_embeddings(pixel_values)[image_index]  # (N, C, h, w): each object's image
    points, labels = sample_points(masks, num_positive=1, generator=generator)  # (N, 1, 1, 2), (N, 1, 1)
    outputs = model(image_embeddings=embeddings, input_points=points, input_labels=labels, multimask_output=False)
    for _ in range(num_clicks):
        low_res = outputs.pred_masks[:, 0]  # (N, 1, 4h, 4w) logits of the padded input frame
        pred = F.interpolate(low_res, size=masks.shape[-2:], mode="bilinear")[:, 0] > 0  # (N, S, S)
        new_points, new_labels = next_click(pred, masks, valid, mode="random", generator=generator)
        points, labels = torch.cat([points, new_points], dim=2), torch.cat([labels, new_labels], dim=2)
        outputs = model(image_embeddings=embeddings, input_points=points, input_labels=labels,
                        input_masks=low_res, multimask_output=False)  # SAM feeds the previous logits back

`next_click(..., mode="center")` is the deterministic click of evaluation. A perfect prediction gets a padding point,
so objects that are done stay done.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

# The label of a padding point (no point): what `SamProcessor` pads with, and the value the prompt encoders of SAM,
# SAM 2 and SAM 3 zero out (`labels != -10` in `SamPromptEncoder._embed_points`).
PADDING_POINT_LABEL = -10

# 4-connectivity (edge neighbours only): two error pixels that touch at a corner belong to different regions
_CONNECTIVITY = ndimage.generate_binary_structure(2, 1)

Seed = torch.Generator | int | None


def as_generator(generator: Seed) -> torch.Generator | None:
    """A CPU `torch.Generator` from a generator or an int seed; None (torch's global generator) stays None."""
    if generator is None or isinstance(generator, torch.Generator):
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"Prompts are drawn on the CPU: pass a CPU generator, got one on {generator.device}.")
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}.")


def _binary(masks: Tensor, name: str) -> np.ndarray:
    """`(N, H, W)` bool or 0/1 masks as a CPU numpy bool array."""
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a (N, H, W) tensor of per-object masks, got {shape}.")
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1): threshold logits or probabilities first.")
        masks = masks != 0
    return masks.detach().cpu().numpy()


def _valid(valid: Tensor | None, shape: tuple[int, ...]) -> np.ndarray:
    """The valid pixels `(N, H, W)` (all of them without a mask)."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    if valid.dim() == 2:
        valid = valid[None]
    if valid.dim() != 3 or valid.shape[-2:] != shape[-2:] or valid.shape[0] not in (1, shape[0]):
        raise ValueError(f"valid must be (H, W) or (N, H, W) for masks of shape {shape}, got {tuple(valid.shape)}.")
    return np.broadcast_to(_binary(valid, "valid"), shape)


def _interior_distance(region: np.ndarray) -> np.ndarray:
    """The Euclidean distance of each pixel of `region` `(H, W)` bool to the nearest pixel outside it, the pixels
    beyond the image's border counting as outside (RITM pads with zeros). Computed on the region's bounding box."""
    distance = np.zeros(region.shape)
    boxes = ndimage.find_objects(region.astype(np.uint8))
    if boxes and boxes[0] is not None:
        crop = boxes[0]
        distance[crop] = ndimage.distance_transform_edt(np.pad(region[crop], 1))[1:-1, 1:-1]
    return distance


def _choose_uniform(count: int, size: int, generator: torch.Generator | None) -> np.ndarray:
    """`min(count, size)` distinct indices of `range(size)`, uniformly (Floyd's algorithm: O(count) draws)."""
    if count >= size:
        return torch.randperm(size, generator=generator).numpy()
    chosen: dict[int, None] = {}
    for top in range(size - count, size):
        index = int(torch.randint(top + 1, (1,), generator=generator))
        chosen[top if index in chosen else index] = None
    return np.fromiter(chosen, dtype=np.int64, count=count)


def _choose_weighted(count: int, weights: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """`min(count, len(weights))` distinct indices drawn with probability proportional to the positive `weights`,
    without replacement (Efraimidis-Spirakis keys: the largest `log(u) / w`)."""
    keys = torch.rand(len(weights), generator=generator, dtype=torch.float64).log() / torch.from_numpy(weights)
    return keys.topk(min(count, len(weights))).indices.numpy()


def boxes_from_masks(
    masks: Tensor,
    jitter: int | tuple[int, int] = 0,
    generator: Seed = None,
    valid: Tensor | None = None,
) -> Tensor:
    """The box of each object, optionally jittered as MedSAM's and SAM's training do.

    Args:
        masks: `(N, H, W)` bool or 0/1, one object per mask, in the model's input frame.
        jitter: the shift of each side in pixels, positive outwards: an int `j` draws each side's shift uniformly
            from the integers of `[-j, j]`, a pair `(low, high)` from `[low, high]` (MedSAM: `(0, 20)`, outwards
            only). Inward shifts stop at the centre of the tight box, so a box never turns inside out.
        generator: a CPU `torch.Generator` or an int seed for the jitter.
        valid: `(N, H, W)` or `(H, W)`, the pixels that count; boxes hold the valid part of each object and stay
            inside the bounding box of the valid pixels (the whole image without it).

    Returns:
        `input_boxes` `(N, 1, 4)` float32 `(x0, y0, x1, y1)` on the masks' device: the first and last column and row
        of the object (inclusive pixel indices; the prompt encoder adds 0.5), jittered and clipped.

    Raises:
        ValueError: an object without a (valid) pixel, named by its index ("object 3: empty mask: no box").
    """
    objects = _binary(masks, "masks")
    valid_pixels = _valid(valid, objects.shape)
    objects = objects & valid_pixels
    low, high = _jitter_range(jitter)
    tight = np.zeros((len(objects), 4), dtype=np.int64)
    limits = np.zeros((len(objects), 4), dtype=np.int64)
    for index, (obj, region) in enumerate(zip(objects, valid_pixels, strict=True)):
        rows, cols = np.any(obj, axis=1), np.any(obj, axis=0)
        if not rows.any():
            raise ValueError(f"object {index}: empty mask: no box")
        tight[index] = _span(cols) + _span(rows)
        limits[index] = _span(np.any(region, axis=0)) + _span(np.any(region, axis=1))
    boxes = tight[:, [0, 2, 1, 3]].copy()  # x0, y0, x1, y1
    limits = limits[:, [0, 2, 1, 3]]
    if (low, high) != (0, 0):
        shifts = torch.randint(low, high + 1, (len(objects), 4), generator=as_generator(generator)).numpy()
        centre_low = (boxes[:, :2] + boxes[:, 2:]) // 2
        centre_high = (boxes[:, :2] + boxes[:, 2:] + 1) // 2
        boxes[:, :2] = np.minimum(boxes[:, :2] - shifts[:, :2], centre_low)
        boxes[:, 2:] = np.maximum(boxes[:, 2:] + shifts[:, 2:], centre_high)
    boxes[:, :2] = np.clip(boxes[:, :2], limits[:, :2], limits[:, 2:])
    boxes[:, 2:] = np.clip(boxes[:, 2:], limits[:, :2], limits[:, 2:])
    return torch.from_numpy(boxes).float()[:, None].to(masks.device)


def _jitter_range(jitter: int | tuple[int, int]) -> tuple[int, int]:
    """The range `[low, high]` of the outward shift of a box side."""
    bounds = [-jitter, jitter] if isinstance(jitter, (int, np.integer)) else list(np.ravel(jitter))
    if (
        len(bounds) != 2
        or not all(isinstance(bound, (int, np.integer)) and not isinstance(bound, bool) for bound in bounds)
        or bounds[0] > bounds[1]
    ):
        raise ValueError(f"jitter must be an int >= 0 or a pair of ints (low, high), low <= high, got {jitter!r}.")
    return int(bounds[0]), int(bounds[1])


def _span(line: np.ndarray) -> list[int]:
    """The first and last True index of a non-empty 1-D bool array."""
    indices = np.flatnonzero(line)
    return [int(indices[0]), int(indices[-1])]


def sample_points(
    masks: Tensor,
    num_positive: int = 1,
    num_negative: int = 0,
    strategy: Literal["uniform", "interior"] = "uniform",
    generator: Seed = None,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Positive points inside each object and negative ones in its background, distinct pixels each.

    Args:
        masks: `(N, H, W)` bool or 0/1, one object per mask, in the model's input frame.
        num_positive: points inside each object.
        num_negative: points in the valid pixels outside the object (other objects of the same image included:
            pass `valid=~other_objects` to keep them out).
        strategy: where the positives go: "uniform" over the object, or "interior", with probability
            proportional to the distance to the object's boundary (away from the edges; the image border counts as
            a boundary). Negatives are always uniform.
        generator: a CPU `torch.Generator` or an int seed.
        valid: `(N, H, W)` or `(H, W)`, the pixels that count (False on the padding); nothing is drawn outside.

    Returns:
        `input_points` `(N, 1, k, 2)` float32 (x, y) pixel indices and `input_labels` `(N, 1, k)` int64, with
        `k = num_positive + num_negative`, on the masks' device: the first `num_positive` slots are positives
        (label 1), the others negatives (label 0); a slot stays padding (`PADDING_POINT_LABEL`, at (0, 0)) where
        the object or its background has fewer valid pixels than asked for.
    """
    if strategy not in ("uniform", "interior"):
        raise ValueError(f"strategy must be 'uniform' or 'interior', got {strategy!r}.")
    if num_positive < 0 or num_negative < 0 or num_positive + num_negative == 0:
        raise ValueError(f"Need at least one point and no negative counts, got {num_positive=}, {num_negative=}.")
    objects = _binary(masks, "masks")
    valid_pixels = _valid(valid, objects.shape)
    generator = as_generator(generator)
    total = num_positive + num_negative
    points = torch.zeros(len(objects), 1, total, 2)
    labels = torch.full((len(objects), 1, total), PADDING_POINT_LABEL, dtype=torch.long)
    width = objects.shape[-1]
    for index, (obj, region) in enumerate(zip(objects, valid_pixels, strict=True)):
        inside = obj & region
        groups = [(inside, num_positive, 1, 0), (region & ~obj, num_negative, 0, num_positive)]
        for pixels, count, label, start in groups:
            if count == 0:
                continue
            candidates = np.flatnonzero(pixels)
            if strategy == "interior" and label == 1:
                weights = _interior_distance(pixels).ravel()[candidates]
                chosen = candidates[_choose_weighted(count, weights, generator)]
            else:
                chosen = candidates[_choose_uniform(count, len(candidates), generator)]
            stop = start + len(chosen)
            points[index, 0, start:stop, 0] = torch.from_numpy(chosen % width).float()
            points[index, 0, start:stop, 1] = torch.from_numpy(chosen // width).float()
            labels[index, 0, start:stop] = label
    return points.to(masks.device), labels.to(masks.device)


def next_click(
    pred_masks: Tensor,
    target_masks: Tensor,
    valid: Tensor | None = None,
    mode: Literal["center", "random"] = "center",
    generator: Seed = None,
) -> tuple[Tensor, Tensor]:
    """The next corrective click of each object, in the largest connected region where the prediction is wrong.

    The error regions of an object are the connected components (4-connectivity: pixels touching by an edge) of
    its false negatives (`target & ~pred`) and of its false positives (`pred & ~target`), valid pixels only. The
    click goes into the largest region (most pixels; a tie goes to a false negative, then to the region whose
    first pixel comes first in row-major order): a positive click (1) in a false negative, a negative one (0) in a
    false positive. (RITM's evaluation picks, over all errors, the pixel farthest from an error boundary: the same
    click where the largest region is also the thickest one.)

    Args:
        pred_masks: `(N, H, W)` bool or 0/1 predictions (threshold the logits at 0, after resizing them to the input
            frame).
        target_masks: `(N, H, W)` bool or 0/1 ground truth.
        valid: `(N, H, W)` or `(H, W)`, the pixels that count (False on the padding).
        mode: "center" (evaluation, deterministic): the pixel of the region farthest from the region's boundary,
            the maximum of its Euclidean distance transform, the pixels beyond the image border counting as
            boundary (as RITM's evaluation, which pads the error masks with zeros); ties go to the first pixel in
            row-major order. "random" (training): a pixel drawn uniformly from the region.
        generator: a CPU `torch.Generator` or an int seed ("random" mode).

    Returns:
        `input_points` `(N, 1, 1, 2)` float32 (x, y) pixel indices and `input_labels` `(N, 1, 1)` int64 on the masks'
        device: 1 or 0, or `PADDING_POINT_LABEL` at (0, 0) for an object predicted without error. Append them to
        the previous prompts with `torch.cat(..., dim=2)`.
    """
    if mode not in ("center", "random"):
        raise ValueError(f"mode must be 'center' or 'random', got {mode!r}.")
    pred = _binary(pred_masks, "pred_masks")
    target = _binary(target_masks, "target_masks")
    if pred.shape != target.shape:
        raise ValueError(f"pred_masks {pred.shape} and target_masks {target.shape} must have the same shape.")
    valid_pixels = _valid(valid, target.shape)
    generator = as_generator(generator)
    points = torch.zeros(len(target), 1, 1, 2)
    labels = torch.full((len(target), 1, 1), PADDING_POINT_LABEL, dtype=torch.long)
    for index in range(len(target)):
        region, label = _largest_error(pred[index], target[index], valid_pixels[index])
        if region is None:
            continue
        if mode == "center":
            row, col = np.unravel_index(np.argmax(_interior_distance(region)), region.shape)
        else:
            candidates = np.flatnonzero(region)
            row, col = divmod(int(candidates[_choose_uniform(1, len(candidates), generator)[0]]), region.shape[1])
        points[index, 0, 0] = torch.tensor([float(col), float(row)])
        labels[index, 0, 0] = label
    return points.to(target_masks.device), labels.to(target_masks.device)


def _largest_error(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The largest connected error region `(H, W)` bool of one object and its click label (None, padding if none)."""
    best, best_size, best_label = None, 0, PADDING_POINT_LABEL
    for errors, label in ((target & ~pred & valid, 1), (pred & ~target & valid, 0)):
        components, count = ndimage.label(errors, structure=_CONNECTIVITY)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes))  # the first of equal sizes: the earliest in row-major order
        if sizes[largest] > best_size:
            best, best_size, best_label = components == largest + 1, int(sizes[largest]), label
    return best, best_label
