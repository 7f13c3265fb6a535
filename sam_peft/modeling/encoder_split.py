"""SAM's image encoder run in two parts: up to and including one block, then from there to the end.

A model whose early encoder blocks are shared (not adapted) runs them once and finishes the encoder as often as it
needs: SAMCL's routing model (`sam_peft.continual.ContinualSam`) routes each image from the pooled output of an
early block (`encoder_prefix(...).features`) and continues the same hidden state with the chosen module
(`encoder_suffix`).

```python
prefix = encoder_prefix(sam.vision_encoder, pixel_values, block_index=6)  # blocks 0..6
embeddings = encoder_suffix(sam.vision_encoder, prefix.hidden_states, block_index=6)  # blocks 7.., then the neck
```

Every generation's encoder splits the same way (its layout, `sam_peft.tuners.slora.encoders`, says where the blocks
are); what the two parts start and end with is the generation's (`EncoderSplit` and its subclasses):

- SAM / SAM-HQ (`SamVisionEncoder`): patch embedding + absolute position embedding, then the ViT blocks; the neck
  turns the last block's output into the image embedding `(B, C_out, h, w)`, `enc(x).last_hidden_state`.
- SAM 3's tracker (`Sam3VisionModel`): patch embedding + tiled position embedding and the backbone's `layer_norm`,
  then the rotary ViT blocks; the FPN neck turns the last block's output into the levels `(B, C_fpn, h_i, w_i)`,
  high to low resolution, `enc(x).fpn_hidden_states`.
- SAM 2 / 2.1 (`Sam2VisionModel`): Hiera's patch embedding + windowed position embedding, then the blocks of its
  four stages; the FPN neck reads every stage's output, so the prefix also returns the outputs of the stages that end
  at or before the feature block (`BlockOutput.stage_outputs`), and the suffix the levels the vision model keeps
  (`num_feature_levels`, high to low resolution), `enc(x).fpn_hidden_states`.

`encoder_suffix(enc, p.hidden_states, k, p.stage_outputs)` with `p = encoder_prefix(enc, x, k)` equals the encoder's
own forward, exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..tuners.slora.encoders import Sam2EncoderLayout, Sam3EncoderLayout, SamEncoderLayout, encoder_layout

# What a suffix returns: SAM's image embedding (B, C_out, h, w), or SAM 2's / SAM 3's FPN levels (B, C_fpn, h_i, w_i)
EncoderOutput = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class BlockOutput:
    """Output of `encoder_prefix`; unpacks and indexes as the pair `(hidden_states, features)`.

    Attributes:
        hidden_states: Output of the feature block, channels-last: (B, h, w, C).
        features: Its mean over height and width: (B, C).
        stage_outputs: The outputs of earlier blocks that the neck reads too: on SAM 2's Hiera, those of the stages
            that end at or before the feature block, channels-last (B, h_s, w_s, C_s) each; empty on the ViTs.
    """

    hidden_states: torch.Tensor
    features: torch.Tensor
    stage_outputs: tuple[torch.Tensor, ...] = ()

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden_states, self.features

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._pair())

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._pair()[index]

    def __len__(self) -> int:
        return 2

    def select(self, index: torch.Tensor | slice) -> BlockOutput:
        """The output of the images `index` (a slice or a (n,) tensor of batch indices)."""
        return BlockOutput(
            self.hidden_states[index], self.features[index], tuple(stage[index] for stage in self.stage_outputs)
        )


class EncoderSplit:
    """How SAM's and SAM-HQ's ViT encoder (`SamVisionEncoder`) runs in two parts; the base of the other
    generations' splits, which override what differs.

    Args:
        layout: The encoder's SLoRA layout (`encoder_layout(vision_encoder)`): its blocks.
    """

    def __init__(self, layout: SamEncoderLayout) -> None:
        self.layout = layout
        self.encoder = layout.encoder

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder's blocks, in order."""
        return self.layout.blocks

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's forward before its first block: (B, 3, H, W) -> (B, h, w, C) tokens, channels-last.

        SAM: patch embedding plus the absolute position embedding.
        """
        hidden_states = self.encoder.patch_embed(pixel_values)
        if getattr(self.encoder, "pos_embed", None) is not None:
            hidden_states = hidden_states + self.encoder.pos_embed
        return hidden_states

    def keeps(self, block_index: int) -> bool:
        """Whether the neck reads the output of block `block_index` besides the last block's (a Hiera stage end)."""
        return False

    def finish(self, hidden_states: torch.Tensor, stage_outputs: tuple[torch.Tensor, ...]) -> EncoderOutput:
        """The encoder's forward after its last block: the neck, on the last block's output `hidden_states`
        (B, h, w, C) and the `stage_outputs` kept on the way. SAM: the image embedding (B, C_out, h, w)."""
        return self.encoder.neck(hidden_states)

    def width(self, block_index: int) -> int:
        """Channels C of the output of block `block_index`: the ViT's `hidden_size`."""
        return self.encoder.config.hidden_size


class Sam3EncoderSplit(EncoderSplit):
    """SAM 3's encoder as its tracker has it (`Sam3VisionModel`: `Sam3ViTModel` backbone and `Sam3VisionNeck`)."""

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + tiled position embedding, as a (B, h, w, C) grid, through the backbone's `layer_norm`
        (as `Sam3ViTModel.forward` starts)."""
        backbone = self.encoder.backbone
        hidden_states = backbone.embeddings(pixel_values)  # (B, h * w, C)
        height = pixel_values.shape[-2] // backbone.config.patch_size
        width = pixel_values.shape[-1] // backbone.config.patch_size
        hidden_states = hidden_states.view(hidden_states.shape[0], height, width, hidden_states.shape[-1])
        return backbone.layer_norm(hidden_states)

    def finish(self, hidden_states: torch.Tensor, stage_outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The FPN neck on the last block's output, channels-first: one level (B, C_fpn, h_i, w_i) per scale factor
        (the tracker's 4, 2, 1), as `Sam3VisionModel.forward` returns them."""
        fpn_hidden_states, _ = self.encoder.neck(hidden_states.permute(0, 3, 1, 2))
        return fpn_hidden_states

    def width(self, block_index: int) -> int:
        return self.encoder.config.backbone_config.hidden_size


class Sam2EncoderSplit(EncoderSplit):
    """SAM 2's Hiera encoder (`Sam2VisionModel`: `Sam2HieraDetModel` backbone and `Sam2VisionNeck`)."""

    layout: Sam2EncoderLayout

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch embedding + the windowed position embedding on its grid (as `Sam2HieraDetModel.forward` starts)."""
        backbone = self.encoder.backbone
        hidden_states = backbone.patch_embed(pixel_values)
        return hidden_states + backbone._get_pos_embed(hidden_states.shape[1:3])

    def keeps(self, block_index: int) -> bool:
        """The last block of each stage: the neck reads every stage's output."""
        return block_index in self.encoder.backbone.stage_ends

    def finish(self, hidden_states: torch.Tensor, stage_outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The FPN neck on the four stages' outputs (the last is `hidden_states`, already in `stage_outputs`):
        the levels `Sam2VisionModel.forward` keeps, `num_feature_levels` of them, high to low resolution."""
        fpn_hidden_states, _ = self.encoder.neck(stage_outputs)
        return fpn_hidden_states[-self.encoder.num_feature_levels :][::-1]

    def width(self, block_index: int) -> int:
        """The width of the block's stage (Hiera-T: 96, 192, 384, 768)."""
        return self.layout.hiera_blocks[block_index].width


_SPLITS: dict[type[SamEncoderLayout], type[EncoderSplit]] = {
    SamEncoderLayout: EncoderSplit,
    Sam3EncoderLayout: Sam3EncoderSplit,
    Sam2EncoderLayout: Sam2EncoderSplit,
}


def encoder_split(vision_encoder: nn.Module) -> EncoderSplit:
    """The split of `vision_encoder`, a vision encoder of any SAM generation.

    Raises:
        TypeError: when `vision_encoder` is none of them (e.g. a whole SAM model).
    """
    layout = encoder_layout(vision_encoder)
    if layout is None:
        hint = " Pass `model.vision_encoder`." if hasattr(vision_encoder, "vision_encoder") else ""
        raise TypeError(
            f"{type(vision_encoder).__name__} is not a SAM vision encoder (it has no `layers`, `backbone.blocks` or "
            f"`backbone.layers` beside a `neck`: SAM's, SAM 2's or SAM 3's).{hint}"
        )
    return _SPLITS[type(layout)](layout)


def check_encoder_block(vision_encoder: nn.Module, block_index: int) -> EncoderSplit:
    """Check that `vision_encoder` is a SAM vision encoder and `block_index` (0-based) one of its blocks; returns
    its split.

    Raises:
        TypeError: when `vision_encoder` is no SAM vision encoder (e.g. a whole SAM model).
        ValueError: when `block_index` is out of range.
    """
    split = encoder_split(vision_encoder)
    num_blocks = len(split.blocks)
    if not 0 <= block_index < num_blocks:
        raise ValueError(f"block_index must be in [0, {num_blocks - 1}] for this {num_blocks}-block encoder.")
    return split


def embed_patches(vision_encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The encoder's forward before its first block (patch and position embeddings; SAM 3: and the backbone's
    `layer_norm`), as the encoder's forward starts.

    Args:
        vision_encoder: A SAM vision encoder of any generation.
        pixel_values: (B, 3, H, W) preprocessed images.

    Returns:
        (B, h, w, C) tokens, channels-last.
    """
    return encoder_split(vision_encoder).embed(pixel_values)


def pool_block(hidden_states: torch.Tensor) -> torch.Tensor:
    """Mean over height and width of a channels-last block output: (B, h, w, C) -> (B, C)."""
    return hidden_states.mean(dim=(1, 2))


def block_width(vision_encoder: nn.Module, block_index: int) -> int:
    """Channels C of the output of block `block_index`, the width of its pooled features (`hidden_size` on the
    ViTs; on SAM 2's Hiera, the width of the block's stage)."""
    return check_encoder_block(vision_encoder, block_index).width(block_index)


def encoder_prefix(vision_encoder: nn.Module, pixel_values: torch.Tensor, block_index: int) -> BlockOutput:
    """Run the encoder up to and including block `block_index` (0-based), and nothing after it.

    Args:
        vision_encoder: A SAM vision encoder of any generation.
        pixel_values: (B, 3, H, W) preprocessed images.
        block_index: Last block to run.

    Returns:
        `BlockOutput`: the block's hidden state (B, h, w, C), its pooled features (B, C) and, on SAM 2, the outputs
        of the stages ending at or before it.
    """
    split = check_encoder_block(vision_encoder, block_index)
    hidden_states = split.embed(pixel_values)
    stage_outputs = ()
    for index, layer in enumerate(split.blocks[: block_index + 1]):
        hidden_states = layer(hidden_states)
        if split.keeps(index):
            stage_outputs = (*stage_outputs, hidden_states)
    return BlockOutput(hidden_states, pool_block(hidden_states), stage_outputs)


def encoder_suffix(
    vision_encoder: nn.Module,
    hidden_states: torch.Tensor,
    block_index: int,
    stage_outputs: Sequence[torch.Tensor] = (),
) -> EncoderOutput:
    """Finish the encoder from the output of block `block_index`: the blocks after it, then the neck.

    With `p = encoder_prefix(enc, x, k)`, `encoder_suffix(enc, p.hidden_states, k, p.stage_outputs)` equals
    `enc(x).last_hidden_state` (SAM) or `enc(x).fpn_hidden_states` (SAM 2, SAM 3).

    Args:
        vision_encoder: A SAM vision encoder (with the adapters of the chosen module active, if any).
        hidden_states: (B, h, w, C) output of block `block_index`.
        block_index: The block that produced `hidden_states`.
        stage_outputs: `encoder_prefix`'s `stage_outputs` for these images (SAM 2; empty on the ViTs).

    Returns:
        SAM: the image embeddings (B, C_out, h, w). SAM 2 / SAM 3: the FPN levels (B, C_fpn, h_i, w_i), high to low
        resolution, the last one on the image-embedding grid.
    """
    split = check_encoder_block(vision_encoder, block_index)
    expected = sum(split.keeps(index) for index in range(block_index + 1))
    if len(stage_outputs) != expected:
        raise ValueError(
            f"encoder_suffix from block {block_index} needs the {expected} stage output(s) `encoder_prefix` kept up "
            f"to that block; got {len(stage_outputs)}."
        )
    stage_outputs = tuple(stage_outputs)
    for index, layer in enumerate(split.blocks[block_index + 1 :], start=block_index + 1):
        hidden_states = layer(hidden_states)
        if split.keeps(index):
            stage_outputs = (*stage_outputs, hidden_states)
    return split.finish(hidden_states, stage_outputs)


def block_features(vision_encoder: nn.Module, pixel_values: torch.Tensor, block_index: int) -> torch.Tensor:
    """Pooled output of block `block_index` for a batch of images: (B, 3, H, W) -> (B, C). Runs blocks 0..k only."""
    return encoder_prefix(vision_encoder, pixel_values, block_index).features
