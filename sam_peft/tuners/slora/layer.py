"""SLoRA layers: the adapted attention of a vision block, the adapted neck, and the state they share.

Shapes: B images, (g, g) the embedding grid (64 x 64 at 1024 px), C the encoder width, r the rank, N the batch of
tokens an attention module sees (B, or B times the windows per image in windowed blocks), (h, w) its token grid.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..side_layers import BaseLayerAttributes, SideLayer
from .config import SloraConfig
from .heat_map import points_to_heat_map


class SloraSharedState:
    """What all SLoRA layers of one model read besides their own weights.

    - Per adapter, the shared down-projection A (`Linear(C, r)`) and the heat-map projection (`Linear(r, r)` and
      `LayerNorm(r)`). The `SloraModel` owns them (so they are saved once); the layers only refer to them through
      this object, which is no `nn.Module`, so that their state dicts do not repeat them.
    - The heat map (B, g, g) of the current forward pass: set from the point prompts of each forward of the base
      model (`capture_prompts`, a forward pre-hook) or, for the span of a `with`, by `SloraModel.prompt_heat_map`.

    A copied or unpickled state keeps its modules (copied along with the model) but not the heat map.
    """

    def __init__(
        self,
        down: nn.ModuleDict,
        prompt_linear: nn.ModuleDict,
        prompt_norm: nn.ModuleDict,
        grid_size: int,
        input_size: int,
    ) -> None:
        self.down = down
        self.prompt_linear = prompt_linear
        self.prompt_norm = prompt_norm
        self.grid_size = grid_size
        self.input_size = input_size
        self.heat_map: torch.Tensor | None = None
        self.pinned = False  # a `prompt_heat_map` block is open: forwards do not replace the heat map

    def __deepcopy__(self, memo: dict) -> SloraSharedState:
        clone = SloraSharedState.__new__(SloraSharedState)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__getstate__(), memo))
        return clone

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "heat_map": None, "pinned": False}

    def check_heat_map(self, heat_map: torch.Tensor) -> torch.Tensor:
        """`heat_map` as (B, g, g): a (g, g) map gains a batch of 1; raises when it is not on this model's grid."""
        if heat_map.ndim == 2:
            heat_map = heat_map[None]
        if heat_map.ndim != 3 or tuple(heat_map.shape[1:]) != (self.grid_size, self.grid_size):
            raise ValueError(
                f"A SLoRA heat map must have shape (batch, {self.grid_size}, {self.grid_size}) (the image-embedding "
                f"grid), got {tuple(heat_map.shape)}."
            )
        return heat_map

    def prompt_features(self, adapter_name: str) -> torch.Tensor:
        """`H = ReLU(LN(Linear(heat repeated to r channels)))` of adapter `adapter_name`, (B_heat, g, g, r).

        In the projection's dtype and on its device; B_heat is the heat map's batch, 1 for the zero map used when
        there is none.
        """
        linear = self.prompt_linear[adapter_name]
        heat_map = self.heat_map
        if heat_map is None:
            heat_map = torch.zeros(1, self.grid_size, self.grid_size)
        heat_map = heat_map.to(device=linear.weight.device, dtype=linear.weight.dtype)
        repeated = heat_map[..., None].expand(*heat_map.shape, linear.in_features)
        return F.relu(self.prompt_norm[adapter_name](linear(repeated)))

    def capture_prompts(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the base model: the heat map of this forward's `input_points` / `input_labels`."""
        if self.pinned:
            return
        points, labels = kwargs.get("input_points"), kwargs.get("input_labels")
        if args:
            positional = dict(zip(inspect.signature(module.forward).parameters, args, strict=False))
            points = positional.get("input_points", points)
            labels = positional.get("input_labels", labels)
        self.heat_map = None if points is None else points_to_heat_map(points, labels, self.input_size, self.grid_size)

    def release_prompts(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Forward hook on the base model: forget the heat map once the forward is done.

        It is kept while some block checkpoints its activations in training (it recomputes its forward during
        backward, and must see the same heat map then); the next forward replaces it.
        """
        if self.pinned:
            return
        recomputes = torch.is_grad_enabled() and any(
            getattr(submodule, "gradient_checkpointing", False) is True and submodule.training
            for submodule in module.modules()
        )
        if not recomputes:
            self.heat_map = None


class SloraLayer(SideLayer):
    """What SLoRA's two layer kinds share: the base layer, the shared state, no merging."""

    method = "SLoRA"
    merge_refusal = (
        "its branch runs beside the whole attention module (there is no single weight to fold it into), the "
        "LayerNorm on A(x) makes it non-linear, and the prompt features depend on each image's points."
    )

    def __init__(self, base_layer: nn.Module, shared_state: SloraSharedState) -> None:
        self._init_base_layer(base_layer)
        self.shared_state = shared_state


def _zero_or_default(layer: nn.Linear, zero: bool) -> nn.Linear:
    if zero:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


class SloraAttention(BaseLayerAttributes, SloraLayer):
    """The attention module of a vision block with SLoRA: `attn(x) + sum_a B_a(LN1_a(A_a(x)) + LN2_a(H_a))`.

    x is the attention's channels-last input (N, h, w, C): the whole grid in global blocks, windows of it in windowed
    ones. A_a is the adapter's shared down-projection and H_a its prompt features (B, g, g, r), placed on the tokens
    by `features_at_tokens` as the adapter's `prompt_layout` says. Owns, per adapter, `B` (`Linear(r, C)`), `LN1`
    and (with prompt augmentation) `LN2`.
    """

    adapter_layer_names = ("slora_B", "slora_norm_A", "slora_norm_prompt")
    other_param_names = ("slora_prompt_layout",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: SloraConfig,
        shared_state: SloraSharedState,
        block: nn.Module,
    ) -> None:
        super().__init__()
        SloraLayer.__init__(self, base_layer, shared_state)
        self.in_features = base_layer.qkv.in_features
        self.out_features = base_layer.proj.out_features
        self.window_size = int(getattr(block, "window_size", 0))
        # the block's own (transformers') window partition: features are cut and zero-padded exactly as the tokens
        self.partition_windows = block.window_partition if self.window_size > 0 else None
        self.slora_B = nn.ModuleDict({})
        self.slora_norm_A = nn.ModuleDict({})
        self.slora_norm_prompt = nn.ModuleDict({})
        self.slora_prompt_layout: dict[str, str] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: SloraConfig) -> None:
        """Create this block's weights of adapter `adapter_name` (its shared A must exist already)."""
        down = self.shared_state.down[adapter_name]
        if (down.in_features, down.out_features) != (self.in_features, config.r):
            raise ValueError(
                f"The shared A of SLoRA adapter {adapter_name!r} maps {down.in_features} -> {down.out_features} "
                f"channels but this attention module needs {self.in_features} -> {config.r}."
            )
        self.slora_B[adapter_name] = _zero_or_default(nn.Linear(config.r, self.out_features), config.init_weights)
        self.slora_norm_A[adapter_name] = nn.LayerNorm(config.r)
        if config.prompt_augmentation:
            self.slora_norm_prompt[adapter_name] = nn.LayerNorm(config.r)
            self.slora_prompt_layout[adapter_name] = config.prompt_layout
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def features_at_tokens(
        self, features: torch.Tensor, tokens: torch.Tensor, layout: str = "positional"
    ) -> torch.Tensor:
        """Prompt features (B_heat, g, g, r) placed on `tokens` (N, h, w, C), as (N, h, w, r).

        Global blocks: the features as they are. Windowed blocks, "positional" layout: cut into windows with the
        block's own `window_partition`, zero-padded like the tokens, so each token gets its own position's.
        "official" layout: resized to (window, window) (nearest neighbour, `F.interpolate`'s default) and that one
        map given to every window of the image, as the SAMCL code does.
        """
        count, height, width = tokens.shape[:3]
        grid = features.shape[1]
        if self.window_size > 0:
            windows_per_image = math.ceil(grid / self.window_size) ** 2
            fits = (height, width) == (self.window_size, self.window_size) and count % windows_per_image == 0
            batch_size = count // windows_per_image
        else:
            fits = (height, width) == (grid, grid)
            batch_size = count
        if not fits or features.shape[0] not in (1, batch_size):
            raise ValueError(
                f"SLoRA prompt features of shape {tuple(features.shape[:3])} do not fit the tokens of shape "
                f"{tuple(tokens.shape[:3])} (window size {self.window_size}): the heat map must be on the embedding "
                "grid with a batch of 1 or one map per image."
            )
        if self.window_size == 0:
            return features.expand(batch_size, -1, -1, -1)
        if layout == "official":
            size = (self.window_size, self.window_size)
            resized = F.interpolate(features.permute(0, 3, 1, 2), size=size, mode="nearest").permute(0, 2, 3, 1)
            return resized.expand(batch_size, -1, -1, -1).repeat_interleave(windows_per_image, dim=0)
        features, _ = self.partition_windows(features.expand(batch_size, -1, -1, -1), self.window_size)
        return features

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        outputs = self.base_layer(hidden_states, *args, **kwargs)
        adapters = self._adapters_in_use(self.slora_B)
        if not adapters:
            return outputs
        attention = outputs[0] if isinstance(outputs, tuple) else outputs
        update = None
        for name in adapters:
            down = self.shared_state.down[name]
            bottleneck = self.slora_norm_A[name](down(hidden_states.to(down.weight.dtype)))  # (N, h, w, r)
            if name in self.slora_norm_prompt:
                features = self.shared_state.prompt_features(name)
                features = self.features_at_tokens(features, hidden_states, self.slora_prompt_layout[name])
                bottleneck = bottleneck + self.slora_norm_prompt[name](features)
            output = self.slora_B[name](bottleneck)  # (N, h, w, C)
            update = output if update is None else update + output
        attention = attention + update.to(attention.dtype)
        return (attention, *outputs[1:]) if isinstance(outputs, tuple) else attention

    def __repr__(self) -> str:
        return "slora." + super().__repr__()


class SloraNeck(BaseLayerAttributes, SloraLayer):
    """SAM's vision neck with SLoRA's prompt features: `neck(x + sum_a In_a(H_a)) + sum_a Out_a(H_a)`.

    x is the last block's output (B, g, g, C), the neck's output (B, C_out, g, g) channels-first; H_a (B, g, g, r)
    are the adapter's prompt features, transposed (`H_a[:, j, i]` at row i, column j) with the "official"
    `prompt_layout`, as the SAMCL code adds them. Owns, per adapter with prompt augmentation, `In = Linear(r, C)` and
    `Out = Linear(r, C_out)`, both zero-initialised.
    """

    adapter_layer_names = ("slora_neck_input", "slora_neck_output")
    other_param_names = ("slora_prompt_layout",)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: SloraConfig, shared_state: SloraSharedState
    ) -> None:
        super().__init__()
        SloraLayer.__init__(self, base_layer, shared_state)
        self.in_features = base_layer.conv1.in_channels
        self.out_features = base_layer.conv2.out_channels
        self.slora_neck_input = nn.ModuleDict({})
        self.slora_neck_output = nn.ModuleDict({})
        self.slora_prompt_layout: dict[str, str] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: SloraConfig) -> None:
        """Create the neck projections of adapter `adapter_name` from `config`."""
        self.slora_neck_input[adapter_name] = _zero_or_default(
            nn.Linear(config.r, self.in_features), config.init_weights
        )
        self.slora_neck_output[adapter_name] = _zero_or_default(
            nn.Linear(config.r, self.out_features), config.init_weights
        )
        self.slora_prompt_layout[adapter_name] = config.prompt_layout
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = self._adapters_in_use(self.slora_neck_input)
        if not adapters:
            return self.base_layer(hidden_states, *args, **kwargs)
        features = {name: self.shared_state.prompt_features(name) for name in adapters}
        for name in adapters:
            if self.slora_prompt_layout[name] == "official":
                features[name] = features[name].transpose(1, 2)
        for feature in features.values():
            if feature.shape[1:3] != hidden_states.shape[1:3] or feature.shape[0] not in (1, hidden_states.shape[0]):
                raise ValueError(
                    f"SLoRA prompt features of shape {tuple(feature.shape[:3])} do not fit the neck input of shape "
                    f"{tuple(hidden_states.shape[:3])}."
                )
        for name, feature in features.items():
            hidden_states = hidden_states + self.slora_neck_input[name](feature).to(hidden_states.dtype)
        output = self.base_layer(hidden_states, *args, **kwargs)
        for name, feature in features.items():
            output = output + self.slora_neck_output[name](feature).permute(0, 3, 1, 2).to(output.dtype)
        return output

    def __repr__(self) -> str:
        return "slora." + super().__repr__()
