"""How code that runs any promptable SAM in pieces (its image embedding once, then the mask decoder per prompt, as
prompted training, interactive evaluation and prompted prediction do) gives the encoder of an SLoRA model its
prompts, leaving every other model as it is.

A forward of the whole model turns its own `input_points` into the heat map (`SloraModel`'s forward pre-hook); code
that computes the image embedding on its own (`get_image_embeddings`) never calls that forward, so it names the
encoder's points explicitly:

    >>> points, labels = object_points_by_image(object_points, object_labels, image_index, len(pixel_values))
    >>> with encoder_prompts(model, points, labels):  # a no-op for a model without SLoRA
    ...     embeddings = model.get_image_embeddings(pixel_values)
    ...     outputs = model(image_embeddings=embeddings[image_index], input_points=object_points, ...)

Inside the block the decoder calls leave the heat map alone (their per-object points are not the encoder's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .model import SloraModel

# SAM's label of a padding point (`transformers`' `SamPromptEncoder`): no mark in a heat map.
PADDING_LABEL = -10


def slora_tuner(model: nn.Module | None) -> SloraModel | None:
    """The `SloraModel` of `model`: a PEFT model whose tuner is SLoRA (`model.base_model`), also inside
    DistributedDataParallel (`.module`) or `torch.compile` (`._orig_mod`), or the tuner itself; None for any other
    model (a bare SAM, another method's adapter)."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if isinstance(candidate, SloraModel):
            return candidate
        tuner = getattr(candidate, "base_model", None) if candidate is not None else None
        if isinstance(tuner, SloraModel):
            return tuner
    return None


def uses_prompt_heat_maps(model: nn.Module | None) -> bool:
    """Whether `model`'s encoder reads a heat map of point prompts: an SLoRA model with the prompt path."""
    tuner = slora_tuner(model)
    return tuner is not None and tuner.uses_prompts


@contextmanager
def encoder_prompts(
    model: nn.Module, input_points: Tensor | None, input_labels: Tensor | None = None
) -> Iterator[Tensor | None]:
    """Inside the block, the encoder of an SLoRA `model` sees the heat map of `input_points`, whatever the model's
    forwards pass; for other models (or SLoRA without the prompt path) nothing changes.

    Args:
        model: any model; only an SLoRA one (`slora_tuner`) is affected.
        input_points: `(B, point_batch, N, 2)` (x, y) in the model's input frame, one row per image the encoder
            sees (e.g. `object_points_by_image`); None: the zero heat map (the learned prompt alone, when the
            adapter has one).
        input_labels: `(B, point_batch, N)`; only label 1 marks the map. None: every point positive.

    Yields:
        The heat map `(B, g, g)` (None for the zero map, or when nothing is set). With activation checkpointing
        in training it stays after the block until the model's next forward, so a later backward sees it
        (`SloraModel.prompt_heat_map`).
    """
    tuner = slora_tuner(model)
    if tuner is None or not tuner.uses_prompts:
        yield None
        return
    if input_points is None:
        with tuner.prompt_heat_map(None):
            yield None
        return
    with tuner.prompts(input_points, input_labels) as heat_map:
        yield heat_map


def object_points_by_image(
    points: Tensor, labels: Tensor | None, image_index: Tensor, num_images: int
) -> tuple[Tensor, Tensor]:
    """The points of objects, one prompt set per object on the batch axis, gathered per image: what the image
    encoder of an SLoRA model sees as one heat map per image with a peak at each object's positive points.

    Args:
        points: `(N, point_batch, k, 2)` the objects' points (x, y).
        labels: `(N, point_batch, k)` their labels; None: all positive.
        image_index: `(N,)` the image of each object, in `0 .. num_images - 1`.
        num_images: B, the images' batch (an image without objects gets no mark).

    Returns:
        `(B, 1, K, 2)` points and `(B, 1, K)` labels, K = point_batch x k x the most objects of an image (at
        least 1): each image's objects' points in object order, padded with label -10 (SAM's padding point).
    """
    count = points.shape[0]
    flat_points = points.reshape(count, -1, 2)
    per_object = flat_points.shape[1]
    if labels is None:
        flat_labels = torch.ones(flat_points.shape[:2], dtype=torch.long, device=points.device)
    else:
        flat_labels = labels.reshape(count, -1).to(device=points.device, dtype=torch.long)
    image_index = image_index.to(points.device).long()
    objects = torch.bincount(image_index, minlength=num_images)  # (B,) objects per image
    width = max(int(objects.max()) * per_object if num_images else 0, 1)
    gathered_points = points.new_zeros(num_images, width, 2)
    gathered_labels = torch.full((num_images, width), PADDING_LABEL, dtype=torch.long, device=points.device)
    if count:
        order = torch.argsort(image_index, stable=True)
        images = image_index[order]
        starts = torch.cumsum(objects, 0) - objects
        rank = torch.arange(count, device=points.device) - starts[images]  # the object's place in its image
        slots = rank[:, None] * per_object + torch.arange(per_object, device=points.device)
        gathered_points[images[:, None], slots] = flat_points[order]
        gathered_labels[images[:, None], slots] = flat_labels[order]
    return gathered_points[:, None], gathered_labels[:, None]


def box_centres(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """The centre of each box as a positive point: `(N, 4)` or `(N, 1, 4)` boxes (x0, y0, x1, y1) ->
    `(N, 1, 1, 2)` points and `(N, 1, 1)` labels 1."""
    boxes = boxes.reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return centres[:, None, None], torch.ones(len(boxes), 1, 1, dtype=torch.long, device=boxes.device)
