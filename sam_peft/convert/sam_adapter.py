"""SAM-Adapter's model checkpoints (Chen et al., github.com/tianrun-chen/SAM-Adapter-PyTorch) -> a sam-peft
SAM-Adapter adapter on a `SamModel`.

Their `train.py` saves `model.state_dict()` of their `SAM` (models/sam.py): the original SAM names of the image
encoder (with the adapter, `image_encoder.prompt_generator.*`, inside it) and of the mask decoder, plus the model's
own `pe_layer` (a random Fourier matrix, not SAM's: their SAM has no prompt encoder, and SAM's checkpoint is loaded
with `strict=False`) and `no_mask_embed` (trained from a fresh init). Training freezes the image encoder except the
prompt generator and trains everything else: the mask decoder and `no_mask_embed`.

| SAM-Adapter | sam-peft (saved name) |
| --- | --- |
| `image_encoder.prompt_generator.embedding_generator.*` (d, C) | `...patch_embed.sam_adapter_embedding.*` |
| `image_encoder.prompt_generator.prompt_generator.proj.*` (d, 3, p, p) | `...patch_embed.sam_adapter_handcrafted.*` |
| `image_encoder.prompt_generator.shared_mlp.*` (C, d) | `...patch_embed.sam_adapter_shared.*` |
| `image_encoder.prompt_generator.lightweight_mlp_<i>.0.*` (d, d) | `...layers.<i>.sam_adapter_mlp.*` |
| `mask_decoder.*` (original SAM names) | `...mask_decoder.*` (transformers names; `modules_to_save`) |
| `no_mask_embed.weight` | `...prompt_encoder.no_mask_embed.weight` (`modules_to_save`) |
| `pe_layer.positional_encoding_gaussian_matrix` | `...shared_image_embedding.positional_embedding` (modules_to_save) |
| other `image_encoder.*` | frozen: compared with the base model, not copied |

(`...` is `base_model.model.vision_encoder.` for the prompts, `base_model.model.` for the rest.) No tensor is
transposed. Inferred: the prompt width d and so `scale_factor` (C // scale_factor = d). The high-pass ratio is their
code's constant 0.25, and every block is prompted, as in their code. The config uses `embedding_feature="official"`,
their reading of the patch embeddings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, SamModel

from ..tuners.sam_adapter import SamAdapterConfig
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
    sam_size,
    vision_config_of,
)
from .reading import as_state_dict, key_sample, read_checkpoint, strip_prefix
from .sam_names import PIXEL_NORMALISATION_KEYS, sam_key_to_transformers

ADAPTER_PREFIX = "image_encoder.prompt_generator."
PATCH_EMBED = f"{BASE_PREFIX}vision_encoder.patch_embed"
# Their prompt generator's modules -> the sam-peft weights on the patch embedding.
_GENERATOR_WEIGHTS = {
    "embedding_generator": "sam_adapter_embedding",
    "prompt_generator.proj": "sam_adapter_handcrafted",
    "shared_mlp": "sam_adapter_shared",
}
_GENERATOR_KEY = re.compile(r"^(embedding_generator|prompt_generator\.proj|shared_mlp)\.(weight|bias)$")
_BLOCK_KEY = re.compile(r"^lightweight_mlp_(\d+)\.0\.(weight|bias)$")
# The model's own trained prompt-free weights outside SAM's modules -> their transformers names.
_TOP_LEVEL = {
    "no_mask_embed.weight": "prompt_encoder.no_mask_embed.weight",
    "pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
}
# What the converted model trains and saves besides the prompts, as SAM-Adapter's training does.
MODULES_TO_SAVE = ["mask_decoder", "prompt_encoder.no_mask_embed", "shared_image_embedding"]


def read_sam_adapter(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """SAM-Adapter's model state dict (without a DistributedDataParallel `module.` prefix)."""
    state = as_state_dict(read_checkpoint(path, "sam_adapter"), path, "SAM-Adapter's model state dict", "sam_adapter")
    state = strip_prefix(state, "module.")
    if f"{ADAPTER_PREFIX}shared_mlp.weight" not in state:
        raise ConversionError(
            f"{path} is not a SAM-Adapter model checkpoint: it has no `{ADAPTER_PREFIX}shared_mlp` (keys: "
            f"{key_sample(state)})." + other_format_hint(state, "sam_adapter")
        )
    return state


def prompt_width(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """The encoder width C and prompt width d, from `shared_mlp` (C, d)."""
    width, size = state[f"{ADAPTER_PREFIX}shared_mlp.weight"].shape
    return int(width), int(size)


def scale_factor_for(width: int, size: int, path: str | os.PathLike) -> int:
    """The `scale_factor` s with `width // s == size` (their code: 32); raises when there is none."""
    candidates = [s for s in range(1, width + 1) if width // s == size]
    if not candidates:
        raise ConversionError(f"{path}: a prompt width of {size} is no `hidden_size // scale_factor` of {width}.")
    return width // size if width // size in candidates else candidates[0]


def prompted_blocks(state: Mapping[str, torch.Tensor], num_blocks: int, path: str | os.PathLike) -> None:
    """Raises unless the checkpoint prompts exactly the base model's blocks 0..num_blocks-1 (their code prompts all)."""
    found = sorted({int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key.removeprefix(ADAPTER_PREFIX)))})
    if found != list(range(num_blocks)):
        raise ConversionError(
            f"{path} has per-block prompt MLPs for {len(found)} blocks but the base model's encoder has {num_blocks}: "
            "was it trained on a SAM of another size?"
        )


def plan_sam_adapter(state: Mapping[str, torch.Tensor]) -> Plan:
    """Where each key of SAM-Adapter's model state dict goes (see the module's table)."""
    plan = Plan()
    for key, tensor in state.items():
        if key.startswith(ADAPTER_PREFIX):
            _plan_prompt_weight(plan, key, tensor)
        elif key.startswith("image_encoder."):
            plan.frozen[sam_key_to_transformers(key)] = key
        elif key.startswith("mask_decoder."):
            plan.put(BASE_PREFIX + sam_key_to_transformers(key), tensor, key)
        elif key in _TOP_LEVEL:
            plan.put(BASE_PREFIX + _TOP_LEVEL[key], tensor, key)
        elif key in PIXEL_NORMALISATION_KEYS:
            plan.ignored[key] = "pixel normalisation constant (SamProcessor normalises the images)"
    return plan


def _plan_prompt_weight(plan: Plan, key: str, tensor: torch.Tensor) -> None:
    name = key.removeprefix(ADAPTER_PREFIX)
    generator, block = _GENERATOR_KEY.match(name), _BLOCK_KEY.match(name)
    if generator:
        plan.put(f"{PATCH_EMBED}.{_GENERATOR_WEIGHTS[generator.group(1)]}.{generator.group(2)}", tensor, key)
    elif block:
        plan.put(f"{BASE_PREFIX}vision_encoder.layers.{block.group(1)}.sam_adapter_mlp.{block.group(2)}", tensor, key)


def convert_sam_adapter(
    checkpoint: str | os.PathLike,
    base_model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike | None = None,
) -> PeftModel:
    """Converts SAM-Adapter's `model_epoch_best.pth` (their whole model's state dict) to a sam-peft adapter.

    Args:
        checkpoint: the `.pth` written by their `train.py`.
        base_model: the SAM it was trained on: a Hub id or folder for `SamModel.from_pretrained` (e.g.
            `facebook/sam-vit-base` for their `cod-sam-vit-b.yaml`), or a loaded `SamModel`.
        output_dir: when given, the adapter is saved there (`save_pretrained`).

    Returns:
        The `PeftModel` (eval mode) with `SamAdapterConfig(scale_factor, embedding_feature="official",
        modules_to_save=MODULES_TO_SAVE)`. Their model segments without prompts: call it with `pixel_values` only
        and `multimask_output=False`.
    """
    state = read_sam_adapter(checkpoint)
    width, size = prompt_width(state)
    base = load_base(base_model, SamModel)
    hidden_size, num_blocks, _ = vision_config_of(base)
    if width != hidden_size:
        raise ConversionError(
            f"{checkpoint} was trained on a SAM {sam_size(width)} ({width} channels) but the base model is a SAM "
            f"{sam_size(hidden_size)} ({hidden_size} channels). Pass the matching base model."
        )
    prompted_blocks(state, num_blocks, checkpoint)
    plan = plan_sam_adapter(state)
    check_all_placed(plan, list(state), checkpoint, "SAM-Adapter")
    check_frozen(plan, state, base.state_dict(), checkpoint, base_name(base_model))
    config = SamAdapterConfig(
        scale_factor=scale_factor_for(width, size, checkpoint),
        embedding_feature="official",
        modules_to_save=list(MODULES_TO_SAVE),
    )
    model = get_peft_model(base, config)
    load_adapter_weights(model, plan, checkpoint)
    return finish(model, output_dir)
