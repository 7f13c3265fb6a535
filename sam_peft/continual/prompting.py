"""Training and evaluating one domain's module on a prompted SAM (`SamModel`, `Sam2Model`, `Sam3TrackerModel`), as
SAMCL does.

Each image gets a few positive point prompts sampled once from its mask (the same points in every epoch and at
evaluation, drawn from a generator seeded by the image id). The loss is SAMCL's: sigmoid focal loss
(alpha 0.8, gamma 2) + 10 x dice + the squared error of SAM's predicted IoU against the IoU the mask actually
reaches. The base SAM, its mask decoder included, stays frozen: only the active adapter trains.

Shapes: `B` images, `S` the padded input side, `N` points per image, `h x w` the decoder's low-resolution masks
(4 times the image-embedding grid on every generation). Points are (x, y) pixels of the `S x S` input, the frame of
the prompt encoder (`prompt_encoder.input_image_size`): the data must be prepared at the model's input size
(`sam_peft.modeling.input_image_size`). SAM 2's and SAM 3's `object_score_logits` are not part of the loss.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import IGNORE_INDEX, sam_collate_fn
from ..data.prompts import PADDING_POINT_LABEL
from ..metrics import SODMetrics
from ..modeling.losses import sigmoid_focal_terms
from ..training.arguments import MIXED_PRECISIONS, check_choice, check_field_types
from ..training.evaluation import labels_at_original_size
from ..training.loop import make_scheduler, optimizer_steps, steps_per_epoch

# (pixel_values (B, 3, S, S), input_points (B, 1, N, 2), input_labels (B, 1, N)) -> mask logits (B, 1, h, w)
MaskPredictor = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class DomainTrainingArguments:
    """How one domain's module is trained: the official SAMCL settings by default."""

    learning_rate: float = field(default=5e-3, metadata={"help": "Adam learning rate (cosine decay)."})
    num_epochs: int = field(default=20, metadata={"help": "Epochs per domain."})
    batch_size: int = field(default=8, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    points_per_image: int = field(default=3, metadata={"help": "Positive point prompts per image."})
    focal_alpha: float = field(default=0.8, metadata={"help": "Weight of foreground pixels in the focal loss."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing exponent of the focal loss."})
    dice_weight: float = field(default=10.0, metadata={"help": "Weight of the dice loss."})
    iou_weight: float = field(default=1.0, metadata={"help": "Weight of the predicted-IoU squared error."})
    seed: int = field(default=0, metadata={"help": "Seed of the data order and the point prompts."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping (SAMCL: none)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choice(self, "mixed_precision", MIXED_PRECISIONS)
        for name in ("num_epochs", "batch_size", "eval_batch_size", "points_per_image", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def accelerator(self) -> Accelerator:
        """An `Accelerator` with these settings, for `train_module` when the caller has none."""
        return Accelerator(
            mixed_precision=self.mixed_precision, gradient_accumulation_steps=self.gradient_accumulation_steps
        )


def example_seed(example_id: str, seed: int) -> int:
    """A stable per-image seed (CRC-32 of the seed and the image id): the image's points never change."""
    return zlib.crc32(f"{seed}:{example_id}".encode())


def sample_point_prompts(labels: Tensor, num_points: int, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """`num_points` distinct foreground pixels of each label map, as SamModel point prompts.

    Args:
        labels: `(B, S, S)` labels at the model's input size: 1 foreground, 0 background, 255 ignored (padding).
        num_points: points per image (fewer when the foreground has fewer pixels).
        seeds: one generator seed per image.

    Returns:
        `input_points` `(B, 1, N, 2)` float (x, y) at pixel centres in the input frame, and `input_labels`
        `(B, 1, N)` int64: 1 for a point, `PADDING_POINT_LABEL` where an image has fewer foreground pixels.
    """
    if len(seeds) != labels.shape[0]:
        raise ValueError(f"Got {len(seeds)} seeds for {labels.shape[0]} label maps.")
    points = torch.zeros(labels.shape[0], 1, num_points, 2)
    point_labels = torch.full((labels.shape[0], 1, num_points), PADDING_POINT_LABEL, dtype=torch.long)
    for index, (label_map, seed) in enumerate(zip(labels.cpu(), seeds, strict=True)):
        rows, cols = torch.nonzero(label_map == 1, as_tuple=True)
        count = min(num_points, rows.numel())
        chosen = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))[:count]
        points[index, 0, :count, 0] = cols[chosen].float() + 0.5
        points[index, 0, :count, 1] = rows[chosen].float() + 0.5
        point_labels[index, 0, :count] = 1
    return points, point_labels


def batch_prompts(batch: dict, args: DomainTrainingArguments) -> tuple[Tensor, Tensor]:
    """The fixed point prompts of a `sam_collate_fn` batch (it needs the `id` column)."""
    if "id" not in batch:
        raise ValueError("Point prompts are seeded by image id: the dataset needs an `id` column.")
    seeds = [example_seed(str(example_id), args.seed) for example_id in batch["id"]]
    return sample_point_prompts(batch["labels"], args.points_per_image, seeds)


def prompted_segmentation_loss(
    mask_logits: Tensor, iou_predictions: Tensor, labels: Tensor, args: DomainTrainingArguments
) -> Tensor:
    """SAMCL's loss: focal + `dice_weight` x dice + `iou_weight` x MSE(predicted IoU, reached IoU).

    Args:
        mask_logits: `(B, 1, h, w)` the decoder's low-resolution mask logits; upsampled to the labels' size.
        iou_predictions: `(B, 1)` SAM's predicted IoU of each mask.
        labels: `(B, S, S)` labels in {0, 1, 255 (ignored)}.

    Returns:
        0-dim loss; focal and dice are per-pixel and per-image means over the non-ignored pixels.
    """
    logits = F.interpolate(mask_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    valid = (labels != IGNORE_INDEX).to(logits.dtype)
    target = (labels == 1).to(logits.dtype)
    prob = torch.sigmoid(logits)
    focal_terms = sigmoid_focal_terms(logits, target, args.focal_alpha, args.focal_gamma)
    focal = (focal_terms * valid).sum() / valid.sum().clamp_min(1)  # SAMCL: over the batch's valid pixels
    # (B,) per-image terms
    intersection = (prob * target * valid).sum(dim=(1, 2))
    dice = 1 - (2 * intersection + 1) / ((prob * valid).sum(dim=(1, 2)) + (target * valid).sum(dim=(1, 2)) + 1)
    with torch.no_grad():
        hard = (logits > 0).to(logits.dtype) * valid
        reached = (hard * target).sum(dim=(1, 2)) / ((hard + target * valid).clamp_max(1)).sum(dim=(1, 2)).clamp_min(1)
    iou_error = F.mse_loss(iou_predictions.reshape(-1), reached)
    return focal + args.dice_weight * dice.mean() + args.iou_weight * iou_error


def train_module(
    model: torch.nn.Module,
    dataset,
    args: DomainTrainingArguments,
    description: str = "training",
    progress: bool = True,
    accelerator: Accelerator | None = None,
    log_prefix: str | None = None,
) -> list[float]:
    """Trains the parameters of `model` that require grad (the active adapter) on a prepared dataset, through the
    recipes' shared loop (`sam_peft.training.optimizer_steps`): mixed precision, gradient accumulation and several
    processes come from `accelerator` (by default one built from `args`).

    `model` is a (PEFT-wrapped) prompted SAM of any generation; `dataset` yields SAM inputs
    (`sam_peft.data.prepare_for_sam`) with an `id` column. Adam with a cosine decay over all steps. With
    `log_prefix`, each step's loss and learning rate go to the accelerator's trackers as `{log_prefix}loss` and
    `{log_prefix}lr`. Returns the loss of every optimiser step (the mean over the processes).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("The model has no trainable parameters: add and activate an adapter first.")
    accelerator = accelerator or args.accelerator()
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(dataset, args.batch_size, shuffle=True, collate_fn=sam_collate_fn, generator=generator)
    optimizer = torch.optim.Adam(trainable, lr=args.learning_rate)
    total_steps = args.num_epochs * steps_per_epoch(
        len(loader), accelerator.num_processes, accelerator.gradient_accumulation_steps
    )
    scheduler = make_scheduler(optimizer, "cosine", 0, total_steps, accelerator.num_processes)
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    def compute_losses(model: torch.nn.Module, batch: dict) -> dict[str, Tensor]:
        points, point_labels = batch_prompts(batch, args)
        device = batch["pixel_values"].device
        outputs = model(
            pixel_values=batch["pixel_values"],
            input_points=points.to(device),
            input_labels=point_labels.to(device),
            multimask_output=False,
        )
        loss = prompted_segmentation_loss(
            outputs.pred_masks[:, 0].float(), outputs.iou_scores[:, 0].float(), batch["labels"], args
        )
        return {"loss": loss}

    losses = []
    bar = tqdm(
        total=total_steps, desc=description, disable=not progress or not accelerator.is_local_main_process, leave=False
    )
    prepared.train()
    for epoch in range(args.num_epochs):
        loader.set_epoch(epoch)
        for entry in optimizer_steps(
            accelerator, prepared, loader, optimizer, scheduler, compute_losses, args.max_grad_norm
        ):
            losses.append(entry["loss"])
            if log_prefix is not None:
                accelerator.log({f"{log_prefix}{key}": value for key, value in entry.items()}, step=len(losses))
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
    bar.close()
    # the module lives on in the continual model: without Accelerate's wrappers (DDP, the autocast of its forward)
    accelerator.unwrap_model(prepared, keep_fp32_wrapper=False).eval()
    accelerator.free_memory()
    return losses


@torch.no_grad()
def evaluate_prompted(
    predict: MaskPredictor,
    dataset,
    args: DomainTrainingArguments,
    processor,
    description: str = "evaluating",
    progress: bool = True,
) -> dict[str, float]:
    """IoU and the other binary metrics of `predict` on a prepared dataset, at the original image sizes.

    `predict` maps `(pixel_values, input_points, input_labels)` to low-resolution mask logits `(B, 1, h, w)`;
    `processor` is the `SamImageProcessor` that prepared the images (it removes the padding and resizes back).
    """
    metrics = SODMetrics()
    loader = DataLoader(dataset, args.eval_batch_size, collate_fn=sam_collate_fn)
    for batch in tqdm(loader, desc=description, disable=not progress, leave=False):
        points, point_labels = batch_prompts(batch, args)
        logits = predict(batch["pixel_values"], points, point_labels).float().cpu()
        original, reshaped = batch["original_sizes"].tolist(), batch["reshaped_input_sizes"].tolist()
        pad_size = {"height": batch["pixel_values"].shape[-2], "width": batch["pixel_values"].shape[-1]}
        # (B, 1, 1, h, w): one point batch of one mask per image, as post_process_masks expects
        masks = processor.post_process_masks(logits[:, None], original, reshaped, binarize=False, pad_size=pad_size)
        references = [
            labels_at_original_size(label, o, r) == 1
            for label, o, r in zip(batch["labels"], original, reshaped, strict=True)
        ]
        metrics.update([mask[0, 0].sigmoid() for mask in masks], references)
    return metrics.compute()
