"""Where each SAM generation keeps what the tuners adapt, and target-module matching shared by the tuners.

The default targets of a tuner depend on the architecture (`model_type` of the model's config): transformers' SAM
and SAM-HQ (ViT, fused qkv), SAM 2 / 2.1 (`Sam2Model`: a Hiera encoder whose stages differ in width and window,
fused qkv) and SAM 3's tracker (`Sam3TrackerModel`: a ViT with rotary position embeddings and separate q, k, v
projections; the name `q_proj` also occurs in its mask decoder, so targets are anchored at the vision backbone).
"""

from __future__ import annotations

import re

from peft import PeftConfig

# How people name each generation, by `model_type`.
ARCHITECTURES = {
    "sam": "SAM",
    "sam_hq": "SAM-HQ",
    "sam2": "SAM 2 (Hiera encoder)",
    "sam3_tracker": "SAM 3 (tracker, ViT with rotary embeddings)",
    "edgetam": "EdgeTAM (RepViT encoder)",
}

# The attention input projections of every image-encoder block: SAM's and Hiera's fused qkv, SAM 3's q, k and v.
QKV_TARGETS = {
    "sam": r"vision_encoder\.layers\.\d+\.attn\.qkv",
    "sam_hq": r"vision_encoder\.layers\.\d+\.attn\.qkv",
    "sam2": r"vision_encoder\.backbone\.blocks\.\d+\.attn\.qkv",
    "sam3_tracker": r"vision_encoder\.backbone\.layers\.\d+\.attention\.(q|k|v)_proj",
}

# Every linear layer of each block's attention: the input projections above and the output projection. Relative
# position tables (SAM's `rel_pos_h`, `rel_pos_w`) are parameters of the attention module, not of these layers.
ATTENTION_TARGETS = {
    "sam": r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
    "sam_hq": r"vision_encoder\.layers\.\d+\.attn\.(qkv|proj)",
    "sam2": r"vision_encoder\.backbone\.blocks\.\d+\.attn\.(qkv|proj)",
    "sam3_tracker": r"vision_encoder\.backbone\.layers\.\d+\.attention\.(q|k|v|o)_proj",
}

# The output layer of each block's MLP: the feed-forward module of (IA)^3, which scales its input (the MLP's inner
# activations).
MLP_OUTPUT_TARGETS = {
    "sam": r"vision_encoder\.layers\.\d+\.mlp\.lin2",
    "sam_hq": r"vision_encoder\.layers\.\d+\.mlp\.lin2",
    "sam2": r"vision_encoder\.backbone\.blocks\.\d+\.mlp\.proj_out",
    "sam3_tracker": r"vision_encoder\.backbone\.layers\.\d+\.mlp\.fc2",
}

# The LayerNorms of every image-encoder block (before the attention and before the MLP).
BLOCK_NORM_TARGETS = {
    "sam": r"vision_encoder\.layers\.\d+\.layer_norm(1|2)",
    "sam_hq": r"vision_encoder\.layers\.\d+\.layer_norm(1|2)",
    "sam2": r"vision_encoder\.backbone\.blocks\.\d+\.layer_norm(1|2)",
    "sam3_tracker": r"vision_encoder\.backbone\.layers\.\d+\.layer_norm(1|2)",
}

# The image encoder's list of blocks (`nn.ModuleList`), in order: SAM's ViT blocks, SAM 2's Hiera blocks (all
# stages), SAM 3's rotary ViT blocks. The patterns above are these names followed by `\.\d+\.`.
ENCODER_BLOCKS = {
    "sam": "vision_encoder.layers",
    "sam_hq": "vision_encoder.layers",
    "sam2": "vision_encoder.backbone.blocks",
    "sam3_tracker": "vision_encoder.backbone.layers",
}

# Why an encoder has nothing for a given kind of adapter to act on.
CONVOLUTIONAL_ENCODER = (
    "its image encoder is convolutional (RepViT): it has no attention blocks or token grid for the adapter to act on"
)


def architecture_name(model_type: str | None) -> str:
    """The name of the SAM generation of `model_type` ("SAM 2 (Hiera encoder)"), or the model type itself."""
    return ARCHITECTURES.get(model_type, f"model_type {model_type!r}")


def default_target_modules(
    method: str, mapping: dict[str, str], model_config: dict, unsupported: dict[str, str] | None = None
) -> str:
    """The default `target_modules` of `method` on the model whose config (as a dict) is `model_config`.

    Args:
        method: The method's name, for messages.
        mapping: Default targets by `model_type`.
        model_config: The model's config; its `model_type` selects the targets.
        unsupported: Why the method does not apply, by `model_type`.

    Raises:
        ValueError: naming the architecture and why the method does not apply to it, or that it has no default
            targets there (pass `target_modules`).
    """
    model_type = model_config.get("model_type")
    reason = (unsupported or {}).get(model_type)
    if reason is not None:
        raise ValueError(f"{method} cannot adapt {architecture_name(model_type)}: {reason}.")
    if model_type not in mapping:
        known = ", ".join(architecture_name(name) for name in mapping)
        raise ValueError(
            f"{method} has no default targets for {architecture_name(model_type)}; it knows {known}. Pass "
            "`target_modules` to adapt another model."
        )
    return mapping[model_type]


def layer_index_allowed(config: PeftConfig, key: str) -> bool:
    """Whether module `key` lies in one of `config.layers_to_transform` (True when that is unset).

    peft honours `layers_to_transform` only for list-valued `target_modules`; sam-peft's default targets are
    regexes, so the tuners apply it here too. The block index is the number after `layers_pattern` (any of them)
    or, without a pattern, the first numbered path segment (`vision_encoder.layers.<i>.attn.qkv`).
    """
    layers = getattr(config, "layers_to_transform", None)
    if layers is None or layers == []:
        return True
    layers = [layers] if isinstance(layers, int) else list(layers)
    patterns = getattr(config, "layers_pattern", None) or []
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if patterns:
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)(?:\.|$)", key)
            if match:
                break
    else:
        match = re.match(r"(?:^|.*?\.)(?P<idx>\d+)(?:\.|$)", key)
    return match is not None and int(match.group("idx")) in layers


# the block index of a per-block pattern (`QKV_TARGETS`, `ATTENTION_TARGETS`, `MLP_OUTPUT_TARGETS`, ...)
_BLOCK_INDEX = r"\d+"


def restrict_to_blocks(pattern: str, blocks: list[int]) -> str:
    """The per-block target pattern `pattern` (whose one `\\d+` is the block index) matching blocks `blocks` only:
    how sam-peft puts an adapter on some blocks when peft refuses `layers_to_transform` with regex targets."""
    if pattern.count(_BLOCK_INDEX) != 1 or not blocks:
        raise ValueError(f"Cannot restrict {pattern!r} to blocks {blocks}: it needs one block index and a block.")
    return pattern.replace(_BLOCK_INDEX, f"({'|'.join(str(i) for i in sorted(blocks))})")
