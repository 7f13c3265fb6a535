"""Prompt-free SAM for binary and multi-class semantic segmentation (Conv-LoRA paper, Zhong et al. 2024).

SAM's prompt encoder is fed no prompt, so every image gets the same prompt tokens (no sparse token, the learned
`no_mask_embed` as dense embedding) and the mask decoder works as an end-to-end segmentation head:

- binary tasks (`num_labels=1`): one mask token (SAM's first) and one hypernetwork MLP (SAM's first) give one
  logit map per image, trained with the structure loss (or balanced BCE, or BCE + dice);
- multi-class tasks (`num_labels=K > 1`): `num_mask_tokens` tokens, all initialised from SAM's first, share SAM's
  first hypernetwork MLP, and a new `Linear(hidden_size, K + 1)` classifies every token's output (K classes and
  "no object"); training is Mask2Former's set prediction, inference
  `einsum("nc,nhw->chw", softmax(cls)[..., :K], sigmoid(masks))`.

SAM's IoU head and its other three mask tokens and hypernetwork MLPs are not part of the model.
`SamForSemanticSegmentation.from_pretrained` loads both SAM checkpoints (`SamModel`, `SamHQModel`) and its own.

What the heads of the later generations (`semantic_sam2`: SAM 2 / 2.1, SAM 3's tracker) share with this one lives
here: the config fields (`SemanticSegmentationConfigMixin`), the decoder's tokens and class branch
(`PromptFreeMaskDecoderMixin`), and the labels check, class scores, losses, outputs, post-processing and refusal of
another task's decoder weights (`SemanticSegmentationHeadMixin`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SamConfig, SamHQModel, SamModel
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPreTrainedModel,
    SamPromptEncoder,
    SamVisionEncoder,
)
from transformers.utils import ModelOutput

from ..tuners.auxiliary import auxiliary_loss
from ..tuners.targets import ARCHITECTURES, architecture_name
from .losses import BINARY_LOSSES, binary_segmentation_loss, semantic_set_loss

# Used when a multi-class config leaves `num_mask_tokens` unset. Each target segment of an image needs its own
# token, so this must be at least the number of classes that can appear in one image.
DEFAULT_MULTICLASS_MASK_TOKENS = 5

# Checkpoint classes whose weights `SamForSemanticSegmentation.from_pretrained` converts, by `model_type`.
_SAM_CHECKPOINT_CLASSES = {"sam": SamModel, "sam_hq": SamHQModel}


def check_sam_generation(model_type: str | None, source: str) -> None:
    """Raises ValueError when `model_type` is a SAM generation that `SamForSemanticSegmentation` does not build (SAM
    2, SAM 3, EdgeTAM): their configs must never become a SAM 1 model. `source` names the config in the message."""
    if model_type in ARCHITECTURES and model_type not in _SAM_CHECKPOINT_CLASSES:
        from .semantic_sam2 import PROMPT_FREE_CLASSES  # the later generations' heads, built on this module

        head = PROMPT_FREE_CLASSES.get(model_type)
        use = (
            f"use sam_peft.{head.__name__} (binary or multi-class)"
            if head
            else "its prompt-free head is not available yet"
        )
        raise ValueError(
            f"{source} is a {architecture_name(model_type)} config; SamForSemanticSegmentation builds SAM and SAM-HQ "
            f"models only (model_type in {sorted(_SAM_CHECKPOINT_CLASSES)}): {use}."
        )


# Keyword arguments of `from_pretrained` that locate files rather than configure the model.
_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")

# Weights of a SAM checkpoint that the semantic model keeps as they are (by prefix). The first mask token is
# handled separately; the IoU head, the other hypernetwork MLPs and SAM-HQ's extra modules are dropped.
_KEPT_SAM_PREFIXES = (
    "shared_image_embedding.",
    "vision_encoder.",
    "prompt_encoder.",
    "mask_decoder.iou_token.",
    "mask_decoder.transformer.",
    "mask_decoder.upscale_conv1.",
    "mask_decoder.upscale_conv2.",
    "mask_decoder.upscale_layer_norm.",
    "mask_decoder.output_hypernetworks_mlps.0.",
)


@dataclass(kw_only=True, repr=False, eq=False)
class SemanticSegmentationConfigMixin:
    """The task head and loss fields of the prompt-free configs of every SAM generation, with their defaults
    (documented on `SamSemanticSegmentationConfig`): mixed into `SamSemanticSegmentationConfig`,
    `Sam2SemanticSegmentationConfig` and `Sam3TrackerSemanticSegmentationConfig` before the generation's config.
    `num_labels` defaults to 1 (binary) rather than transformers' 2."""

    num_mask_tokens: int | None = None
    semantic_loss: str = "structure"
    semantic_loss_ignore_index: int = 255
    class_weight: float = 1.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    moe_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 1
        super().__post_init__(**kwargs)


class SamSemanticSegmentationConfig(SemanticSegmentationConfigMixin, SamConfig):
    r"""Configuration of [`SamForSemanticSegmentation`]: a [`SamConfig`] plus the task head and loss settings.

    `num_labels` / `id2label` / `label2id` are the standard classification fields: `num_labels=1` is a binary
    task (one logit map), `num_labels=K > 1` a K-class task. Unlike most transformers configs the default is 1.

    Args:
        num_mask_tokens (`int`, *optional*):
            Number of mask tokens (queries) of a multi-class model, all initialised from SAM's first mask token
            when loading a SAM checkpoint. It must be at least the number of classes one image can contain.
            Defaults to 1 for binary tasks (the only allowed value) and to `DEFAULT_MULTICLASS_MASK_TOKENS` (5)
            for multi-class ones.
        semantic_loss (`str`, *optional*, defaults to `"structure"`):
            Binary loss: `"structure"` (PraNet's weighted BCE + weighted IoU), `"balanced_bce"` (shadow
            detection), `"bce_dice"` or `"bce_iou"` (CAD). See `sam_peft.modeling.losses`.
        semantic_loss_ignore_index (`int`, *optional*, defaults to 255):
            Label value ignored by the losses; it is never a class.
        class_weight (`float`, *optional*, defaults to 1.0):
            Multi-class: weight of the classification loss and matching cost.
        mask_weight (`float`, *optional*, defaults to 5.0):
            Multi-class: weight of the point-sampled mask BCE loss and matching cost.
        dice_weight (`float`, *optional*, defaults to 5.0):
            Multi-class: weight of the point-sampled dice loss and matching cost.
        no_object_weight (`float`, *optional*, defaults to 0.1):
            Multi-class: cross-entropy weight of the "no object" class.
        train_num_points (`int`, *optional*, defaults to 12544):
            Multi-class: points sampled per mask for the mask losses and the matching.
        oversample_ratio (`float`, *optional*, defaults to 3.0):
            Multi-class: oversampling of Mask2Former's uncertainty-based point sampling.
        importance_sample_ratio (`float`, *optional*, defaults to 0.75):
            Multi-class: share of the points chosen by uncertainty rather than uniformly.
        moe_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the auxiliary losses of sam-peft layers (Conv-LoRA's expert balance loss) added to the loss.
    """

    @classmethod
    def from_sam_config(cls, config: SamConfig, **kwargs: Any) -> SamSemanticSegmentationConfig:
        """The semantic-segmentation config of the SAM architecture `config`, updated with `kwargs`.

        The generic default `id2label` of a plain SAM config (two labels "LABEL_0", "LABEL_1") is dropped, since
        SAM is no classifier: `num_labels` / `id2label` then come from `kwargs` (binary when absent). Labels set
        on the SAM config (`SamConfig(num_labels=3)`, or names) are kept.
        """
        config_dict = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            config_dict.pop(key, None)
        model_type = getattr(config, "model_type", None)
        check_sam_generation(model_type, f"The {type(config).__name__}")
        if model_type not in _SAM_CHECKPOINT_CLASSES:
            raise ValueError(
                f"The {type(config).__name__} is not a SAM config: its model_type is {model_type!r}. "
                f"SamForSemanticSegmentation builds SAM and SAM-HQ models (model_type in "
                f"{sorted(_SAM_CHECKPOINT_CLASSES)})."
            )
        if not isinstance(config, cls) and has_generic_labels(config):
            config_dict.pop("id2label", None)
            config_dict.pop("label2id", None)
        return cls.from_dict(config_dict, **kwargs)


def input_image_size(config: PreTrainedConfig) -> int:
    """The input side of a SAM model of any generation (1024 for SAM and SAM 2, 1008 for SAM 3): its prompt
    encoder's image size, which every generation's config has."""
    return config.prompt_encoder_config.image_size


def image_embedding_channels(config: PreTrainedConfig) -> int:
    """Channels of the image embedding the mask decoder attends to: SAM's neck output, or SAM 2 / SAM 3's FPN width."""
    vision = config.vision_config
    return getattr(vision, "output_channels", None) or vision.fpn_hidden_size


def has_generic_labels(config: PreTrainedConfig) -> bool:
    """Whether `config`'s labels are transformers' default ({0: "LABEL_0", 1: "LABEL_1"}): SAM is no classifier,
    so such a config says nothing about the task. `SamConfig(num_labels=2)` cannot be told apart from it; pass
    `SamSemanticSegmentationConfig(num_labels=2)` for a two-class model."""
    return config.id2label is None or config.id2label == {0: "LABEL_0", 1: "LABEL_1"}


@dataclass
class SamSemanticSegmentationOutput(ModelOutput):
    r"""Output of [`SamForSemanticSegmentation`].

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
            The loss to optimise: `task_loss + config.moe_loss_weight * auxiliary_loss`.
        task_loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
            The segmentation loss alone (structure loss, balanced BCE, ... or the multi-class set loss): the value
            to compare across methods and between training and evaluation.
        auxiliary_loss (`torch.Tensor` of shape `()`, *optional*, returned when `labels` are given):
            The auxiliary losses of sam-peft layers in this forward pass, unweighted: Conv-LoRA's expert balance
            loss (in eval mode computed without gate noise, so not comparable with training's); 0 without them.
        logits (`torch.Tensor` of shape `(batch_size, num_labels, height, width)`):
            At the (padded) input resolution. Binary: foreground logits. Multi-class: per-class scores
            `sum_n softmax(class_queries_logits)[n, c] * sigmoid(mask_n)` (in [0, 1]; argmax gives the label map).
        masks_queries_logits (`torch.Tensor` of shape `(batch_size, num_mask_tokens, low_res_height, low_res_width)`):
            Raw mask logits of every mask token at the decoder resolution (a quarter of the input).
        class_queries_logits (`torch.Tensor` of shape `(batch_size, num_mask_tokens, num_labels + 1)`, *optional*):
            Multi-class only: class logits of every mask token, the last one "no object".
        vision_hidden_states (`tuple(torch.Tensor)`, *optional*):
            Vision encoder hidden states, when `output_hidden_states=True`.
        vision_attentions (`tuple(torch.Tensor)`, *optional*):
            Vision encoder attention maps, when `output_attentions=True`.
    """

    loss: Tensor | None = None
    task_loss: Tensor | None = None
    auxiliary_loss: Tensor | None = None
    logits: Tensor | None = None
    masks_queries_logits: Tensor | None = None
    class_queries_logits: Tensor | None = None
    vision_hidden_states: tuple[Tensor, ...] | None = None
    vision_attentions: tuple[Tensor, ...] | None = None


class PromptFreeMaskDecoderMixin:
    """A generation's mask decoder with `num_mask_tokens` mask tokens, one shared hypernetwork MLP and, for
    `num_labels > 1`, `class_predictor`: mixed in before the generation's decoder class (`SamMaskDecoder`,
    `Sam2MaskDecoder`, ...), which builds everything else, so parameter names match its checkpoints.

    The decoder is built for `num_mask_tokens` tokens (`num_multimask_outputs = num_mask_tokens - 1`); then the
    heads named by `unused_heads` (the IoU head, ...) and the hypernetwork MLPs beyond the first are removed.
    """

    unused_heads: ClassVar[tuple[str, ...]] = ("iou_prediction_head",)

    def __init__(self, config: PreTrainedConfig, num_mask_tokens: int, num_labels: int):
        decoder_config = copy.deepcopy(config)
        decoder_config.num_multimask_outputs = num_mask_tokens - 1
        super().__init__(decoder_config)
        for name in self.unused_heads:
            delattr(self, name)
        self.output_hypernetworks_mlps = nn.ModuleList([self.output_hypernetworks_mlps[0]])
        self.class_predictor = nn.Linear(self.hidden_size, num_labels + 1) if num_labels > 1 else None


class SamSemanticMaskDecoder(PromptFreeMaskDecoderMixin, SamMaskDecoder):
    """SAM's mask decoder run without prompts, with `num_mask_tokens` tokens and one shared hypernetwork MLP.

    Built by `SamMaskDecoder` itself, so parameter names match SAM checkpoints; the IoU head and the
    hypernetwork MLPs beyond the first are removed. Multi-class decoders add `class_predictor`.
    """

    def forward(
        self, image_embeddings: Tensor, image_positional_embeddings: Tensor, dense_prompt_embeddings: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Predicts one mask (and, multi-class, class logits) per mask token.

        Args:
            image_embeddings: `(B, C, h, w)` vision-encoder embeddings.
            image_positional_embeddings: `(B, C, h, w)` positional encoding of the embedding grid.
            dense_prompt_embeddings: `(1, C, h, w)` or `(B, C, h, w)` dense prompt (the "no mask" embedding).

        Returns:
            `(masks, class_logits)`: `(B, N, 4h, 4w)` mask logits and `(B, N, K + 1)` class logits or `None`.
        """
        batch_size, num_channels, height, width = image_embeddings.shape
        # (B, 1, 1 + N, C): SAM's output tokens and no sparse prompt, one "point batch" per image.
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.repeat(batch_size, 1, 1, 1)
        image_embeddings = image_embeddings + dense_prompt_embeddings

        # queries (B, 1, 1 + N, C), keys (B, 1, h * w, C)
        queries, keys = self.transformer(
            point_embeddings=tokens,
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            attention_similarity=None,
        )
        mask_tokens_out = queries[:, 0, 1:, :]  # (B, N, C)

        image_embeddings = keys[:, 0].transpose(1, 2).reshape(batch_size, num_channels, height, width)
        upscaled = self.activation(self.upscale_layer_norm(self.upscale_conv1(image_embeddings)))
        upscaled = self.activation(self.upscale_conv2(upscaled))  # (B, C / 8, 4h, 4w)
        hyper_in = self.output_hypernetworks_mlps[0](mask_tokens_out)  # (B, N, C / 8)
        masks = (hyper_in @ upscaled.flatten(2)).reshape(batch_size, -1, *upscaled.shape[-2:])

        class_logits = self.class_predictor(mask_tokens_out) if self.class_predictor is not None else None
        return masks, class_logits


def semantic_scores(class_queries_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class scores of a multi-class head: `sum_n softmax(class_queries_logits)[n, c] * sigmoid(mask_n)`.

    Args:
        class_queries_logits: `(B, N, K + 1)` class logits of every query, the last one "no object".
        mask_logits: `(B, N, H, W)` mask logits of every query.

    Returns:
        `(B, K, H, W)` scores in [0, 1] ("no object" dropped); their argmax is the label map.
    """
    class_probs = class_queries_logits.softmax(-1)[..., :-1]  # (B, N, K), "no object" dropped
    return torch.einsum("bnc,bnhw->bchw", class_probs, mask_logits.sigmoid())


class SemanticSegmentationHeadMixin:
    """What the prompt-free models of every SAM generation share, whatever computes their queries' masks (and
    class logits): the labels check, the logits at the input size, the losses and outputs, the post-processing,
    the random initialisation of the queries, and the refusal of mask decoder weights of another task.

    Mixed in before the model's `PreTrainedModel` class; the model's `mask_decoder` is a
    `PromptFreeMaskDecoderMixin` (or, for the binary heads of SAM 2 / SAM 3, the generation's own decoder) and
    its config a `SemanticSegmentationConfigMixin`.
    """

    # The task head: a sam-peft tuner (`SamPeftTuner`) trains and saves these modules in full when the adapter's
    # config leaves `modules_to_save` unset, as peft does with a classifier. Subclasses may name others, or `None`.
    peft_default_modules_to_save: ClassVar[tuple[str, ...] | None] = ("mask_decoder",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        decoder = getattr(self, "mask_decoder", None)
        if isinstance(decoder, PromptFreeMaskDecoderMixin) and (
            module is decoder.iou_token or module is decoder.mask_tokens
        ):
            # N(0, 1) as in the original SAM (PyTorch's `nn.Embedding` default) rather than N(0, 0.02): the first
            # self-attention of the two-way transformer has no residual, so near-zero random tokens come out
            # almost identical and a multi-class model cannot tell its queries apart. Loaded weights are kept.
            init.normal_(module.weight, std=1.0)

    def _check_labels(self, labels: Tensor, batch_size: int, size: tuple[int, int]) -> None:
        check_labels(labels, batch_size, size, self.config.num_labels, self.config.semantic_loss_ignore_index)

    def _binary_decoder_tokens(self) -> int:
        """Mask tokens of this architecture's binary decoder (SAM's prompt-free decoder has one)."""
        return 1

    def _semantic_outputs(
        self,
        masks_queries_logits: Tensor,
        class_queries_logits: Tensor | None,
        output_size: tuple[int, int],
        labels: Tensor | None = None,
        unused_outputs: Tensor | None = None,
        **outputs: Any,
    ) -> SamSemanticSegmentationOutput:
        """The model's output from its queries' masks (and class logits): logits at `output_size` and, with
        `labels` (already checked), the losses.

        Args:
            masks_queries_logits: `(B, N, h, w)` mask logits of every query at the decoder's resolution.
            class_queries_logits: `(B, N, K + 1)` class logits of every query; `None` for binary models (N = 1).
            output_size: `(H, W)` of the logits and labels.
            labels: `(B, H, W)` integer labels, or `None`.
            unused_outputs: a sum of decoder outputs that do not shape the prediction but belong to trained
                weights; it enters the loss with weight 0, so that every trained weight gets a gradient (several
                processes under DDP need that) and the loss is unchanged.
            outputs: further output fields (`vision_hidden_states`, `vision_attentions`).
        """
        # (B, N, H, W) at the padded input size
        upsampled_masks = F.interpolate(masks_queries_logits, size=output_size, mode="bilinear", align_corners=False)
        if class_queries_logits is None:
            logits = upsampled_masks
        else:
            logits = semantic_scores(class_queries_logits, upsampled_masks)

        loss = task_loss = aux_loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if class_queries_logits is None:
                task_loss = binary_segmentation_loss(
                    upsampled_masks, labels, self.config.semantic_loss, self.config.semantic_loss_ignore_index
                )
            else:
                task_loss = semantic_set_loss(
                    masks_queries_logits,
                    class_queries_logits,
                    labels,
                    ignore_index=self.config.semantic_loss_ignore_index,
                    class_weight=float(self.config.class_weight),
                    mask_weight=float(self.config.mask_weight),
                    dice_weight=float(self.config.dice_weight),
                    no_object_weight=float(self.config.no_object_weight),
                    num_points=int(self.config.train_num_points),
                    oversample_ratio=float(self.config.oversample_ratio),
                    importance_sample_ratio=float(self.config.importance_sample_ratio),
                )
            aux_loss = auxiliary_loss(self).to(task_loss)
            loss = task_loss + self.config.moe_loss_weight * aux_loss
            if unused_outputs is not None:
                loss = loss + 0.0 * unused_outputs

        return SamSemanticSegmentationOutput(
            loss=loss,
            task_loss=task_loss,
            auxiliary_loss=aux_loss,
            logits=logits,
            masks_queries_logits=masks_queries_logits,
            class_queries_logits=class_queries_logits,
            **outputs,
        )

    def post_process_semantic_segmentation(
        self,
        outputs: SamSemanticSegmentationOutput,
        original_sizes: Tensor | Sequence[Sequence[int]],
        reshaped_input_sizes: Tensor | Sequence[Sequence[int]],
    ) -> list[Tensor]:
        """See `post_process_semantic_segmentation`."""
        return post_process_semantic_segmentation(outputs, original_sizes, reshaped_input_sizes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Refuses, with the fix, mask decoder weights of another task (e.g. a multi-class adapter loaded onto a
        binary model), which torch would report as a bare size mismatch or, for the class branch, skip silently.
        The decoder may be wrapped (peft's `modules_to_save`), so its weights are found by their name's end."""
        decoder_keys = [key for key in state_dict if key.startswith(prefix + "mask_decoder.")]
        saved_tokens = next((state_dict[k] for k in decoder_keys if k.endswith(".mask_tokens.weight")), None)
        if saved_tokens is not None:
            saved_classifier = next(
                (state_dict[k] for k in decoder_keys if k.endswith(".class_predictor.weight")), None
            )
            saved = (1 if saved_classifier is None else saved_classifier.shape[0] - 1, saved_tokens.shape[0])
            if saved[0] == 1 and saved[1] == self._binary_decoder_tokens():
                saved = (1, 1)  # a binary decoder: one query, whatever tokens the architecture holds
            if saved != (self.config.num_labels, self.config.num_mask_tokens):
                task = f"num_labels={saved[0]}"
                if saved[0] > 1 and saved[1] != DEFAULT_MULTICLASS_MASK_TOKENS:
                    task += f", num_mask_tokens={saved[1]}"
                raise ValueError(
                    f"The mask decoder weights being loaded are for num_labels={saved[0]} with num_mask_tokens="
                    f"{saved[1]}, but this model has num_labels={self.config.num_labels} and num_mask_tokens="
                    f"{self.config.num_mask_tokens}. Build the base model for that task: "
                    f"{type(self).__name__}.from_pretrained(base, {task}) (with AutoPeftModel: "
                    f"AutoPeftModel.from_pretrained(adapter, {task}, import_allowlist=['sam_peft'])), or load a "
                    "training run with sam_peft.training.load_trained(run_folder)."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SamForSemanticSegmentation(SemanticSegmentationHeadMixin, SamPreTrainedModel):
    """SAM as a prompt-free binary or multi-class semantic segmentation model.

    Module names are `SamModel`'s (`vision_encoder`, `prompt_encoder`, `shared_image_embedding`, `mask_decoder`),
    so adapters targeting SAM apply unchanged. Construct from a config for random weights, or load a SAM
    checkpoint:

    ```python
    model = SamForSemanticSegmentation.from_pretrained("facebook/sam-vit-base", num_labels=1)  # binary
    model = SamForSemanticSegmentation.from_pretrained("facebook/sam-vit-base", num_labels=12)  # 12 classes
    ```

    The prompt encoder only provides the constant `no_mask_embed` and receives no gradient.
    """

    config_class = SamSemanticSegmentationConfig
    config: SamSemanticSegmentationConfig
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"
    }

    get_image_wide_positional_embeddings = SamModel.get_image_wide_positional_embeddings
    get_image_embeddings = SamModel.get_image_embeddings

    def __init__(self, config: SamConfig):
        if not isinstance(config, SamSemanticSegmentationConfig):
            config = SamSemanticSegmentationConfig.from_sam_config(config)
        config.num_mask_tokens = check_task_config(config)
        super().__init__(config)
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)
        self.vision_encoder = SamVisionEncoder(config.vision_config)
        self.prompt_encoder = SamPromptEncoder(config)
        # The decoder is no PreTrainedModel: it reads the attention implementation from its config.
        config.mask_decoder_config._attn_implementation = config._attn_implementation
        self.mask_decoder = SamSemanticMaskDecoder(
            config.mask_decoder_config, config.num_mask_tokens, config.num_labels
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_encoder.get_input_embeddings()

    def freeze_encoders(self) -> SamForSemanticSegmentation:
        """Freezes the vision encoder, prompt encoder and positional embedding: the paper's decoder-only setting.

        The mask decoder (class branch included) stays trainable. Returns the model.
        """
        for module in (self.vision_encoder, self.prompt_encoder, self.shared_image_embedding):
            module.requires_grad_(False)
        return self

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        image_embeddings: Tensor | None = None,
        **kwargs: Any,
    ) -> SamSemanticSegmentationOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Images as prepared by `SamImageProcessor` (resized to the longest side and padded).
            labels (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                Integer labels at the input resolution: 0 / 1 for binary models, class ids in `[0, num_labels)`
                for multi-class ones, `config.semantic_loss_ignore_index` (255) for pixels to ignore (e.g. the
                padding).
            image_embeddings (`torch.Tensor` of shape `(batch_size, channels, h, w)`, *optional*):
                Precomputed `get_image_embeddings(pixel_values)`, instead of `pixel_values`; outputs are then at
                the configured image size.
            kwargs:
                Passed to the vision encoder (`output_hidden_states`, `output_attentions`).
        """
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Pass exactly one of pixel_values and image_embeddings.")
        if pixel_values is not None:
            batch_size, output_size = pixel_values.shape[0], tuple(pixel_values.shape[-2:])
        else:
            image_size = self.config.prompt_encoder_config.image_size
            batch_size, output_size = image_embeddings.shape[0], (image_size, image_size)
        if labels is not None:
            self._check_labels(labels, batch_size, output_size)

        vision_hidden_states = vision_attentions = None
        if pixel_values is not None:
            vision_outputs = self.vision_encoder(pixel_values, **kwargs)
            image_embeddings = vision_outputs.last_hidden_state
            vision_hidden_states = vision_outputs.hidden_states
            vision_attentions = vision_outputs.attentions

        image_positional_embeddings = self.get_image_wide_positional_embeddings().repeat(batch_size, 1, 1, 1)
        with torch.no_grad():
            # No prompt: no sparse embedding and the "no mask" dense embedding, (1, C, h, w).
            _, dense_embeddings = self.prompt_encoder(
                input_points=None, input_labels=None, input_boxes=None, input_masks=None
            )
        masks_queries_logits, class_queries_logits = self.mask_decoder(
            image_embeddings, image_positional_embeddings, dense_embeddings
        )
        return self._semantic_outputs(
            masks_queries_logits,
            class_queries_logits,
            output_size,
            labels,
            vision_hidden_states=vision_hidden_states,
            vision_attentions=vision_attentions,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | None, *model_args: Any, **kwargs: Any
    ) -> SamForSemanticSegmentation:
        """Loads a `SamForSemanticSegmentation` checkpoint, or converts a SAM (`SamModel` / `SamHQModel`) one.

        SAM checkpoints are loaded with their own class and mapped (`sam_to_semantic_state_dict`): the encoders
        as they are; the first mask token (repeated `num_mask_tokens` times) and the first hypernetwork MLP; no
        IoU head. A multi-class head is newly initialised. Config fields (`num_labels`, `id2label`,
        `num_mask_tokens`, loss options) can be passed as keyword arguments, as for any transformers model.

        Raises:
            ValueError: when the checkpoint's config is not a SAM config.
        """
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        download_kwargs = {key: kwargs[key] for key in _DOWNLOAD_KWARGS if key in kwargs}
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **download_kwargs)
        model_type = config_dict.get("model_type")
        check_sam_generation(model_type, repr(pretrained_model_name_or_path))
        if model_type not in _SAM_CHECKPOINT_CLASSES or not isinstance(config_dict.get("vision_config"), dict):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is not a SAM checkpoint: its config has model_type={model_type!r}"
                f"{'' if 'vision_config' in config_dict else ' and no vision_config'}. SamForSemanticSegmentation "
                f"loads SAM checkpoints (model_type in {sorted(_SAM_CHECKPOINT_CLASSES)}, e.g. "
                "'facebook/sam-vit-base') and its own."
            )
        if cls.__name__ in (config_dict.get("architectures") or ()):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

        config = kwargs.pop("config", None)
        config_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _TASK_CONFIG_KEYS}
        loading_kwargs = {key: value for key, value in kwargs.items() if key not in _DOWNLOAD_KWARGS}
        if config is None:
            # A SAM config's id2label is a generic default: SAM is no classifier.
            for key in ("model_type", "architectures", "transformers_version", "id2label", "label2id"):
                config_dict.pop(key, None)
            config = cls.config_class.from_dict(config_dict, **config_kwargs)
        else:
            config = cls.config_class.from_sam_config(config, **config_kwargs)
        config.num_mask_tokens = _resolve_num_mask_tokens(config)

        source_kwargs = {key: value for key, value in loading_kwargs.items() if key != "output_loading_info"}
        source = _SAM_CHECKPOINT_CLASSES[model_type].from_pretrained(
            pretrained_model_name_or_path, **download_kwargs, **source_kwargs
        )
        state_dict = sam_to_semantic_state_dict(source.state_dict(), config.num_mask_tokens)
        del source
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **loading_kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.config.name_or_path = model.name_or_path = str(pretrained_model_name_or_path)
        return loaded


# Keyword arguments of `from_pretrained` that set the task head and loss rather than load weights.
_TASK_CONFIG_KEYS = frozenset(
    {"num_labels", "id2label", "label2id"}
    | {field.name for field in fields(SamSemanticSegmentationConfig)} - {field.name for field in fields(SamConfig)}
)


def check_labels(labels: Tensor, batch_size: int, size: tuple[int, int], num_labels: int, ignore_index: int) -> None:
    """Raises a `ValueError` naming what was expected when `labels` (`(batch_size, *size)` integer class ids, or
    `ignore_index`) cannot be used by the loss of a model with `num_labels` labels (1: binary)."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor of shape (batch_size, height, width), got {type(labels)}.")
    expected_shape = (batch_size, *size)
    if tuple(labels.shape) != expected_shape:
        raise ValueError(
            f"labels must have shape (batch_size, height, width) = {expected_shape} to match the input, "
            f"got {tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be an integer tensor of class ids (e.g. torch.int64), got {labels.dtype}; convert "
            "float masks with e.g. `(mask > 0.5).long()`."
        )
    values = labels.long()
    if num_labels == 1:
        invalid = (values != 0) & (values != 1) & (values != ignore_index)
        if invalid.any():
            raise ValueError(
                f"Binary labels (num_labels=1) must be 0, 1 or {ignore_index} (ignored), got values "
                f"{torch.unique(values[invalid]).tolist()}."
            )
    else:
        invalid = ((values < 0) | (values >= num_labels)) & (values != ignore_index)
        if invalid.any():
            raise ValueError(
                f"Class ids must be in [0, num_labels={num_labels}) or equal to the ignore index "
                f"{ignore_index}, got {torch.unique(values[invalid]).tolist()}."
            )


def _resolve_num_mask_tokens(config: SamSemanticSegmentationConfig) -> int:
    """`config.num_mask_tokens`, or its default for the task; checks it against `num_labels`."""
    num_mask_tokens = config.num_mask_tokens
    if config.num_labels == 1:
        if num_mask_tokens not in (None, 1):
            raise ValueError(
                f"A binary model (num_labels=1) has one mask token, got num_mask_tokens={num_mask_tokens}."
            )
        return 1
    if num_mask_tokens is None:
        return DEFAULT_MULTICLASS_MASK_TOKENS
    if num_mask_tokens < 1:
        raise ValueError(f"num_mask_tokens must be at least 1, got {num_mask_tokens}.")
    return num_mask_tokens


def check_task_config(config: SemanticSegmentationConfigMixin) -> int:
    """Checks the task fields of a prompt-free config (a known `semantic_loss`, a `num_mask_tokens` that fits
    `num_labels`) and returns `num_mask_tokens` resolved for the task (`_resolve_num_mask_tokens`)."""
    if config.semantic_loss not in BINARY_LOSSES:
        raise ValueError(f"Unknown semantic_loss {config.semantic_loss!r}; expected one of {sorted(BINARY_LOSSES)}.")
    return _resolve_num_mask_tokens(config)


def sam_to_semantic_state_dict(
    state_dict: dict[str, Tensor], num_mask_tokens: int, kept_prefixes: tuple[str, ...] = _KEPT_SAM_PREFIXES
) -> dict[str, Tensor]:
    """Maps a `SamModel` / `SamHQModel` state dict onto `SamForSemanticSegmentation`'s parameters (another
    generation's, with its `kept_prefixes`).

    Encoders, prompt encoder, IoU token, two-way transformer and upscaling are kept; `mask_tokens` becomes SAM's
    first token repeated `num_mask_tokens` times, `(num_mask_tokens, C)`; only the first hypernetwork MLP is
    kept; the IoU head and SAM-HQ's extra modules are dropped. The class head of a multi-class model is absent.
    """
    converted = {key: value for key, value in state_dict.items() if key.startswith(kept_prefixes)}
    first_token = state_dict["mask_decoder.mask_tokens.weight"][:1]  # (1, C)
    converted["mask_decoder.mask_tokens.weight"] = first_token.repeat(num_mask_tokens, 1)
    return converted


def _as_size_list(sizes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    if isinstance(sizes, Tensor):
        sizes = sizes.tolist()
    return [(int(height), int(width)) for height, width in sizes]


def logits_at_original_size(
    logits: Tensor,
    original_sizes: Tensor | Sequence[Sequence[int]],
    reshaped_input_sizes: Tensor | Sequence[Sequence[int]],
) -> list[Tensor]:
    """Undoes SAM's resize-longest-side-then-pad on logits `(B, K, S, S)`: each image's are cropped to the resized
    image (`reshaped_input_sizes`, top-left as `SamImageProcessor` pads bottom and right) and resized bilinearly to
    `original_sizes` (both as `SamImageProcessor` returns them). Returns per image `(K, height, width)`."""
    results = []
    for image_logits, original_size, reshaped_size in zip(
        logits, _as_size_list(original_sizes), _as_size_list(reshaped_input_sizes), strict=True
    ):
        cropped = image_logits[None, :, : reshaped_size[0], : reshaped_size[1]]
        results.append(F.interpolate(cropped, size=original_size, mode="bilinear", align_corners=False)[0])
    return results


def post_process_semantic_segmentation(
    outputs: SamSemanticSegmentationOutput,
    original_sizes: Tensor | Sequence[Sequence[int]],
    reshaped_input_sizes: Tensor | Sequence[Sequence[int]],
) -> list[Tensor]:
    """Brings `outputs.logits` back to the original images (`logits_at_original_size`) as predictions.

    Args:
        outputs: the model's output (its `logits`, `(B, K, H, W)`).
        original_sizes: `(B, 2)` image sizes `(height, width)` before preprocessing.
        reshaped_input_sizes: `(B, 2)` sizes after resizing, before padding.

    Returns:
        Per image, binary models: the foreground probability map, float `(height, width)`; multi-class models:
        the label map, int64 `(height, width)`.
    """
    resized = logits_at_original_size(outputs.logits, original_sizes, reshaped_input_sizes)
    return [logits[0].sigmoid() if logits.shape[0] == 1 else logits.argmax(0) for logits in resized]
