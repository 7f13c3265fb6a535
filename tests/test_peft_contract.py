"""The PEFT contract every sam-peft tuner keeps, checked the same way for each (in the style of peft's
`tests/testing_common.py`).

Each check runs over `CASES`: a tuner's config on the tiny SAM (128 px), the tiny SAM 2 or SAM 3 tracker (Conv-LoRA,
on every generation) or the tiny `SamForSemanticSegmentation`,
its adapter made non-trivial first (a fresh adapter is often the identity, which would let "same outputs" checks
pass for the wrong reason), and forward inputs that reach every part of it (e.g. SLoRA's point prompts). A new tuner
gets the whole contract with one more `Case` line.

The contract:

- trainable: exactly the parameters the tuner adds (its adapter's weights and the copies of `modules_to_save`);
- several adapters: `add_adapter` adds a frozen, inactive adapter; `set_adapter` switches outputs and trainable
  weights to it; outputs differ per adapter;
- `delete_adapter` (of an inactive, then of the active adapter) leaves the model as if it had never been added;
- `load_adapter` of a saved adapter into a second name gives the same weights and outputs;
- adding a second adapter for inference (as `load_adapter` does), or deleting the active adapter, leaves the
  (remaining) active adapter's weights trainable;
- `disable_adapter()` gives the base model's outputs exactly (and no auxiliary loss);
- `unload()` gives the base model back: the same module objects, hooks, state dict and outputs (peft keeps the
  trained copies of `modules_to_save` in place of the originals);
- `merge_and_unload()`, `merge_adapter()` and each layer's `merge()` are refused with the method's reason and change
  nothing;
- `save_pretrained` writes exactly the adapter's state and config; `PeftModel.from_pretrained` into a fresh base
  model gives the same state dict and outputs, frozen (trainable as before with `is_trainable=True`);
- activation checkpointing recomputes the blocks and gives the same gradients;
- a bfloat16 autocast forward (and backward) runs and stays close to float32, the adapter's effect included.

Exact equalities compare models whose weights require grad alike: some kernels (and their rounding) depend on it.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from torch import nn

from sam_peft import (
    CadConfig,
    ConvLoraConfig,
    SamAdapterConfig,
    SamForSemanticSegmentation,
    SamSemanticSegmentationConfig,
    SloraConfig,
    auxiliary_loss,
    random_sam,
    sam_config,
)
from sam_peft.modeling import init_vision_weights_

Perturb = Callable[[PeftModel, str, int], None]


def sam() -> nn.Module:
    """The tiny `SamModel` (128 px, 4 blocks of width 32, 16 x 16 tokens in 4 x 4 windows), in eval mode."""
    return random_sam("tiny", seed=0)


def sam2() -> nn.Module:
    """The tiny `Sam2Model` (128 px, four Hiera stages of widths 16..128, windows 4, 2, 4, 2, one global block)."""
    return random_sam("sam2-tiny", seed=0)


def sam3() -> nn.Module:
    """The tiny `Sam3TrackerModel` (112 px, 4 blocks of width 32 on 8 x 8 tokens, separate q, k, v projections)."""
    return random_sam("sam3-tiny", seed=0)


def semantic() -> nn.Module:
    """The tiny binary `SamForSemanticSegmentation`, in eval mode; its mask decoder is the default
    `modules_to_save`."""
    torch.manual_seed(0)
    model = SamForSemanticSegmentation(SamSemanticSegmentationConfig.from_sam_config(sam_config("tiny")))
    return init_vision_weights_(model).eval()


def randomise(std: float) -> Perturb:
    """Makes an adapter non-trivial: N(0, std^2) added to each of its weights (named with the tuner's prefix and the
    adapter's name), its BatchNorm variances scaled by exp(N(0, std^2)), its integer buffers (batch counts) moved,
    and N(0, 0.05^2) added to its copies of `modules_to_save`."""

    def perturb(model: PeftModel, adapter_name: str, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        prefix = model.base_model.prefix
        with torch.no_grad():
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                segments = name.split(".")
                if adapter_name not in segments:
                    continue
                if any(segment.startswith(prefix) for segment in segments):
                    scale = std
                elif "modules_to_save" in segments:
                    scale = 0.05
                else:
                    continue
                noise = torch.randn(tensor.shape, generator=generator) * scale
                if not tensor.is_floating_point():
                    tensor.add_(seed + 3)
                elif segments[-1] == "running_var":
                    tensor.mul_(noise.exp())
                else:
                    tensor.add_(noise)

    return perturb


@dataclass(frozen=True)
class Case:
    """One tuner setting the contract runs on.

    Attributes:
        method: The method's name, as its merge refusal begins ("<method> adapters cannot be merged: ...").
        config: A fresh config of the adapter "default".
        perturb: Makes adapter `name` of a model non-trivial, `perturb(model, name, seed)`.
        inputs: Forward keyword arguments besides `pixel_values`.
        base: Builds the base model (the same weights on every call).
        other: Config of a second adapter (by default `config`); a different one checks that adapters of different
            shapes live side by side.
        bfloat16_tolerance: How far (relative, in norm) the image embedding under bfloat16 autocast may be from
            float32's; the adapter's effect may be 2.5 times as far.
        image_size: Side of the input images.
    """

    method: str
    config: Callable[[], PeftConfig]
    perturb: Perturb
    inputs: dict[str, Any]
    base: Callable[[], nn.Module] = sam
    other: Callable[[], PeftConfig] | None = None
    bfloat16_tolerance: float = 0.02  # bfloat16 keeps about 3 significant digits
    image_size: int = 128

    @property
    def id(self) -> str:
        return f"{self.method}-{self.base.__name__}"

    def other_config(self) -> PeftConfig:
        return (self.other or self.config)()


POINTS = {
    "input_points": torch.tensor([[[[40.0, 70.0], [100.0, 30.0]]], [[[100.0, 20.0], [8.0, 120.0]]]]),
    "input_labels": torch.tensor([[[1, 1]], [[1, 0]]]),
    "multimask_output": False,
}
BOXES = {
    "input_boxes": torch.tensor([[[10.0, 10.0, 90.0, 100.0]], [[30.0, 20.0, 120.0, 80.0]]]),
    "multimask_output": False,
}

CASES = [
    Case(
        "Conv-LoRA",
        ConvLoraConfig,
        randomise(0.1),
        POINTS,
        other=lambda: ConvLoraConfig(r=2, num_experts=4),
        # top-1 routing: a window whose gate logits nearly tie may go to another expert under bfloat16 rounding (of
        # A(x), and of the gate's logits, which autocast computes in bfloat16 despite the gate's `.float()`); with
        # some random adapters a few windows do, and the embedding moves by up to 8%
        bfloat16_tolerance=0.1,
    ),
    Case(
        "Conv-LoRA",
        ConvLoraConfig,
        randomise(0.1),
        POINTS,
        base=sam2,
        other=lambda: ConvLoraConfig(r=2, num_experts=4),
        bfloat16_tolerance=0.1,
    ),
    Case(
        "Conv-LoRA",
        ConvLoraConfig,
        randomise(0.1),
        POINTS,
        base=sam3,
        other=lambda: ConvLoraConfig(r=2, num_experts=4),
        bfloat16_tolerance=0.1,
        image_size=112,
    ),
    Case(
        "CAD",
        lambda: CadConfig(image_size=64, channels=32),
        randomise(0.05),
        {},
        base=semantic,
        other=lambda: CadConfig(image_size=128, channels=32, scale=0.5),
    ),
    Case(
        "CAD",
        lambda: CadConfig(image_size=64, channels=32),
        randomise(0.05),
        POINTS,
        base=sam2,
        other=lambda: CadConfig(image_size=128, channels=32, scale=0.5),
    ),
    Case(
        "CAD",
        lambda: CadConfig(image_size=56, channels=32),
        randomise(0.05),
        POINTS,
        base=sam3,
        other=lambda: CadConfig(image_size=112, channels=32, scale=0.5),
        image_size=112,
    ),
    Case(
        "SAM-Adapter",
        lambda: SamAdapterConfig(scale_factor=8),
        randomise(0.5),
        BOXES,
        other=lambda: SamAdapterConfig(scale_factor=16, layers_to_transform=[0]),
    ),
    Case(
        "SAM-Adapter",
        lambda: SamAdapterConfig(scale_factor=8),
        randomise(0.5),
        POINTS,
        base=sam3,
        other=lambda: SamAdapterConfig(scale_factor=16, layers_to_transform=[0]),
        image_size=112,
    ),
    Case(
        "SLoRA",
        lambda: SloraConfig(r=4),
        randomise(0.5),
        POINTS,
        other=lambda: SloraConfig(r=3, layers_to_transform=[1, 2]),
    ),
    # SAM 2: the one adaptable block of the tiny Hiera's stage 2 (block 3, global); SAM 3: windowed and global blocks
    Case("SLoRA", lambda: SloraConfig(r=4), randomise(0.5), POINTS, base=sam2, other=lambda: SloraConfig(r=3)),
    Case(
        "SLoRA",
        lambda: SloraConfig(r=4),
        randomise(0.5),
        POINTS,
        base=sam3,
        other=lambda: SloraConfig(r=3, layers_to_transform=[1, 2], prompt_layout="official"),
        image_size=112,
    ),
]


@pytest.fixture(params=CASES, ids=lambda case: case.id)
def case(request) -> Case:
    return request.param


@pytest.fixture
def pixel_values(case: Case) -> torch.Tensor:
    """Two random images of the case's size."""
    return torch.randn(2, 3, case.image_size, case.image_size, generator=torch.Generator().manual_seed(1))


_BASES: dict[Callable[[], nn.Module], nn.Module] = {}


def fresh(case: Case) -> nn.Module:
    """A new copy of the case's base model, never adapted (built once and copied: building is slower)."""
    if case.base not in _BASES:
        _BASES[case.base] = case.base()
    return copy.deepcopy(_BASES[case.base])


def adapted(case: Case, base: nn.Module | None = None) -> PeftModel:
    """`base` (a fresh one by default) with the case's adapter "default", made non-trivial, in eval mode."""
    base = base if base is not None else fresh(case)
    torch.manual_seed(0)  # the adapter's initialisation, whatever ran before
    model = get_peft_model(base, case.config())
    case.perturb(model, "default", 0)
    return model.eval()


def outputs(model: nn.Module, case: Case, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every tensor the forward returns (masks and scores, or logits)."""
    result = model(pixel_values=pixel_values, **case.inputs)
    return tuple(value for value in result.values() if isinstance(value, torch.Tensor))


def decoder_input(output: Any) -> torch.Tensor:
    """The image embedding the mask decoder attends to, from a vision encoder's output: SAM's `last_hidden_state`,
    or the last FPN level of SAM 2 and SAM 3."""
    levels = getattr(output, "fpn_hidden_states", None)
    return levels[-1] if levels is not None else output[0]


def image_embeddings(model: nn.Module, case: Case, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision encoder's image embedding in a forward of `model`, as float32: every sam-peft method acts there."""
    captured = []
    handle = model.vision_encoder.register_forward_hook(
        lambda module, args, output: captured.append(decoder_input(output))
    )
    try:
        outputs(model, case, pixel_values)
    finally:
        handle.remove()
    return captured[0].float()


_REFERENCE: dict[str, dict[str, Any]] = {}


def reference(case: Case, pixel_values: torch.Tensor) -> dict[str, Any]:
    """The frozen base model's outputs, and its image embeddings in float32 and under bfloat16 autocast (computed
    once per case)."""
    if case.id not in _REFERENCE:
        base = fresh(case).requires_grad_(False)
        with torch.no_grad():
            result = {"outputs": outputs(base, case, pixel_values)}
            result["embeddings"] = image_embeddings(base, case, pixel_values)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                result["bfloat16 embeddings"] = image_embeddings(base, case, pixel_values)
        _REFERENCE[case.id] = result
    return _REFERENCE[case.id]


def loss(model: nn.Module, case: Case, pixel_values: torch.Tensor) -> torch.Tensor:
    return sum(t.float().square().mean() for t in outputs(model, case, pixel_values)) + auxiliary_loss(model)


def assert_equal(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and torch.equal(a, e), f"max difference {(a - e).abs().max().item():.3g}"


def differ(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """Whether some output differs by more than 1% (in norm), far more than rounding could explain."""
    return any((x - y).norm() > 0.01 * y.norm() for x, y in zip(a, b, strict=True))


def trainable(model: nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


def size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def adapter_weights(model: PeftModel) -> set[str]:
    """Names of the trainable parameters of the tuner's own layers (named with its prefix)."""
    prefix = model.base_model.prefix
    return {name for name in trainable(model) if any(s.startswith(prefix) for s in name.split("."))}


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def assert_no_adapter_named(model: PeftModel, adapter_name: str) -> None:
    """No tuner layer keeps anything of adapter `adapter_name` (weights or per-adapter settings)."""
    for layer in model.modules():
        if isinstance(layer, model.base_model.tuner_layer_cls):
            for attribute in (*layer.adapter_layer_names, *layer.other_param_names):
                assert adapter_name not in getattr(layer, attribute), (type(layer).__name__, attribute)


def test_trainable_weights_and_several_adapters(case, pixel_values):
    """Trainable: exactly what the tuner adds. `add_adapter`, `set_adapter`, and `delete_adapter` of an inactive,
    then of the active adapter."""
    model = adapted(case)
    names, added = trainable(model), size(model) - size(_BASES[case.base])
    assert added > 0 and sum(names.values()) == added  # every parameter the tuner added, nothing else
    assert model.get_nb_trainable_parameters()[0] == added
    prefix = model.base_model.prefix
    assert any(prefix in name for name in names)
    for name in names:
        segments = name.split(".")
        assert "default" in segments, name
        assert "modules_to_save" in segments or any(segment.startswith(prefix) for segment in segments), name

    base_outputs = reference(case, pixel_values)["outputs"]
    first_state = clone_state(model)
    with torch.no_grad():
        first = outputs(model, case, pixel_values)
    assert differ(first, base_outputs)
    before = size(model)
    model.add_adapter("other", case.other_config())  # to a model in eval mode: the new adapter is too
    added = size(model) - before
    case.perturb(model, "other", 1)
    assert trainable(model) == names  # a new adapter starts frozen
    with torch.no_grad():
        assert_equal(outputs(model, case, pixel_values), first)  # and inactive

    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    other_names = trainable(model)
    assert sum(other_names.values()) == added and all("other" in name.split(".") for name in other_names)
    with torch.no_grad():
        second = outputs(model, case, pixel_values)
    assert differ(second, first) and differ(second, base_outputs)
    model.set_adapter("default")
    assert trainable(model) == names
    with torch.no_grad():
        assert_equal(outputs(model, case, pixel_values), first)

    for active in ("default", "other"):  # delete an inactive adapter, then the active one
        if active == "other":
            model.add_adapter("other", case.other_config())
            model.set_adapter("other")
        model.delete_adapter("other")
        assert list(model.peft_config) == ["default"] and model.active_adapters == ["default"]
        assert_same_state(model.state_dict(), first_state)
        assert_no_adapter_named(model, "other")
        if active == "other":
            # peft 0.21 leaves the `modules_to_save` wrappers with no active adapter after the active adapter is
            # deleted (for LoRA too: they fall back to the original, frozen module) until one is set again
            model.set_adapter("default")
        assert trainable(model) == names
        with torch.no_grad():
            assert_equal(outputs(model, case, pixel_values), first)


def test_the_active_adapter_stays_trainable(case):
    """Adding a second adapter for inference (as `load_adapter(..., is_trainable=False)` does), and deleting the
    active adapter, leave the (remaining) active adapter's weights trainable, as with peft's own tuners (LoRA)."""
    model = adapted(case)
    first_trainable, first_adapter = trainable(model), adapter_weights(model)
    config = case.config()
    config.inference_mode = True
    model.add_adapter("second", config)
    assert trainable(model) == first_trainable
    model.set_adapter("second")
    model.delete_adapter("second")
    assert model.active_adapters == ["default"]
    assert adapter_weights(model) == first_adapter  # (peft leaves the `modules_to_save` frozen here, see above)


def test_disable_adapter_gives_the_base_outputs(case, pixel_values):
    model = adapted(case)
    expected = reference(case, pixel_values)["outputs"]
    with torch.no_grad():
        adapted_outputs = outputs(model, case, pixel_values)
        assert differ(adapted_outputs, expected)
        with model.disable_adapter():
            assert_equal(outputs(model, case, pixel_values), expected)
            assert auxiliary_loss(model).item() == 0.0
        assert_equal(outputs(model, case, pixel_values), adapted_outputs)


def test_unload_gives_the_base_model_back(case, pixel_values):
    base = fresh(case)
    original = dict(base.named_modules())
    model = adapted(case, base)
    kept = {  # peft's unload keeps the trained copy of each module in `modules_to_save`
        name: wrapper.modules_to_save["default"]
        for name, wrapper in model.base_model.model.named_modules()
        if isinstance(wrapper, ModulesToSaveWrapper)
    }
    expected = fresh(case).requires_grad_(False)
    for name, module in kept.items():
        expected.get_submodule(name).load_state_dict(module.state_dict())
        expected.get_submodule(name).requires_grad_(True)  # as the kept copy
    expected_modules = dict(expected.named_modules())

    restored = model.unload()
    assert restored is base and not hasattr(restored, "peft_config")
    modules = dict(restored.named_modules())
    assert list(modules) == list(original)
    for name, module in modules.items():
        if name in kept:
            assert module is kept[name]
        elif not any(name.startswith(f"{k}.") for k in kept):
            assert module is original[name], name
        other = expected_modules[name]
        assert (len(module._forward_pre_hooks), len(module._forward_hooks)) == (
            len(other._forward_pre_hooks),
            len(other._forward_hooks),
        ), name
    assert_same_state(restored.state_dict(), expected.state_dict())
    with torch.no_grad():
        assert_equal(outputs(restored, case, pixel_values), outputs(expected, case, pixel_values))


def test_merge_is_refused_with_the_methods_reason(case, pixel_values):
    model = adapted(case)
    with torch.no_grad():
        before = outputs(model, case, pixel_values)
    method = re.escape(case.method)
    layer_cls = model.base_model.tuner_layer_cls
    assert len(layer_cls.merge_refusal) > 20, "each method states its own reason"
    expected = rf"^{method} adapters cannot be merged: {re.escape(layer_cls.merge_refusal)} .*`unload\(\)`"
    for merge in (model.merge_and_unload, model.merge_adapter, model.base_model.merge_adapter):
        with pytest.raises(ValueError, match=expected):
            merge()
    layers = [module for module in model.modules() if isinstance(module, layer_cls)]
    assert layers
    for layer in layers:
        with pytest.raises(ValueError, match=expected):
            layer.merge()
        with pytest.warns(UserWarning, match=rf"^Nothing to unmerge: {method} adapters are never merged"):
            layer.unmerge()
        assert not layer.merged
    with torch.no_grad():
        assert_equal(outputs(model, case, pixel_values), before)


def saved_name(key: str) -> str:
    """The name of a state-dict entry of adapter "default" in the saved file: peft drops the adapter's name and,
    for the copies of `modules_to_save`, the wrapper's."""
    return ".".join(segment for segment in key.split(".") if segment not in ("default", "modules_to_save"))


def test_save_and_load_in_a_fresh_base_model_or_a_second_name(case, pixel_values, tmp_path):
    model = adapted(case)
    model.save_pretrained(tmp_path)
    model_trainable = trainable(model)
    with torch.no_grad():
        model.requires_grad_(False)  # as the models loaded for inference
        expected = outputs(model, case, pixel_values)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not {"model.safetensors", "config.json"} & files

    # the file holds exactly the adapter's state, buffers included
    state = model.state_dict()
    adapter_state = {saved_name(key): value for key, value in state.items() if "default" in key.split(".")}
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(saved) == sorted(adapter_state)
    assert all(torch.equal(saved[key], value) for key, value in adapter_state.items())

    config, original = PeftConfig.from_pretrained(tmp_path), model.peft_config["default"]
    assert type(config) is type(original)
    assert config.auto_mapping["base_model_class"] == type(model.get_base_model()).__name__
    assert {**config.to_dict(), "auto_mapping": None} == {**original.to_dict(), "inference_mode": True}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(fresh(case), tmp_path).eval()
    assert not [str(w.message) for w in caught if "keys" in str(w.message)]  # missing or unexpected keys
    assert_same_state(loaded.state_dict(), state)
    assert not trainable(loaded)  # for inference
    with torch.no_grad():
        assert_equal(outputs(loaded, case, pixel_values), expected)
    again = PeftModel.from_pretrained(fresh(case), tmp_path, is_trainable=True)
    assert trainable(again) == model_trainable

    # `load_adapter` into a second name of the model: the same weights, the same outputs
    model.load_adapter(tmp_path, adapter_name="second")
    assert list(model.peft_config) == ["default", "second"] and model.active_adapters == ["default"]
    assert model.peft_config["second"].inference_mode
    state = model.state_dict()
    defaults = [key for key in state if "default" in key.split(".")]
    assert len(defaults) == sum("second" in key.split(".") for key in state)
    for key in defaults:
        renamed = ".".join("second" if segment == "default" else segment for segment in key.split("."))
        assert torch.equal(state[renamed], state[key]), key
    model.set_adapter("second")
    with torch.no_grad():
        model.requires_grad_(False)
        assert_equal(outputs(model, case, pixel_values), expected)


def test_activation_checkpointing_gives_the_same_gradients(case, pixel_values):
    model = adapted(case).train()
    if not model.supports_gradient_checkpointing:  # transformers' Sam2Model and Sam3TrackerModel (5.25)
        with pytest.raises(ValueError, match="does not support activation checkpointing"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    encoder = model.vision_encoder
    calls = []  # of the last block's MLP, inside its checkpointed forward: a recomputation shows
    encoder.layers[-1].mlp.register_forward_pre_hook(lambda *args: calls.append(encoder.gradient_checkpointing))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert encoder.gradient_checkpointing is checkpointing
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same random draws (e.g. gate noise) in both runs
        loss(model, case, pixel_values).backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.requires_grad})
    assert all(grad is not None for grad in grads[0].values())
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # recomputed in backward when autograd runs through the blocks (not with CAD: it runs the encoder without)
    recomputed = any(p.requires_grad for p in encoder.layers.parameters())
    assert calls == ([False, True, True] if recomputed else [False, True])


def test_bfloat16_autocast_runs_and_stays_close(case, pixel_values):
    """A training step under bfloat16 autocast, compared with float32 at the image embedding, where every method
    acts: the tiny SAM's decoder alone turns bfloat16's rounding into errors of 10% and more of its small outputs."""
    model = adapted(case).train()
    with torch.no_grad():
        torch.manual_seed(0)  # the same random draws (e.g. gate noise) in both forwards
        full = image_embeddings(model, case, pixel_values)
    captured = []
    model.vision_encoder.register_forward_hook(lambda module, args, output: captured.append(decoder_input(output)))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(model, case, pixel_values)
    value.backward()
    half = captured[0].detach().float()
    assert torch.isfinite(value) and torch.isfinite(half).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert (half - full).norm() <= case.bfloat16_tolerance * full.norm()
    base = reference(case, pixel_values)  # (the base model has no layer that trains differently)
    effect, half_effect = full - base["embeddings"], half - base["bfloat16 embeddings"]
    assert (half_effect - effect).norm() <= 2.5 * case.bfloat16_tolerance * effect.norm()  # the adapter's survives
