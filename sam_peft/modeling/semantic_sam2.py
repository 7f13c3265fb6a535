"""Prompt-free binary and multi-class segmentation on SAM 2 / 2.1 and SAM 3's tracker.

`Sam2ForSemanticSegmentation` is a `Sam2Model` and `Sam3TrackerForSemanticSegmentation` a `Sam3TrackerModel` whose
forward takes no prompt: the model's own "no prompt" input (one padding point) runs through the model's own forward
(vision encoder, FPN, the decoder's high-resolution skip features `conv_s0` / `conv_s1`, two-way transformer), and
the heads give the outputs and losses of SAM 1's `SamForSemanticSegmentation`, through the same code
(`semantic_sam.SemanticSegmentationHeadMixin`: labels check, class scores, losses, post-processing, refusal of
another task's decoder weights) and the same config fields (`semantic_sam.SemanticSegmentationConfigMixin`):

- binary tasks (`num_labels=1`): the generation's own decoder, unchanged, and its one mask (SAM 2's
  `multimask_output=False`), upsampled to the input size. The weight names are the generation's, so its checkpoints
  load as they are and adapters target the same modules;
- multi-class tasks (`num_labels=K > 1`): the decoder is `Sam2SemanticMaskDecoder` (`Sam3TrackerSemanticMaskDecoder`):
  `num_mask_tokens` mask tokens (default 5), all initialised from the checkpoint's first one, share its first
  hypernetwork MLP, and `class_predictor`, a new `Linear(hidden_size, K + 1)`, classifies each token's output (K
  classes and "no object"). Training is Mask2Former's set prediction (`losses.semantic_set_loss`), inference
  `sum_n softmax(class)[n, c] * sigmoid(mask_n)`. The IoU and object-score heads and the other MLPs are not part of
  the model; the object-score and IoU tokens still take part in the two-way transformer, as in SAM 2.

    model = Sam2ForSemanticSegmentation.from_pretrained("facebook/sam2.1-hiera-small")  # binary
    model = Sam2ForSemanticSegmentation.from_pretrained("facebook/sam2.1-hiera-small", num_labels=12)  # 12 classes
    outputs = model(pixel_values=pixel_values, labels=labels)  # labels (B, H, W): class ids or 255
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import PreTrainedModel, Sam2Config, Sam2Model, Sam3TrackerConfig, Sam3TrackerModel
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder
from transformers.models.sam3_tracker.modeling_sam3_tracker import Sam3TrackerMaskDecoder

from .semantic_sam import (
    _DOWNLOAD_KWARGS,
    _KEPT_SAM_PREFIXES,
    _TASK_CONFIG_KEYS,
    PromptFreeMaskDecoderMixin,
    SamForSemanticSegmentation,
    SamSemanticSegmentationOutput,
    SemanticSegmentationConfigMixin,
    SemanticSegmentationHeadMixin,
    check_task_config,
    has_generic_labels,
    input_image_size,
    sam_to_semantic_state_dict,
)

# Weights of a SAM 2 / SAM 3 tracker checkpoint that a multi-class head keeps as they are (by prefix): SAM's, plus the
# no-memory embedding, the object-score token and the high-resolution projections. The first mask token is handled
# separately; the IoU and object-score heads and the hypernetwork MLPs beyond the first are dropped.
_KEPT_SAM2_PREFIXES = (
    *_KEPT_SAM_PREFIXES,
    "no_memory_embedding",
    "mask_decoder.obj_score_token.",
    "mask_decoder.conv_s0.",
    "mask_decoder.conv_s1.",
)


def fpn_decoder_embeddings(model: Sam2Model | Sam3TrackerModel, levels: Sequence[Tensor]) -> list[Tensor]:
    """What a SAM 2 / SAM 3 tracker model's forward passes its mask decoder as `image_embeddings`, from its vision
    encoder's FPN levels (`vision_encoder(pixel_values).fpn_hidden_states`).

    Args:
        model: The model whose decoder reads the levels (its `mask_decoder.conv_s0` / `conv_s1`,
            `no_memory_embedding` and `backbone_feature_sizes`).
        levels: `(B, C, h_i, w_i)` FPN levels, high to low resolution.

    Returns:
        The levels as the model's forward turns them into `image_embeddings`: the first two through the decoder's
        `conv_s0` / `conv_s1` (its high-resolution skip features), the last (the image embedding) plus the
        no-memory embedding.

    Raises:
        ValueError: when there are not as many levels as the decoder reads.
    """
    if len(levels) != len(model.backbone_feature_sizes):
        raise ValueError(
            f"encoder_embeddings holds {len(levels)} levels; this model's decoder reads "
            f"{len(model.backbone_feature_sizes)} FPN levels of sizes {model.backbone_feature_sizes}."
        )
    levels = list(levels)
    levels[0] = model.mask_decoder.conv_s0(levels[0])
    levels[1] = model.mask_decoder.conv_s1(levels[1])
    levels[-1] = levels[-1] + model.no_memory_embedding.view(1, -1, 1, 1)
    return levels


class _CheckedTaskConfigMixin(SemanticSegmentationConfigMixin):
    """The task fields, checked as soon as the config is built (a known loss, `num_mask_tokens` fitting the task)."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_task_config(self)


class Sam2SemanticSegmentationConfig(_CheckedTaskConfigMixin, Sam2Config):
    r"""Configuration of [`Sam2ForSemanticSegmentation`]: a [`Sam2Config`] plus the task head and loss settings, with
    the names and defaults of [`SamSemanticSegmentationConfig`] (which details them).

    `num_labels` / `id2label` / `label2id` are the standard classification fields: `num_labels=1` (the default) is a
    binary task, `num_labels=K > 1` a K-class task.

    `num_mask_tokens` defaults to 1 for binary tasks (the only allowed value: the binary head is the generation's own
    decoder) and to 5 for multi-class ones, whose mask tokens are all initialised from the checkpoint's first. The
    loss fields (`semantic_loss`, `class_weight`, `mask_weight`, `dice_weight`, `no_object_weight`,
    `train_num_points`, `oversample_ratio`, `importance_sample_ratio`, `moe_loss_weight`) and
    `semantic_loss_ignore_index` mean what they mean there.
    """


class Sam3TrackerSemanticSegmentationConfig(_CheckedTaskConfigMixin, Sam3TrackerConfig):
    r"""Configuration of [`Sam3TrackerForSemanticSegmentation`]: a [`Sam3TrackerConfig`] plus the task head and loss
    settings, the fields of [`Sam2SemanticSegmentationConfig`]."""


class _Sam2SemanticDecoderMixin(PromptFreeMaskDecoderMixin):
    """The multi-class prompt-free decoder of SAM 2 and SAM 3's tracker (whose decoder classes are copies of one
    another): `num_mask_tokens` mask tokens, the first hypernetwork MLP shared by all, `class_predictor`.

    Its forward has `Sam2MaskDecoder.forward`'s signature, so the generation's model forward calls it unchanged, and
    returns `(masks, class_logits, mask_tokens_out, None)`: the class logits where SAM 2's returns the IoU
    predictions (the model's output passes them on as `iou_scores`), no object-score logits.
    """

    unused_heads: ClassVar[tuple[str, ...]] = ("iou_prediction_head", "pred_obj_score_head")

    def forward(
        self,
        image_embeddings: Tensor,
        image_positional_embeddings: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        high_resolution_features: list[Tensor],
        attention_similarity: Tensor | None = None,
        target_embedding: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None, Tensor, None]:
        """Predicts one mask (and class logits) per mask token; `multimask_output` is ignored.

        Args:
            image_embeddings: `(B, C, h, w)`, the last FPN level (plus the no-memory embedding).
            image_positional_embeddings: `(B, C, h, w)`.
            sparse_prompt_embeddings: `(B, P, T, C)` prompt tokens (no prompt: P = 1 and the padding point's tokens).
            dense_prompt_embeddings: `(B, C, h, w)`, the "no mask" embedding.
            high_resolution_features: `[(B, C / 8, 4h, 4w), (B, C / 4, 2h, 2w)]`, the first two FPN levels already
                projected by `conv_s0` / `conv_s1` (the model's `get_image_features` does it, as for SAM 2).

        Returns:
            `(B, P, N, 4h, 4w)` mask logits, `(B, P, N, K + 1)` class logits (`None` without `class_predictor`),
            `(B, P, N, C)` the mask tokens' outputs, and `None`.
        """
        # As Sam2MaskDecoder.forward, with all N mask tokens read out through one hypernetwork MLP.
        batch_size, num_channels, height, width = image_embeddings.shape
        point_batch_size = sparse_prompt_embeddings.shape[1]
        # (B, P, 2 + N, C): object-score token, IoU token, N mask tokens
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.repeat(batch_size, point_batch_size, 1, 1)
        if sparse_prompt_embeddings.shape[0] != 0:
            tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=2)  # (B, P, 2 + N + T, C)
        else:
            tokens = output_tokens
        point_embeddings = tokens.to(self.iou_token.weight.dtype)

        image_embeddings = image_embeddings + dense_prompt_embeddings
        image_embeddings = image_embeddings.repeat_interleave(point_batch_size, dim=0)  # (B * P, C, h, w)
        image_positional_embeddings = image_positional_embeddings.repeat_interleave(point_batch_size, 0)
        # queries (B, P, 2 + N + T, C), keys (B * P, 1, h * w, C)
        point_embeddings, image_embeddings = self.transformer(
            point_embeddings=point_embeddings,
            image_embeddings=image_embeddings,
            image_positional_embeddings=image_positional_embeddings,
            attention_similarity=attention_similarity,
            target_embedding=target_embedding,
            **kwargs,
        )
        mask_tokens_out = point_embeddings[:, :, 2 : (2 + self.num_mask_tokens), :]  # (B, P, N, C)

        # Upscaling with SAM 2's high-resolution skip features: (B * P, C / 4, 2h, 2w), then (B * P, C / 8, 4h, 4w).
        image_embeddings = image_embeddings.transpose(2, 3).view(
            batch_size * point_batch_size, num_channels, height, width
        )
        feat_s0, feat_s1 = high_resolution_features
        feat_s0 = feat_s0.repeat_interleave(point_batch_size, dim=0)
        feat_s1 = feat_s1.repeat_interleave(point_batch_size, dim=0)
        upscaled_embedding = self.upscale_conv1(image_embeddings) + feat_s1
        upscaled_embedding = self.activation(self.upscale_layer_norm(upscaled_embedding))
        upscaled_embedding = self.activation(self.upscale_conv2(upscaled_embedding) + feat_s0)

        hyper_in = self.output_hypernetworks_mlps[0](mask_tokens_out)  # (B, P, N, C / 8): one MLP for all tokens
        _, num_channels, height, width = upscaled_embedding.shape
        upscaled_embedding = upscaled_embedding.view(batch_size, point_batch_size, num_channels, height * width)
        masks = (hyper_in @ upscaled_embedding).view(batch_size, point_batch_size, -1, height, width)

        class_logits = self.class_predictor(mask_tokens_out) if self.class_predictor is not None else None
        return masks, class_logits, mask_tokens_out, None


class Sam2SemanticMaskDecoder(_Sam2SemanticDecoderMixin, Sam2MaskDecoder):
    """SAM 2's mask decoder with `num_mask_tokens` tokens, one shared hypernetwork MLP and a class head."""


class Sam3TrackerSemanticMaskDecoder(_Sam2SemanticDecoderMixin, Sam3TrackerMaskDecoder):
    """SAM 3 tracker's mask decoder with `num_mask_tokens` tokens, one shared hypernetwork MLP and a class head."""


class PromptFreeSegmentationMixin(SemanticSegmentationHeadMixin):
    """The prompt-free model on a prompted SAM model class (SAM 2, SAM 3 tracker): its config, its decoder for
    multi-class tasks, the forward without prompt, and loading the generation's checkpoints for any task."""

    # The generation's prompted model (its checkpoints) and the multi-class decoder built on its decoder.
    checkpoint_class: ClassVar[type[PreTrainedModel]]
    semantic_decoder_class: ClassVar[type[_Sam2SemanticDecoderMixin]]

    def __init__(self, config: PreTrainedConfig):
        config = self.semantic_config(config)
        config.num_mask_tokens = check_task_config(config)
        super().__init__(config)
        if config.num_labels > 1:
            # The generation's model built its own decoder (the binary head); a multi-class one replaces it. The
            # second post_init initialises the new modules only: those already initialised are flagged as such.
            self.mask_decoder = self.semantic_decoder_class(
                config.mask_decoder_config, config.num_mask_tokens, config.num_labels
            )
            self.post_init()

    @classmethod
    def semantic_config(cls, config: PreTrainedConfig, **task: Any) -> PreTrainedConfig:
        """`config` as this class's config (a plain `Sam2Config` / `Sam3TrackerConfig` is converted, its generic
        labels dropped), updated with the task fields `task` (`num_labels`, `id2label`, `num_mask_tokens`, losses).
        New labels drop the config's `num_mask_tokens` unless `task` sets it: it belonged to the other task."""
        if isinstance(config, cls.config_class) and not task:
            return config
        values = config.to_dict()
        for key in ("architectures", "transformers_version"):
            values.pop(key, None)
        new_labels = bool({"num_labels", "id2label"} & task.keys())
        if new_labels or (not isinstance(config, cls.config_class) and has_generic_labels(config)):
            values.pop("id2label", None)
            values.pop("label2id", None)
        if new_labels:
            values.pop("num_mask_tokens", None)
        return cls.config_class.from_dict({**values, **task})

    def _binary_decoder_tokens(self) -> int:
        """The binary head is the generation's decoder: its mask tokens (SAM 2's four)."""
        return self.config.mask_decoder_config.num_multimask_outputs + 1

    def freeze_encoders(self):
        """Freezes everything but the mask decoder (the decoder-only setting). Returns the model."""
        for name, parameter in self.named_parameters():
            if not name.startswith("mask_decoder."):
                parameter.requires_grad_(False)
        return self

    def decoder_image_embeddings(self, levels: tuple[Tensor, ...], pixel_values: Tensor | None) -> list[Tensor]:
        """What the generation's forward passes its mask decoder as `image_embeddings`, from the vision encoder's FPN
        levels `(B, C, h_i, w_i)` (high to low resolution): the first two through the decoder's `conv_s0` /
        `conv_s1` (trained with the decoder), the last plus the no-memory embedding. A vision encoder wrapped to
        take cached levels (CAD's, which adds its side network to the last) gets them with `pixel_values` first."""
        if "encoder_embeddings" in inspect.signature(self.vision_encoder.forward).parameters:
            levels = self.vision_encoder(pixel_values, encoder_embeddings=tuple(levels)).fpn_hidden_states
        return fpn_decoder_embeddings(self, levels)

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: Tensor | None = None,
        encoder_embeddings: tuple[Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> SamSemanticSegmentationOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Images at the model's input size (resized, or resized and padded as `sam_peft.data.prepare_for_sam`
                does).
            labels (`torch.Tensor` of shape `(batch_size, height, width)`, *optional*):
                Integer labels at the input resolution: 0 / 1 for binary models, class ids in `[0, num_labels)` for
                multi-class ones, `config.semantic_loss_ignore_index` (255) for pixels to ignore.
            encoder_embeddings (`tuple(torch.Tensor)`, *optional*):
                The frozen vision encoder's FPN levels for these images, high to low resolution, each
                `(batch_size, fpn_hidden_size, h_i, w_i)` (what `vision_encoder(pixel_values).fpn_hidden_states`
                gives; e.g. from `sam_peft.training.EmbeddingCache`): the vision encoder is then not run. Without
                `pixel_values` the output is at the model's input size; CAD, which reads the image beside the
                encoder, needs `pixel_values` too.
            kwargs:
                Passed to the model's forward (e.g. `output_hidden_states`).
        """
        if encoder_embeddings is not None:
            kwargs["image_embeddings"] = self.decoder_image_embeddings(encoder_embeddings, pixel_values)
            batch_size = encoder_embeddings[-1].shape[0]
            side = input_image_size(self.config)
            size = tuple(pixel_values.shape[-2:]) if pixel_values is not None else (side, side)
            pixel_values = None
        elif pixel_values is None:
            raise ValueError("pixel_values (or the frozen encoder's cached `encoder_embeddings`) are required.")
        else:
            batch_size, size = pixel_values.shape[0], tuple(pixel_values.shape[-2:])
        if labels is not None:
            self._check_labels(labels, batch_size, size)
        # The generation's forward with its "no prompt" input: one point batch.
        outputs = super().forward(pixel_values=pixel_values, multimask_output=False, **kwargs)
        masks = outputs.pred_masks[:, 0]  # (B, N, h, w): 4 x the embedding grid; binary: N = 1
        if self.config.num_labels > 1:
            class_logits = outputs.iou_scores[:, 0]  # (B, N, K + 1): the multi-class decoder's second output
            unused_outputs = None
        else:
            # The IoU and object-score heads do not shape the binary mask, but they train with the decoder.
            class_logits = None
            unused_outputs = outputs.iou_scores.sum() + outputs.object_score_logits.sum()
        return self._semantic_outputs(
            masks,
            class_logits,
            size,
            labels,
            unused_outputs,
            vision_hidden_states=outputs.vision_hidden_states,
            vision_attentions=outputs.vision_attentions,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        """Loads a checkpoint of this class, or one of the generation's (`checkpoint_class`: SAM 2 / 2.1's
        `Sam2Model`, SAM 3's `Sam3TrackerModel`), for the task the keyword arguments or `config` set (`num_labels`,
        `id2label`, `num_mask_tokens`, loss options), as `SamForSemanticSegmentation.from_pretrained` does.

        Binary heads, and multi-class checkpoints of this class, load as transformers loads them (a binary head's
        weights are the generation's). A multi-class head on a checkpoint without one (the generation's, or a
        binary head's) is converted: the checkpoint is loaded with `checkpoint_class` and mapped
        (`sam_to_semantic_state_dict`): everything as it is, but the first mask token repeated `num_mask_tokens`
        times and the first hypernetwork MLP only, no IoU or object-score head; the class head is newly initialised.
        """
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        download_kwargs = {key: kwargs[key] for key in _DOWNLOAD_KWARGS if key in kwargs}
        config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **download_kwargs)
        task = {key: value for key, value in kwargs.items() if key in _TASK_CONFIG_KEYS}
        config = kwargs.get("config") if isinstance(kwargs.get("config"), PreTrainedConfig) else None
        own = cls.__name__ in (config_dict.get("architectures") or ())
        saved_labels = (_num_labels(config_dict) or 1) if own else 1
        requested_labels = _num_labels(task)
        if requested_labels is None:
            requested_labels = saved_labels if config is None else cls.semantic_config(config).num_labels
        if requested_labels == 1 or saved_labels > 1:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

        loading_kwargs = {
            key: value
            for key, value in kwargs.items()
            if key not in _DOWNLOAD_KWARGS and key not in task and key != "config"
        }
        source_kwargs = {key: value for key, value in loading_kwargs.items() if key != "output_loading_info"}
        source = cls.checkpoint_class.from_pretrained(pretrained_model_name_or_path, **download_kwargs, **source_kwargs)
        config = cls.semantic_config(source.config if config is None else config, **task)
        state_dict = sam_to_semantic_state_dict(source.state_dict(), check_task_config(config), _KEPT_SAM2_PREFIXES)
        del source
        loaded = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **loading_kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.config.name_or_path = model.name_or_path = str(pretrained_model_name_or_path)
        return loaded


def _num_labels(values: dict[str, Any]) -> int | None:
    """The number of labels config values or keyword arguments set: `id2label`'s length, else `num_labels`."""
    if values.get("id2label"):
        return len(values["id2label"])
    return values.get("num_labels")


class Sam2ForSemanticSegmentation(PromptFreeSegmentationMixin, Sam2Model):
    """SAM 2 / 2.1 as a prompt-free binary or multi-class segmentation model (see the module's docstring)."""

    config_class = Sam2SemanticSegmentationConfig
    checkpoint_class = Sam2Model
    semantic_decoder_class = Sam2SemanticMaskDecoder


class Sam3TrackerForSemanticSegmentation(PromptFreeSegmentationMixin, Sam3TrackerModel):
    """SAM 3's tracker as a prompt-free binary or multi-class segmentation model (see the module's docstring)."""

    config_class = Sam3TrackerSemanticSegmentationConfig
    checkpoint_class = Sam3TrackerModel
    semantic_decoder_class = Sam3TrackerSemanticMaskDecoder


# transformers renames the keys of a SAM 3 checkpoint (stored under the full model's names, `tracker_model.` ...) for
# its own classes only: without this, a subclass would load none of its weights and keep random ones.
register_checkpoint_conversion_mapping(
    Sam3TrackerForSemanticSegmentation.__name__, get_checkpoint_conversion_mapping("sam3_tracker"), overwrite=True
)

# The prompt-free segmentation class of each SAM generation, by `model_type`.
PROMPT_FREE_CLASSES = {
    "sam": SamForSemanticSegmentation,
    "sam_hq": SamForSemanticSegmentation,
    "sam2": Sam2ForSemanticSegmentation,
    "sam3_tracker": Sam3TrackerForSemanticSegmentation,
}
