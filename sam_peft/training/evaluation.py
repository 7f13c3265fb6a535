"""Evaluation inside training: the task's metrics at the original image sizes, across processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..metrics import SemanticMetrics, SODMetrics
from ..modeling.semantic_sam import SamSemanticSegmentationOutput, post_process_semantic_segmentation
from .arguments import LOWER_IS_BETTER
from .embedding_cache import EmbeddingCache


def default_metric(num_labels: int, task: str = "prompt_free") -> str:
    """The metric that selects the best epoch when the config names none: for prompted fine-tuning the mean IoU
    over the evaluation's clicks (`miou_clicks`, the area under the IoU-vs-clicks curve per click)."""
    if task == "prompted":
        return "miou_clicks"
    return "iou" if num_labels == 1 else "mean_iou"


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` of `metric` beats `best` (None: nothing yet)."""
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def labels_at_original_size(labels: torch.Tensor, original: list[int], reshaped: list[int]) -> torch.Tensor:
    """(S, S) padded labels -> (H, W) at the original size: crop the padding, nearest-neighbour resize back."""
    cropped = labels[None, None, : reshaped[0], : reshaped[1]].float()
    return F.interpolate(cropped, size=tuple(original), mode="nearest-exact")[0, 0].long()


def model_inputs(pixel_values: torch.Tensor, cache: EmbeddingCache | None = None) -> dict[str, torch.Tensor]:
    """The image inputs of the model's forward: `pixel_values` (B, 3, S, S), or, with an embedding cache, the
    cached frozen-encoder output in its place (see `EmbeddingCache.model_inputs`)."""
    return {"pixel_values": pixel_values} if cache is None else cache.model_inputs(pixel_values)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    num_labels: int,
    cache: EmbeddingCache | None = None,
) -> dict:
    """The task's metrics over `dataloader` (each image once, whatever the number of processes) and mean losses.

    `loss` is the task loss alone (comparable across methods and with training's `task_loss`); `auxiliary_loss`
    is the mean unweighted auxiliary loss (Conv-LoRA's balance loss, computed without gate noise in eval mode).

    Binary: S-alpha, E-phi, weighted F, MAE, IoU, Dice, BER, ... on foreground probabilities; multi-class: mIoU,
    accuracy, ... on label maps. Predictions and labels are compared at the original image sizes. With `cache`,
    the frozen encoder's outputs are read from (or written to) it.
    """
    model.eval()
    metrics = SODMetrics() if num_labels == 1 else SemanticMetrics(num_labels=num_labels)
    losses = []  # (task loss, auxiliary loss) of each batch
    for batch in tqdm(dataloader, desc="evaluating", disable=not accelerator.is_local_main_process, leave=False):
        outputs = model(**model_inputs(batch["pixel_values"], cache), labels=batch["labels"])
        batch_losses = torch.stack([outputs.task_loss.detach(), outputs.auxiliary_loss.detach()])
        losses.append(accelerator.gather_for_metrics(batch_losses[None]))
        logits, labels, original, reshaped = accelerator.gather_for_metrics(
            (outputs.logits, batch["labels"], batch["original_sizes"], batch["reshaped_input_sizes"])
        )
        original, reshaped = original.tolist(), reshaped.tolist()
        predictions = post_process_semantic_segmentation(
            SamSemanticSegmentationOutput(logits=logits.float()), original, reshaped
        )
        references = [labels_at_original_size(lab, o, r) for lab, o, r in zip(labels, original, reshaped, strict=True)]
        # On the accelerator's device: a GPU run computes the metrics there (the SOD metrics' device engine).
        metrics.update(predictions, [r == 1 for r in references] if num_labels == 1 else references)
    results = metrics.compute()
    results["loss"], results["auxiliary_loss"] = torch.cat(losses).float().mean(dim=0).tolist()
    return results
