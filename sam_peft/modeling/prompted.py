"""Promptable SAM models: the classes prompted fine-tuning trains, their image embeddings with gradients, and
loading an adapter trained on the prompt-free `SamForSemanticSegmentation` into a promptable `SamModel`."""

from __future__ import annotations

import os

from peft import PeftConfig, PeftModel
from peft.utils import load_peft_weights
from torch import Tensor, nn
from transformers import Sam2Model, Sam3TrackerModel, SamModel

from ..tuners.loading import set_adapter_weights

# The promptable model of each checkpoint type that prompted fine-tuning trains. SAM-HQ is left out: its decoder also
# reads the encoder's intermediate features, which the image-embedding call does not return.
PROMPTED_CLASSES: dict[str, type[nn.Module]] = {"sam": SamModel, "sam2": Sam2Model, "sam3_tracker": Sam3TrackerModel}


def promptable_class(model_type: str) -> type[nn.Module]:
    """The promptable class of a checkpoint's `model_type`.

    Raises:
        ValueError: for a type prompted fine-tuning does not train, listing those it trains.
    """
    if model_type not in PROMPTED_CLASSES:
        raise ValueError(
            f"Prompted fine-tuning trains {', '.join(sorted(PROMPTED_CLASSES))} checkpoints; this one is "
            f"{model_type!r}."
        )
    return PROMPTED_CLASSES[model_type]


def trainable_image_embeddings(model: nn.Module, pixel_values: Tensor) -> Tensor | list[Tensor]:
    """`model.get_image_embeddings(pixel_values)` with gradients: what the prompted call takes as
    `image_embeddings` (`(B, C, h, w)` for SAM, a list of FPN levels for SAM 2 / SAM 3), with the adapters of a PEFT
    wrapper applied.

    transformers decorates `get_image_embeddings` with `torch.no_grad` (it serves inference); training computes the
    embedding of each image once and prompts it many times, so the undecorated function is called.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    get_embeddings = type(base).get_image_embeddings
    return getattr(get_embeddings, "__wrapped__", get_embeddings)(base, pixel_values)


# Keys of weights that belong to the prompt-free task head, which a promptable SAM replaces with its own decoder.
_TASK_HEAD_KEY = ".mask_decoder."


def load_encoder_adapter(
    model: nn.Module, adapter: str | os.PathLike, adapter_name: str = "default", **hub_kwargs
) -> PeftModel:
    """Load the image-encoder part of a sam-peft adapter onto a promptable `SamModel` (or `SamHQModel`, or, for an
    adapter trained on `Sam2ForSemanticSegmentation` / `Sam3TrackerForSemanticSegmentation`, `Sam2Model` /
    `Sam3TrackerModel`).

    An adapter trained prompt-free also trains (and saves) the prompt-free mask decoder, whose shape differs
    from SAM's promptable one. This loads the adapter's encoder layers only, so SAM's own decoder answers points
    and boxes on the adapted image embeddings. `adapter` is a folder or a Hub id; `hub_kwargs` go to the
    download (`revision`, `subfolder`, `token`, ...).

    Raises:
        ValueError: when the adapter holds no encoder weights for `model` (e.g. a decoder-only checkpoint), or
            some of the adapter's encoder layers found no weights in it.
    """
    config = PeftConfig.from_pretrained(adapter, **hub_kwargs)
    config.modules_to_save = None
    config.inference_mode = True
    peft_model = PeftModel(model, config, adapter_name=adapter_name)
    weights = {k: v for k, v in load_peft_weights(str(adapter), **hub_kwargs).items() if _TASK_HEAD_KEY not in k}
    if not weights:
        raise ValueError(f"The adapter at {adapter!s} holds no image-encoder weights; nothing to load.")
    set_adapter_weights(peft_model, weights, adapter, adapter_name)
    return peft_model.eval()
