"""CAD's model checkpoints (Kim et al., github.com/Kyyle2114/Convolutional-Adapter-for-Segment-Anything) -> a
sam-peft CAD adapter on a `SamModel`.

Their `code/run_cad.py` saves `model.state_dict()` of their `Sam` (segment_anything_cad/modeling/sam.py): SAM's
`image_encoder`, `prompt_encoder` and `mask_decoder` under the original SAM names, plus the adapter `conv_adapter`
(modeling/cad.py). Training freezes both encoders and trains the adapter and the mask decoder.

| CAD | sam-peft (saved name) |
| --- | --- |
| `conv_adapter.conv_up.*` (C, 6, 1, 1) | `base_model.model.vision_encoder.cad_adapter.stem.*` |
| `conv_adapter.conv_block<k>.conv.*` (C, C, 3, 3) | `....cad_adapter.blocks.<k - 1>.conv.*` |
| `conv_adapter.conv_block<k>.bn.*` (weight, bias, running stats) | `....cad_adapter.blocks.<k - 1>.norm.*` |
| `mask_decoder.*` (original SAM names) | `base_model.model.mask_decoder.*` (transformers names; `modules_to_save`) |
| `image_encoder.*`, `prompt_encoder.*` | frozen: compared with the base model, not copied |

No tensor is transposed. Inferred: the adapter width C (rows of `conv_up`), which must equal the base's embedding
channels. Their code's constants are CadConfig's defaults: a 512 px adapter input, output scale 0.1, LeakyReLU 0.1,
high-pass ratio 0.25. Their model is prompted with the whole image's box (`input_boxes=[[[0, 0, W, H]]]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, SamModel

from ..tuners.cad import CadConfig
from .errors import ConversionError
from .formats import other_format_hint
from .placement import (
    BASE_PREFIX,
    Plan,
    base_name,
    check_all_placed,
    check_frozen,
    finish,
    load_adapter_weights,
    load_base,
    vision_config_of,
)
from .reading import as_state_dict, key_sample, read_checkpoint, strip_prefix
from .sam_names import PIXEL_NORMALISATION_KEYS, sam_key_to_transformers

ADAPTER_PREFIX = "conv_adapter."
CAD_ADAPTER = f"{BASE_PREFIX}vision_encoder.cad_adapter"
_STEM_KEY = re.compile(r"^conv_up\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^conv_block([123])\.(conv|bn)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BLOCK_PARTS = {"conv": "conv", "bn": "norm"}


def read_cad(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """CAD's model state dict (without a DistributedDataParallel `module.` prefix)."""
    state = strip_prefix(as_state_dict(read_checkpoint(path, "cad"), path, "CAD's model state dict", "cad"), "module.")
    if f"{ADAPTER_PREFIX}conv_up.weight" not in state:
        raise ConversionError(
            f"{path} is not a CAD model checkpoint: it has no `{ADAPTER_PREFIX}conv_up` (keys: {key_sample(state)})."
            + other_format_hint(state, "cad")
        )
    return state


def plan_cad(state: Mapping[str, torch.Tensor]) -> Plan:
    """Where each key of CAD's model state dict goes (see the module's table)."""
    plan = Plan()
    for key, tensor in state.items():
        name = key.removeprefix(ADAPTER_PREFIX)
        stem, block = _STEM_KEY.match(name), _BLOCK_KEY.match(name)
        if key.startswith(ADAPTER_PREFIX) and stem:
            plan.put(f"{CAD_ADAPTER}.stem.{stem.group(1)}", tensor, key)
        elif key.startswith(ADAPTER_PREFIX) and block:
            index, part, kind = int(block.group(1)) - 1, _BLOCK_PARTS[block.group(2)], block.group(3)
            plan.put(f"{CAD_ADAPTER}.blocks.{index}.{part}.{kind}", tensor, key)
        elif key.startswith("mask_decoder."):
            plan.put(BASE_PREFIX + sam_key_to_transformers(key), tensor, key)
        elif key.startswith(("image_encoder.", "prompt_encoder.")):
            plan.frozen[sam_key_to_transformers(key)] = key
        elif key in PIXEL_NORMALISATION_KEYS:
            plan.ignored[key] = "pixel normalisation constant (SamProcessor normalises the images)"
    return plan


def convert_cad(
    checkpoint: str | os.PathLike,
    base_model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike | None = None,
) -> PeftModel:
    """Converts CAD's `checkpoints/<date>.pth` (their whole model's state dict) to a sam-peft CAD adapter.

    Args:
        checkpoint: the `.pth` written by their `run_cad.py`.
        base_model: the SAM it was trained on: a Hub id or folder for `SamModel.from_pretrained` (their default
            `--model_type vit_b`: `facebook/sam-vit-base`), or a loaded `SamModel`.
        output_dir: when given, the adapter is saved there (`save_pretrained`).

    Returns:
        The `PeftModel` (eval mode) with `CadConfig(channels=C, modules_to_save=["mask_decoder"])`, the adapter and
        their fine-tuned mask decoder.
    """
    state = read_cad(checkpoint)
    channels = int(state[f"{ADAPTER_PREFIX}conv_up.weight"].shape[0])
    base = load_base(base_model, SamModel)
    _, _, embedding_channels = vision_config_of(base)
    if channels != embedding_channels:
        raise ConversionError(
            f"{checkpoint}: its adapter has {channels} channels but the base model's image embedding has "
            f"{embedding_channels}; CAD adds the two, so they must be equal. Pass the matching base model."
        )
    plan = plan_cad(state)
    check_all_placed(plan, list(state), checkpoint, "CAD")
    check_frozen(plan, state, base.state_dict(), checkpoint, base_name(base_model))
    model = get_peft_model(base, CadConfig(channels=channels, modules_to_save=["mask_decoder"]))
    load_adapter_weights(model, plan, checkpoint)
    return finish(model, output_dir)
