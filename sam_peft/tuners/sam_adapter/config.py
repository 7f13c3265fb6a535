"""Configuration of SAM-Adapter (Chen et al. 2023, "SAM Fails to Segment Anything?"), the CAD paper's baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig

from ..base import SamPeftConfigMixin

SAM_ADAPTER = "SAM_ADAPTER"

# Every vision block of transformers' SamModel / SamHQModel (full match: not the blocks' submodules).
SAM_BLOCK_TARGET = r"vision_encoder\.layers\.\d+"
# Every ViT block of SAM 3's tracker (`Sam3TrackerModel`); anchored at the backbone (the mask decoder has `layers` too).
SAM3_BLOCK_TARGET = r"vision_encoder\.backbone\.layers\.\d+"

# How the embedding feature reads the patch embeddings; see `SamAdapterConfig.embedding_feature`.
EMBEDDING_FEATURES = ("paper", "official")


@dataclass
class SamAdapterConfig(SamPeftConfigMixin, PeftConfig):
    """Configuration for SAM-Adapter: per-block prompts from patch-embedding tuning and high-frequency features.

    This is the variant of the paper's official code (the explicit-visual-prompting design, `prompt_type
    "highpass"`, `input_type "fft"`, both the embedding and the hand-crafted tuning on, every block tuned). It
    adapts the plain ViT encoders, whose blocks all share one width C and one token grid (h, w): SAM and SAM-HQ
    (`SamModel`, `SamHQModel`; patch p = 16, 64 x 64 tokens at 1024 px) and SAM 3's tracker (`Sam3TrackerModel`;
    p = 14, 72 x 72 tokens at 1008 px). With `d = C / scale_factor` (24 for ViT-B):

    - hand-crafted feature: the FFT high-pass magnitude of the encoder's input `pixel_values` (the same high-pass
      as CAD's), patch-embedded by `Conv2d(3, d, patch, stride=patch)` -> (B, h, w, d);
    - embedding feature: `Linear(C, d)` on the patch embeddings -> (B, h, w, d), each token's C channels as the
      paper describes (`embedding_feature="paper"`, the default), or the official code's reading of the same
      tensor (`"official"`, see Args); the rest is the same for both. The patch embeddings are the output of the
      patch convolution, before anything else touches the tokens: on SAM before the position embedding, on SAM 3
      before the (tiled) position embedding and the LayerNorm that precede its first block (its
      `Sam3ViTPatchEmbeddings` gives them as (B, h * w, C) in row-major order, read as the (B, h, w, C) grid);
    - before block i: `x = x + shared(GELU(mlp_i(handcrafted + embedding)))`, `mlp_i = Linear(d, d)` per block and
      `shared = Linear(d, C)` common to all blocks.

    Linear weights start as truncated normals (std 0.02) and the convolution as `N(0, 2 / (k * k * d))`, biases at
    zero (the official initialisation; the adapter is not the identity at start). Parameters:
    `(d C + C) + (C d + d) + (3 p^2 d + d) + L (d^2 + d)`: 63,312 on ViT-B (C 768, p 16, L 12), 186,960 on ViT-H,
    119,232 on SAM 3 (C 1024, p 14, L 32).
    The paper also trains the mask decoder: pass `modules_to_save=["mask_decoder"]` on a `SamModel` (on a
    `SamForSemanticSegmentation` it is trained by default).

    SAM 2's Hiera encoder is refused: its stages differ in width and token grid, which one prompt generator of one
    width cannot feed; its authors' adaptation of Hiera, SAM2-Adapter, is a separate method (see
    `SamAdapterModel.unsupported_architectures`).

    Args:
        scale_factor: `d = hidden_size // scale_factor` (the official code: 32).
        high_pass_ratio: Share of the spectrum's area removed by the high-pass (the official code: 0.25).
        embedding_feature: What `Linear(C, d)` of the embedding feature reads. `"paper"` (default): each token's C
            channels of the channels-last patch embeddings (B, h, w, C). `"official"`: the official code's
            computation, which reshapes that channels-last tensor as if it were channels-first, (B, C, h * w), and
            transposes it to (B, h * w, C); row j of an image then holds the entries j, j + h w, j + 2 h w, ... of
            its (h, w, C)-ordered flattening, channels and positions mixed. Its output rows are read as the tokens
            in row-major order. The official checkpoints were trained this way: choose it to reproduce the official
            code or to run weights trained with it (they exist for SAM only; on SAM 3 it reads its (B, h, w, C)
            grid of patch embeddings the same way).
        target_modules: Vision blocks that get a prompt (one regex, full match, or a list of names). Defaults to
            every block of the vision encoder: `vision_encoder.layers.<i>` on SAM and SAM-HQ,
            `vision_encoder.backbone.layers.<i>` on SAM 3's tracker. The patch embedding of their encoder is adapted
            with them.
        exclude_modules: Module names or regex to leave out.
        layers_to_transform: Only prompt the blocks with these indices (also with a regex `target_modules`).
        layers_pattern: Name of the module list holding the blocks, used with `layers_to_transform`.
        modules_to_save: Modules besides the adapters that are trained and saved in full.
    """

    scale_factor: int = field(default=32, metadata={"help": "Prompt width = hidden_size // scale_factor."})
    high_pass_ratio: float = field(default=0.25, metadata={"help": "Share of the spectrum removed by the high-pass."})
    embedding_feature: str = field(
        default="paper",
        metadata={
            "help": "Input of the embedding feature's Linear(C, d): 'paper' (each token's channels) or 'official' "
            "(the official code's channels-first reshape of the channels-last patch embeddings)."
        },
    )
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Vision blocks to prompt (list of names or one regex); default: all."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only prompt the blocks with these indices."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the block list, used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapters."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # peft's PeftType is a closed enum; a plain string compares and hashes like its members
        # (see sam_peft/_registration.py).
        self.peft_type = SAM_ADAPTER
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = set(self.target_modules)
        if not isinstance(self.scale_factor, int) or self.scale_factor < 1:
            raise ValueError(f"SamAdapterConfig.scale_factor must be a positive integer, got {self.scale_factor!r}.")
        if not 0.0 < self.high_pass_ratio < 1.0:
            raise ValueError(f"SamAdapterConfig.high_pass_ratio must be in (0, 1), got {self.high_pass_ratio!r}.")
        if self.embedding_feature not in EMBEDDING_FEATURES:
            allowed = ", ".join(repr(value) for value in EMBEDDING_FEATURES)
            raise ValueError(
                f"SamAdapterConfig.embedding_feature must be one of {allowed}, got {self.embedding_feature!r}."
            )
