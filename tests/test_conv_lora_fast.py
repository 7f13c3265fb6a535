"""Conv-LoRA's grouped expert path (`ConvExperts.forward`) against a per-expert re-computation (`reference_mixture`).

Both paths get the same weights and the same routing; outputs and gradients (experts, gate, A, B, input) must agree
to float tolerance, in fp32 and in bf16, for the bank alone, for one layer and for the windowed and global blocks of a
tiny SAM.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from torch.overrides import TorchFunctionMode

from sam_peft import ConvLoraConfig, auxiliary_loss, random_sam
from sam_peft.tuners.conv_lora import ConvExperts, Linear, NoisyTopKGate
from sam_peft.tuners.conv_lora.experts import ExpertRouting

SCALES = list(range(1, 9))
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}
DTYPES = [torch.float32, torch.bfloat16]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, rtol=tolerance["rtol"], atol=tolerance["atol"] * scale)


def top_k_gates(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Gates (N, M) as the gate builds them: softmax over the top-k logits, zeros elsewhere."""
    values, indices = logits.topk(top_k, dim=1)
    return torch.zeros_like(logits).scatter(1, indices, torch.softmax(values, dim=1))


def reference_mixture(experts: ConvExperts, z: torch.Tensor, gates: torch.Tensor, routing=None) -> torch.Tensor:
    """`sum_i G_i * E_i(z)` for z (N, r, h, w) and gates (N, M), one expert at a time on the windows it received."""
    mixture = torch.zeros_like(z, memory_format=torch.contiguous_format)
    for index in range(len(experts.scales)):
        rows = gates[:, index].nonzero().squeeze(1)  # windows routed to this expert
        if rows.numel() == 0:
            continue
        weight = gates[rows, index].to(z.dtype)[:, None, None, None]
        mixture = mixture.index_add(0, rows, experts.expert(index, z[rows].contiguous()) * weight)
    return mixture


def use_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes every `ConvExperts` compute `reference_mixture` for the rest of the test."""
    monkeypatch.setattr(ConvExperts, "forward", reference_mixture)


def run_experts(experts: ConvExperts, z: torch.Tensor, gates: torch.Tensor, reference: bool) -> dict[str, torch.Tensor]:
    """Output of the bank and the gradients of a fixed random objective w.r.t. z, gates and the expert weights."""
    experts.zero_grad(set_to_none=True)
    z = z.detach().requires_grad_()
    gates = gates.detach().requires_grad_()
    out = reference_mixture(experts, z, gates) if reference else experts(z, gates)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.dtype)
    (out.float() * probe.float()).sum().backward()
    return {
        "out": out.detach(),
        "z": z.grad,
        "gates": gates.grad,
        "weight": experts.weight.grad,
        "bias": experts.bias.grad,
    }


def compare(fast: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    assert fast.keys() == reference.keys()
    for name, expected in reference.items():
        assert expected is not None, name
        # gradients summed over many windows and pixels are larger than the outputs: scale atol with their size
        scale = max(1.0, expected.float().abs().max().item())
        assert_close(fast[name], expected, dtype, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(len(SCALES)))
def test_each_expert_scale(index, dtype):
    torch.manual_seed(index)
    experts = ConvExperts(rank=3, scales=SCALES).to(dtype)
    z = torch.randn(5, 3, 6, 6).to(dtype)
    gates = F.one_hot(torch.full((5,), index), len(SCALES)).float()
    compare(run_experts(experts, z, gates, False), run_experts(experts, z, gates, True), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_mixed_routing_with_an_idle_expert(top_k, dtype):
    torch.manual_seed(top_k)
    experts = ConvExperts(rank=3, scales=SCALES).to(dtype)
    z = torch.randn(16, 3, 5, 5).to(dtype)
    logits = torch.randn(16, len(SCALES)) * 3
    logits[:, 5] = -torch.inf  # expert 5 receives no window
    gates = top_k_gates(logits, top_k)
    used = (gates != 0).sum(0)
    assert used[5] == 0 and (used > 0).sum() >= 4, "the test should route to several experts and leave one idle"
    assert torch.equal((gates != 0).sum(1), torch.full((16,), top_k))
    compare(run_experts(experts, z, gates, False), run_experts(experts, z, gates, True), dtype)


def test_no_window_routed():
    experts = ConvExperts(rank=2, scales=[1, 2])
    z = torch.randn(3, 2, 4, 4)
    assert torch.equal(experts(z, torch.zeros(3, 2)), torch.zeros_like(z))


def test_routing_groups_pairs_by_expert():
    gates = torch.tensor([[0.0, 0.7, 0.3], [1.0, 0.0, 0.0], [0.0, 0.4, 0.6], [0.0, 1.0, 0.0]])
    routing = ExpertRouting(gates)
    assert routing.counts == [1, 3, 2]
    assert routing.rows.tolist() == [1, 0, 2, 3, 0, 2]
    torch.testing.assert_close(routing.weights, torch.tensor([1.0, 0.7, 0.4, 1.0, 0.3, 0.6]))


def test_channels_last_input_gives_the_same_result():
    torch.manual_seed(0)
    experts = ConvExperts(rank=3, scales=SCALES)
    z = torch.randn(8, 3, 4, 4)
    gates = top_k_gates(torch.randn(8, len(SCALES)), 2)
    out = experts(z.contiguous(memory_format=torch.channels_last), gates)
    assert out.is_contiguous()
    torch.testing.assert_close(out, reference_mixture(experts, z, gates), rtol=1e-5, atol=1e-6)


def make_layer(top_k: int, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    layer = Linear(nn.Linear(16, 48), "default", ConvLoraConfig(top_k=top_k, init_weights=False))
    with torch.no_grad():
        layer.conv_lora_gate["default"].weight.normal_(std=3.0)  # varied routing across the windows
        layer.conv_lora_gate["default"].noise_weight.normal_(std=0.5)
    return layer.train()


def run_layer(layer: Linear, x: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Output, balance loss and the gradients of all adapter weights of one noisy training forward."""
    layer.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same gate noise for both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = layer(x)
    loss = layer.auxiliary_loss_slot.value
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    ((out.float() * probe).sum() + loss).backward()
    grads = {name: p.grad for name, p in layer.named_parameters() if p.requires_grad}
    return {"out": out.detach(), "loss": loss.detach(), **grads}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_layer_forward_and_backward(top_k, dtype, monkeypatch):
    layer = make_layer(top_k)
    x = torch.randn(12, 5, 5, 16)
    fast = run_layer(layer, x, dtype)
    use_reference(monkeypatch)
    reference = run_layer(layer, x, dtype)
    assert torch.count_nonzero(fast["conv_lora_gate.default.weight"]) > 0
    assert torch.count_nonzero(fast["conv_lora_experts.default.weight"]) > 0
    compare(fast, reference, dtype)


class SyncOps(TorchFunctionMode):
    """Records the calls that read a tensor's values on the host (a device synchronisation on a GPU)."""

    NAMES = frozenset(
        {"item", "tolist", "nonzero", "argwhere", "unique", "masked_select", "numpy", "__bool__", "__int__"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("training", [True, False])
def test_layer_reads_the_device_once(training, monkeypatch):
    layer = make_layer(top_k=2).train(training)
    x = torch.randn(12, 5, 5, 16)
    with SyncOps() as fast:
        layer(x)
    use_reference(monkeypatch)
    with SyncOps() as reference:
        layer(x)
    assert fast.calls == ["tolist"]
    assert reference.calls.count("nonzero") == len(SCALES)


def sam_with_adapters(top_k: int) -> nn.Module:
    model = get_peft_model(random_sam("tiny", seed=0), ConvLoraConfig(top_k=top_k, init_weights=False))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "conv_lora_gate" in name:
                param.normal_(std=3.0)
    return model.train()


def run_sam(model: nn.Module, pixel_values: torch.Tensor, dtype: torch.dtype) -> dict:
    """Masks, auxiliary loss and gradients of every adapter weight of one noisy training step."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        masks = model(pixel_values=pixel_values, multimask_output=False).pred_masks.float()
    loss = auxiliary_loss(model)
    (masks.square().mean() + loss).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return {"masks": masks.detach(), "loss": loss.detach(), **grads}


def record_blocks(model: nn.Module) -> tuple[list, list]:
    """Hooks recording the shape of z and the experts used at each call of the experts; returns (records, handles)."""
    records = []

    def hook(module, args, output):
        z, gates = args[:2]
        records.append((tuple(z.shape), frozenset((gates != 0).any(0).nonzero().flatten().tolist())))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ConvExperts)]
    return records, handles


def forced_gate(index: int):
    """A `NoisyTopKGate.forward` that routes every window to expert `index` and keeps the real balance loss."""
    original = NoisyTopKGate.forward

    def forward(self, z):
        gates, loss = original(self, z)
        return F.one_hot(torch.full((z.shape[0],), index), gates.shape[1]).to(gates), loss

    return forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(len(SCALES)))
def test_tiny_sam_each_expert(index, dtype, monkeypatch, pixel_values):
    model = sam_with_adapters(top_k=1)
    records, handles = record_blocks(model)
    monkeypatch.setattr(NoisyTopKGate, "forward", forced_gate(index))
    fast = run_sam(model, pixel_values, dtype)
    for handle in handles:
        handle.remove()
    # 128 px: 16 x 16 tokens; windowed blocks see 2 x 16 windows of 4 x 4, global blocks the 2 whole maps
    assert {shape for shape, _ in records} == {(32, 3, 4, 4), (2, 3, 16, 16)}
    assert {experts for _, experts in records} == {frozenset({index})}
    use_reference(monkeypatch)
    compare(fast, run_sam(model, pixel_values, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_k", [1, 2])
def test_tiny_sam_mixed_routing(top_k, dtype, pixel_values, monkeypatch):
    model = sam_with_adapters(top_k)
    records, handles = record_blocks(model)
    fast = run_sam(model, pixel_values, dtype)
    for handle in handles:
        handle.remove()
    windowed = [experts for shape, experts in records if shape[0] == 32]
    assert windowed and all(len(experts) > top_k for experts in windowed), "every windowed block should mix experts"
    assert any(len(experts) < len(SCALES) for _, experts in records), "some expert should receive no window"
    use_reference(monkeypatch)
    compare(fast, run_sam(model, pixel_values, dtype), dtype)
