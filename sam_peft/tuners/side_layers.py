"""What the tuner layers of CAD, SAM-Adapter and SLoRA share: each sits beside a base module that has no `weight`
of its own (a whole encoder, attention module, block or neck), keeps its adapters in float32, and is never merged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import UnmergeableLayer


class SideLayer(UnmergeableLayer):
    """A tuner layer beside its base module. Subclasses set `method` and `merge_refusal` (`UnmergeableLayer`)."""

    def _init_base_layer(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        self._disable_adapters = False
        self.merged_adapters = []

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[torch.device | None, None]:
        # The base module has no `weight` of its own. The adapters stay in float32 and cast at their inputs and
        # outputs, as peft's adapter upcasting does for LoRA (and BatchNorm statistics, buffers, stay float32 too).
        parameter = next(base_layer.parameters(), None)
        return (parameter.device if parameter is not None else None), None

    def _adapters_in_use(self, adapter_dict: nn.ModuleDict) -> list[str]:
        """The active adapters that `adapter_dict` holds; none while adapters are disabled."""
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if name in adapter_dict]


class BaseLayerAttributes(nn.Module):
    """Attributes a wrapped layer lacks are its base layer's (e.g. SAM-HQ reads `window_size` of each block, the
    neck's `config`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)
