"""The CAD tuner layer: SAM's vision encoder run without autograd, plus the adapters' output on its embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamVisionEncoderOutput
from transformers.models.sam2.modeling_sam2 import Sam2VisionEncoderOutput

from ..side_layers import BaseLayerAttributes, SideLayer
from .adapter import ConvAdapter
from .config import CadConfig


class CadLayer(SideLayer):
    """Adapter state of a CAD-wrapped vision encoder: per adapter, its `ConvAdapter` and output scale."""

    adapter_layer_names = ("cad_adapter",)
    other_param_names = ("cad_scale",)
    method = "CAD"
    merge_refusal = (
        "the adapter is a separate network beside the frozen encoder whose output is added to the image embedding, "
        "not a change of any encoder weight."
    )

    def __init__(self, base_layer: nn.Module) -> None:
        self._init_base_layer(base_layer)
        self.cad_adapter = nn.ModuleDict({})
        self.cad_scale: dict[str, float] = {}

    def update_layer(self, adapter_name: str, config: CadConfig) -> None:
        """Create adapter `adapter_name` from `config` on the encoder's device (kept in float32)."""
        self.cad_adapter[adapter_name] = ConvAdapter(config).train(self.training)
        self.cad_scale[adapter_name] = config.scale
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)


class CadVisionEncoder(BaseLayerAttributes, CadLayer):
    """SAM's vision encoder with CAD adapters: `last_hidden_state = encoder(x) + sum_a scale_a * adapter_a(x)`.

    On SAM 2 and SAM 3's tracker, whose encoders end in an FPN, the adapters add to the lowest-resolution level
    (`fpn_hidden_states[-1]`, the image embedding the mask decoder attends to, 256 x 64 x 64 for SAM 2 at 1024 px).
    The two high-resolution levels, which the decoder adds while upsampling its masks, get no branch: they come
    from the frozen encoder's early stages, as CAD leaves SAM's own encoder frozen.

    With an active adapter the wrapped encoder runs under `torch.no_grad()`, so none of its activations are kept
    for backward; only the adapters (and what follows the encoder) build a graph. Its other outputs
    (hidden states, attentions) are the frozen encoder's. Disabled, or without an active adapter, it is exactly the
    wrapped encoder. Attributes it does not have (`config`, `patch_embed`, ...) are the encoder's.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: CadConfig) -> None:
        super().__init__()
        CadLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def add_adapter_outputs(self, embeddings: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """`embeddings + sum_a scale_a * adapter_a(pixel_values)` over the active adapters, (B, C, h, w).

        Args:
            embeddings: `(B, C, h, w)` output of the frozen encoder, e.g. from an embedding cache.
            pixel_values: `(B, 3, H, W)` the encoder's normalised input.
        """
        for name in self._adapters_in_use(self.cad_adapter):
            adapter_output = self.cad_adapter[name](pixel_values, tuple(embeddings.shape[-2:]))
            if adapter_output.shape != embeddings.shape:
                raise ValueError(
                    f"CAD adapter {name!r} gives {tuple(adapter_output.shape)} but the image embedding is "
                    f"{tuple(embeddings.shape)}: set CadConfig.channels to the embedding's {embeddings.shape[1]} "
                    "channels."
                )
            embeddings = embeddings + self.cad_scale[name] * adapter_output.to(embeddings.dtype)
        return embeddings

    def _check_encoder_frozen(self) -> None:
        if not torch.is_grad_enabled():
            return
        trainable = [name for name, p in self.base_layer.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"CAD runs the vision encoder without autograd, but {len(trainable)} of its parameters require grad "
                f"(e.g. {trainable[0]!r}) and would never receive a gradient. Freeze them, and do not list modules "
                "inside the vision encoder in `modules_to_save`."
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        *args: Any,
        encoder_embeddings: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Encoder output with the active adapters' output added to `last_hidden_state` (B, C, h, w), or on SAM 2 /
        SAM 3 to the last FPN level (the image embedding the decoder attends to).

        Args:
            pixel_values: `(B, 3, H, W)` normalised images, read by the encoder and the adapters.
            encoder_embeddings: the frozen encoder's output for `pixel_values`, e.g. from
                `sam_peft.training.embedding_cache.EmbeddingCache.get_or_compute`: the encoder is then not run. SAM:
                `(B, C, h, w)`; SAM 2 / SAM 3: the FPN levels, high to low resolution (their position encodings
                are recomputed: they depend on the shapes only). SAM models pass unknown keyword arguments on to
                their vision encoder, so `model(pixel_values=..., encoder_embeddings=...)` works from the top (and
                stays inside the model's forward, as DDP wants).
        """
        in_use = self._adapters_in_use(self.cad_adapter)
        if isinstance(encoder_embeddings, (tuple, list)):
            outputs = self._replayed_fpn_outputs(tuple(encoder_embeddings))
        elif encoder_embeddings is not None:
            outputs = SamVisionEncoderOutput(last_hidden_state=encoder_embeddings)
        elif not in_use:
            return self.base_layer(pixel_values, *args, **kwargs)
        else:
            self._check_encoder_frozen()
            with torch.no_grad():
                outputs = self.base_layer(pixel_values, *args, **kwargs)
        if in_use and pixel_values is None:
            raise ValueError("CAD needs the pixel_values: its adapter reads the image beside the encoder.")
        if isinstance(outputs, tuple):
            return (self.add_adapter_outputs(outputs[0], pixel_values), *outputs[1:])
        levels = getattr(outputs, "fpn_hidden_states", None)
        if levels is not None:  # SAM 2, SAM 3: the decoder's image embedding is the last FPN level
            outputs.fpn_hidden_states = (*levels[:-1], self.add_adapter_outputs(levels[-1], pixel_values))
            return outputs
        outputs.last_hidden_state = self.add_adapter_outputs(outputs.last_hidden_state, pixel_values)
        return outputs

    def _replayed_fpn_outputs(self, levels: tuple[torch.Tensor, ...]) -> Sam2VisionEncoderOutput:
        """What the FPN encoder returns for its cached levels `(B, C, h_i, w_i)`: the levels and the position
        encodings of their shapes (from the encoder's own neck)."""
        neck = getattr(self.base_layer, "neck", None)
        if not hasattr(neck, "position_encoding"):
            raise ValueError(
                f"encoder_embeddings holds {len(levels)} FPN levels, but the wrapped {type(self.base_layer).__name__} "
                "has no FPN neck: pass SAM's single image embedding (B, C, h, w)."
            )
        encodings = tuple(neck.position_encoding(level.shape, level.device, level.dtype) for level in levels)
        return Sam2VisionEncoderOutput(fpn_hidden_states=levels, fpn_position_encoding=encodings)

    def __repr__(self) -> str:
        return "cad." + super().__repr__()
