"""Prompted fine-tuning: SAM's interactive training scheme as one module whose forward returns the losses.

For every object of a batch (`sam_objects_collate_fn`), on the model's batch axis (one prompt set per object):

1. A first prompt: with probability `box_probability` (one draw per batch) the object's box, jittered outwards
   by up to `box_jitter` pixels per side (MedSAM), single-mask output; otherwise one positive point drawn uniformly
   in the object, with SAM's three-mask output, of which the lowest-loss mask is trained (SAM's ambiguity-aware
   loss, `prompted_mask_loss`).
2. `num_correction_clicks` corrective clicks: each drawn uniformly from the largest error region of the previous
   prediction (positive in a miss, negative in a false positive: `next_click(mode="random")`), added to the
   prompts so far, with the previous low-resolution logits (of the mask with the highest predicted IoU, detached)
   fed back as the mask prompt; single-mask output (SAM's and micro-sam's training; the box, when it was the first
   prompt, stays).

The loss is the mean over the iterations of `prompted_mask_loss` (focal and dice, weights `focal_weight : dice_weight`
(SAM: 20 : 1), plus `iou_weight` x the IoU head's MSE), averaged over the batch's objects; SAM 2 and SAM 3 also
predict whether the object is in the image at all, and since every prompted object is, that head is trained towards
"present" with `object_score_weight` x its binary cross-entropy (SAM 2's object-score loss, weight 1); plus
`moe_loss_weight` x the adapter's auxiliary loss (Conv-LoRA's balance loss; zero for the others). The image
embedding is computed once per image, with gradients, and shared by its objects and every iteration; the prompt
encoder stays frozen.

An SLoRA model's image encoder reads point prompts too, as a heat map per image (`sam_peft.tuners.slora`): since
the embedding is computed once per image, its heat map is that of the first prompt of each of its objects, several
peaks on one map (`object_points_by_image`): the drawn positive point of each object, or in a box batch the centre
of each object's (jittered) box, the one point a box gives. The corrective clicks reach the decoder only (their
heat map would change the embedding at every iteration). Other models are untouched (`encoder_prompts` does
nothing for them).

Randomness (the box-or-point draw, the jitter, the points and clicks) comes from a generator seeded by the
batch's `prompt_seed` values, which `PromptSeeds` draws per example: with `SeededSamples` around it, the prompts
of a sample are a function of the run's seed, the epoch and the sample's index, the same in a resumed run and
whatever the number of processes.

Because the whole scheme is one `forward`, the module is what `accelerator.prepare` wraps (one forward and one
backward per batch under DistributedDataParallel) and what gradient accumulation accumulates: the objects of
`gradient_accumulation_steps` batches (each capped at `max_objects` per image) make one optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.decoding import IGNORE_INDEX
from ..data.prompts import boxes_from_masks, next_click, sample_points
from ..modeling.losses import prompted_mask_loss
from ..modeling.prompted import trainable_image_embeddings
from ..tuners.auxiliary import auxiliary_loss
from ..tuners.slora.prompting import box_centres, encoder_prompts, object_points_by_image, uses_prompt_heat_maps
from .interactive import upsampled_prediction


@dataclass(frozen=True)
class InteractiveTrainingConfig:
    """How prompted fine-tuning prompts each object and weighs its losses (see the module's docstring)."""

    num_correction_clicks: int = 7
    box_probability: float = 0.5
    box_jitter: int = 0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    object_score_weight: float = 1.0
    moe_loss_weight: float = 1.0

    @classmethod
    def from_arguments(cls, model_args: Any, train_args: Any) -> InteractiveTrainingConfig:
        """The scheme of the training recipe's arguments (`TrainArguments`' prompting keys and loss weights, and
        `ModelArguments.moe_loss_weight`)."""
        keys = ("num_correction_clicks", "box_probability", "box_jitter", "focal_weight", "dice_weight", "iou_weight")
        return cls(**{key: getattr(train_args, key) for key in keys}, moe_loss_weight=model_args.moe_loss_weight)

    def __post_init__(self) -> None:
        if self.num_correction_clicks < 0:
            raise ValueError(f"num_correction_clicks must be >= 0, got {self.num_correction_clicks}.")
        if not 0 <= self.box_probability <= 1:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}.")
        if self.box_jitter < 0:
            raise ValueError(f"box_jitter must be >= 0 (pixels, outwards), got {self.box_jitter}.")
        weights = {
            "focal_weight": self.focal_weight,
            "dice_weight": self.dice_weight,
            "iou_weight": self.iou_weight,
            "object_score_weight": self.object_score_weight,
        }
        negative = [f"{name}={value}" for name, value in weights.items() if value < 0]
        if negative or self.focal_weight + self.dice_weight == 0:
            raise ValueError(
                "The loss weights must be >= 0 with focal_weight + dice_weight > 0, got "
                f"{', '.join(negative) or weights}."
            )


class PromptSeeds(Dataset):
    """A dataset whose examples also carry `prompt_seed`, an int drawn from torch's global generator when the
    example is read: inside `SeededSamples` that draw is a function of the seed, the epoch and the index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self.dataset[index])
        example["prompt_seed"] = int(torch.randint(0, 2**62, ()))
        return example


def batch_generator(prompt_seeds: Any) -> torch.Generator:
    """The CPU generator of a batch's prompts, seeded from its examples' `prompt_seed` values (in order)."""
    seeds = [int(seed) for seed in (prompt_seeds.tolist() if isinstance(prompt_seeds, Tensor) else prompt_seeds)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(seeds).generate_state(1, np.uint64)[0] >> 1))


class InteractiveTraining(nn.Module):
    """Wraps a promptable SAM (`SamModel`, `Sam2Model`, `Sam3TrackerModel`, PEFT-wrapped or not); `forward` runs
    the interactive training scheme on a batch and returns its losses.

    Args:
        model: the model being trained (its trainable parameters are this module's).
        config: the prompting scheme and the loss weights.
    """

    def __init__(self, model: nn.Module, config: InteractiveTrainingConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config or InteractiveTrainingConfig()

    def forward(
        self,
        pixel_values: Tensor,
        object_masks: Tensor,
        object_counts: Tensor,
        valid: Tensor,
        prompt_seed: Any,
        **unused: Any,
    ) -> dict[str, Tensor]:
        """Losses of one batch of `sam_objects_collate_fn` (with `prompt_seed`).

        Args:
            pixel_values: `(B, 3, S, S)`.
            object_masks: `(B, P, S, S)` bool, padding objects all False.
            object_counts: `(B,)` the real objects of each image.
            valid: `(B, S, S)` bool, False on the padding.
            prompt_seed: `(B,)` ints (a list or tensor) seeding the batch's prompts.

        Returns:
            `loss` (optimised), `task_loss` (the prompted mask loss), `auxiliary_loss`, 0-dim each.
        """
        present = torch.arange(object_masks.shape[1], device=object_counts.device) < object_counts[:, None]
        if not present.any():  # every trainable weight gets a zero gradient, so processes stay in step
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return {"loss": zero, "task_loss": zero.detach(), "auxiliary_loss": zero.detach()}
        generator = batch_generator(prompt_seed)
        image_index = present.nonzero()[:, 0]
        masks, masks_valid = object_masks[present], valid[image_index]  # (N, S, S) each
        labels = masks.to(torch.uint8).masked_fill(~masks_valid, IGNORE_INDEX)[:, None]  # (N, 1, S, S)

        config = self.config
        use_box = bool(torch.rand((), generator=generator) < config.box_probability)
        prompts: dict[str, Tensor] = {}
        if use_box:
            jitter = (0, config.box_jitter)
            prompts["input_boxes"] = boxes_from_masks(masks, jitter, generator, masks_valid).to(pixel_values)
        else:
            points, point_labels = sample_points(masks, 1, 0, "uniform", generator, masks_valid)
            prompts["input_points"], prompts["input_labels"] = points.to(pixel_values), point_labels

        # the encoder of an SLoRA model sees each image's objects' first prompts as one heat map (a no-op otherwise)
        with encoder_prompts(self.model, *self._encoder_points(prompts, image_index, len(pixel_values))):
            embeddings = trainable_image_embeddings(self.model, pixel_values)
            if isinstance(embeddings, Tensor):
                inputs: dict[str, Any] = {"image_embeddings": embeddings[image_index]}
            else:
                inputs = {"image_embeddings": [level[image_index] for level in embeddings]}
            losses = self._interact(
                inputs, prompts, masks, masks_valid, labels, use_box, generator, pixel_values, object_counts
            )
        task_loss = torch.stack(losses).mean()
        extra = auxiliary_loss(self.model).to(task_loss)
        return {"loss": task_loss + config.moe_loss_weight * extra, "task_loss": task_loss, "auxiliary_loss": extra}

    def _encoder_points(
        self, prompts: dict[str, Tensor], image_index: Tensor, num_images: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """The points the image encoder of an SLoRA model sees, `(B, 1, K, 2)` and `(B, 1, K)`: each image's
        objects' first prompts, their positive points (the drawn point), or their boxes' centres in a box batch;
        (None, None) for a model whose encoder reads no heat map."""
        if not uses_prompt_heat_maps(self.model):
            return None, None
        if "input_points" in prompts:
            points, point_labels = prompts["input_points"], prompts["input_labels"]
        else:
            points, point_labels = box_centres(prompts["input_boxes"])
        return object_points_by_image(points, point_labels, image_index, num_images)

    def _interact(
        self,
        inputs: dict[str, Any],
        prompts: dict[str, Tensor],
        masks: Tensor,
        masks_valid: Tensor,
        labels: Tensor,
        use_box: bool,
        generator: torch.Generator,
        pixel_values: Tensor,
        object_counts: Tensor,
    ) -> list[Tensor]:
        """The loss of each iteration: the first prompt, then the corrective clicks (see the module's docstring);
        clicks go in as `pixel_values`' dtype and labels as `object_counts`' (the batch's)."""
        config = self.config
        losses, low_res = [], None
        for iteration in range(config.num_correction_clicks + 1):
            if iteration > 0:
                prediction = upsampled_prediction(low_res, masks.shape[-2:]) & masks_valid
                points, point_labels = next_click(prediction, masks, masks_valid, "random", generator)
                if "input_points" in prompts:
                    points = torch.cat([prompts["input_points"], points.to(pixel_values)], dim=2)
                    point_labels = torch.cat([prompts["input_labels"], point_labels.to(object_counts)], dim=2)
                prompts["input_points"], prompts["input_labels"] = points.to(pixel_values), point_labels
                prompts["input_masks"] = low_res[:, None]
            multimask = iteration == 0 and not use_box
            outputs = self.model(**inputs, **prompts, multimask_output=multimask)
            pred_masks, iou_scores = outputs.pred_masks, outputs.iou_scores  # (N, 1, M, h, w), (N, 1, M)
            loss = prompted_mask_loss(
                pred_masks,
                iou_scores,
                labels,
                focal_weight=config.focal_weight,
                dice_weight=config.dice_weight,
                iou_weight=config.iou_weight,
            )
            object_scores = getattr(outputs, "object_score_logits", None)  # SAM 2 / SAM 3: (N, 1, 1)
            if object_scores is not None:
                present_target = torch.ones_like(object_scores, dtype=torch.float32)
                loss = loss + config.object_score_weight * F.binary_cross_entropy_with_logits(
                    object_scores.float(), present_target
                )
            losses.append(loss)
            # the next iteration's mask prompt: the candidate with the highest predicted IoU, without gradient
            best = iou_scores[:, 0].argmax(dim=-1)
            low_res = pred_masks[torch.arange(len(best), device=best.device), 0, best].detach()  # (N, h, w)
        return losses
