"""Small checkpoints in the authors' exact layouts, for the tests of `sam_peft.convert`.

The key names and shapes follow the authors' code (see each builder); the values are random, so every tensor can be
traced to where a converter puts it. Original-SAM names come from `original_sam_shapes`, which spells out the
segment-anything modules (image encoder, prompt encoder, mask decoder) for a `SamConfig`, independently of the
converters' renaming.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import SamConfig
from transformers.models.sam.modeling_sam import SamMaskDecoder

from sam_peft.convert.sam_names import sam_key_to_transformers

Shapes = dict[str, tuple[int, ...]]


def _linear(shapes: Shapes, name: str, inputs: int, outputs: int) -> None:
    shapes[f"{name}.weight"] = (outputs, inputs)
    shapes[f"{name}.bias"] = (outputs,)


def _norm(shapes: Shapes, name: str, width: int) -> None:
    shapes[f"{name}.weight"] = (width,)
    shapes[f"{name}.bias"] = (width,)


def image_encoder_shapes(config: SamConfig) -> Shapes:
    """segment-anything's `ImageEncoderViT` (image_encoder.py): patch embedding, blocks, neck."""
    vision = config.vision_config
    width, grid, patch = vision.hidden_size, vision.image_size // vision.patch_size, vision.patch_size
    head = width // vision.num_attention_heads
    shapes: Shapes = {"image_encoder.pos_embed": (1, grid, grid, width)}
    shapes["image_encoder.patch_embed.proj.weight"] = (width, 3, patch, patch)
    shapes["image_encoder.patch_embed.proj.bias"] = (width,)
    for i in range(vision.num_hidden_layers):
        block = f"image_encoder.blocks.{i}"
        span = grid if i in vision.global_attn_indexes else vision.window_size
        _norm(shapes, f"{block}.norm1", width)
        _linear(shapes, f"{block}.attn.qkv", width, 3 * width)
        _linear(shapes, f"{block}.attn.proj", width, width)
        shapes[f"{block}.attn.rel_pos_h"] = (2 * span - 1, head)
        shapes[f"{block}.attn.rel_pos_w"] = (2 * span - 1, head)
        _norm(shapes, f"{block}.norm2", width)
        _linear(shapes, f"{block}.mlp.lin1", width, vision.mlp_dim)
        _linear(shapes, f"{block}.mlp.lin2", vision.mlp_dim, width)
    out = vision.output_channels
    shapes["image_encoder.neck.0.weight"] = (out, width, 1, 1)
    _norm(shapes, "image_encoder.neck.1", out)
    shapes["image_encoder.neck.2.weight"] = (out, out, 3, 3)
    _norm(shapes, "image_encoder.neck.3", out)
    return shapes


def prompt_encoder_shapes(config: SamConfig) -> Shapes:
    """segment-anything's `PromptEncoder` (prompt_encoder.py), with its random Fourier matrix `pe_layer`."""
    width, mask_channels = config.prompt_encoder_config.hidden_size, config.prompt_encoder_config.mask_input_channels
    shapes: Shapes = {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, width // 2)}
    for i in range(4):
        shapes[f"prompt_encoder.point_embeddings.{i}.weight"] = (1, width)
    shapes["prompt_encoder.not_a_point_embed.weight"] = (1, width)
    shapes["prompt_encoder.mask_downscaling.0.weight"] = (mask_channels // 4, 1, 2, 2)
    shapes["prompt_encoder.mask_downscaling.0.bias"] = (mask_channels // 4,)
    _norm(shapes, "prompt_encoder.mask_downscaling.1", mask_channels // 4)
    shapes["prompt_encoder.mask_downscaling.3.weight"] = (mask_channels, mask_channels // 4, 2, 2)
    shapes["prompt_encoder.mask_downscaling.3.bias"] = (mask_channels,)
    _norm(shapes, "prompt_encoder.mask_downscaling.4", mask_channels)
    shapes["prompt_encoder.mask_downscaling.6.weight"] = (width, mask_channels, 1, 1)
    shapes["prompt_encoder.mask_downscaling.6.bias"] = (width,)
    shapes["prompt_encoder.no_mask_embed.weight"] = (1, width)
    return shapes


def _attention(shapes: Shapes, name: str, width: int, inner: int) -> None:
    for projection in ("q_proj", "k_proj", "v_proj"):
        _linear(shapes, f"{name}.{projection}", width, inner)
    _linear(shapes, f"{name}.out_proj", inner, width)


def mask_decoder_shapes(config: SamConfig) -> Shapes:
    """segment-anything's `MaskDecoder` (mask_decoder.py) and `TwoWayTransformer` (transformer.py)."""
    decoder = config.mask_decoder_config
    width, tokens, down = decoder.hidden_size, decoder.num_multimask_outputs + 1, decoder.attention_downsample_rate
    shapes: Shapes = {}
    for i in range(decoder.num_hidden_layers):
        layer = f"mask_decoder.transformer.layers.{i}"
        _attention(shapes, f"{layer}.self_attn", width, width)
        _attention(shapes, f"{layer}.cross_attn_token_to_image", width, width // down)
        _attention(shapes, f"{layer}.cross_attn_image_to_token", width, width // down)
        _linear(shapes, f"{layer}.mlp.lin1", width, decoder.mlp_dim)
        _linear(shapes, f"{layer}.mlp.lin2", decoder.mlp_dim, width)
        for norm in range(1, 5):
            _norm(shapes, f"{layer}.norm{norm}", width)
    _attention(shapes, "mask_decoder.transformer.final_attn_token_to_image", width, width // down)
    _norm(shapes, "mask_decoder.transformer.norm_final_attn", width)
    shapes["mask_decoder.iou_token.weight"] = (1, width)
    shapes["mask_decoder.mask_tokens.weight"] = (tokens, width)
    shapes["mask_decoder.output_upscaling.0.weight"] = (width, width // 4, 2, 2)
    shapes["mask_decoder.output_upscaling.0.bias"] = (width // 4,)
    _norm(shapes, "mask_decoder.output_upscaling.1", width // 4)
    shapes["mask_decoder.output_upscaling.3.weight"] = (width // 4, width // 8, 2, 2)
    shapes["mask_decoder.output_upscaling.3.bias"] = (width // 8,)
    for i in range(tokens):
        for j, (inputs, outputs) in enumerate([(width, width), (width, width), (width, width // 8)]):
            _linear(shapes, f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{j}", inputs, outputs)
    hidden = decoder.iou_head_hidden_dim
    for j, (inputs, outputs) in enumerate([(width, hidden), (hidden, hidden), (hidden, tokens)]):
        _linear(shapes, f"mask_decoder.iou_prediction_head.layers.{j}", inputs, outputs)
    return shapes


def original_sam_shapes(config: SamConfig) -> Shapes:
    """Every key of an original SAM state dict for `config`, with its shape."""
    return image_encoder_shapes(config) | prompt_encoder_shapes(config) | mask_decoder_shapes(config)


def random_tensors(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """A distinct random tensor of each shape."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def frozen_like_base(shapes: Shapes, base_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-SAM tensors equal to the base model's (as a frozen encoder in an authors' checkpoint is)."""
    return {key: base_state[sam_key_to_transformers(key)].clone() for key in shapes}


# SAMCL ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def samcl_module_classes() -> Iterator[type[nn.Module]]:
    """SAMCL's `module.SAMCL.Extra`, importable under that name for pickling while the block is open."""
    package, module = types.ModuleType("module"), types.ModuleType("module.SAMCL")
    extra = type("Extra", (nn.Module,), {"__module__": "module.SAMCL"})
    module.Extra, package.SAMCL = extra, module
    saved = {name: sys.modules.get(name) for name in ("module", "module.SAMCL")}
    sys.modules.update({"module": package, "module.SAMCL": module})
    try:
        yield extra
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _filled(module: nn.Module, generator: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def save_samcl_module(path: Path, width: int, rank: int, blocks: list[int], neck: int, seed: int = 0) -> None:
    """A SAMCL module file as `Adapter_Sam.save_lora_parameters` writes it (module/SAMCL.py): pickled modules
    `extra` (`Extra`: layer, norm, upward, upward_), `lora_layer`, `A`, `B_<i>`, `norm1_<i>`, `norm2_<i>`."""
    generator = torch.Generator().manual_seed(seed)
    with samcl_module_classes() as extra_class:
        extra = extra_class()
        extra.cnt = 0
        extra.layer, extra.norm = nn.Linear(rank, rank), nn.LayerNorm(rank)
        extra.upward, extra.upward_ = nn.Linear(rank, width), nn.Linear(rank, neck)
        saved = {"extra": _filled(extra, generator), "lora_layer": list(blocks)}
        saved["A"] = _filled(nn.Linear(width, rank), generator)
        saved |= {f"B_{i:03d}": _filled(nn.Linear(rank, width), generator) for i in range(len(blocks))}
        saved |= {f"norm1_{i:03d}": _filled(nn.LayerNorm(rank), generator) for i in range(len(blocks))}
        saved |= {f"norm2_{i:03d}": _filled(nn.LayerNorm(rank), generator) for i in range(len(blocks))}
        torch.save(saved, path)


# SAM-Adapter ------------------------------------------------------------------------------------------------------


def sam_adapter_state(config: SamConfig, base_state: Mapping[str, torch.Tensor], size: int, seed: int = 0):
    """SAM-Adapter's `model.state_dict()` (models/sam.py, image_encoder.py) for `config` with prompt width `size`:
    the frozen image encoder (equal to the base's), its `prompt_generator`, a trained mask decoder, the model's own
    `pe_layer` and `no_mask_embed`. Their model has no prompt encoder."""
    vision = config.vision_config
    width, patch, decoder_width = vision.hidden_size, vision.patch_size, config.mask_decoder_config.hidden_size
    prompts: Shapes = {}
    prefix = "image_encoder.prompt_generator"
    _linear(prompts, f"{prefix}.shared_mlp", size, width)
    _linear(prompts, f"{prefix}.embedding_generator", width, size)
    for i in range(vision.num_hidden_layers):
        _linear(prompts, f"{prefix}.lightweight_mlp_{i}.0", size, size)
    prompts[f"{prefix}.prompt_generator.proj.weight"] = (size, 3, patch, patch)
    prompts[f"{prefix}.prompt_generator.proj.bias"] = (size,)
    trained = prompts | mask_decoder_shapes(config)
    trained |= {"pe_layer.positional_encoding_gaussian_matrix": (2, decoder_width // 2)}
    trained |= {"no_mask_embed.weight": (1, decoder_width)}
    return frozen_like_base(image_encoder_shapes(config), base_state) | random_tensors(trained, seed)


# CAD --------------------------------------------------------------------------------------------------------------


def cad_adapter_shapes(channels: int) -> Shapes:
    """CAD's `ConvAdapter` (modeling/cad.py): `conv_up` (1x1, 6 -> C) and three `ConvBlock`s (conv, bn)."""
    shapes: Shapes = {"conv_adapter.conv_up.weight": (channels, 6, 1, 1), "conv_adapter.conv_up.bias": (channels,)}
    for k in (1, 2, 3):
        block = f"conv_adapter.conv_block{k}"
        shapes[f"{block}.conv.weight"] = (channels, channels, 3, 3)
        shapes[f"{block}.conv.bias"] = (channels,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{block}.bn.{name}"] = (channels,)
    return shapes


def cad_state(config: SamConfig, base_state: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """CAD's `model.state_dict()` (run_cad.py): frozen encoders (equal to the base's), trained decoder, adapter."""
    frozen = frozen_like_base(image_encoder_shapes(config) | prompt_encoder_shapes(config), base_state)
    state = frozen | random_tensors(
        mask_decoder_shapes(config) | cad_adapter_shapes(config.vision_config.output_channels), seed
    )
    for k in (1, 2, 3):
        state[f"conv_adapter.conv_block{k}.bn.running_var"] = state[f"conv_adapter.conv_block{k}.bn.running_var"].abs()
        state[f"conv_adapter.conv_block{k}.bn.num_batches_tracked"] = torch.tensor(100 + k)
    return state


# AutoGluon Conv-LoRA ----------------------------------------------------------------------------------------------


def conv_lora_shapes(config: SamConfig, blocks: list[int], rank: int, experts: int) -> Shapes:
    """AutoGluon's `ConvLoRALinear` on each block's qkv (models/adaptation_layers.py), transformers' names."""
    width = config.vision_config.hidden_size
    shapes: Shapes = {}
    for i in blocks:
        qkv = f"vision_encoder.layers.{i}.attn.qkv"
        shapes[f"{qkv}.lora_A"] = (rank, width)
        shapes[f"{qkv}.lora_B"] = (3 * width, rank)
        shapes[f"{qkv}.lora_moe_gating.w_gate"] = (rank, experts)
        shapes[f"{qkv}.lora_moe_gating.w_noise"] = (rank, experts)
        for j in range(experts):
            shapes[f"{qkv}.lora_moe_experts.{j}.0.weight"] = (rank, rank, 3, 3)
            shapes[f"{qkv}.lora_moe_experts.{j}.0.bias"] = (rank,)
    return shapes


def autogluon_decoder_shapes(config: SamConfig, num_labels: int, num_tokens: int) -> Shapes:
    """AutoGluon's mask decoder (models/sam.py): transformers' `SamMaskDecoder` with `num_tokens` mask tokens, only
    the first hypernetwork MLP and, multi-class, `output_classifier_mlps` (num_labels + 1 outputs)."""
    decoder = SamMaskDecoder(config.mask_decoder_config)
    width = config.mask_decoder_config.hidden_size
    shapes = {
        f"mask_decoder.{key}": tuple(value.shape)
        for key, value in decoder.state_dict().items()
        if not key.startswith("output_hypernetworks_mlps.") or key.startswith("output_hypernetworks_mlps.0.")
    }
    shapes["mask_decoder.mask_tokens.weight"] = (num_tokens, width)
    if num_labels > 1:
        _linear(shapes, "mask_decoder.output_classifier_mlps", width, num_labels + 1)
    return shapes


def autogluon_checkpoint(
    config: SamConfig,
    base_state: Mapping[str, torch.Tensor],
    blocks: list[int],
    rank: int,
    experts: int,
    num_labels: int = 1,
    num_tokens: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """AutoGluon's `model.ckpt` (learners/base.py): `{"state_dict": {"model.model." + name: tensor}}` with the frozen
    SAM (equal to the base's), Conv-LoRA, the gates' constant buffers and the trained decoder."""
    frozen = {key: value.clone() for key, value in base_state.items() if not key.startswith("mask_decoder.")}
    trained = random_tensors(
        conv_lora_shapes(config, blocks, rank, experts) | autogluon_decoder_shapes(config, num_labels, num_tokens), seed
    )
    for i in blocks:
        trained[f"vision_encoder.layers.{i}.attn.qkv.lora_moe_gating.mean"] = torch.tensor([0.0])
        trained[f"vision_encoder.layers.{i}.attn.qkv.lora_moe_gating.std"] = torch.tensor([1.0])
    return {"state_dict": {f"model.model.{key}": value for key, value in (frozen | trained).items()}}
