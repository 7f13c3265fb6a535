"""Conv-LoRA's convolutional experts and the grouping of windows by expert.

The fast path (`ConvExperts.forward`) sorts the (window, expert) pairs with a non-zero gate by expert once, gathers
the windows in that order, runs one batched resize-conv-resize per expert that received any window, and scatters the
gate-weighted results back with one `index_add`. It needs one number per expert on the host (how many windows it
received, to size its batch), so it synchronises with the device once per call, where running the experts one
after another on their `nonzero` windows would synchronise once per expert.

Why one synchronisation remains: each expert resizes by its own scale, so its windows form a batch of their own whose
length depends on the routing. Kernels launched from Python need that length on the host. The alternatives without it
cost more than the wait: running every expert on every window (masked) or on a fixed capacity of windows multiplies
the work of the expensive large-scale experts (the scale-8 expert alone is 64 times the scale-1 one), and reading the
group bounds on the device needs a custom fused kernel. On a GPU the wait overlaps with the base projection (see
`ExpertRouting`).

Under `torch.compile` the grouped path runs eagerly (`torch.compiler.disable`): its one host read is the layer's only
graph break, and nothing in it is specialised per expert index or per routing, so a compiled model is not recompiled
when the routing changes. The dense path (`ConvExperts.dense`, `ConvLoraConfig(expert_dispatch="dense")`, and always
under `torch.export`) runs every expert on every window and weights its output by the gates (zero for the experts a
window is not routed to): no host read and no data-dependent shape, so it compiles into one graph and exports, at the
price of the full expert cost: with the default scales 1..8 and top-1 routing about 8 times the experts' work of the
grouped path (sum of s^2 over the experts against one expert's s^2 per window, 204 against 25.5 on average), see
benchmarks/conv_lora_cost.py. For export and compiled inference, not for training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EXPERT_DISPATCHES = ("grouped", "dense")


class ExpertRouting:
    """The (window, expert) pairs with a non-zero gate, grouped by expert.

    From gates (N, M): `rows` (S,) is the window of each pair and `weights` (S,) its gate value, sorted by expert and,
    within an expert, by window (the order of `nonzero`); `counts`, the number of pairs of each expert (M ints on the
    host), splits them into one group per expert. S = sum(counts) is N * k for top-k gates. The sort runs on the
    device without synchronising; on CUDA the counts are copied to pinned host memory asynchronously as soon as they
    are computed, and reading `counts` waits only for that copy, not for work queued after it.
    """

    def __init__(self, gates: torch.Tensor) -> None:
        num_experts = gates.shape[1]
        selected = gates != 0  # (N, M)
        expert_ids = torch.arange(num_experts, device=gates.device)
        # pair (n, i) at n * M + i; its sort key is its expert, or M (after every expert) when it is not routed
        keys = torch.where(selected, expert_ids, num_experts).flatten()  # (N * M,)
        order = keys.argsort(stable=True)
        self._rows = order // num_experts  # (N * M,), routed pairs first
        self._weights = gates.flatten().index_select(0, order)  # (N * M,)
        self._counts = selected.sum(0)  # (M,)
        self._ready = None
        if self._counts.is_cuda:
            self._counts = self._counts.to("cpu", non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        self._host_counts: list[int] | None = None

    @property
    def counts(self) -> list[int]:
        """Pairs routed to each expert (M,): the one host synchronisation of the fast path."""
        if self._host_counts is None:
            if self._ready is not None:
                self._ready.synchronize()
            self._host_counts = self._counts.tolist()
        return self._host_counts

    @property
    def rows(self) -> torch.Tensor:
        """Window index of each routed pair (S,), grouped by expert."""
        return self._rows[: sum(self.counts)]

    @property
    def weights(self) -> torch.Tensor:
        """Gate value of each routed pair (S,), in the order of `rows`."""
        return self._weights[: sum(self.counts)]


class ConvExperts(nn.Module):
    """M convolutional experts `E_i(z) = resize(GELU(conv3x3_i(resize(z, s_i))), (h, w))`, bicubic both ways.

    The expert weights are stacked: `weight` (M, r, r, 3, 3) and `bias` (M, r), so that one adapter's experts
    are two tensors in its state dict. Each conv is initialised like PyTorch's `nn.Conv2d` default, biases at 0.
    """

    def __init__(self, rank: int, scales: list[int], dispatch: str = "grouped") -> None:
        super().__init__()
        self.scales = list(scales)
        self.dispatch = dispatch
        self.weight = nn.Parameter(torch.empty(len(scales), rank, rank, 3, 3))
        self.bias = nn.Parameter(torch.zeros(len(scales), rank))
        for expert_weight in self.weight.data:
            nn.init.kaiming_uniform_(expert_weight, a=math.sqrt(5))

    def expert(self, index: int, z: torch.Tensor) -> torch.Tensor:
        """Expert `index` on z (n, r, h, w) -> (n, r, h, w)."""
        height, width = z.shape[-2:]
        scale = self.scales[index]
        if scale != 1:
            z = F.interpolate(z, size=(height * scale, width * scale), mode="bicubic", align_corners=False)
        z = F.gelu(F.conv2d(z, self.weight[index], self.bias[index], padding=1))
        if scale != 1:
            z = F.interpolate(z, size=(height, width), mode="bicubic", align_corners=False)
        return z

    def route(self, gates: torch.Tensor) -> ExpertRouting:
        """Group the windows of gates (N, M) by expert; see `ExpertRouting`."""
        return ExpertRouting(gates)

    @property
    def dispatch(self) -> str:
        """How `forward` runs the experts: "grouped" (each on its routed windows) or "dense" (each on every window)."""
        return self._dispatch

    @dispatch.setter
    def dispatch(self, value: str) -> None:
        if value not in EXPERT_DISPATCHES:
            raise ValueError(f"Conv-LoRA expert_dispatch must be one of {EXPERT_DISPATCHES}, got {value!r}.")
        self._dispatch = value

    def uses_dense(self) -> bool:
        """Whether `forward` takes the dense path: when asked to, and always under `torch.export` (the grouped path's
        batch sizes depend on the routing, which export cannot trace)."""
        return self.dispatch == "dense" or torch.compiler.is_exporting()

    def forward(self, z: torch.Tensor, gates: torch.Tensor, routing: ExpertRouting | None = None) -> torch.Tensor:
        """`sum_i G_i * E_i(z)` for z (N, r, h, w) and gates (N, M), by `dispatch` (see the module docstring).

        `routing` is `self.route(gates)` when the caller computed it ahead (grouped path only).
        """
        if self.uses_dense():
            return self.dense(z, gates)
        if torch.compiler.is_compiling():
            return _grouped_eager(self, z, gates, None)
        return self.grouped(z, gates, routing)

    def dense(self, z: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """`sum_i G_i * E_i(z)` with every expert run on every window, sync-free and with static shapes.

        The outputs are added expert by expert onto zeros, the grouped path's order, and a window's unrouted experts
        add `0 * E_i(z)`, an exact zero (their outputs are finite), so both paths agree to the float rounding of the
        convolutions and resizes run on batches of another size (the kernels may block them differently): on the tiny
        SAM the masks agree to 1e-6 and the image embeddings to about 3e-6 relative in float32. In training the
        gradients agree likewise: an unrouted gate's gradient does not reach the gate's weights (the gates scatter
        the top-k values into zeros), and `0 * dE_i/dz` adds exact zeros to z's. It also keeps every expert's
        activations for the backward pass, about M times the grouped path's for top-1.
        """
        mixture = torch.zeros_like(z, memory_format=torch.contiguous_format)
        gates = gates.to(z.dtype)
        for index in range(len(self.scales)):
            mixture = mixture + self.expert(index, z) * gates[:, index, None, None, None]
        return mixture

    def grouped(self, z: torch.Tensor, gates: torch.Tensor, routing: ExpertRouting | None = None) -> torch.Tensor:
        """`sum_i G_i * E_i(z)`: each expert runs once, on all of its windows.

        The results are added expert by expert onto zeros, the order of running the experts one after another, so
        both agree to rounding.
        """
        routing = self.route(gates) if routing is None else routing
        counts = routing.counts
        mixture = torch.zeros_like(z, memory_format=torch.contiguous_format)
        if sum(counts) == 0:
            return mixture
        rows = routing.rows
        grouped = z.index_select(0, rows)  # (S, r, h, w), contiguous whatever the layout of z
        outputs = [self.expert(i, group) for i, group in enumerate(grouped.split(counts)) if counts[i] > 0]
        outputs = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # (S, r, h, w)
        weighted = outputs * routing.weights.to(z.dtype)[:, None, None, None]
        return mixture.index_add(0, rows, weighted.to(mixture.dtype))


@torch.compiler.disable
def _grouped_eager(experts: ConvExperts, z: torch.Tensor, gates: torch.Tensor, routing) -> torch.Tensor:
    """The grouped path outside any compiled graph: one graph break, and no guard on the routing or expert index."""
    return experts.grouped(z, gates, routing)
