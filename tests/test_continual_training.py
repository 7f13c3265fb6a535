"""SAMCL's modules train through the recipes' shared Accelerate loop (`sam_peft.training.optimizer_steps`): the same
losses as a plain PyTorch loop, gradient accumulation, trackers and mixed precision; two processes in the recipe."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from peft import get_peft_model
from torch.utils.data import DataLoader
from transformers import SamModel, get_scheduler

from sam_peft import SloraConfig, random_sam
from sam_peft.continual.prompting import (
    DomainTrainingArguments,
    batch_prompts,
    prompted_segmentation_loss,
    train_module,
)
from sam_peft.data import binary_dataset, prepare_for_sam, sam_collate_fn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base() -> SamModel:
    sam = random_sam("tiny", seed=0)
    model = SamModel(sam.config)
    model.load_state_dict(sam.state_dict())
    return model


@pytest.fixture(scope="module")
def images():
    return prepare_for_sam(binary_dataset(10, 128, seed=1, split="train", appearance="polyp"), 128)


def module_of(base: SamModel):
    torch.manual_seed(0)
    return get_peft_model(copy.deepcopy(base), SloraConfig(r=4, layers_to_transform=[2, 3]))


def plain_loop(model, dataset, args: DomainTrainingArguments) -> list[float]:
    """SAMCL's training written out in plain PyTorch (Adam, cosine decay per batch, one step per batch)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    loader = DataLoader(
        dataset, args.batch_size, shuffle=True, collate_fn=sam_collate_fn, generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.Adam(trainable, lr=args.learning_rate)
    scheduler = get_scheduler("cosine", optimizer, 0, args.num_epochs * len(loader))
    losses = []
    model.train()
    for _ in range(args.num_epochs):
        for batch in loader:
            points, labels = batch_prompts(batch, args)
            outputs = model(
                pixel_values=batch["pixel_values"], input_points=points, input_labels=labels, multimask_output=False
            )
            loss = prompted_segmentation_loss(outputs.pred_masks[:, 0], outputs.iou_scores[:, 0], batch["labels"], args)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses


def test_the_shared_loop_gives_the_plain_loops_losses_and_weights(base, images):
    args = DomainTrainingArguments(num_epochs=2, batch_size=4, learning_rate=5e-3)
    expected_model, model = module_of(base), module_of(base)
    torch.manual_seed(1)  # SLoRA's dropout draws from the global generator
    expected = plain_loop(expected_model, images, args)
    torch.manual_seed(1)
    losses = train_module(model, images, args, progress=False)
    assert len(losses) == 2 * math.ceil(10 / 4)
    assert losses == pytest.approx(expected, rel=1e-6)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained
    for name, parameter in expected_model.named_parameters():
        if name in trained:
            torch.testing.assert_close(trained[name], parameter, rtol=1e-5, atol=1e-6)
    assert not model.training
    assert "forward" not in vars(model)  # no wrapper of Accelerate left on the module


class RecordingTracker(GeneralTracker):
    """An Accelerate tracker that keeps what it is given."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def tracker(self):
        return self.logged

    def store_init_configuration(self, values: dict) -> None:
        pass

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, dict(values)))


def test_accumulation_and_trackers_come_from_the_accelerator(base, images):
    """10 images in batches of 2 make 5 batches; accumulating 2 gives 3 optimiser steps per epoch, each logged."""
    tracker = RecordingTracker()
    accelerator = Accelerator(gradient_accumulation_steps=2, log_with=[tracker])
    accelerator.init_trackers("test")
    args = DomainTrainingArguments(num_epochs=2, batch_size=2)
    losses = train_module(module_of(base), images, args, progress=False, accelerator=accelerator, log_prefix="a/train/")
    assert len(losses) == 6
    assert [step for step, _ in tracker.logged] == [1, 2, 3, 4, 5, 6]
    assert [values["a/train/loss"] for _, values in tracker.logged] == losses
    rates = [values["a/train/lr"] for _, values in tracker.logged]
    assert rates[0] == pytest.approx(args.learning_rate) and rates == sorted(rates, reverse=True)


def test_domain_training_arguments_are_checked():
    with pytest.raises(ValueError, match="Unknown mixed_precision 'fp8'; expected no, fp16 or bf16"):
        DomainTrainingArguments(mixed_precision="fp8")
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be >= 1, got 0"):
        DomainTrainingArguments(gradient_accumulation_steps=0)


@pytest.mark.slow
def test_the_recipe_on_two_processes_with_bf16(tmp_path):
    """`torch.distributed.run` with two processes and bf16: each optimiser step reads one batch per process, the
    main process alone writes the outputs, and the model it wrote loads."""
    config = tmp_path / "config.yaml"
    domain = "benchmark: synthetic, synthetic_train_size: 8, synthetic_eval_size: 4"
    config.write_text(
        "random_base: tiny\nlayers_to_transform: [2, 3]\nentries_per_domain: 8\nselector_epochs: 5\n"
        "selector_batch_size: 4\nnum_epochs: 2\nbatch_size: 2\neval_batch_size: 4\nmixed_precision: bf16\n"
        f"domains:\n  - {{name: polyp, synthetic_appearance: polyp, {domain}}}\n"
        f"  - {{name: shadow, synthetic_appearance: shadow, {domain}}}\n"
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    command = [*launcher, str(ROOT / "recipes" / "continual.py"), str(config), "--progress", "false"]
    command += ["--output_dir", str(tmp_path / "run"), "--base_model", str(tmp_path / "base")]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((tmp_path / "run" / "continual_metrics.json").read_text())
    # 8 images in batches of 2: 4 batches, 2 per process, so 2 optimiser steps per epoch
    assert {name: len(losses) for name, losses in metrics["train_losses"].items()} == {"polyp": 4, "shadow": 4}
    assert all(math.isfinite(v) for losses in metrics["train_losses"].values() for v in losses)
    assert metrics["training"]["mixed_precision"] == "bf16"
    assert result.stdout.count('"AA"') == 1  # printed by the main process only
    from sam_peft.continual import ContinualSam

    assert ContinualSam.from_pretrained(tmp_path / "run").domains == ["polyp", "shadow"]
