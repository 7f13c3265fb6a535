"""Use an adapter trained on the prompt-free `SamForSemanticSegmentation` with a promptable `SamModel`."""

from __future__ import annotations

import os

from peft import PeftConfig, PeftModel
from peft.utils import load_peft_weights
from torch import nn

from ..tuners.loading import set_adapter_weights

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
