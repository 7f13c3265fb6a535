"""Conv-LoRA layers: a noisy top-k gate, a bank of convolutional experts, and the adapted Linear."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..auxiliary import AuxiliaryLossSlot
from ..base import UnmergeableLayer
from .config import ConvLoraConfig
from .experts import ConvExperts, ExpertRouting


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation `var(v) / (mean(v)^2 + 1e-10)` (unbiased variance) of a 1-D tensor.

    Zero for a single element. Small when the entries are equal: the balance loss pushes towards uniform use.
    """
    values = values.float()
    if values.numel() <= 1:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + 1e-10)


def standard_normal_cdf(value: torch.Tensor) -> torch.Tensor:
    """`Normal(0, 1).cdf(value)`, torch.distributions' formula without building a distribution (whose argument
    checks read tensors on the host, and whose construction `torch.compile` does not trace in one graph)."""
    return 0.5 * (1 + torch.erf(value / math.sqrt(2)))


class NoisyTopKGate(nn.Module):
    """Routes each sample to its top-k experts from the spatial mean of its bottleneck features.

    Parameters: `weight` (r, M) for the clean logits and, with noisy gating, `noise_weight` (r, M) for the
    learned noise scale. Both start at zero (the official initialisation).
    """

    def __init__(self, rank: int, num_experts: int, top_k: int, noisy: bool, loss_coef: float) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.loss_coef = loss_coef
        self.weight = nn.Parameter(torch.zeros(rank, num_experts))
        self.noise_weight = nn.Parameter(torch.zeros(rank, num_experts)) if noisy else None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (N, r, h, w) -> gates (N, M) with k non-zeros per row summing to 1, and the balance loss (0-dim)."""
        features = z.mean(dim=(2, 3)).float()  # (N, r)
        clean_logits = features @ self.weight.float()  # (N, M)
        noisy = self.noise_weight is not None and self.training
        if noisy:
            noise_std = F.softplus(features @ self.noise_weight.float()) + 0.01  # (N, M)
            logits = clean_logits + torch.randn_like(clean_logits) * noise_std
        else:
            logits = clean_logits
        # the (k+1)-th largest logit is the threshold of the smooth load estimate
        top_logits, top_indices = logits.topk(min(self.top_k + 1, self.num_experts), dim=1)
        kept = torch.softmax(top_logits[:, : self.top_k], dim=1)  # (N, k)
        gates = torch.zeros_like(logits).scatter(1, top_indices[:, : self.top_k], kept)  # (N, M)

        importance = gates.sum(0)  # (M,)
        if noisy and self.top_k < self.num_experts:
            load = self._probability_in_top_k(clean_logits, logits, noise_std, top_logits).sum(0)
        else:
            load = (gates > 0).sum(0)
        loss = self.loss_coef * (cv_squared(importance) + cv_squared(load))
        return gates, loss

    def _probability_in_top_k(
        self,
        clean_logits: torch.Tensor,
        noisy_logits: torch.Tensor,
        noise_std: torch.Tensor,
        top_logits: torch.Tensor,
    ) -> torch.Tensor:
        """P(expert i stays in the top-k under fresh noise), (N, M): a differentiable stand-in for the load.

        An expert inside the top-k must beat the (k+1)-th largest noisy logit; one outside must beat the k-th.
        """
        threshold_if_in = top_logits[:, self.top_k : self.top_k + 1]  # (N, 1)
        threshold_if_out = top_logits[:, self.top_k - 1 : self.top_k]  # (N, 1)
        is_in = noisy_logits > threshold_if_in
        prob_if_in = standard_normal_cdf((clean_logits - threshold_if_in) / noise_std)
        prob_if_out = standard_normal_cdf((clean_logits - threshold_if_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out)


class ConvLoraLayer(UnmergeableLayer):
    """Adapter state shared by Conv-LoRA layers: per adapter A, B, gate, experts, dropout and scaling."""

    method = "Conv-LoRA"
    merge_refusal = (
        "the convolutional experts resize and convolve each window's bottleneck features over space and route each "
        "window on its own, which no single linear weight can express."
    )
    adapter_layer_names = ("conv_lora_A", "conv_lora_B", "conv_lora_gate", "conv_lora_experts")
    other_param_names = ("r", "lora_alpha", "scaling", "conv_lora_dropout")

    def __init__(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.conv_lora_dropout = nn.ModuleDict({})
        self.conv_lora_A = nn.ModuleDict({})
        self.conv_lora_B = nn.ModuleDict({})
        self.conv_lora_gate = nn.ModuleDict({})
        self.conv_lora_experts = nn.ModuleDict({})
        self.auxiliary_loss_slot = AuxiliaryLossSlot()
        self._disable_adapters = False
        self.merged_adapters = []
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"Conv-LoRA adapts nn.Linear layers (SAM's fused qkv); got {type(base_layer).__name__}.")
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features

    def update_layer(self, adapter_name: str, config: ConvLoraConfig) -> None:
        """Create the weights of adapter `adapter_name` from `config` on the base layer's device."""
        r = config.r
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = config.lora_alpha
        self.scaling[adapter_name] = config.lora_alpha / r
        dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.conv_lora_dropout[adapter_name] = dropout
        self.conv_lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.conv_lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=False)
        self.conv_lora_gate[adapter_name] = NoisyTopKGate(
            r, config.num_experts, config.top_k, config.noisy_gating, config.balance_loss_coef
        )
        self.conv_lora_experts[adapter_name] = ConvExperts(
            r, config.expert_scales, getattr(config, "expert_dispatch", "grouped")
        )
        nn.init.kaiming_uniform_(self.conv_lora_A[adapter_name].weight, a=math.sqrt(5))
        if config.init_weights:
            nn.init.zeros_(self.conv_lora_B[adapter_name].weight)
        else:
            nn.init.normal_(self.conv_lora_B[adapter_name].weight, std=1.0 / r)
        for name in (*self.adapter_layer_names, "conv_lora_dropout"):
            # an adapter added to a model in eval mode must not route with training noise
            getattr(self, name)[adapter_name].train(self.training)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)


class Linear(nn.Module, ConvLoraLayer):
    """An `nn.Linear` on channels-last 4-D input (N, h, w, C) with Conv-LoRA adapters.

    In SAM's windowed blocks N counts windows, so each window is convolved and routed on its own; in global
    blocks N is the batch. Several active adapters add up; each adds its balance loss to the layer's
    auxiliary loss.
    """

    def __init__(self, base_layer: nn.Linear, adapter_name: str, config: ConvLoraConfig) -> None:
        super().__init__()
        ConvLoraLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def bottleneck(
        self, adapter_name: str, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, ExpertRouting | None, torch.Tensor]:
        """For x (N, h, w, in): `z = A(dropout(x))` (N, r, h, w), its gates (N, M), their routing (None on the dense
        path and under `torch.compile`, which route inside the experts) and the balance loss (0-dim).

        z stays a channels-last view of A's output (no copy): the experts gather their windows into a contiguous
        batch anyway, and the up-projection reads z back as (N * h * w, r) without a copy.
        """
        down = self.conv_lora_A[adapter_name]
        x = self._cast_input_dtype(x, down.weight.dtype)
        z = down(self.conv_lora_dropout[adapter_name](x)).permute(0, 3, 1, 2)  # (N, r, h, w)
        gates, loss = self.conv_lora_gate[adapter_name](z)  # (N, M), ()
        experts = self.conv_lora_experts[adapter_name]
        # the grouped path routes ahead, outside a compiled graph; the dense path and a compiled model need no routing
        routing = None if experts.uses_dense() or torch.compiler.is_compiling() else experts.route(gates)
        return z, gates, routing, loss

    def add_adapter_output(
        self,
        adapter_name: str,
        z: torch.Tensor,
        gates: torch.Tensor,
        routing: ExpertRouting | None,
        result: torch.Tensor,
    ) -> torch.Tensor:
        """`result + (alpha / r) * B(z + experts(z))` for z (N, r, h, w) from `bottleneck` and result (N, h, w, out).

        The up-projection and the scaling are fused into one `addmm` onto `result` (N * h * w, out): the output is
        the layer's largest tensor, so it is read and written once rather than once per elementwise step.
        """
        z = z + self.conv_lora_experts[adapter_name](z, gates, routing=routing)
        z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (N * h * w, r)
        up = (self.conv_lora_B[adapter_name].weight * self.scaling[adapter_name]).t()  # (r, out)
        flat = result.reshape(-1, result.shape[-1])
        return torch.addmm(flat, z.to(flat.dtype), up.to(flat.dtype)).view(result.shape)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.auxiliary_loss_slot.value = None
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        if x.ndim != 4:
            raise ValueError(
                f"Conv-LoRA expects channels-last 4-D input (batch or windows, height, width, channels) as SAM's "
                f"vision blocks give to their qkv; got a {x.ndim}-D tensor of shape {tuple(x.shape)}."
            )
        # The adapters route their windows before the base projection runs: on a GPU the host then waits for the
        # routing's one device-to-host copy while the device is still busy with that projection.
        adapters = [name for name in self.active_adapters if name in self.conv_lora_A]
        bottlenecks = [self.bottleneck(name, x) for name in adapters]
        result = self.base_layer(x, *args, **kwargs)
        total_loss = None
        for name, (z, gates, routing, loss) in zip(adapters, bottlenecks, strict=True):
            result = self.add_adapter_output(name, z, gates, routing, result)
            total_loss = loss if total_loss is None else total_loss + loss
        self.auxiliary_loss_slot.value = total_loss
        return result

    def __repr__(self) -> str:
        return "conv_lora." + super().__repr__()


def set_expert_dispatch(model: nn.Module, dispatch: str) -> list[str]:
    """Set the expert dispatch ("grouped" or "dense", see `ConvLoraConfig.expert_dispatch`) of every Conv-LoRA
    adapter in `model`, and of its Conv-LoRA configs; returns the names of the layers changed. The outputs do not
    change (to rounding): "dense" is the sync-free path for `torch.compile` inference and export."""
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, ConvLoraLayer):
            for experts in module.conv_lora_experts.values():
                experts.dispatch = dispatch
            changed.append(name)
    for config in (getattr(model, "peft_config", None) or {}).values():
        if isinstance(config, ConvLoraConfig):
            config.expert_dispatch = dispatch
    return changed
