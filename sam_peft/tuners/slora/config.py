"""Configuration of SLoRA, the AugModule of SAMCL (Wang et al., "SAMCL", arXiv 2412.05012)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig

from ..base import SamPeftConfigMixin

SLORA = "SLORA"

# The attention module of every vision block of transformers' SamModel / SamHQModel / SamForSemanticSegmentation
# (full match: not its qkv or proj).
SAM_ATTENTION_TARGET = r"vision_encoder\.layers\.\d+\.attn"
# The same in SAM 2's Hiera blocks (`Sam2MultiScaleAttention`) and SAM 3's rotary ViT blocks (`Sam3ViTRoPEAttention`;
# anchored at the vision backbone, the mask decoder has attention modules too).
SAM2_ATTENTION_TARGET = r"vision_encoder\.backbone\.blocks\.\d+\.attn"
SAM3_ATTENTION_TARGET = r"vision_encoder\.backbone\.layers\.\d+\.attention"
# SLoRA's default targets by `model_type` (SAM 2 / 2.1: "sam2", SAM 3's tracker: "sam3_tracker").
ATTENTION_TARGETS = {
    "sam": SAM_ATTENTION_TARGET,
    "sam_hq": SAM_ATTENTION_TARGET,
    "sam2": SAM2_ATTENTION_TARGET,
    "sam3_tracker": SAM3_ATTENTION_TARGET,
}

# Blocks adapted when `layers_to_transform` is unset: the last five of the encoder, which is the paper's 7..11 on
# ViT-B (12 blocks), 19..23 on ViT-L and 27..31 on ViT-H (and SAM 3); on SAM 2, of the stage on the embedding grid.
DEFAULT_NUM_ADAPTED_BLOCKS = 5

# Where the prompt features H meet the tokens (`SloraConfig.prompt_layout`).
PROMPT_LAYOUTS = ("positional", "official")


def default_adapted_blocks(num_blocks: int) -> list[int]:
    """The blocks an SLoRA module adapts when `layers_to_transform` is unset: the last five (7..11 on ViT-B)."""
    return list(range(max(num_blocks - DEFAULT_NUM_ADAPTED_BLOCKS, 0), num_blocks))


@dataclass
class SloraConfig(SamPeftConfigMixin, PeftConfig):
    """Configuration for a SLoRA adapter (SAMCL's AugModule): LoRA with one shared down-projection, plus prompts.

    Around the attention module of each adapted vision block, with x its input (tokens or windows of tokens,
    channels-last) and H the prompt features at the same positions:

        attn(x) + B(LN1(A(x)) + LN2(H))

    `A = Linear(C, r)` (with bias) is one module shared by every adapted block and saved once per adapter; each block
    has its own `B = Linear(r, C)` (with bias) and LayerNorms `LN1`, `LN2` of width r. With `prompt_augmentation`,
    the positive point prompts of an image become a heat map on the embedding grid (`points_to_heat_map`: 1 at each
    point's cell, blurred with OpenCV's 9 x 9 Gaussian, times 255 as in the official code), repeated to r channels,
    and `H = ReLU(LN(Linear(r, r)(heat)))` (one projection per adapter); the neck becomes
    `neck(x + Linear(r, C)(H)) + Linear(r, 256)(H)`. `prompt_layout` says where H meets the tokens. Without points
    the heat map is zeros (with `learned_prompt`, the adapter's learned heat map: below).

    On SAM 2 / 2.1 (Hiera) and SAM 3's tracker (rotary ViT) the same module sits around the attention of their
    vision blocks (`SloraModel` and `sam_peft.tuners.slora.encoders` say where): the heat map is on the token grid of
    the adapted blocks (the image embedding's by default: 64 x 64 for SAM 2 at 1024 px, 72 x 72 for SAM 3 at
    1008 px), In(H) joins the neck's input there and Out(H) (width `fpn_hidden_size`) the FPN level on that grid, the
    image embedding the mask decoder attends to. A has one width, so on SAM 2 the adapted blocks are blocks of one
    Hiera stage (never its first, widening block).

    Learned prompt (`learned_prompt`, for prompt-free use, e.g. `SamForSemanticSegmentation`, where no forward has
    points): the adapter also owns a trainable heat map P (g, g) on the same grid (64 x 64 on SAM at 1024 px; the
    adapted stage's grid on SAM 2, 72 x 72 on SAM 3), `slora_learned_prompt[adapter].heat_map`, saved and loaded
    with the adapter. The prompt path then reads `heat + P` instead of `heat`: P alone when a forward has no points
    (the heat map is zeros), and P added to the points' heat map when it has some, so the prompt the adapter learned
    stays under the clicks (points still mark their cells on top of it). P starts at zero: a fresh adapter computes
    exactly what one without a learned prompt computes (and, with B and the neck projections zero, leaves the model
    unchanged); like LoRA's A under a zero B, P gets no gradient before B and the neck projections have moved (the
    first optimiser step), then learns in heat-map units (an isolated point peaks at 14). It adds g * g parameters
    per adapter (4,096 on SAM at 1024 px, 256 on the tiny SAM).

    Initialisation: A Kaiming-uniform (a = sqrt(5)) with zero bias, B and both neck projections zero (a fresh adapter
    leaves the model unchanged), the heat-map projection PyTorch's default, LayerNorms ones and zeros, the learned
    prompt zeros. On ViT-B with the defaults an adapter has 61,304 parameters without its LayerNorms (A 7,690 + 5 x
    B 8,448 + prompt path 11,374), 61,524 with them (0.235 MiB in float32); 65,620 with a learned prompt.

    Args:
        r: Rank (width of the bottleneck and of the prompt features). The paper: 10.
        prompt_augmentation: Add the prompt features H in the blocks and at the neck. Without it, SLoRA is the
            shared-A LoRA alone and the neck is left as it is.
        prompt_layout: Where H (B, g, g, r) meets the tokens. "positional" (default, paper-faithful): every token gets
            H at its own grid position, in global blocks, at the neck and in windowed blocks, where H is cut
            into the tokens' windows (zero-padded like them). "official": the authors' computation (SAMCL
            `module/SAMCL.py`), to reproduce their modules exactly: in windowed blocks H is resized to one window
            (nearest neighbour) and that same (window, window) map is added in every window of the image; global
            blocks use H as it is; at the neck H is transposed (the token at row i, column j gets H[j, i]). The
            official code hard-codes SAM's window (14); here it is each block's own window size.
        target_modules: Attention modules to adapt (one regex, full match, or a list of names). Defaults to the
            attention of the vision blocks of the model's generation (`ATTENTION_TARGETS`).
        exclude_modules: Module names or regex to leave out.
        layers_to_transform: Indices of the blocks to adapt. Unset, the last `DEFAULT_NUM_ADAPTED_BLOCKS` (5) blocks
            of the encoder: 7..11 on ViT-B, as the paper; 27..31 on SAM 3; on SAM 2 the last five of the stage whose
            grid is the image embedding's, leaving out its first, widening block (stage 2: 5..9 on Hiera-T, 9..13 on
            -S, 16..20 on -B+, 39..43 on -L). On SAM 2 the blocks must be of one stage, without its first block. Set
            when the adapter is created, so the saved config holds the indices.
        layers_pattern: Name of the module list holding the blocks, used with `layers_to_transform`.
        modules_to_save: Modules besides the adapter that are trained and saved in full. SAMCL keeps the mask decoder
            frozen (the default on a `SamModel`); on a `SamForSemanticSegmentation` the decoder is the task head and
            trained by default.
        learned_prompt: Give the adapter a trainable heat map (g, g) on the embedding grid, added to every
            forward's heat map (zeros without points): the constant prompt of prompt-free training. Needs
            `prompt_augmentation`. Default False (adapters saved before the option load unchanged).
        init_weights: Zero-initialise B and the neck projections (identity at start, the paper's initialisation).
            Set to False only for testing: they then get PyTorch's default Linear initialisation, and the learned
            prompt is drawn from N(0, 1).
    """

    r: int = field(default=10, metadata={"help": "Rank of the bottleneck and width of the prompt features."})
    prompt_augmentation: bool = field(
        default=True, metadata={"help": "Add the point-prompt heat-map features in the blocks and at the neck."}
    )
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Attention modules to adapt; default: the vision blocks' attention."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    layers_to_transform: list[int] | int | None = field(
        default=None,
        metadata={
            "help": "Blocks to adapt; default: the last five of the encoder (7..11 on ViT-B), on SAM 2 of its stage "
            "on the image-embedding grid."
        },
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the block list, used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapter."}
    )
    prompt_layout: str = field(
        default="positional",
        metadata={
            "help": "Where the prompt features meet the tokens: 'positional' (each token gets its own position's, "
            "the default) or 'official' (the SAMCL code's: resized to one window and repeated in windowed blocks, "
            "transposed at the neck)."
        },
    )
    learned_prompt: bool = field(
        default=False,
        metadata={
            "help": "A trainable heat map on the embedding grid, added to each forward's (zeros without points): "
            "the constant prompt of prompt-free use. Needs prompt_augmentation."
        },
    )
    init_weights: bool = field(default=True, metadata={"help": "Zero-initialise B and the neck projections."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # peft's PeftType is a closed enum; a plain string compares and hashes like its members
        # (see sam_peft/_registration.py).
        self.peft_type = SLORA
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.layers_to_transform, tuple):
            self.layers_to_transform = list(self.layers_to_transform)
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"SloraConfig.r must be a positive integer, got {self.r!r}.")
        if not isinstance(self.prompt_augmentation, bool):
            raise ValueError(
                f"SloraConfig.prompt_augmentation must be True or False, got {self.prompt_augmentation!r}."
            )
        if not isinstance(self.learned_prompt, bool):
            raise ValueError(f"SloraConfig.learned_prompt must be True or False, got {self.learned_prompt!r}.")
        if self.learned_prompt and not self.prompt_augmentation:
            raise ValueError(
                "SloraConfig.learned_prompt feeds a learned heat map into the prompt path, which "
                "`prompt_augmentation=False` leaves out: set prompt_augmentation=True, or learned_prompt=False."
            )
        if self.prompt_layout not in PROMPT_LAYOUTS:
            raise ValueError(
                f"SloraConfig.prompt_layout must be one of {', '.join(map(repr, PROMPT_LAYOUTS))}, got "
                f"{self.prompt_layout!r}."
            )
        layers = self.layers_to_transform
        if layers is None:
            return
        indices = [layers] if isinstance(layers, int) else layers
        if (
            not isinstance(indices, list)
            or not indices
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices)
        ):
            raise ValueError(
                f"SloraConfig.layers_to_transform must be a non-negative block index or a non-empty list of them, got "
                f"{layers!r}."
            )
