"""The vision encoders SLoRA adapts, one layout per SAM generation: where the blocks are, which of them SLoRA
adapts by default and may adapt, the token grid of the adapted blocks (the heat map's), and the neck layer.

- SAM and SAM-HQ (`SamEncoderLayout`): ViT blocks `layers.<i>`, one width, one grid (64 x 64 at 1024 px).
- SAM 3's tracker (`Sam3EncoderLayout`): rotary ViT blocks `backbone.layers.<i>`, one width, one grid (72 x 72 at
  1008 px), an FPN neck built from the last block's output.
- SAM 2 / 2.1 (`Sam2EncoderLayout`): Hiera blocks `backbone.blocks.<i>` in four stages whose width doubles and
  whose grid halves from one stage to the next (the first block of stages 1..3 pools its queries and widens the
  tokens). SLoRA's down-projection A is shared by the adapted blocks, so they are blocks of one stage, and never a
  stage's widening first block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .config import default_adapted_blocks
from .layer import SloraNeck, SloraSam2Neck, SloraSam3Neck


class SamEncoderLayout:
    """SAM's and SAM-HQ's ViT encoder (`SamVisionEncoder`) as SLoRA sees it; the base of the other generations'.

    Args:
        encoder: The vision encoder (`model.vision_encoder`): the module holding the blocks and the `neck`.
    """

    # the block list, relative to the encoder, and the attention module's name in a block
    blocks_path: ClassVar[str] = "layers"
    attention_name: ClassVar[str] = "attn"
    neck_class: ClassVar[type[SloraNeck]] = SloraNeck

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder

    @classmethod
    def describes(cls, encoder: nn.Module) -> bool:
        """Whether `encoder` is an encoder of this layout."""
        config = getattr(encoder, "config", None)
        return (
            isinstance(getattr(encoder, "layers", None), nn.ModuleList)
            and hasattr(encoder, "neck")
            and hasattr(config, "image_size")
            and hasattr(config, "patch_size")
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.get_submodule(self.blocks_path)

    def block_index(self, relative_key: str) -> int | None:
        """The index of the block whose attention module is `relative_key` (relative to the encoder), else None."""
        match = re.fullmatch(rf"{re.escape(self.blocks_path)}\.(\d+)\.{re.escape(self.attention_name)}", relative_key)
        return None if match is None else int(match.group(1))

    def default_blocks(self) -> list[int]:
        """The blocks adapted when `layers_to_transform` is unset: the last five (7..11 on ViT-B)."""
        return default_adapted_blocks(len(self.blocks))

    def check_blocks(self, indices: list[int]) -> None:
        """Raises ValueError when SLoRA cannot adapt the blocks `indices` (`layers_to_transform`) together."""
        num_blocks = len(self.blocks)
        outside = [i for i in indices if not 0 <= i < num_blocks]
        if outside:
            raise ValueError(
                f"SloraConfig.layers_to_transform holds {outside} but the vision encoder has {num_blocks} blocks "
                f"(0..{num_blocks - 1})."
            )

    def stage(self, index: int) -> int:
        """The stage holding block `index` (a ViT has one, 0)."""
        return 0

    def grid_size(self, stage: int) -> int:
        """Side of the token grid of stage `stage`: `image_size // patch_size` (64 for SAM at 1024 px)."""
        return self.encoder.config.image_size // self.encoder.config.patch_size

    def grid_name(self, stage: int) -> str:
        """What the grid of stage `stage` is, in messages."""
        return "the image-embedding grid"

    def describe_stage(self, stage: int) -> str:
        """Stage `stage` in messages."""
        return f"stage {stage}"

    @property
    def image_size(self) -> int:
        """Side of the encoder's square input in pixels (1024 for SAM)."""
        return self.encoder.config.image_size


class Sam3EncoderLayout(SamEncoderLayout):
    """SAM 3's encoder as its tracker has it (`Sam3VisionModel`): a ViT with rotary position embeddings
    (`backbone.layers.<i>.attention`, 32 blocks of width 1024, windows of 24 and four global blocks at 1008 px), one
    grid of `image_size // patch_size` tokens (72 x 72), and an FPN neck (`SloraSam3Neck`)."""

    blocks_path = "backbone.layers"
    attention_name = "attention"
    neck_class = SloraSam3Neck

    @classmethod
    def describes(cls, encoder: nn.Module) -> bool:
        backbone = getattr(encoder, "backbone", None)
        return isinstance(getattr(backbone, "layers", None), nn.ModuleList) and hasattr(encoder, "neck")

    def grid_size(self, stage: int) -> int:
        """`image_size // patch_size` of the backbone's config (72 at 1008 px)."""
        backbone = self.encoder.config.backbone_config
        return backbone.image_size // backbone.patch_size

    @property
    def image_size(self) -> int:
        return self.encoder.config.backbone_config.image_size


@dataclass(frozen=True)
class HieraBlock:
    """One block of a Hiera encoder, as SLoRA sees it.

    Attributes:
        index: Its index in `backbone.blocks`.
        stage: The stage holding it (0..3).
        input_width: Channels of its input (the previous stage's width in the first block of stages 1..3).
        width: Channels of its output (its stage's width).
        pools: Whether it pools its queries (the first block of the query-pooling stages): its output grid is the
            input's, halved.
        window_size: Side of its attention windows; 0 in global blocks.
        grid_size: Side of its output token grid (its stage's).
    """

    index: int
    stage: int
    input_width: int
    width: int
    pools: bool
    window_size: int
    grid_size: int

    @property
    def adaptable(self) -> bool:
        """Whether SLoRA can adapt it: its tokens keep their width and grid (B(A(x)) lands on the tokens of x)."""
        return not self.pools and self.input_width == self.width

    def describe(self) -> str:
        """The block in messages: "block 3 (stage 2, 64 channels)", or what makes it unadaptable."""
        if self.adaptable:
            return f"block {self.index} (stage {self.stage}, {self.width} channels)"
        changes = ["pools its queries"] if self.pools else []
        if self.input_width != self.width:
            changes.append(f"widens the tokens {self.input_width} -> {self.width} channels")
        return f"block {self.index} (the first of stage {self.stage}: it {' and '.join(changes)})"


class Sam2EncoderLayout(SamEncoderLayout):
    """SAM 2's Hiera encoder (`Sam2VisionModel`): blocks `backbone.blocks.<i>.attn` in four stages, an FPN neck
    over the stages' outputs (`SloraSam2Neck`).

    The stages' widths double and their grids halve (Hiera-T at 1024 px: 96, 192, 384, 768 channels on 256, 128, 64,
    32 tokens a side); the first block of stages 1..3 pools its queries and widens the tokens, so its input and
    output differ and SLoRA never adapts it. SLoRA adapts blocks of one stage: by default the last five adaptable
    blocks of the stage whose grid is the image embedding's (`image_embedding_stage`: stage 2, stride 16, 64 x 64 at
    1024 px; on Hiera-T blocks 5..9). The heat map is on the adapted stage's grid.
    """

    blocks_path = "backbone.blocks"
    attention_name = "attn"
    neck_class = SloraSam2Neck

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__(encoder)
        self.hiera_blocks = self._walk(encoder.backbone)

    @classmethod
    def describes(cls, encoder: nn.Module) -> bool:
        backbone = getattr(encoder, "backbone", None)
        return isinstance(getattr(backbone, "blocks", None), nn.ModuleList) and hasattr(encoder, "neck")

    @staticmethod
    def _walk(backbone: nn.Module) -> list[HieraBlock]:
        """The blocks of `backbone` (`Sam2HieraDetModel`) with their stage and grid: the patch embedding's grid
        (`image_size` through the patch convolution), halved (floor, as max pooling does) at each pooling block."""
        config = backbone.config
        projection = backbone.patch_embed.projection
        image_size = config.image_size
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        sides = [
            (side + 2 * projection.padding[axis] - projection.kernel_size[axis]) // projection.stride[axis] + 1
            for axis, side in enumerate((height, width))
        ]
        if sides[0] != sides[1]:
            raise ValueError(f"SLoRA's heat maps need a square token grid; this Hiera encoder's is {tuple(sides)}.")
        grid = sides[0]
        stages = [stage for stage, count in enumerate(config.blocks_per_stage) for _ in range(count)]
        walked = []
        for index, (block, stage) in enumerate(zip(backbone.blocks, stages, strict=True)):
            if block.query_stride:
                grid //= block.query_stride[0]
            walked.append(
                HieraBlock(
                    index=index,
                    stage=stage,
                    input_width=block.dim,
                    width=block.dim_out,
                    pools=bool(block.query_stride),
                    window_size=block.window_size,
                    grid_size=grid,
                )
            )
        return walked

    @property
    def image_embedding_stage(self) -> int:
        """The stage whose FPN level the mask decoder attends to: `Sam2VisionModel` keeps the neck's levels of stages
        `num_feature_levels - 1` .. 0 (high resolution first, `backbone_feature_sizes`) and the decoder reads the
        last, stage `num_feature_levels - 1` (2 of 4)."""
        return self.encoder.num_feature_levels - 1

    def adaptable_blocks(self) -> dict[int, list[int]]:
        """The blocks SLoRA can adapt, by stage."""
        stages: dict[int, list[int]] = {}
        for block in self.hiera_blocks:
            if block.adaptable:
                stages.setdefault(block.stage, []).append(block.index)
        return stages

    def default_blocks(self) -> list[int]:
        """The last five adaptable blocks of `image_embedding_stage` (Hiera-T: 5..9, -S: 9..13, -B+: 16..20,
        -L: 39..43); raises ValueError when that stage has none (its only block pools and widens the tokens)."""
        blocks = self.adaptable_blocks().get(self.image_embedding_stage, [])[-5:]
        if not blocks:
            raise ValueError(
                f"SLoRA adapts blocks of stage {self.image_embedding_stage} of SAM 2's Hiera encoder by default (its "
                "grid is the image embedding's), but this encoder's stage has no block SLoRA can adapt: its only "
                f"block pools its queries and widens the tokens. Pass `layers_to_transform`. {self._fix()}"
            )
        return blocks

    def _fix(self) -> str:
        """How to choose `layers_to_transform`, for the errors."""
        choices = "; ".join(f"stage {stage}: {blocks}" for stage, blocks in self.adaptable_blocks().items())
        stage = self.image_embedding_stage
        default = self.adaptable_blocks().get(stage, [])[-5:]
        if not default:
            return f"The blocks SLoRA can adapt, by stage: {choices}."
        grid = self.grid_size(stage)
        return (
            f"The blocks SLoRA can adapt, by stage: {choices}. Unset, `layers_to_transform` is {default}: the last "
            f"five (or fewer) of stage {stage}, whose {grid} x {grid} grid is the image embedding's."
        )

    def check_blocks(self, indices: list[int]) -> None:
        """Raises ValueError when `indices` hold a block that pools and widens its tokens, or blocks of several
        stages (several widths: A needs one)."""
        super().check_blocks(indices)
        blocks = [self.hiera_blocks[i] for i in sorted(set(indices))]
        widening = [block for block in blocks if not block.adaptable]
        if widening:
            raise ValueError(
                f"SloraConfig.layers_to_transform holds {', '.join(b.describe() for b in widening)}: SLoRA cannot "
                "adapt such a block of SAM 2's Hiera encoder, whose attention output has another width and grid "
                f"than its input. Leave it out. {self._fix()}"
            )
        if len({block.stage for block in blocks}) > 1:
            raise ValueError(
                f"SloraConfig.layers_to_transform {sorted(set(indices))} spans several widths of SAM 2's Hiera "
                f"encoder: {', '.join(b.describe() for b in blocks)}. SLoRA's down-projection A is shared by all "
                f"adapted blocks and has one width: choose blocks of one stage. {self._fix()}"
            )

    def stage(self, index: int) -> int:
        return self.hiera_blocks[index].stage

    def grid_size(self, stage: int) -> int:
        """Side of stage `stage`'s token grid (Hiera at 1024 px: 256, 128, 64, 32)."""
        return next(block.grid_size for block in self.hiera_blocks if block.stage == stage)

    def grid_name(self, stage: int) -> str:
        if stage == self.image_embedding_stage:
            return "the image-embedding grid"
        return f"the token grid of Hiera stage {stage}, whose blocks SLoRA adapts"

    @property
    def image_size(self) -> int:
        image_size = self.encoder.config.backbone_config.image_size
        return image_size if isinstance(image_size, int) else image_size[0]

    def describe_stage(self, stage: int) -> str:
        """Stage `stage` in messages: its width and grid."""
        block = next(block for block in self.hiera_blocks if block.stage == stage)
        return f"stage {stage} ({block.width} channels, {block.grid_size} x {block.grid_size} tokens)"


# Most specific first: SAM 2's and SAM 3's encoders hold their blocks in a `backbone`.
LAYOUTS: tuple[type[SamEncoderLayout], ...] = (Sam2EncoderLayout, Sam3EncoderLayout, SamEncoderLayout)


def encoder_layout(encoder: nn.Module | None) -> SamEncoderLayout | None:
    """The layout of vision encoder `encoder`, or None when it is none of SAM's generations' encoders."""
    if encoder is None:
        return None
    for layout in LAYOUTS:
        if layout.describes(encoder):
            return layout(encoder)
    return None
