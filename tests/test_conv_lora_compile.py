"""Conv-LoRA under `torch.compile` and `torch.export` (issue #22), and its dense expert dispatch.

The dense dispatch (every expert on every window, weighted by the gates) must give what the grouped one gives, in
evaluation and in training with the same noise draw. Compiled, neither dispatch may recompile after the first call
at a fixed input shape (the routing changes between training calls); the dense one compiles into graphs without a
break, the grouped one breaks only at its eager expert call (its one host read). The counting uses the "eager"
backend: graph capture and guards are dynamo's, whatever backend compiles the graphs, and it compiles in seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from peft import PeftConfig, get_peft_model
from torch._dynamo.utils import counters

from sam_peft import ConvLoraConfig, auxiliary_loss, random_sam
from sam_peft.tuners.conv_lora import ConvExperts, set_expert_dispatch

IMAGE = 128  # the tiny SAM's input size
# Dense and grouped run the same convolutions on batches of other sizes (all windows against each expert's windows):
# the kernels may block them differently, so they agree to float32 rounding, not always bitwise.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def conv_lora_sam(dispatch: str = "grouped", seed: int = 0, **kwargs) -> torch.nn.Module:
    """The tiny random SAM with Conv-LoRA (B non-zero, so the experts reach the output) and a trained decoder."""
    torch.manual_seed(seed)
    config = ConvLoraConfig(init_weights=False, expert_dispatch=dispatch, modules_to_save=["mask_decoder"], **kwargs)
    return get_peft_model(random_sam("tiny", seed=seed), config)


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def run(model: torch.nn.Module, x: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
    """Masks, balance loss and (training) the gradients of every trainable parameter."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same gate noise draw for both dispatches
    masks = model(pixel_values=x, multimask_output=False).pred_masks
    loss = auxiliary_loss(model)
    result = {"masks": masks.detach(), "balance": loss.detach()}
    if train:
        (masks.square().mean() + loss).backward()
        result |= {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return result


def test_config_default_and_validation():
    assert ConvLoraConfig().expert_dispatch == "grouped"
    assert ConvLoraConfig(expert_dispatch="dense").expert_dispatch == "dense"
    with pytest.raises(ValueError, match="expert_dispatch"):
        ConvLoraConfig(expert_dispatch="sparse")
    # an adapter config saved before the option loads with the grouped dispatch
    saved = ConvLoraConfig().to_dict()
    del saved["expert_dispatch"]
    assert PeftConfig.from_peft_type(**saved).expert_dispatch == "grouped"
    with pytest.raises(ValueError, match="expert_dispatch"):
        ConvExperts(3, [1, 2], dispatch="all")


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_dense_equals_grouped(train, top_k):
    x = pixels()
    grouped = run(conv_lora_sam("grouped", top_k=top_k), x, train)
    dense = run(conv_lora_sam("dense", top_k=top_k), x, train)
    assert grouped.keys() == dense.keys()
    assert any("experts" in name for name in grouped) == train
    for name in grouped:
        torch.testing.assert_close(dense[name], grouped[name], **TOLERANCE, msg=name)


def test_set_expert_dispatch_switches_a_model():
    model = conv_lora_sam("grouped").eval()
    x = pixels()
    with torch.no_grad():
        before = model(pixel_values=x, multimask_output=False).pred_masks
        assert len(set_expert_dispatch(model, "dense")) == 4  # the tiny SAM's 4 blocks
        after = model(pixel_values=x, multimask_output=False).pred_masks
    assert model.peft_config["default"].expert_dispatch == "dense"
    assert all(m.dispatch == "dense" for m in model.modules() if isinstance(m, ConvExperts))
    torch.testing.assert_close(after, before, **TOLERANCE)


def compile_and_count(model: torch.nn.Module, train: bool, calls: int = 3) -> tuple[dict, list]:
    """Compile one forward (and backward in training) with the eager backend, run it `calls` times with
    recompilation an error after the first, and return dynamo's graph-break reasons and the outputs."""
    x = pixels()
    model.train(train)

    def step():
        masks = model(pixel_values=x, multimask_output=False).pred_masks
        if train:
            (masks.square().mean() + auxiliary_loss(model)).backward()
        return masks

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="eager")
    outputs = [compiled().detach()]
    breaks = dict(counters["graph_break"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        outputs += [compiled().detach() for _ in range(calls - 1)]  # raises on a recompilation
    torch._dynamo.reset()
    return breaks, outputs


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compiled_dense_has_no_graph_break_nor_recompilation(train):
    model = conv_lora_sam("dense")
    breaks, outputs = compile_and_count(model, train)
    # the only break in training is `loss.backward()` in the step itself, outside the model
    assert sum(breaks.values()) == (1 if train else 0), breaks
    if not train:
        with torch.no_grad():
            eager = model(pixel_values=pixels(), multimask_output=False).pred_masks
        torch.testing.assert_close(outputs[-1], eager, **TOLERANCE)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compiled_grouped_breaks_only_at_the_experts_and_does_not_recompile(train):
    model = conv_lora_sam("grouped")
    breaks, outputs = compile_and_count(model, train)  # training: the noise reroutes each call, no recompilation
    reasons = [reason for reason in breaks if "_grouped_eager" not in reason and "backward" not in reason]
    assert not reasons, reasons
    # one eager expert call per block; dynamo counts it once per frame it interrupts (block, attention, qkv,
    # experts), plus once where the break interrupts a context manager of transformers' encoder
    assert sum(breaks.values()) <= 4 * 4 + 1 + train, breaks
    if not train:
        with torch.no_grad():
            eager = model(pixel_values=pixels(), multimask_output=False).pred_masks
        torch.testing.assert_close(outputs[-1], eager, **TOLERANCE)


@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
def test_export_vision_encoder(dispatch):
    """torch.export traces the dense path whatever the configured dispatch, and matches eager."""
    model = conv_lora_sam(dispatch).eval()
    encoder = model.base_model.model.vision_encoder
    x = pixels()
    program = torch.export.export(encoder, (), {"pixel_values": x})
    assert all(m.dispatch == dispatch for m in model.modules() if isinstance(m, ConvExperts))
    with torch.no_grad():
        exported = program.module()(pixel_values=x)[0]
        eager = encoder(pixel_values=x)[0]
        set_expert_dispatch(model, "dense")
        eager_dense = encoder(pixel_values=x)[0]
    torch.testing.assert_close(exported, eager_dense, rtol=0, atol=0)  # the same kernels
    # against the grouped path: the embeddings (up to about 4 here) agree to about 1e-5 (3e-6 relative to their
    # largest), float32 rounding of convolutions run on batches of other sizes
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=5e-5)
