"""SLoRA layers: the adapted attention of a vision block, the adapted neck of each SAM generation, and the state
they share.

Shapes: B images, (g, g) the token grid of the adapted blocks, which the heat map is on (the image-embedding grid by
default: 64 x 64 for SAM and SAM 2 at 1024 px, 72 x 72 for SAM 3 at 1008 px), C the width of the adapted blocks, r
the rank, N the batch of tokens an attention module sees (B, or B times the windows per image in windowed blocks),
(h, w) its token grid.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from collections.abc import Callable
from typing import Any, ClassVar

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
    - Per adapter with `learned_prompt`, its learned heat map (g, g) (`SloraLearnedPrompt`), added to the heat map
      of every forward before the projection; owned by the `SloraModel` as well.
    - The heat map (B, g, g) of the current forward pass: set from the point prompts of each forward of the base
      model (`capture_prompts`, a forward pre-hook) or, for the span of a `with`, by `SloraModel.prompt_heat_map`.
    - Where the adapted blocks are: `stage`, the encoder stage that holds them (SAM 2's Hiera has four, with their
      own widths and grids; SAM's and SAM 3's ViTs one, 0), and `grid_size`, the side g of its token grid. Every
      adapter of a model adapts blocks of this one stage, so one heat map serves them all.

    A copied or unpickled state keeps its modules (copied along with the model) but not the heat map.
    """

    def __init__(
        self,
        down: nn.ModuleDict,
        prompt_linear: nn.ModuleDict,
        prompt_norm: nn.ModuleDict,
        grid_size: int,
        input_size: int,
        stage: int = 0,
        grid_name: str = "the image-embedding grid",
        learned_prompt: nn.ModuleDict | None = None,
    ) -> None:
        self.down = down
        self.prompt_linear = prompt_linear
        self.prompt_norm = prompt_norm
        self.learned_prompt = learned_prompt if learned_prompt is not None else nn.ModuleDict({})
        self.grid_size = grid_size
        self.input_size = input_size
        self.stage = stage
        self.grid_name = grid_name
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
                f"A SLoRA heat map must have shape (batch, {self.grid_size}, {self.grid_size}) ({self.grid_name}), "
                f"got {tuple(heat_map.shape)}."
            )
        return heat_map

    def prompt_features(self, adapter_name: str) -> torch.Tensor:
        """`H = ReLU(LN(Linear(heat repeated to r channels)))` of adapter `adapter_name`, (B_heat, g, g, r).

        `heat` is the heat map of the forward (the zero map when there is none) plus, for an adapter with a learned
        prompt, its learned heat map. In the projection's dtype and on its device; B_heat is the heat map's batch,
        1 for the zero map.
        """
        linear = self.prompt_linear[adapter_name]
        heat_map = self.heat_map
        if heat_map is None:
            heat_map = torch.zeros(1, self.grid_size, self.grid_size)
        heat_map = heat_map.to(device=linear.weight.device, dtype=linear.weight.dtype)
        if adapter_name in self.learned_prompt:
            heat_map = heat_map + self.learned_prompt[adapter_name].heat_map.to(heat_map.dtype)
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
        if not self.recomputes(module):
            self.heat_map = None

    @staticmethod
    def recomputes(model: nn.Module) -> bool:
        """Whether a backward pass may recompute blocks of `model` (and read the heat map again): gradients are on
        and some submodule checkpoints its activations in training."""
        return torch.is_grad_enabled() and any(
            getattr(submodule, "gradient_checkpointing", False) is True and submodule.training
            for submodule in model.modules()
        )


class SloraLearnedPrompt(nn.Module):
    """The learned heat map of one SLoRA adapter (`SloraConfig.learned_prompt`): a parameter `heat_map` (g, g) on the
    adapted blocks' grid, added to each forward's heat map. Zeros at first (`random`: N(0, 1), for testing)."""

    def __init__(self, grid_size: int, random: bool = False, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.heat_map = nn.Parameter(torch.zeros(grid_size, grid_size, device=device))
        if random:
            nn.init.normal_(self.heat_map)

    def extra_repr(self) -> str:
        return f"grid_size={self.heat_map.shape[0]}"


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


# The input and output projections of the attention modules SLoRA wraps: SAM's, SAM-HQ's and SAM 2's Hiera blocks
# fuse q, k and v (`qkv`, `proj`); SAM 3's rotary ViT keeps them apart (`q_proj`, `k_proj`, `v_proj`, `o_proj`).
ATTENTION_PROJECTIONS = (("qkv", "proj"), ("q_proj", "o_proj"))


def attention_widths(attention: nn.Module) -> tuple[int, int] | None:
    """(input, output) channels of a vision block's attention module, or None when `attention` is none SLoRA wraps.

    Read from its first input projection and its output projection (`ATTENTION_PROJECTIONS`). They differ only in
    the blocks of SAM 2 that widen the tokens (the first block of a Hiera stage), which SLoRA does not adapt.
    """
    for first, last in ATTENTION_PROJECTIONS:
        projection_in, projection_out = getattr(attention, first, None), getattr(attention, last, None)
        if isinstance(projection_in, nn.Linear) and isinstance(projection_out, nn.Linear):
            return projection_in.in_features, projection_out.out_features
    return None


def window_partition_of(block: nn.Module) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, tuple[int, int]]]:
    """The function that cuts the tokens of `block` into windows, `partition(x, window_size) -> (windows, padded)`.

    transformers' own: SAM's blocks have it as a method (`SamVisionLayer.window_partition`), SAM 2's and SAM 3's
    modeling modules as a module-level function `window_partition` beside the block class. Both take (B, h, w, C)
    and return the zero-padded windows (B * windows, w, w, C) in row-major window order.
    """
    method = getattr(block, "window_partition", None)
    if callable(method):
        return method
    function = getattr(sys.modules.get(type(block).__module__), "window_partition", None)
    if callable(function):
        return function
    raise ValueError(
        f"SLoRA cannot place its prompt features in the windows of a {type(block).__name__}: the block has no "
        f"`window_partition` method and its module ({type(block).__module__}) no `window_partition` function."
    )


class SloraAttention(BaseLayerAttributes, SloraLayer):
    """The attention module of a vision block with SLoRA: `attn(x) + sum_a B_a(LN1_a(A_a(x)) + LN2_a(H_a))`.

    x is the attention's channels-last input (N, h, w, C): the whole grid in global blocks, windows of it in windowed
    ones. A_a is the adapter's shared down-projection and H_a its prompt features (B, g, g, r), placed on the tokens
    by `features_at_tokens` as the adapter's `prompt_layout` says. Owns, per adapter, `B` (`Linear(r, C)`), `LN1`
    and (with prompt augmentation) `LN2`.

    Wraps the attention of SAM's and SAM-HQ's ViT blocks (`SamVisionAttention`: `qkv`, `proj`, returns a tuple), of
    SAM 2's Hiera blocks (`Sam2MultiScaleAttention`: `qkv`, `proj`, returns a tensor; only blocks that keep their
    width and grid) and of SAM 3's rotary ViT blocks (`Sam3ViTRoPEAttention`: `q_proj` .. `o_proj`, called with the
    rotary position embeddings, returns a tuple). The windows are the block's own (`window_size`, 0 in global
    blocks; Hiera's differ per stage), cut by the block's own `window_partition` (`window_partition_of`).
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
        self.in_features, self.out_features = attention_widths(base_layer)
        self.window_size = int(getattr(block, "window_size", 0))
        # the block's own (transformers') window partition: features are cut and zero-padded exactly as the tokens
        self.partition_windows = window_partition_of(block) if self.window_size > 0 else None
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

    SAM 2's and SAM 3's necks end in an FPN (`SloraSam2Neck`, `SloraSam3Neck`): the same sums, with In(H) added
    where the adapted blocks' tokens enter the neck and Out(H) to the FPN level on their grid. A subclass says where
    (`neck_widths`, `input_grid`, `add_to_input`, `add_to_output`).
    """

    adapter_layer_names = ("slora_neck_input", "slora_neck_output")
    other_param_names = ("slora_prompt_layout",)
    # the neck this class wraps, for the error on another one (`wraps`)
    description: ClassVar[str] = "SAM's vision neck (with `conv1` and `conv2`)"

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: SloraConfig, shared_state: SloraSharedState
    ) -> None:
        super().__init__()
        SloraLayer.__init__(self, base_layer, shared_state)
        self.in_features, self.out_features = self.neck_widths()
        self.slora_neck_input = nn.ModuleDict({})
        self.slora_neck_output = nn.ModuleDict({})
        self.slora_prompt_layout: dict[str, str] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    @classmethod
    def wraps(cls, neck: nn.Module) -> bool:
        """Whether `neck` is the kind of neck this class adds the prompt features to."""
        return hasattr(neck, "conv1") and hasattr(neck, "conv2")

    def neck_widths(self) -> tuple[int, int]:
        """(C, C_out): the channels of the neck input that In(H) is added to and of the output Out(H) is added to."""
        return self.base_layer.conv1.in_channels, self.base_layer.conv2.out_channels

    def input_grid(self, inputs: torch.Tensor) -> tuple[int, int, int]:
        """(batch, h, w) of the neck input that In(H) is added to: SAM's (B, g, g, C) tokens."""
        return tuple(inputs.shape[:3])

    def add_to_input(self, inputs: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """The neck input with `update` = In(H) (B_heat, g, g, C) added to the tokens."""
        return inputs + update.to(inputs.dtype)

    def add_to_output(self, output: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """The neck output (B, C_out, g, g) with `update` = Out(H) (B_heat, g, g, C_out) added, channels-first."""
        return output + update.permute(0, 3, 1, 2).to(output.dtype)

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

    def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        adapters = self._adapters_in_use(self.slora_neck_input)
        if not adapters:
            return self.base_layer(hidden_states, *args, **kwargs)
        features = {name: self.shared_state.prompt_features(name) for name in adapters}
        for name in adapters:
            if self.slora_prompt_layout[name] == "official":
                features[name] = features[name].transpose(1, 2)
        batch_size, height, width = self.input_grid(hidden_states)
        for feature in features.values():
            if feature.shape[1:3] != (height, width) or feature.shape[0] not in (1, batch_size):
                raise ValueError(
                    f"SLoRA prompt features of shape {tuple(feature.shape[:3])} do not fit the neck input of shape "
                    f"{(batch_size, height, width)}."
                )
        for name, feature in features.items():
            hidden_states = self.add_to_input(hidden_states, self.slora_neck_input[name](feature))
        output = self.base_layer(hidden_states, *args, **kwargs)
        for name, feature in features.items():
            output = self.add_to_output(output, self.slora_neck_output[name](feature))
        return output

    def __repr__(self) -> str:
        return "slora." + super().__repr__()


class SloraFpnNeck(SloraNeck):
    """What SLoRA's necks of SAM 2 and SAM 3 share: the neck returns `(fpn_hidden_states, fpn_position_encoding)`,
    one map (B, C_out, h, w) per FPN level, and Out(H) is added to level `level`, the one on the adapted blocks'
    grid g; the other levels and the position encodings are left as the neck computes them."""

    @property
    def level(self) -> int:
        """Index, in the neck's output, of the FPN level on the adapted blocks' grid."""
        raise NotImplementedError

    def add_to_output(
        self, output: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]], update: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        levels, position_encodings = output
        levels = list(levels)
        levels[self.level] = levels[self.level] + update.permute(0, 3, 1, 2).to(levels[self.level].dtype)
        return tuple(levels), position_encodings


class SloraSam3Neck(SloraFpnNeck):
    """SAM 3's vision neck (`Sam3VisionNeck`) with SLoRA's prompt features.

    The neck takes the last block's output channels-first, x (B, C, g, g) (g = 72 at 1008 px), and builds one FPN
    level per scale factor from it (the tracker's 4, 2 and 1: 288, 144 and 72 at 1008 px). In(H) (B, g, g, C) is
    added to x (permuted to channels-first), so every level sees it; Out(H) (B, g, g, C_out), C_out =
    `fpn_hidden_size`, is added to the level of scale factor 1, on the token grid: the image embedding the mask
    decoder attends to (`fpn_hidden_states[-1]`). The "official" layout's transpose applies as on SAM.
    """

    description = "SAM 3's vision neck (`Sam3VisionNeck`, with an FPN layer of scale factor 1)"

    @classmethod
    def wraps(cls, neck: nn.Module) -> bool:
        layers = getattr(neck, "fpn_layers", None)
        if not isinstance(layers, nn.ModuleList):
            return False
        return any(getattr(layer, "scale_factor", None) == 1.0 for layer in layers)

    @property
    def level(self) -> int:
        return next(i for i, layer in enumerate(self.base_layer.fpn_layers) if layer.scale_factor == 1.0)

    def neck_widths(self) -> tuple[int, int]:
        layer = self.base_layer.fpn_layers[self.level]  # scale 1: no resampling, proj1 reads the tokens' channels
        return layer.proj1.in_channels, layer.proj2.out_channels

    def input_grid(self, inputs: torch.Tensor) -> tuple[int, int, int]:
        return inputs.shape[0], inputs.shape[2], inputs.shape[3]

    def add_to_input(self, inputs: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return inputs + update.permute(0, 3, 1, 2).to(inputs.dtype)


class SloraSam2Neck(SloraFpnNeck):
    """SAM 2's vision neck (`Sam2VisionNeck`) with SLoRA's prompt features.

    The neck takes the output of each Hiera stage, channels-last (stage s: (B, h_s, w_s, C_s)), and returns its FPN
    levels top-down, from the last stage to the first (each level a lateral 1 x 1 convolution of its stage, plus the
    level above upsampled for the stages in `fpn_top_down_levels`); `Sam2VisionModel` then keeps the first
    `num_feature_levels` stages' levels, high resolution first, and the mask decoder attends to the last of them
    (stage 2 of 4, stride 16: 64 x 64 at 1024 px). In(H) (B, g, g, C_s) is added to the output of the adapted stage
    s (`SloraSharedState.stage`, whose grid the heat map is on) in the neck input, and Out(H) (B, g, g, C_out),
    C_out = `fpn_hidden_size`, to that stage's FPN level (index `len(convs) - 1 - s` of the neck's output); the
    other levels are as the neck computes them. The "official" layout's transpose applies as on SAM.
    """

    description = "SAM 2's vision neck (`Sam2VisionNeck`, one lateral convolution per Hiera stage)"

    @classmethod
    def wraps(cls, neck: nn.Module) -> bool:
        return isinstance(getattr(neck, "convs", None), nn.ModuleList) and hasattr(neck, "fpn_top_down_levels")

    @property
    def level(self) -> int:
        return len(self.base_layer.convs) - 1 - self.shared_state.stage

    def neck_widths(self) -> tuple[int, int]:
        lateral = self.base_layer.convs[self.level]
        return lateral.in_channels, lateral.out_channels

    def input_grid(self, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int, int]:
        return tuple(inputs[self.shared_state.stage].shape[:3])

    def add_to_input(self, inputs: tuple[torch.Tensor, ...], update: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stage = self.shared_state.stage
        return tuple(x + update.to(x.dtype) if i == stage else x for i, x in enumerate(inputs))
