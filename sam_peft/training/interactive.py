"""Interactive evaluation of a prompted SAM: one box per object, then simulated corrective clicks (RITM's / SAM's
protocol), summarised by `InteractiveMetrics` (mIoU per click, NoC@85 / NoC@90, the box mIoU).

The protocol, for every real object of every image (padding objects of `sam_objects_collate_fn` are skipped), in
the model's input frame (`S x S`) and within the image's valid pixels (the padding never counts):

- Box: the object's tight box (`object_boxes`, no jitter), single-mask output: `miou_box`.
- Click 1: `next_click` against an empty prediction, i.e. a positive click at the pixel of the object farthest
  from its boundary (the centre click of RITM's evaluation, which SAM's point evaluation follows). The model
  answers with its three masks (`multimask_output=True`) and the one with the highest predicted IoU is kept:
  SAM's protocol for an ambiguous single point (Kirillov et al., 2023, section 7.1 / appendix D.1).
- Clicks 2..max_clicks: `next_click(prediction, target, valid, mode="center")` in the largest error region of the
  previous prediction (positive in a miss, negative in a false positive); every click so far goes in as
  `input_points`, and the previous step's low-resolution logits of the kept mask go in as `input_masks` (what
  SAM's interactive training and its `SamPredictor` do with `mask_input`); single-mask output from then on.
  An object predicted without error gets a padding click (label -10), so it stays as it is; every object gets
  all `max_clicks` clicks (no early stop), so `miou@k` is the mean over all objects at every k.
- A prediction is the low-resolution logits upsampled (bilinear) to `S x S` and thresholded at 0; its IoU with
  the object is `mask_iou` over the valid pixels.

The image encoder of an SLoRA model (`sam_peft.tuners.slora`) reads point prompts as one heat map per image,
and the embedding is computed once: its heat map is that of the first click of every object of the image (the
centre click above, one peak per object), for the box step and for every click, as prompted training gives the
encoder the first prompt of every object (`InteractiveTraining`). Other models are evaluated as they are.

Objects go on the model's batch axis, one prompt set each (`input_points` `(N, 1, k, 2)`), because transformers'
SAM adds a mask prompt to its image's embedding before sharing it among the prompts of that image: a per-object
mask prompt needs one batch row per object. The image embedding is computed once per batch with the model's
`get_image_embeddings` (`SamModel`, `Sam2Model`, `Sam3TrackerModel`, also through a PEFT wrapper) and reused for
the box and every click; a model without that method is called with the pixel values at each step.

With several processes (a prepared dataloader), each image's IoU rows are gathered with
`accelerator.gather_for_metrics` (which drops the images repeated to even out the last batch) before `update`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.prompted import object_boxes, object_present
from ..data.prompts import next_click
from ..metrics.interactive import INTERACTIVE_THRESHOLDS, InteractiveMetrics, mask_iou
from ..tuners.slora.prompting import encoder_prompts, object_points_by_image, uses_prompt_heat_maps


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def image_inputs(
    model: torch.nn.Module,
    pixel_values: Tensor,
    image_index: Tensor,
    accelerator: Accelerator | None,
    encoder_points: Tensor | None = None,
    encoder_labels: Tensor | None = None,
) -> dict[str, Any]:
    """The image inputs of each object's forward, `(N, ...)`: its image's embedding, computed once for the batch
    (a tensor for SAM, a list of feature levels for SAM 2 / SAM 3), or its image's pixel values when the model has
    no `get_image_embeddings`.

    `encoder_points` `(B, P, K, 2)` and `encoder_labels` `(B, P, K)`, one row per image of `pixel_values`, are the
    points the image encoder of an SLoRA model sees as its heat map (`sam_peft.tuners.slora.encoder_prompts`; None:
    the zero map, i.e. its learned prompt alone); other models ignore them. A model without `get_image_embeddings`
    gets its pixel values at each forward, and an SLoRA one then reads the heat map of that forward's points."""
    inner = accelerator.unwrap_model(model) if accelerator is not None else model
    get_embeddings = getattr(inner, "get_image_embeddings", None)
    if get_embeddings is None:
        return {"pixel_values": pixel_values[image_index]}
    with encoder_prompts(inner, encoder_points, encoder_labels):
        embeddings = get_embeddings(pixel_values)
    if isinstance(embeddings, Tensor):
        return {"image_embeddings": embeddings[image_index]}
    return {"image_embeddings": [level[image_index] for level in embeddings]}


def _centre_clicks_by_image(
    model: torch.nn.Module, accelerator: Accelerator | None, masks: Tensor, valid: Tensor, image_index: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """For a model whose image encoder reads a heat map of point prompts (SLoRA): each image's first clicks, the
    centre click of each of its objects (`next_click` against an empty prediction, as click 1 of the protocol),
    `(B, 1, K, 2)` and `(B, 1, K)`; (None, None) for other models."""
    inner = accelerator.unwrap_model(model) if accelerator is not None else model
    if not uses_prompt_heat_maps(inner):
        return None, None
    object_valid = valid[image_index]
    targets = masks & object_valid
    points, labels = next_click(torch.zeros_like(targets), targets, object_valid, mode="center")
    return object_points_by_image(points.to(masks.device), labels.to(masks.device), image_index, len(valid))


def _rows(encoded: dict[str, Any], index: Tensor) -> dict[str, Any]:
    """The rows `index` of every image input of `image_inputs` (each level of a list of feature levels)."""
    return {
        key: value[index] if isinstance(value, Tensor) else [v[index] for v in value] for key, value in encoded.items()
    }


def upsampled_prediction(low_res: Tensor, size: tuple[int, int]) -> Tensor:
    """`(N, h, w)` logits -> `(N, S, S)` bool prediction (bilinear, threshold 0)."""
    return F.interpolate(low_res[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0] > 0


@torch.no_grad()
def _object_ious(
    model: torch.nn.Module,
    image_inputs: dict[str, Any],
    targets: Tensor,
    valid: Tensor,
    boxes: Tensor,
    max_clicks: int,
) -> tuple[Tensor, Tensor]:
    """IoUs `(N, max_clicks)` after each click and `(N,)` of the box prompt for `N` objects on the batch axis."""
    size = tuple(targets.shape[-2:])
    targets = targets & valid

    def iou(low_res: Tensor) -> tuple[Tensor, Tensor]:
        prediction = upsampled_prediction(low_res, size) & valid
        return prediction, mask_iou(prediction, targets)

    outputs = model(**image_inputs, input_boxes=boxes[:, None], multimask_output=False)
    _, box_iou = iou(outputs.pred_masks[:, 0, 0])

    ious = []
    prediction = torch.zeros_like(targets)
    points = labels = low_res = None
    for click in range(max_clicks):
        new_points, new_labels = next_click(prediction, targets, valid, mode="center")
        new_points = new_points.to(targets.device)
        new_labels = new_labels.to(targets.device)
        points = new_points if points is None else torch.cat([points, new_points], dim=2)
        labels = new_labels if labels is None else torch.cat([labels, new_labels], dim=2)
        first = click == 0
        mask_prompt = {} if first else {"input_masks": low_res[:, None]}
        outputs = model(**image_inputs, input_points=points, input_labels=labels, multimask_output=first, **mask_prompt)
        masks = outputs.pred_masks[:, 0]  # (N, M, h, w)
        if first and masks.shape[1] > 1:  # SAM's ambiguity protocol: the mask with the highest predicted IoU
            chosen = outputs.iou_scores[:, 0].argmax(dim=-1)
            low_res = masks[torch.arange(len(masks), device=masks.device), chosen]
        else:
            low_res = masks[:, 0]
        prediction, click_iou = iou(low_res)
        ious.append(click_iou)
    return torch.stack(ious, dim=1), box_iou


@torch.no_grad()
def evaluate_interactive(
    model: torch.nn.Module,
    dataloader: DataLoader,
    max_clicks: int = 20,
    thresholds: Sequence[float] = INTERACTIVE_THRESHOLDS,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    objects_per_forward: int | None = 64,
) -> dict[str, Any]:
    """Box and click-by-click evaluation of a prompted SAM over the objects of `dataloader` (see the module's
    docstring for the protocol).

    Args:
        model: a `SamModel`, `Sam2Model` or `Sam3TrackerModel` (PEFT-wrapped or not), or any module with their
            prompted call (`pixel_values` or `image_embeddings`, `input_points`, `input_labels`, `input_boxes`,
            `input_masks`, `multimask_output` -> `pred_masks` `(B, P, M, h, w)` logits and `iou_scores`
            `(B, P, M)`).
        dataloader: batches of `sam_objects_collate_fn` (`pixel_values`, `object_masks`, `object_counts`,
            `valid`); with `accelerator`, prepared by it.
        max_clicks: clicks per object (20 in RITM's and SAM's evaluations).
        thresholds: the IoUs of NoC / NoF.
        accelerator: gathers every process's rows (each image counted once); None: one process, the model's device.
        progress: show a progress bar (on the local main process).
        objects_per_forward: the batch's objects go through the prompted calls this many at a time (each with its
            own masks and logits at the input size: COCO images hold up to hundreds of objects); the image
            embeddings are still computed once per batch. None: all at once. The results do not depend on it.

    Returns:
        `InteractiveMetrics.compute()`'s dict: `num_objects`, `miou_box`, `mdice_box`, `miou@k` / `mdice@k` for
        k = 1..max_clicks, `noc@T` / `nof@T` per threshold, `iou_curve`, `dice_curve`.
    """
    model.eval()
    metrics = InteractiveMetrics(max_clicks=max_clicks, thresholds=thresholds)
    device = accelerator.device if accelerator is not None else _model_device(model)
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    for batch in tqdm(dataloader, desc="interactive evaluation", disable=not show, leave=False):
        masks = batch["object_masks"].to(device)
        valid = batch["valid"].to(device)
        objects = {"object_masks": masks, "object_counts": batch["object_counts"].to(device), "valid": valid}
        present = object_present(objects)
        # one row per prompt slot: the clicks' IoUs then the box's; NaN for padding objects
        rows = torch.full((*present.shape, max_clicks + 1), math.nan, dtype=torch.float64, device=device)
        if present.any():
            image_index = present.nonzero()[:, 0]
            boxes = object_boxes(objects)[present].to(device)  # tight boxes inside the valid pixels, no jitter
            images = torch.arange(len(masks), device=device)
            encoder_points = _centre_clicks_by_image(model, accelerator, masks[present], valid, image_index)
            pixel_values = batch["pixel_values"].to(device)
            encoded = image_inputs(model, pixel_values, images, accelerator, *encoder_points)  # once per batch
            chunk = objects_per_forward or len(image_index)
            found = []
            for start in range(0, len(image_index), chunk):
                part = slice(start, start + chunk)
                inputs = _rows(encoded, image_index[part])
                objects_masks = masks[present][part]
                found.append(
                    _object_ious(model, inputs, objects_masks, valid[image_index[part]], boxes[part], max_clicks)
                )
            ious, box_iou = (torch.cat(values) for values in zip(*found, strict=True))
            rows[present] = torch.cat([ious, box_iou[:, None]], dim=1).to(rows)
        if accelerator is not None:
            rows = accelerator.pad_across_processes(rows, dim=1, pad_index=math.nan)
            rows = accelerator.gather_for_metrics(rows)
        rows = rows.flatten(0, 1)
        rows = rows[~rows[:, 0].isnan()]
        if len(rows):
            metrics.update(rows[:, :max_clicks], box_iou=rows[:, max_clicks])
    return metrics.compute()
