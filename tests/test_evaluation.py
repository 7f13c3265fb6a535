"""The evaluation inside training: task loss and auxiliary loss reported apart."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from peft import get_peft_model
from torch.utils.data import DataLoader

import sam_peft
from sam_peft.data import prepare_for_sam, sam_collate_fn
from sam_peft.data.synthetic import binary_dataset
from sam_peft.modeling.losses import binary_segmentation_loss
from sam_peft.modeling.semantic_sam import SamForSemanticSegmentation, SamSemanticSegmentationConfig
from sam_peft.training import evaluate


def test_eval_loss_is_the_task_loss_and_the_balance_loss_is_reported_apart():
    torch.manual_seed(0)
    config = SamSemanticSegmentationConfig.from_sam_config(sam_peft.sam_config("tiny"), moe_loss_weight=2.0)
    model = get_peft_model(SamForSemanticSegmentation(config), sam_peft.ConvLoraConfig(num_experts=2))
    loader = DataLoader(
        prepare_for_sam(binary_dataset(4, size=96, split="test"), 128), batch_size=2, collate_fn=sam_collate_fn
    )
    results = evaluate(model, loader, Accelerator(cpu=True), num_labels=1)

    # An independent re-computation: the structure loss of each batch's logits, and the layers' balance losses.
    task_losses, balance_losses = [], []
    with torch.no_grad():
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            task_losses.append(binary_segmentation_loss(logits, batch["labels"], "structure", 255))
            balance_losses.append(sam_peft.auxiliary_loss(model))
    assert results["loss"] == pytest.approx(torch.stack(task_losses).mean().item(), rel=1e-6)
    assert results["auxiliary_loss"] == pytest.approx(torch.stack(balance_losses).mean().item(), rel=1e-6)
    assert results["auxiliary_loss"] > 0.0
