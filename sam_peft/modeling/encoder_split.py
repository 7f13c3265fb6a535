"""SAM's image encoder run in two parts: up to and including one block, then from there to the end.

A model whose early encoder blocks are shared (not adapted) runs them once and finishes the encoder as often as it
needs: SAMCL's routing model (`sam_peft.continual.ContinualSam`) routes each image from the pooled output of an
early block (`encoder_prefix(...).features`) and continues the same hidden state with the chosen module
(`encoder_suffix`). `encoder_suffix(enc, encoder_prefix(enc, x, k).hidden_states, k)` equals
`enc(x).last_hidden_state`.

```python
prefix = encoder_prefix(sam.vision_encoder, pixel_values, block_index=6)  # blocks 0..6
embeddings = encoder_suffix(sam.vision_encoder, prefix.hidden_states, block_index=6)  # blocks 7.., then the neck
```
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class BlockOutput(NamedTuple):
    """Output of `encoder_prefix`.

    Attributes:
        hidden_states: Output of the feature block, channels-last: (B, h, w, C).
        features: Its mean over height and width: (B, C).
    """

    hidden_states: torch.Tensor
    features: torch.Tensor


def check_encoder_block(vision_encoder: nn.Module, block_index: int) -> None:
    """Check that `vision_encoder` is a SAM vision encoder and `block_index` (0-based) one of its blocks.

    Raises:
        TypeError: when `vision_encoder` has no `patch_embed`, `layers` or `neck` (e.g. a whole SAM model).
        ValueError: when `block_index` is out of range.
    """
    missing = [name for name in ("patch_embed", "layers", "neck") if not hasattr(vision_encoder, name)]
    if missing:
        hint = " Pass `model.vision_encoder`." if hasattr(vision_encoder, "vision_encoder") else ""
        raise TypeError(
            f"{type(vision_encoder).__name__} is not a SAM vision encoder (it has no {', '.join(missing)}).{hint}"
        )
    num_blocks = len(vision_encoder.layers)
    if not 0 <= block_index < num_blocks:
        raise ValueError(f"block_index must be in [0, {num_blocks - 1}] for this {num_blocks}-block encoder.")


def embed_patches(vision_encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch embedding plus absolute position embedding, as `SamVisionEncoder.forward` starts.

    Args:
        vision_encoder: A transformers `SamVisionEncoder` (or a module with the same `patch_embed`, `pos_embed`).
        pixel_values: (B, 3, H, W) preprocessed images.

    Returns:
        (B, h, w, C) tokens, channels-last.
    """
    hidden_states = vision_encoder.patch_embed(pixel_values)
    if getattr(vision_encoder, "pos_embed", None) is not None:
        hidden_states = hidden_states + vision_encoder.pos_embed
    return hidden_states


def pool_block(hidden_states: torch.Tensor) -> torch.Tensor:
    """Mean over height and width of a channels-last block output: (B, h, w, C) -> (B, C)."""
    return hidden_states.mean(dim=(1, 2))


def encoder_prefix(vision_encoder: nn.Module, pixel_values: torch.Tensor, block_index: int) -> BlockOutput:
    """Run the encoder up to and including block `block_index` (0-based), and nothing after it.

    Args:
        vision_encoder: A SAM vision encoder.
        pixel_values: (B, 3, H, W) preprocessed images.
        block_index: Last block to run.

    Returns:
        `BlockOutput`: the block's hidden state (B, h, w, C) and its pooled features (B, C).
    """
    check_encoder_block(vision_encoder, block_index)
    hidden_states = embed_patches(vision_encoder, pixel_values)
    for layer in vision_encoder.layers[: block_index + 1]:
        hidden_states = layer(hidden_states)
    return BlockOutput(hidden_states, pool_block(hidden_states))


def encoder_suffix(vision_encoder: nn.Module, hidden_states: torch.Tensor, block_index: int) -> torch.Tensor:
    """Finish the encoder from the output of block `block_index`: the blocks after it, then the neck.

    `encoder_suffix(enc, encoder_prefix(enc, x, k).hidden_states, k)` equals `enc(x).last_hidden_state`.

    Args:
        vision_encoder: A SAM vision encoder (with the adapters of the chosen module active, if any).
        hidden_states: (B, h, w, C) output of block `block_index`.
        block_index: The block that produced `hidden_states`.

    Returns:
        (B, output_channels, h, w) image embeddings.
    """
    check_encoder_block(vision_encoder, block_index)
    for layer in vision_encoder.layers[block_index + 1 :]:
        hidden_states = layer(hidden_states)
    return vision_encoder.neck(hidden_states)


def block_features(vision_encoder: nn.Module, pixel_values: torch.Tensor, block_index: int) -> torch.Tensor:
    """Pooled output of block `block_index` for a batch of images: (B, 3, H, W) -> (B, C). Runs blocks 0..k only."""
    return encoder_prefix(vision_encoder, pixel_values, block_index).features
