"""Placing an official checkpoint's tensors: the plan of where each key goes, its checks, and the PEFT model.

Every key of an official checkpoint ends up in exactly one of three places of a `Plan`:

- `adapter`: a weight of the sam-peft adapter, under its saved name (the key it has in `adapter_model.safetensors`,
  e.g. `base_model.model.vision_encoder.layers.3.attn.slora_B.weight`), loaded into the PEFT model;
- `frozen`: a weight of the base SAM that the authors kept frozen (inside their full-model checkpoints), under its
  transformers name. It is not copied: the converted adapter runs on the base model given to the converter. Its
  shape must match the base's (else the checkpoint is of another SAM size: an error), and when its values differ
  from the base's a `ConversionWarning` names them (the adapter was trained on another SAM checkpoint);
- `ignored`: keys that are deliberately no weight of the converted model, each with the reason.

A key in none of them is unplaced, and the conversion fails with the list of such keys.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel

from .errors import ConversionError, ConversionWarning
from .reading import key_sample

# Widths of SAM's published image encoders, to name the size in messages.
SAM_SIZES = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}

# Tolerance of the comparison of frozen weights with the base model's.
FROZEN_RTOL = 1e-5
FROZEN_ATOL = 1e-6

# The saved name of a weight of the base model inside the PEFT model's state dict.
BASE_PREFIX = "base_model.model."


def sam_size(width: int) -> str:
    """`"ViT-B"` etc. for an encoder width, else `"width <n>"`."""
    return SAM_SIZES.get(width, f"width {width}")


@dataclass
class Plan:
    """Where each key of an official checkpoint goes (see the module docstring).

    Attributes:
        adapter: saved sam-peft name -> tensor, already in sam-peft's layout.
        sources: saved sam-peft name -> the official keys its tensor was made from.
        frozen: base-model (transformers) parameter name -> official key.
        ignored: official key -> why it is no weight of the converted model.
    """

    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)

    def put(self, target: str, tensor: torch.Tensor, *keys: str) -> None:
        """Place `tensor`, made from the official `keys`, at the sam-peft weight `target`."""
        self.adapter[target] = tensor
        self.sources[target] = keys

    def placed_keys(self) -> set[str]:
        """Every official key the plan accounts for."""
        placed = {key for keys in self.sources.values() for key in keys}
        return placed | set(self.frozen.values()) | set(self.ignored)


def check_all_placed(plan: Plan, keys: list[str], path: str | os.PathLike, method: str) -> None:
    """Raises, listing them all, when some of the checkpoint's `keys` are in no part of `plan`."""
    unplaced = sorted(set(keys) - plan.placed_keys())
    if unplaced:
        raise ConversionError(
            f"{path}: {len(unplaced)} keys of the checkpoint have no place in a sam-peft {method} adapter and are not "
            f"known to be safe to leave out: {', '.join(repr(key) for key in unplaced)}."
        )


def check_frozen(
    plan: Plan,
    state: Mapping[str, torch.Tensor],
    base_state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    base_name: str,
) -> None:
    """Checks the checkpoint's frozen SAM weights against the base model's, without copying them.

    Raises when one has no counterpart in the base or another shape (a checkpoint of another SAM size); warns,
    naming them, when values differ (the adapter was trained on another SAM checkpoint than `base_name`).
    """
    absent, reshaped, differing = [], [], []
    for name, key in plan.frozen.items():
        tensor, base = state[key], base_state.get(name)
        if base is None:
            absent.append(key)
        elif tuple(tensor.shape) != tuple(base.shape):
            reshaped.append(f"{key!r} is {tuple(tensor.shape)} but {name!r} is {tuple(base.shape)}")
        elif not torch.allclose(tensor.to(base.dtype), base, rtol=FROZEN_RTOL, atol=FROZEN_ATOL):
            differing.append((float((tensor.to(base.dtype) - base).abs().max()), key))
    if absent or reshaped:
        details = [f"{len(reshaped)} differ in shape, e.g. {reshaped[0]}"] if reshaped else []
        if absent:
            details.append(f"{len(absent)} have no counterpart in the base model: {key_sample(absent)}")
        raise ConversionError(
            f"{path} does not fit the base model {base_name}: of its frozen SAM weights, {'; '.join(details)}. Was "
            "it trained on a SAM of another size? Pass the matching base model."
        )
    if differing:
        largest, key = max(differing)
        warnings.warn(
            f"{len(differing)} frozen SAM weights in {path} differ from those of the base model {base_name} (largest "
            f"difference {largest:.3g}, in {key!r}): the adapter was trained on another SAM checkpoint. The converted "
            "adapter uses the base model's weights.",
            ConversionWarning,
            stacklevel=3,
        )


def load_base(
    base_model: str | os.PathLike | PreTrainedModel, model_class: type[PreTrainedModel], **kwargs
) -> PreTrainedModel:
    """`base_model` itself when it is a model (of `model_class`), else `model_class.from_pretrained(base_model)`."""
    if isinstance(base_model, PreTrainedModel):
        if not isinstance(base_model, model_class):
            raise ConversionError(
                f"The base model is a {type(base_model).__name__}; this method's adapters go on a "
                f"{model_class.__name__}."
            )
        return base_model
    try:
        return model_class.from_pretrained(base_model, **kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"The base model {base_model!s} cannot be loaded as a SAM model: {error}") from error


def base_name(base_model: str | os.PathLike | PreTrainedModel) -> str:
    """How messages name the base model: its id or folder."""
    if isinstance(base_model, PreTrainedModel):
        return base_model.config.name_or_path or type(base_model).__name__
    return str(base_model)


def vision_config_of(base: PreTrainedModel) -> tuple[int, int, int]:
    """The base's encoder width C, number of vision blocks and image-embedding channels."""
    vision = base.config.vision_config
    return vision.hidden_size, vision.num_hidden_layers, vision.output_channels


def load_adapter_weights(model: PeftModel, plan: Plan, path: str | os.PathLike) -> None:
    """Loads `plan.adapter` into `model`'s adapter; every one of its weights must come from the checkpoint.

    Raises:
        ConversionError: naming the official keys, when a tensor's shape differs from its sam-peft weight's or when
            the checkpoint lacks weights of the adapter.
    """
    expected = get_peft_model_state_dict(model)
    unknown = sorted(set(plan.adapter) - set(expected))
    if unknown:
        raise ConversionError(
            f"{path}: the converted weights {key_sample(unknown)} (from "
            f"{key_sample(k for name in unknown for k in plan.sources[name])}) have no place in this adapter."
        )
    mismatched = [
        f"{'+'.join(plan.sources[name])} {tuple(tensor.shape)} for {name} {tuple(expected[name].shape)}"
        for name, tensor in plan.adapter.items()
        if tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    if mismatched:
        raise ConversionError(
            f"{path} does not fit the base model: {len(mismatched)} tensors have another shape than the adapter's "
            f"weights, e.g. {mismatched[0]}. Was it trained on a SAM of another size?"
        )
    missing = sorted(set(expected) - set(plan.adapter))
    if missing:
        raise ConversionError(
            f"{path} lacks {len(missing)} weights of the adapter: nothing in it gives {key_sample(missing)}."
        )
    weights = {name: tensor.to(expected[name].dtype).contiguous() for name, tensor in plan.adapter.items()}
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise ConversionError(f"{path}: internal error, weights not taken by the model: {result.unexpected_keys}.")


def finish(model: PeftModel, output_dir: str | os.PathLike | None) -> PeftModel:
    """The converted model in eval mode, saved with `save_pretrained(output_dir)` when `output_dir` is given."""
    model.eval()
    if output_dir is not None:
        model.save_pretrained(str(output_dir))
    return model
