"""AutoGluon's Conv-LoRA checkpoints (github.com/autogluon/autogluon, multimodal) -> a sam-peft Conv-LoRA adapter on
a `SamForSemanticSegmentation`.

AutoGluon's SAM (models/sam.py, `SAMForSemanticSegmentation`) wraps its own copy of transformers' `SamModel`
(models/custom_hf_models/modeling_sam_for_conv_lora.py), so its weights already have transformers' names. Its
predictor saves `model.ckpt` as `{"state_dict": {"model." + name: tensor}}` (learners/base.py), with `name` a key
of `SAMForSemanticSegmentation.state_dict()`, whose SAM is its attribute `model`: every key starts with
`model.model.`. The whole model is saved, or (a top-k average of Lightning checkpoints) only its trainable weights.
Conv-LoRA (`ConvLoRALinear`, models/adaptation_layers.py) replaces the fused qkv of the vision blocks; the mask
decoder is trained too (`optim.extra_trainable_params: [".*mask_decoder"]`), with one mask token, the first
hypernetwork MLP and, multi-class, a class head.

| AutoGluon (after `model.model.`) | sam-peft (saved name, after `base_model.model.`) |
| --- | --- |
| `vision_encoder.layers.<i>.attn.qkv.lora_A` (r, C) | `vision_encoder.layers.<i>.attn.qkv.conv_lora_A.weight` |
| `....qkv.lora_B` (3C, r) | `....qkv.conv_lora_B.weight` |
| `....qkv.lora_moe_gating.w_gate` (r, M) | `....qkv.conv_lora_gate.weight` |
| `....qkv.lora_moe_gating.w_noise` (r, M) | `....qkv.conv_lora_gate.noise_weight` |
| `....qkv.lora_moe_experts.<j>.0.weight` (r, r, 3, 3), j < M | `....conv_lora_experts.weight` (M, r, r, 3, 3) |
| `....qkv.lora_moe_experts.<j>.0.bias` (r,) | `....conv_lora_experts.bias` (M, r) |
| `mask_decoder.output_classifier_mlps.*` | `mask_decoder.class_predictor.*` (`modules_to_save`) |
| other `mask_decoder.*` | `mask_decoder.*` (`modules_to_save`) |
| `....qkv.lora_moe_gating.{mean,std}` | ignored: the constants 0 and 1 of the gate's normal distribution |
| `mask_decoder.iou_prediction_head.*` | ignored: no output of the semantic model reads it |
| other `vision_encoder.*`, `prompt_encoder.*`, `shared_image_embedding.*` | frozen: compared with the base |

The experts are stacked in the order of j; no tensor is transposed. Inferred: the rank r, the number of experts
M (expert scales 1..M, top-1 noisy gating, as AutoGluon's), the adapted blocks, and the task (classes from the class
head, mask tokens). Not stored in the checkpoint: the scaling `lora_alpha` (`optim.lora.alpha`), read from the
predictor's `config.yaml` beside the checkpoint, or given as `lora_alpha`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import yaml
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel

from ..modeling import SamForSemanticSegmentation
from ..tuners.conv_lora import ConvLoraConfig
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
from .reading import as_state_dict, key_sample, read_checkpoint

AUTOGLUON_PREFIX = "model.model."
_LORA_KEY = re.compile(
    r"^vision_encoder\.layers\.(\d+)\.attn\.qkv\."
    r"(lora_A|lora_B|lora_moe_gating\.(?:w_gate|w_noise|mean|std)|lora_moe_experts\.(\d+)\.0\.(weight|bias))$"
)
_LORA_TARGETS = {
    "lora_A": "conv_lora_A.weight",
    "lora_B": "conv_lora_B.weight",
    "lora_moe_gating.w_gate": "conv_lora_gate.weight",
    "lora_moe_gating.w_noise": "conv_lora_gate.noise_weight",
}
_GATE_CONSTANTS = ("lora_moe_gating.mean", "lora_moe_gating.std")
_FROZEN_PREFIXES = ("vision_encoder.", "prompt_encoder.", "shared_image_embedding.")


def read_autogluon(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The SAM weights of AutoGluon's `model.ckpt`, named as in transformers (`model.model.` removed)."""
    saved = read_checkpoint(path, "conv_lora")
    if isinstance(saved, Mapping) and "state_dict" in saved:
        saved = saved["state_dict"]
    state = as_state_dict(saved, path, "an AutoGluon checkpoint ({'state_dict': {name: tensor}})", "conv_lora")
    outside = sorted(key for key in state if not key.startswith(AUTOGLUON_PREFIX))
    if len(outside) == len(state):
        raise ConversionError(
            f"{path} is not an AutoGluon SAM checkpoint: no key starts with {AUTOGLUON_PREFIX!r} (keys: "
            f"{key_sample(state)})." + other_format_hint(state, "conv_lora")
        )
    if outside:
        raise ConversionError(
            f"{path}: {len(outside)} keys are outside AutoGluon's SAM (`{AUTOGLUON_PREFIX}`) and not known to be safe "
            f"to leave out: {', '.join(repr(key) for key in outside)}."
        )
    state = {key.removeprefix(AUTOGLUON_PREFIX): value for key, value in state.items()}
    if not any(".attn.qkv.lora_moe_gating." in key for key in state):
        plain_lora = any(".lora_A" in key for key in state)
        raise ConversionError(
            f"{path} holds no Conv-LoRA experts (`...attn.qkv.lora_moe_gating.*`): "
            + (
                "it is an AutoGluon LoRA checkpoint (optim.peft='lora'), not Conv-LoRA."
                if plain_lora
                else "it was trained without a parameter-efficient method."
            )
        )
    return state


def lora_blocks(state: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Per adapted block, its Conv-LoRA tensors by AutoGluon's name inside the qkv (`lora_A`, ...)."""
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[key.split(".attn.qkv.", 1)[1]] = tensor
    return blocks


def lora_shapes(blocks: Mapping[int, Mapping[str, torch.Tensor]], path: str | os.PathLike) -> tuple[int, int, int]:
    """The rank r, the encoder width C and the number of experts M, the same in every block."""
    shapes = set()
    for index, tensors in blocks.items():
        if "lora_A" not in tensors or "lora_moe_gating.w_gate" not in tensors:
            raise ConversionError(f"{path}: block {index} has Conv-LoRA weights but no `lora_A` or `w_gate`.")
        rank, width = tensors["lora_A"].shape
        shapes.add((int(rank), int(width), int(tensors["lora_moe_gating.w_gate"].shape[1])))
    if len(shapes) != 1:
        raise ConversionError(
            f"{path}: the blocks' Conv-LoRA weights differ in (rank, width, experts): {sorted(shapes)}; a sam-peft "
            "adapter has one rank and one number of experts."
        )
    return shapes.pop()


def stacked_experts(tensors: Mapping[str, torch.Tensor], count: int, kind: str) -> torch.Tensor:
    """AutoGluon's experts `lora_moe_experts.<j>.0.<kind>` for j < count, stacked along a new first dimension."""
    return torch.stack([tensors[f"lora_moe_experts.{j}.0.{kind}"] for j in range(count)])


def plan_conv_lora(state: Mapping[str, torch.Tensor], num_experts: int, path: str | os.PathLike) -> Plan:
    """Where each key of AutoGluon's SAM goes (see the module's table)."""
    plan = Plan()
    for index, tensors in lora_blocks(state).items():
        _plan_block(plan, index, tensors, num_experts, path)
    for key, tensor in state.items():
        if _LORA_KEY.match(key):
            continue
        if key.startswith("mask_decoder.iou_prediction_head."):
            plan.ignored[key] = "SAM's IoU head: no output of the semantic-segmentation model reads it"
        elif key.startswith("mask_decoder.output_classifier_mlps."):
            plan.put(f"{BASE_PREFIX}mask_decoder.class_predictor.{key.rsplit('.', 1)[1]}", tensor, key)
        elif key.startswith("mask_decoder."):
            plan.put(BASE_PREFIX + key, tensor, key)
        elif key.startswith(_FROZEN_PREFIXES):
            plan.frozen[key] = key
    return plan


def _plan_block(
    plan: Plan, index: int, tensors: Mapping[str, torch.Tensor], num_experts: int, path: str | os.PathLike
) -> None:
    prefix = f"{BASE_PREFIX}vision_encoder.layers.{index}.attn.qkv."
    source = f"vision_encoder.layers.{index}.attn.qkv."
    for name, target in _LORA_TARGETS.items():
        if name in tensors:
            plan.put(prefix + target, tensors[name], source + name)
    for name in _GATE_CONSTANTS:
        if name in tensors:
            plan.ignored[source + name] = "constant buffer (0 or 1) of the gate's standard normal"
    experts = {name for name in tensors if name.startswith("lora_moe_experts.")}
    expected = {f"lora_moe_experts.{j}.0.{kind}" for j in range(num_experts) for kind in ("weight", "bias")}
    if experts != expected:
        raise ConversionError(
            f"{path}: block {index} has the expert weights {key_sample(experts)} but its gate routes to {num_experts} "
            "experts (`lora_moe_experts.0` ...)."
        )
    for kind in ("weight", "bias"):
        keys = [source + f"lora_moe_experts.{j}.0.{kind}" for j in range(num_experts)]
        plan.put(prefix + f"conv_lora_experts.{kind}", stacked_experts(tensors, num_experts, kind), *keys)


def task_of(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> tuple[int, int]:
    """(num_labels, num_mask_tokens) of the saved mask decoder: classes from the class head (binary without one)."""
    tokens = state.get("mask_decoder.mask_tokens.weight")
    classifier = state.get("mask_decoder.output_classifier_mlps.weight")
    num_tokens = 1 if tokens is None else int(tokens.shape[0])
    num_labels = 1 if classifier is None else int(classifier.shape[0]) - 1
    if num_labels == 1 and num_tokens != 1:
        raise ConversionError(
            f"{path}: a binary model with {num_tokens} mask tokens; sam-peft's SamForSemanticSegmentation has one mask "
            "token for binary tasks (AutoGluon's default)."
        )
    return num_labels, num_tokens


def check_task(base: PreTrainedModel, num_labels: int, num_tokens: int, path: str | os.PathLike) -> None:
    """Raises when a given base model is built for another task than the checkpoint's decoder."""
    built = (base.config.num_labels, base.config.num_mask_tokens)
    if built != (num_labels, num_tokens):
        raise ConversionError(
            f"{path} holds a mask decoder for num_labels={num_labels}, num_mask_tokens={num_tokens}, but the base "
            f"model is built for num_labels={built[0]}, num_mask_tokens={built[1]}; pass the base as a Hub id or "
            "folder, and the converter builds it for the checkpoint's task."
        )


def autogluon_lora_alpha(path: str | os.PathLike) -> float | None:
    """`optim.lora.alpha` (older AutoGluon: `optimization.lora.alpha`) of the predictor's `config.yaml` beside
    `path`, or None when there is none."""
    config_file = Path(path).parent / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConversionError(f"{config_file} (AutoGluon's config beside {path}) is no valid YAML: {error}") from error
    for section in ("optim", "optimization"):
        alpha = _nested(config, section, "lora", "alpha")
        if alpha is not None:
            return float(alpha)
    return None


def _nested(config: object, *keys: str) -> object:
    """`config[k1][k2]...`, or None where a level is missing or no mapping."""
    for key in keys:
        if not isinstance(config, Mapping):
            return None
        config = config.get(key)
    return config


def resolve_lora_alpha(lora_alpha: float | None, path: str | os.PathLike) -> float:
    """`lora_alpha` when given, else AutoGluon's `config.yaml` beside `path`; raises when neither says."""
    if lora_alpha is not None:
        return float(lora_alpha)
    found = autogluon_lora_alpha(path)
    if found is None:
        raise ConversionError(
            f"{path}: Conv-LoRA's scaling `lora_alpha` is not stored in the checkpoint, and there is no AutoGluon "
            "config.yaml with optim.lora.alpha beside it. Pass lora_alpha (command line: --lora_alpha), the value "
            "of optim.lora.alpha it was trained with (AutoGluon's semantic-segmentation preset: 32)."
        )
    return found


def convert_conv_lora(
    checkpoint: str | os.PathLike,
    base_model: str | os.PathLike | PreTrainedModel,
    output_dir: str | os.PathLike | None = None,
    lora_alpha: float | None = None,
) -> PeftModel:
    """Converts AutoGluon's Conv-LoRA `model.ckpt` to a sam-peft Conv-LoRA adapter on `SamForSemanticSegmentation`.

    Args:
        checkpoint: the predictor's `model.ckpt`.
        base_model: the SAM it was trained on (`model.sam.checkpoint_name`, AutoGluon's default
            `facebook/sam-vit-huge`): a Hub id or folder for `SamForSemanticSegmentation.from_pretrained`, or a
            loaded `SamForSemanticSegmentation` of the checkpoint's task.
        output_dir: when given, the adapter is saved there (`save_pretrained`).
        lora_alpha: AutoGluon's `optim.lora.alpha`; None reads it from the `config.yaml` beside the checkpoint.

    Returns:
        The `PeftModel` (eval mode) with `ConvLoraConfig(r, lora_alpha, num_experts, layers_to_transform)` and the
        mask decoder in `modules_to_save` (the default on a `SamForSemanticSegmentation`).
    """
    state = read_autogluon(checkpoint)
    blocks = lora_blocks(state)
    rank, width, num_experts = lora_shapes(blocks, checkpoint)
    alpha = resolve_lora_alpha(lora_alpha, checkpoint)
    num_labels, num_tokens = task_of(state, checkpoint)
    task = {"num_labels": num_labels} | ({"num_mask_tokens": num_tokens} if num_labels > 1 else {})
    base = load_base(base_model, SamForSemanticSegmentation, **task)
    check_task(base, num_labels, num_tokens, checkpoint)
    hidden_size, num_blocks, _ = vision_config_of(base)
    if width != hidden_size or max(blocks) >= num_blocks:
        raise ConversionError(
            f"{checkpoint} was trained on a SAM {sam_size(width)} ({width} channels, Conv-LoRA up to block "
            f"{max(blocks)}) but the base model is a SAM {sam_size(hidden_size)} ({hidden_size} channels, "
            f"{num_blocks} blocks). Pass the matching base model."
        )
    plan = plan_conv_lora(state, num_experts, checkpoint)
    check_all_placed(plan, list(state), checkpoint, "Conv-LoRA")
    check_frozen(plan, state, base.state_dict(), checkpoint, base_name(base_model))
    layers = sorted(blocks)
    config = ConvLoraConfig(
        r=rank,
        lora_alpha=alpha,
        num_experts=num_experts,
        noisy_gating=all("lora_moe_gating.w_noise" in tensors for tensors in blocks.values()),
        layers_to_transform=None if layers == list(range(num_blocks)) else layers,
    )
    model = get_peft_model(base, config)
    load_adapter_weights(model, plan, checkpoint)
    return finish(model, output_dir)
