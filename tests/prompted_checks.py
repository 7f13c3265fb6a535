"""A check shared by the prompted-training tests: a few optimiser steps of `InteractiveTraining`."""

from __future__ import annotations

import torch


def train_prompted(training: torch.nn.Module, batch: dict, steps: int, lr: float = 3e-3) -> list[float]:
    """`steps` AdamW steps of `training` (an `InteractiveTraining`) on `batch`; each step checks that every trained
    weight got a gradient (several processes need it; SAM 2 / SAM 3: the object-score head). Returns the losses."""
    optimizer = torch.optim.AdamW([p for p in training.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        step = training(**batch)
        step["loss"].backward()
        assert all(p.grad is not None for p in optimizer.param_groups[0]["params"])
        optimizer.step()
        optimizer.zero_grad()
        losses.append(step["loss"].item())
    training.last_step = step
    return losses
