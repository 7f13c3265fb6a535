"""Configuration of Conv-LoRA (Zhong et al., "Convolution Meets LoRA", ICLR 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig

from ..base import SamPeftConfigMixin
from ..targets import QKV_TARGETS
from .experts import EXPERT_DISPATCHES

CONV_LORA = "CONV_LORA"

# Every vision block's fused qkv projection of transformers' SamModel / SamHQModel. A regex rather than the bare
# name: bare decoder names such as `lin1` or `q_proj` would also match modules of the mask decoder.
SAM_QKV_TARGET = QKV_TARGETS["sam"]


@dataclass
class ConvLoraConfig(SamPeftConfigMixin, PeftConfig):
    """Configuration for a Conv-LoRA adapter.

    Conv-LoRA is LoRA on the vision encoder's fused qkv projection with a mixture of convolutional experts inside
    the low-rank bottleneck: `out = W x + (alpha / r) * B(z + sum_i G_i E_i(z))`, `z = A(x)`, where `E_i` resizes
    `z` by the integer scale `s_i`, applies a 3x3 convolution and GELU, and resizes back, and `G` is a noisy top-k
    gate over the spatial mean of `z`. The defaults reproduce the official code (AutoGluon's `ConvLoRALinear`) and
    the paper, but for the paper's multi-class balance-loss weight (see `moe_loss_weight`).

    Args:
        r: Rank of the bottleneck (the experts work on `r` channels).
        lora_alpha: Scaling numerator; the adapter output is scaled by `lora_alpha / r`.
        lora_dropout: Dropout on the input of the down-projection A.
        num_experts: Number of convolutional experts M.
        expert_scales: Integer resize factor of each expert; defaults to `1..num_experts`. A scale of 1 skips the
            resizes.
        top_k: Experts each sample (window) is routed to. 1 is the official setting (fixed there): the kept gate
            value is exactly 1 and the gate learns only through the balance loss. `top_k > 1` is sam-peft's
            extension, mixing the chosen experts by their gate values, `sum_i G_i E_i(z)`. The official combine
            (`SparseDispatcher.combine`, called with `multiply_by_gates=False`) is not that: it ignores the gate
            values and returns `log(sum_i exp(E_i(z)))` over the chosen experts, which for one expert is `E_i(z)`
            up to rounding but overflows to inf where an output exceeds about 88.7 in float32.
        noisy_gating: Add learned Gaussian noise to the gate logits in training (Shazeer et al. 2017).
        balance_loss_coef: Factor of each layer's load-balancing loss `coef * (cv^2(importance) + cv^2(load))`.
        moe_loss_weight: Weight of `sam_peft.auxiliary_loss(model)` in the training loss, read by sam-peft's
            models and recipes. The paper weights it 1.0 for binary and 2.0 for multi-class tasks; the official
            code adds the blocks' summed balance loss to the task loss with weight 1 in both cases, which the
            default 1.0 matches.
        target_modules: Module names (list, suffix match) or one regex (full match) to adapt. Defaults to the
            attention input projections of every image-encoder block, by architecture
            (`sam_peft.tuners.targets.QKV_TARGETS`): the fused `attn.qkv` of SAM, SAM-HQ and SAM 2's Hiera blocks
            (each window convolved on its own grid, whatever its stage's window size; whole images in global blocks),
            and SAM 3's separate `q_proj`, `k_proj` and `v_proj`, each with an adapter of its own (three A, B, gates
            and expert sets per block: 3 x 6,864 parameters per block of width 1024 with the defaults, 658,944 on
            SAM 3's 32 blocks, against 589,824 for LoRA of rank 3 on the same projections).
        exclude_modules: Module names or regex to leave out.
        layers_to_transform: Only adapt these block indices (also with a regex `target_modules`).
        layers_pattern: Name of the module list holding the blocks, used with `layers_to_transform`.
        modules_to_save: Modules besides the adapters that are trained and saved in full (e.g. `["mask_decoder"]`).
        init_weights: Initialise B to zero so that a fresh adapter leaves the model unchanged (the official
            initialisation). Set to False only for testing.
        expert_dispatch: How the experts run; the output is the same either way (to float rounding).
            "grouped" (default, for training and eager inference): each expert runs once on the windows routed to it,
            which needs the number of windows per expert on the host (one device synchronisation per layer; under
            `torch.compile` this part runs eagerly, one graph break per layer, no recompilation). "dense": every
            expert runs on every window and its output is weighted by the gates (zero where a window is not routed
            to it): no host read and no data-dependent shape, so a compiled model is one graph per call and
            `torch.export` works (export always takes this path), at the cost of running all experts: with the
            default scales 1..8 and top-1 routing about 8 times the experts' work. Measured on 2 CPU cores in
            float32, eager: the tiny SAM's step 1.9x (training) and 2.5x (inference) the grouped one; ViT-B at
            1024 px, inference: 1.03x (benchmarks/conv_lora_cost.py). Inductor compiles it in 2 to 3.5 times
            LoRA's compile time (the grouped path: about LoRA's). Pick it for export and compiled inference, not
            for training. Switch a loaded model with `sam_peft.tuners.conv_lora.set_expert_dispatch`; the weights
            are the same for both, and adapter configs saved before this option load with "grouped".
    """

    r: int = field(default=3, metadata={"help": "Rank of the bottleneck."})
    lora_alpha: float = field(default=32, metadata={"help": "Scaling numerator: output scaled by lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the down-projection."})
    num_experts: int = field(default=8, metadata={"help": "Number of convolutional experts."})
    expert_scales: list[int] | None = field(
        default=None, metadata={"help": "Integer resize factor of each expert; defaults to 1..num_experts."}
    )
    top_k: int = field(default=1, metadata={"help": "Number of experts each sample (window) is routed to."})
    noisy_gating: bool = field(default=True, metadata={"help": "Learned gate noise during training."})
    balance_loss_coef: float = field(default=0.01, metadata={"help": "Factor of each layer's balance loss."})
    moe_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the auxiliary (balance) loss in the training loss."}
    )
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt (list of names or one regex); default: SAM's qkv."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Only adapt the blocks with these indices."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the block list, used with layers_to_transform."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapters."}
    )
    init_weights: bool = field(default=True, metadata={"help": "Zero-initialise B (identity at start)."})
    expert_dispatch: str = field(
        default="grouped",
        metadata={"help": 'How the experts run: "grouped" (routed windows only) or "dense" (all, for export).'},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # peft's PeftType is a closed enum; a plain string compares and hashes like its members
        # (see sam_peft/_registration.py).
        self.peft_type = CONV_LORA
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = set(self.target_modules)
        if self.expert_scales is None:
            self.expert_scales = list(range(1, self.num_experts + 1)) if self.num_experts > 0 else []
        self.expert_scales = list(self.expert_scales)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"ConvLoraConfig.r must be a positive integer, got {self.r!r}.")
        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            raise ValueError(f"ConvLoraConfig.num_experts must be at least 1, got {self.num_experts!r}.")
        if len(self.expert_scales) != self.num_experts:
            raise ValueError(
                f"ConvLoraConfig.expert_scales has {len(self.expert_scales)} entries but num_experts is "
                f"{self.num_experts}; give one scale per expert."
            )
        if any(not isinstance(s, int) or s < 1 for s in self.expert_scales):
            raise ValueError(f"ConvLoraConfig.expert_scales must be positive integers, got {self.expert_scales}.")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"ConvLoraConfig.top_k must be between 1 and num_experts ({self.num_experts}), got {self.top_k!r}."
            )
        if self.expert_dispatch not in EXPERT_DISPATCHES:
            raise ValueError(
                f"ConvLoraConfig.expert_dispatch must be one of {EXPERT_DISPATCHES}, got {self.expert_dispatch!r}."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"ConvLoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.balance_loss_coef < 0 or self.moe_loss_weight < 0:
            raise ValueError(
                "ConvLoraConfig.balance_loss_coef and moe_loss_weight must be non-negative, got "
                f"{self.balance_loss_coef!r} and {self.moe_loss_weight!r}."
            )
