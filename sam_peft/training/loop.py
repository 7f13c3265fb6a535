"""The optimisation loop every recipe shares, on Accelerate: gradient accumulation, mixed precision, gradient
clipping and several processes, one optimiser step at a time.

    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    for losses in optimizer_steps(accelerator, model, loader, optimizer, scheduler, compute_losses):
        ...  # {"loss": ..., <the other losses>, "lr": ...}, means over the processes

`recipes/train.py` (prompt-free fine-tuning) and `ContinualSam.learn_domain` (SAMCL's modules) both train through it.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch import Tensor, nn
from transformers import get_scheduler

from .arguments import SCHEDULES
from .run_folder import LOGS_DIR

# (model, batch) -> named 0-dim losses; "loss" is the one optimised, the others are reported
LossFunction = Callable[[nn.Module, Any], dict[str, Tensor]]


def recipe_accelerator(
    output_dir: str | os.PathLike,
    report_to: str | None,
    mixed_precision: str,
    gradient_accumulation_steps: int,
    **kwargs: Any,
) -> Accelerator:
    """A recipe's `Accelerator`: the tracker `report_to` (e.g. "tensorboard") when it is installed, logging into
    `output_dir/logs`; `kwargs` go to `Accelerator`."""
    tracker = report_to if report_to and importlib.util.find_spec(report_to) else None
    logs = Path(output_dir) / LOGS_DIR
    return Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logs)),
        **kwargs,
    )


def steps_per_epoch(num_batches: int, num_processes: int, accumulation_steps: int) -> int:
    """Optimiser steps in an epoch of `num_batches` batches: each process reads every `num_processes`-th batch (the
    last ones padded) and steps once per `accumulation_steps` of them."""
    return math.ceil(math.ceil(num_batches / num_processes) / accumulation_steps)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int, num_processes: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The papers' polynomial decay (power 0.9), or cosine, or constant, after a linear warm-up of `warmup_steps`,
    over `total_steps` optimiser steps.

    A scheduler prepared by Accelerate is stepped once per process at each optimiser step (it counts the batches
    of all processes), so its warm-up and length are counted in those units: the learning rate at each optimiser
    step is then the same whatever the number of processes.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; expected one of {tuple(SCHEDULES)}.")
    name = SCHEDULES[schedule]
    kwargs = {"scheduler_specific_kwargs": {"power": 0.9}} if name == "polynomial" else {}
    return get_scheduler(name, optimizer, warmup_steps * num_processes, total_steps * num_processes, **kwargs)


def optimizer_steps(
    accelerator: Accelerator,
    model: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    compute_losses: LossFunction,
    max_grad_norm: float | None = None,
) -> Iterator[dict[str, float]]:
    """Trains on `batches` (everything prepared by `accelerator`), yielding after every optimiser step.

    Each batch's losses come from `compute_losses(model, batch)` inside `accelerator.accumulate`; the gradients are
    clipped to `max_grad_norm` (if given) when they are synchronised, then the optimiser and scheduler step.

    Yields:
        The step's losses (of its last batch) averaged over the processes, and `lr`, the learning rate the step used.
    """
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for batch in batches:
        with accelerator.accumulate(model):
            losses = compute_losses(model, batch)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and max_grad_norm is not None:
                accelerator.clip_grad_norm_(trainable, max_grad_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            values = torch.stack([loss.detach().float() for loss in losses.values()])
            means = accelerator.gather(values[None]).mean(dim=0).tolist()
            yield {**dict(zip(losses, means, strict=True)), "lr": learning_rate}
