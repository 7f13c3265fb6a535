"""SAMCL's module files (Wang et al., github.com/INV-WZQ/SAMCL) -> a sam-peft SLoRA adapter on a `SamModel`.

SAMCL's `Adapter_Sam.save_lora_parameters` (module/SAMCL.py) pickles whole modules, not a state dict:

    {"extra": Extra, "lora_layer": [7, ..., 11], "A": Linear(C, r),
     "B_000": Linear(r, C), ..., "norm1_000": LayerNorm(r), ..., "norm2_000": LayerNorm(r), ...}

with `Extra` holding `layer` (Linear(r, r)), `norm` (LayerNorm(r)), `upward` (Linear(r, C)) and `upward_`
(Linear(r, 256)). Its `load_lora_parameters` gives `B_<i>`, `norm1_<i>`, `norm2_<i>` to the i-th adapted block in
ascending order (its save writes `B_<i>` from block 7 + i: the two agree for every file it can write, where
`lora_layer` is 7, 8, ...). The modules are read as inert stand-ins (see `reading`); a flat state dict with the
same names (`A.weight`, `extra.upward_.bias`, `B_000.weight`, ...) and a `lora_layer` list is accepted too.

| SAMCL | sam-peft (saved name) |
| --- | --- |
| `A.{weight,bias}` | `base_model.slora_A.{weight,bias}` |
| `extra.layer.*` | `base_model.slora_prompt_linear.*` |
| `extra.norm.*` | `base_model.slora_prompt_norm.*` |
| `extra.upward.*` | `base_model.model.vision_encoder.neck.slora_neck_input.*` |
| `extra.upward_.*` | `base_model.model.vision_encoder.neck.slora_neck_output.*` |
| `B_<i>.*` | `base_model.model.vision_encoder.layers.<lora_layer[i]>.attn.slora_B.*` |
| `norm1_<i>.*` | `....layers.<lora_layer[i]>.attn.slora_norm_A.*` |
| `norm2_<i>.*` | `....layers.<lora_layer[i]>.attn.slora_norm_prompt.*` |

No tensor is transposed: both sides are `nn.Linear` / `nn.LayerNorm` weights. Inferred: the rank r (rows of A),
the adapted blocks (`lora_layer`); checked: the encoder width (columns of A) against the base model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, SamModel

from ..tuners.slora import SloraConfig
from .errors import ConversionError
from .formats import other_format_hint
from .placement import (
    BASE_PREFIX,
    Plan,
    check_all_placed,
    finish,
    load_adapter_weights,
    load_base,
    sam_size,
    vision_config_of,
)
from .reading import PickledModule, key_sample, module_tensors, read_checkpoint

# The classes SAMCL's module files pickle (module/SAMCL.py for SAM, module/SAMCL_2.py for SAM 2).
SAMCL_MODULE_CLASSES = (
    "module.SAMCL.Extra",
    "module.SAMCL_2.Extra",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.normalization.LayerNorm",
)

# SAMCL's shared modules -> their sam-peft weights (saved names, without `.weight` / `.bias`).
_SHARED_WEIGHTS = {
    "A": "base_model.slora_A",
    "extra.layer": "base_model.slora_prompt_linear",
    "extra.norm": "base_model.slora_prompt_norm",
    "extra.upward": f"{BASE_PREFIX}vision_encoder.neck.slora_neck_input",
    "extra.upward_": f"{BASE_PREFIX}vision_encoder.neck.slora_neck_output",
}
# SAMCL's per-block modules (`B_000`, ...) -> the block's sam-peft weight.
_BLOCK_WEIGHTS = {"B": "slora_B", "norm1": "slora_norm_A", "norm2": "slora_norm_prompt"}
_BLOCK_KEY = re.compile(r"^(B|norm1|norm2)_(\d+)\.(weight|bias)$")
_SHARED_KEY = re.compile(r"^(A|extra\.layer|extra\.norm|extra\.upward_?)\.(weight|bias)$")


def read_samcl_module(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Any]:
    """SAMCL's module file as flat tensors (`A.weight`, `extra.upward_.bias`, `B_000.weight`, ...) and its
    `lora_layer` entry (None when absent)."""
    saved = read_checkpoint(path, "slora", SAMCL_MODULE_CLASSES)
    if not isinstance(saved, Mapping):
        raise ConversionError(f"{path} is not a SAMCL module file: it holds a {type(saved).__name__}, not a dict.")
    tensors, blocks = {}, saved.get("lora_layer")
    for key, value in saved.items():
        if isinstance(value, PickledModule):
            tensors.update(module_tensors(value, f"{key}."))
        elif isinstance(value, torch.Tensor):
            tensors[str(key)] = value.detach()
        elif key != "lora_layer":
            raise ConversionError(
                f"{path} is not a SAMCL module file: its entry {key!r} is a {type(value).__name__}, neither a module, "
                "a tensor nor SAMCL's `lora_layer` list."
            )
    return tensors, blocks


def check_samcl_module(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raises unless `tensors` are those of a SAMCL module for SAM (not SAM 2, not another method's file)."""
    if "A.weight" not in tensors or "extra.layer.weight" not in tensors:
        raise ConversionError(
            f"{path} is not a SAMCL module file: it has no `A` and `extra` modules (keys: {key_sample(tensors)})."
            + other_format_hint(tensors, "slora")
        )
    if "extra.upward.weight" not in tensors:
        raise ConversionError(
            f"{path} is a SAMCL module for SAM 2 (module/SAMCL_2.py: its `extra` has no neck projections `upward`, "
            "`upward_`); sam-peft's SLoRA adapts SAM's ViT encoder (transformers' SamModel), not SAM 2's Hiera."
        )


def adapted_blocks(lora_layer: Any, count: int, num_blocks: int, path: str | os.PathLike) -> list[int]:
    """The blocks of SAMCL's `lora_layer` in ascending order (the i-th gets `B_<i>`), checked against the checkpoint's
    `count` per-block modules and the base model's `num_blocks`."""
    if lora_layer is None:
        raise ConversionError(
            f"{path} has no `lora_layer` entry: SAMCL's save_lora_parameters always writes it, and without it the "
            "blocks of `B_000`, ... are unknown."
        )
    if not isinstance(lora_layer, (list, tuple)) or any(
        isinstance(i, bool) or not isinstance(i, int) for i in lora_layer
    ):
        raise ConversionError(f"{path}: `lora_layer` must be a list of block indices, got {lora_layer!r}.")
    blocks = sorted(set(lora_layer))
    if len(blocks) != count:
        raise ConversionError(
            f"{path}: `lora_layer` names {len(blocks)} blocks ({blocks}) but the file holds {count} `B_<i>` modules."
        )
    outside = [i for i in blocks if not 0 <= i < num_blocks]
    if outside:
        raise ConversionError(
            f"{path} adapts blocks {outside}, but the base model's encoder has {num_blocks} blocks: was it trained on "
            "a SAM of another size?"
        )
    return blocks


def block_count(tensors: Mapping[str, torch.Tensor]) -> int:
    """The number of SAMCL per-block modules (`B_000`, `B_001`, ...)."""
    indices = {int(match.group(2)) for key in tensors if (match := _BLOCK_KEY.match(key))}
    return max(indices, default=-1) + 1


def plan_slora(tensors: Mapping[str, torch.Tensor], blocks: list[int]) -> Plan:
    """Where each SAMCL tensor goes in the sam-peft SLoRA adapter (see the module's table)."""
    plan = Plan()
    for key, tensor in tensors.items():
        shared, per_block = _SHARED_KEY.match(key), _BLOCK_KEY.match(key)
        if shared:
            plan.put(f"{_SHARED_WEIGHTS[shared.group(1)]}.{shared.group(2)}", tensor, key)
        elif per_block and int(per_block.group(2)) < len(blocks):
            name, index, kind = per_block.groups()
            block = blocks[int(index)]
            target = f"{BASE_PREFIX}vision_encoder.layers.{block}.attn.{_BLOCK_WEIGHTS[name]}.{kind}"
            plan.put(target, tensor, key)
    return plan


def convert_slora(
    checkpoint: str | os.PathLike,
    base_model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike | None = None,
) -> PeftModel:
    """Converts a SAMCL module file (one task's AugModule, e.g. `checkpoint/SAM1/Kvasir.pth`) to a SLoRA adapter.

    Args:
        checkpoint: the `.pth` written by SAMCL's `save_lora_parameters`.
        base_model: the SAM it adapts: a Hub id or folder for `SamModel.from_pretrained` (SAMCL's SAM1 modules are
            for ViT-B, `facebook/sam-vit-base`), or a loaded `SamModel`.
        output_dir: when given, the adapter is saved there (`save_pretrained`).

    Returns:
        The `PeftModel` (eval mode) with `SloraConfig(r, layers_to_transform=lora_layer, prompt_layout="official")`
        and the module's weights. SAMCL's task selector (`Module_Selector.pth`) is no part of an adapter.
    """
    tensors, lora_layer = read_samcl_module(checkpoint)
    check_samcl_module(tensors, checkpoint)
    rank, width = tensors["A.weight"].shape
    base = load_base(base_model, SamModel)
    hidden_size, num_blocks, _ = vision_config_of(base)
    if width != hidden_size:
        raise ConversionError(
            f"{checkpoint} was trained on a SAM {sam_size(width)} (its A reads {width} channels) but the base model is "
            f"a SAM {sam_size(hidden_size)} ({hidden_size} channels). Pass the matching base model."
        )
    blocks = adapted_blocks(lora_layer, block_count(tensors), num_blocks, checkpoint)
    plan = plan_slora(tensors, blocks)
    check_all_placed(plan, list(tensors), checkpoint, "SLoRA")
    config = SloraConfig(r=int(rank), prompt_augmentation=True, layers_to_transform=blocks, prompt_layout="official")
    model = get_peft_model(base, config)
    load_adapter_weights(model, plan, checkpoint)
    return finish(model, output_dir)
