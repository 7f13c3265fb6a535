"""SAM-Adapter layers: the prompt generator on the patch embedding and the per-block prompt.

Shapes: B images, (h, w) the token grid (64 x 64 at 1024 px on SAM, 72 x 72 at 1008 px on SAM 3), C the encoder
width, d = C / scale_factor the prompt width, p the patch size (16 on SAM, 14 on SAM 3).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..frequency import high_pass_magnitude
from ..side_layers import BaseLayerAttributes, SideLayer
from .config import SamAdapterConfig


class PromptFeatures:
    """The prompt features of the last forward pass, per adapter, shared by a patch embedding and its blocks.

    The patch-embedding layer publishes `(features (B, h, w, d), shared Linear(d, C))` per active adapter; each
    block layer reads them. Holding the last forward's tensors, it is not copied: a copied or unpickled model starts
    empty and fills it on its next forward pass. With activation checkpointing, a block recomputed in backward reads
    the features of the latest forward, so run backward before the next forward (as training loops do).
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, tuple[torch.Tensor, nn.Linear]] = {}

    def __deepcopy__(self, memo: dict) -> PromptFeatures:
        return PromptFeatures()

    def __reduce__(self):
        return (PromptFeatures, ())


def _init_linear(layer: nn.Linear) -> nn.Linear:
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class SamAdapterLayer(SideLayer):
    """What SAM-Adapter's two layer kinds share: the base layer, the prompt features, no merging."""

    method = "SAM-Adapter"
    merge_refusal = (
        "its prompts are computed from each image (its high-frequency content and patch embeddings) and added to "
        "the tokens, which no fixed weight can express."
    )

    def __init__(self, base_layer: nn.Module, prompt_features: PromptFeatures) -> None:
        self._init_base_layer(base_layer)
        self.prompt_features = prompt_features


class PromptGenerator(BaseLayerAttributes, SamAdapterLayer):
    """A ViT's patch embedding, publishing each active adapter's prompt features for the blocks.

    `features = Linear(C, d)(patches) + Conv2d(3, d, p, stride=p)(high_pass(pixel_values))`, (B, h, w, d), where
    `patches` (B, h, w, C) is the patch embedding's output, which is returned unchanged: SAM's `SamPatchEmbeddings`
    gives (B, h, w, C), SAM 3's `Sam3ViTPatchEmbeddings` (B, h * w, C) in row-major order, read as its grid (the
    hand-crafted convolution's, p x p patches with stride p as the projection's). With the adapter's
    `embedding_feature="official"`, `Linear(C, d)` reads `patches` reshaped to (B, C, h * w) and transposed, as the
    official code does (see `embedding_feature`). Owns, per adapter, the embedding tuning, the hand-crafted tuning
    and the `Linear(d, C)` shared by all blocks.
    """

    adapter_layer_names = ("sam_adapter_embedding", "sam_adapter_handcrafted", "sam_adapter_shared")
    other_param_names = ("sam_adapter_ratio", "sam_adapter_embedding_feature")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SamAdapterConfig) -> None:
        super().__init__()
        SamAdapterLayer.__init__(self, base_layer, PromptFeatures())
        projection = base_layer.projection
        self.hidden_size = projection.out_channels
        self.patch_size = tuple(projection.kernel_size)
        self.sam_adapter_embedding = nn.ModuleDict({})
        self.sam_adapter_handcrafted = nn.ModuleDict({})
        self.sam_adapter_shared = nn.ModuleDict({})
        self.sam_adapter_ratio: dict[str, float] = {}
        self.sam_adapter_embedding_feature: dict[str, str] = {}
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def prompt_size(self, config: SamAdapterConfig) -> int:
        """Prompt width d for `config`; raises when the encoder is narrower than its scale factor."""
        size = self.hidden_size // config.scale_factor
        if size < 1:
            raise ValueError(
                f"SamAdapterConfig.scale_factor {config.scale_factor} exceeds the encoder width {self.hidden_size}: "
                "the prompt would have no channel."
            )
        return size

    def update_layer(self, adapter_name: str, config: SamAdapterConfig) -> None:
        """Create the prompt generator of adapter `adapter_name` from `config`."""
        size = self.prompt_size(config)
        handcrafted = nn.Conv2d(3, size, kernel_size=self.patch_size, stride=self.patch_size)
        fan_out = math.prod(self.patch_size) * size
        nn.init.normal_(handcrafted.weight, std=math.sqrt(2.0 / fan_out))
        nn.init.zeros_(handcrafted.bias)
        self.sam_adapter_embedding[adapter_name] = _init_linear(nn.Linear(self.hidden_size, size))
        self.sam_adapter_handcrafted[adapter_name] = handcrafted
        self.sam_adapter_shared[adapter_name] = _init_linear(nn.Linear(size, self.hidden_size))
        self.sam_adapter_ratio[adapter_name] = config.high_pass_ratio
        self.sam_adapter_embedding_feature[adapter_name] = config.embedding_feature
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.base_layer(pixel_values, *args, **kwargs)  # (B, h, w, C), or (B, h * w, C) on SAM 3
        self.prompt_features.entries = {}
        for name in self._adapters_in_use(self.sam_adapter_embedding):
            embedding = self.sam_adapter_embedding[name]
            images = pixel_values.to(embedding.weight.dtype)
            high = high_pass_magnitude(images, self.sam_adapter_ratio[name])
            handcrafted = self.sam_adapter_handcrafted[name](high).permute(0, 2, 3, 1)  # (B, h, w, d)
            patches = self.token_grid(output, handcrafted.shape[1], handcrafted.shape[2])
            features = self.embedding_feature(name, patches.to(embedding.weight.dtype)) + handcrafted
            self.prompt_features.entries[name] = (features, self.sam_adapter_shared[name])
        return output

    @staticmethod
    def token_grid(patches: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The patch embeddings as a channels-last grid (B, h, w, C): SAM's as they are, SAM 3's token sequence
        (B, h * w, C), in row-major order, unflattened to the (h, w) grid."""
        if patches.dim() == 4:
            return patches
        if patches.dim() != 3 or patches.shape[1] != height * width:
            raise ValueError(
                f"SAM-Adapter expects the patch embeddings as (B, h, w, C) or (B, h * w, C) with (h, w) = "
                f"({height}, {width}), the grid of its hand-crafted patch convolution; got {tuple(patches.shape)}."
            )
        return patches.unflatten(1, (height, width))

    def embedding_feature(self, adapter_name: str, patches: torch.Tensor) -> torch.Tensor:
        """Adapter `adapter_name`'s embedding feature of patches (B, h, w, C) -> (B, h, w, d).

        `"paper"`: `Linear(C, d)` on each token's channels. `"official"`: on the rows of
        `patches.reshape(B, C, h * w).transpose(1, 2)` (B, h * w, C), whose rows mix positions and channels, read
        back as the tokens in row-major order.
        """
        embedding = self.sam_adapter_embedding[adapter_name]
        if self.sam_adapter_embedding_feature[adapter_name] == "paper":
            return embedding(patches)
        batch, height, width, channels = patches.shape
        # contiguous: on this strided view, matmul picks its kernel (and rounding) by whether the weight requires
        # grad, so a trained and a reloaded adapter would differ in the last bits
        mixed = patches.reshape(batch, channels, height * width).transpose(1, 2).contiguous()  # (B, h * w, C)
        return embedding(mixed).reshape(batch, height, width, -1)

    def __repr__(self) -> str:
        return "sam_adapter." + super().__repr__()


class PromptedBlock(BaseLayerAttributes, SamAdapterLayer):
    """A vision block whose input gets each active adapter's prompt: `block(x + shared(GELU(mlp(features))))`.

    The block is SAM's `SamVisionLayer` or SAM 3's `Sam3ViTLayer` (windowed or global attention inside, as the block
    has it). x is channels-last (B, h, w, C); the features (B, h, w, d) and `shared` come from the encoder's
    `PromptGenerator` in the same forward pass. Owns, per adapter, the block's `Linear(d, d)`.
    """

    adapter_layer_names = ("sam_adapter_mlp",)
    other_param_names = ()

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: SamAdapterConfig,
        generator: PromptGenerator,
    ) -> None:
        super().__init__()
        SamAdapterLayer.__init__(self, base_layer, generator.prompt_features)
        self.sam_adapter_mlp = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, generator)

    def update_layer(self, adapter_name: str, config: SamAdapterConfig, generator: PromptGenerator) -> None:
        """Create this block's prompt MLP of adapter `adapter_name` (its width is the generator's)."""
        size = generator.prompt_size(config)
        self.sam_adapter_mlp[adapter_name] = _init_linear(nn.Linear(size, size))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        for name in self._adapters_in_use(self.sam_adapter_mlp):
            entry = self.prompt_features.entries.get(name)
            if entry is None:
                raise RuntimeError(
                    f"SAM-Adapter block has no prompt features of adapter {name!r}: the encoder's patch embedding "
                    "must run (with the same adapters active) before its blocks."
                )
            features, shared = entry
            prompt = shared(F.gelu(self.sam_adapter_mlp[name](features)))  # (B, h, w, C)
            hidden_states = hidden_states + prompt.to(hidden_states.dtype)
        return self.base_layer(hidden_states, *args, **kwargs)

    def __repr__(self) -> str:
        return "sam_adapter." + super().__repr__()
