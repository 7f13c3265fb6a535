"""The SLoRA tuner: one shared down-projection per adapter, per-block up-projections, and point-prompt features."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from ..base import SamPeftTuner
from ..targets import CONVOLUTIONAL_ENCODER
from .config import ATTENTION_TARGETS, SloraConfig
from .encoders import SamEncoderLayout, encoder_layout
from .heat_map import points_to_heat_map
from .layer import SloraAttention, SloraLayer, SloraLearnedPrompt, SloraNeck, SloraSharedState, attention_widths


class SloraModel(SamPeftTuner):
    """Creates a SLoRA model (SAMCL's AugModule) from a transformers `SamModel`, `SamHQModel`,
    `SamForSemanticSegmentation`, `Sam2Model` (SAM 2 / 2.1) or `Sam3TrackerModel` (SAM 3), or their prompt-free heads.

    The targets are the attention modules of the vision blocks, each wrapped as a `SloraAttention`; with prompt
    augmentation the encoder's neck is wrapped once, as a `SloraNeck` (SAM), `SloraSam2Neck` or `SloraSam3Neck`. Per
    adapter, the shared down-projection A, the heat-map projection and the learned prompt live on this tuner
    (`slora_A`, `slora_prompt_linear`, `slora_prompt_norm`, `slora_learned_prompt`) and are saved once; saving,
    loading, several adapters (each with its own A), switching, disabling, deleting and unloading work as for any
    PEFT method. Merging is refused (see `SloraLayer.merge`).

    Each generation (its layout in `sam_peft.tuners.slora.encoders`):

    - SAM, SAM-HQ: `vision_encoder.layers.<i>.attn`, by default the last five blocks (7..11 on ViT-B); the heat map
      is on the 64 x 64 token grid (at 1024 px), which the neck turns into the image embedding.
    - SAM 3's tracker: `vision_encoder.backbone.layers.<i>.attention` (rotary ViT, separate q, k, v projections), by
      default the last five blocks (27..31); the grid is 72 x 72 at 1008 px. The neck is an FPN built from the last
      block's output: In(H) joins that output, Out(H) the level of scale 1 (the decoder's image embedding).
    - SAM 2 / 2.1: `vision_encoder.backbone.blocks.<i>.attn` (Hiera). The stages differ in width and A has one, so
      SLoRA adapts blocks of one stage, never the first block of stages 1..3 (it pools its queries and widens the
      tokens): by default the last five others of stage 2, whose 64 x 64 grid (at 1024 px) is the image
      embedding's (blocks 5..9 on Hiera-T). The heat map is on the adapted stage's grid; In(H) joins that stage's
      output in the neck's input, Out(H) the stage's FPN level. `layers_to_transform` naming such a first block,
      or blocks of several stages, is refused with the blocks SLoRA can adapt; all adapters of a model adapt one
      stage (they share the heat map).

    Prompts. A forward of the model with `input_points` (and `input_labels`) turns them into the heat map of that
    forward (`points_to_heat_map`, points in the prompt encoder's input frame, `input_image_size`): `model(
    pixel_values=..., input_points=..., input_labels=...)` just works. Without points (e.g.
    `SamForSemanticSegmentation`, or `get_image_embeddings`), the heat map is zeros. Code that runs the encoder in
    pieces sets it explicitly for the span of a `with`:

        >>> tuner = peft_model.base_model
        >>> encoder = tuner.model.vision_encoder
        >>> with tuner.prompts(input_points, input_labels):  # or tuner.prompt_heat_map(heat_map)
        ...     for block in encoder.layers[7:]:
        ...         hidden_states = block(hidden_states)
        ...     image_embeddings = encoder.neck(hidden_states)
        >>> outputs = peft_model(image_embeddings=image_embeddings, input_points=input_points, ...)

    Inside such a block, forwards of the model use the block's heat map, whatever points they get. Outside, the
    heat map of a forward is dropped when it returns, except in training with activation checkpointing, where it
    stays until the next forward, because the backward pass recomputes the blocks (so does an outermost block's).
    `sam_peft.tuners.slora.prompting` wraps this for code that handles any model (`encoder_prompts`: a no-op
    without SLoRA) and turns the points of objects into one heat map per image (`object_points_by_image`).

    Learned prompt. With `SloraConfig(learned_prompt=True)` each adapter also learns a heat map (g, g)
    (`slora_learned_prompt[adapter].heat_map`, zeros at first), added to the heat map of every forward: alone
    without points (prompt-free use), under the points' heat map with them.

    Example:
        >>> import sam_peft
        >>> from peft import get_peft_model
        >>> from transformers import SamModel
        >>> sam = SamModel.from_pretrained("facebook/sam-vit-base")
        >>> model = get_peft_model(sam, sam_peft.SloraConfig())  # r = 10 on blocks 7..11
        >>> model.print_trainable_parameters()  # 61,524: the paper's 61,304 plus 220 LayerNorm parameters
    """

    prefix: str = "slora_"
    tuner_layer_cls = SloraLayer
    target_module_mapping: ClassVar[dict[str, str]] = dict(ATTENTION_TARGETS)
    unsupported_architectures: ClassVar[dict[str, str]] = {"edgetam": CONVOLUTIONAL_ENCODER}
    uses_shared_state: bool = True

    def _prepare_adapter_config(self, peft_config: SloraConfig, model_config: dict) -> SloraConfig:
        peft_config = super()._prepare_adapter_config(peft_config, model_config)
        layout = encoder_layout(getattr(self.model, "vision_encoder", None))
        if layout is None:
            return peft_config
        if peft_config.layers_to_transform is None:
            peft_config.layers_to_transform = layout.default_blocks()
        layers = peft_config.layers_to_transform
        blocks = [layers] if isinstance(layers, int) else layers
        layout.check_blocks(blocks)
        state = self.__dict__.get("_slora_state")
        stage = layout.stage(blocks[0])
        grid = layout.grid_size(stage)
        if peft_config.prompt_augmentation and grid <= 4:
            raise ValueError(
                f"SLoRA's prompt augmentation blurs the heat map with a 9 x 9 kernel, which needs a grid longer than "
                f"4 cells per side; the adapted blocks' grid is {grid} x {grid}. Adapt blocks on a finer grid, or set "
                "`prompt_augmentation=False`."
            )
        if state is not None and stage != state.stage:
            raise ValueError(
                f"SloraConfig.layers_to_transform {blocks} are blocks of {layout.describe_stage(stage)}, but this "
                f"model's SLoRA blocks are in {layout.describe_stage(state.stage)}: all SLoRA adapters of a model "
                "adapt blocks of one stage (they share its heat map and neck level). Choose blocks of stage "
                f"{state.stage}, or adapt another copy of the base model."
            )
        return peft_config

    def _create_and_replace(
        self,
        peft_config: SloraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs,
    ) -> None:
        widths = attention_widths(target)
        if widths is None:
            raise ValueError(
                f"SLoRA target {current_key!r} is a {type(target).__name__}; SLoRA wraps the attention module of a "
                "vision block (`vision_encoder.layers.<i>.attn` with `qkv` and `proj` on SAM, "
                "`vision_encoder.backbone.blocks.<i>.attn` on SAM 2, `vision_encoder.backbone.layers.<i>.attention` "
                "with `q_proj` .. `o_proj` on SAM 3). Check `target_modules`."
            )
        encoder, layout, index = self._encoder_of(current_key)
        state = self._shared_state(encoder, layout, layout.stage(index))
        self._add_shared_weights(peft_config, adapter_name, widths[0], encoder)
        if peft_config.prompt_augmentation:
            self._add_to_neck(peft_config, adapter_name, encoder, layout, state)
        if isinstance(target, SloraAttention):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = SloraAttention(target, adapter_name, peft_config, state, block=parent)
        self._insert(parent, target_name, new_module, target, adapter_name)

    def _encoder_of(self, attention_key: str) -> tuple[nn.Module, SamEncoderLayout, int]:
        """The vision encoder holding the attention module `attention_key`, its layout and the block's index.

        The encoder is the closest module above the key that `encoder_layout` recognises and whose block list holds
        the key (`<encoder>.layers.<i>.attn`, `<encoder>.backbone.blocks.<i>.attn`, ...).
        """
        segments = attention_key.split(".")
        for end in range(len(segments) - 1, -1, -1):
            encoder = self.model.get_submodule(".".join(segments[:end]))
            layout = encoder_layout(encoder)
            index = None if layout is None else layout.block_index(".".join(segments[end:]))
            if index is not None:
                return encoder, layout, index
        raise ValueError(
            f"SLoRA target {attention_key!r} is not in a block of a SAM vision encoder (`<encoder>.layers.<i>` "
            "beside a `neck`, with `image_size` and `patch_size` in its config, or SAM 2's and SAM 3's "
            "`<encoder>.backbone.blocks.<i>` / `<encoder>.backbone.layers.<i>`). Check `target_modules`."
        )

    def _shared_state(self, encoder: nn.Module, layout: SamEncoderLayout, stage: int) -> SloraSharedState:
        """The state shared by this model's SLoRA layers; made (with the prompt hooks) on the first target, on the
        grid of its stage."""
        state = self.__dict__.get("_slora_state")
        if state is not None:
            return state
        self.slora_A = nn.ModuleDict({})
        self.slora_prompt_linear = nn.ModuleDict({})
        self.slora_prompt_norm = nn.ModuleDict({})
        self.slora_learned_prompt = nn.ModuleDict({})
        grid_size = layout.grid_size(stage)
        prompt_encoder = getattr(self.model, "prompt_encoder", None)
        input_size = getattr(prompt_encoder, "input_image_size", None) or layout.image_size
        state = SloraSharedState(
            self.slora_A,
            self.slora_prompt_linear,
            self.slora_prompt_norm,
            grid_size,
            input_size,
            stage=stage,
            grid_name=layout.grid_name(stage),
            learned_prompt=self.slora_learned_prompt,
        )
        self._slora_state = state
        self._prompt_hooks = [
            self.model.register_forward_pre_hook(state.capture_prompts, with_kwargs=True),
            self.model.register_forward_hook(state.release_prompts, with_kwargs=True, always_call=True),
        ]
        return state

    def _shared_containers(self) -> tuple[nn.ModuleDict, ...]:
        if self.__dict__.get("_slora_state") is None:
            return ()
        return (self.slora_A, self.slora_prompt_linear, self.slora_prompt_norm, self.slora_learned_prompt)

    def _add_shared_weights(self, config: SloraConfig, adapter_name: str, in_features: int, encoder: nn.Module) -> None:
        """Create adapter `adapter_name`'s shared A (and heat-map projection, and learned prompt) on the first of its
        targets."""
        if adapter_name in self.slora_A:
            return
        device = next(encoder.parameters()).device
        down = nn.Linear(in_features, config.r, device=device)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(down.bias)
        modules = [(self.slora_A, down)]
        if config.prompt_augmentation:
            modules.append((self.slora_prompt_linear, nn.Linear(config.r, config.r, device=device)))
            modules.append((self.slora_prompt_norm, nn.LayerNorm(config.r, device=device)))
        if config.learned_prompt:
            grid_size = self._slora_state.grid_size
            learned = SloraLearnedPrompt(grid_size, random=not config.init_weights, device=device)
            modules.append((self.slora_learned_prompt, learned))
        trainable = adapter_name in self.active_adapters and not config.inference_mode
        for container, module in modules:
            container[adapter_name] = module.requires_grad_(trainable)

    def _add_to_neck(
        self,
        config: SloraConfig,
        adapter_name: str,
        encoder: nn.Module,
        layout: SamEncoderLayout,
        state: SloraSharedState,
    ) -> None:
        """Wrap the encoder's neck (as the layout's `SloraNeck` class) on its first adapter, and add later adapters
        to it."""
        neck = encoder.neck
        if isinstance(neck, SloraNeck):
            if adapter_name not in neck.slora_neck_input:
                neck.update_layer(adapter_name, config)
            return
        neck_class = layout.neck_class
        if not neck_class.wraps(neck):
            raise ValueError(
                f"SLoRA's prompt augmentation adapts {neck_class.description}, but the encoder's `neck` is a "
                f"{type(neck).__name__}. Set `prompt_augmentation=False` for this model."
            )
        self._insert(encoder, "neck", neck_class(neck, adapter_name, config, state), neck, adapter_name)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        active = {adapter_name} if isinstance(adapter_name, str) else set(adapter_name)
        for container in self._shared_containers():
            for name, module in container.items():
                module.requires_grad_(name in active and not inference_mode)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        names = {adapter_names} if isinstance(adapter_names, str) else set(adapter_names)
        for container in self._shared_containers():
            for name, module in container.items():
                if name in names:
                    module.requires_grad_(requires_grad)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # peft restores the trainability of the wrapped model's existing weights after adding an adapter (whose
        # `inference_mode` its `set_adapter` applies to the active ones); the shared weights live on the tuner, so
        # they are restored here: loading a second adapter for inference leaves the active one trainable.
        before = [
            (module, [weight.requires_grad for weight in module.parameters()])
            for container in self._shared_containers()
            for name, module in container.items()
            if name != adapter_name
        ]
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        for module, flags in before:
            for weight, flag in zip(module.parameters(), flags, strict=True):
                weight.requires_grad_(flag)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for container in self._shared_containers():
            if adapter_name in container:
                del container[adapter_name]
        # The adapter that takes over trains as its per-block weights do (peft's layers made those trainable).
        for name in self.active_adapters:
            trainable = any(weight.requires_grad for weight in self._per_block_weights(name))
            for container in self._shared_containers():
                if name in container:
                    container[name].requires_grad_(trainable)

    def _per_block_weights(self, adapter_name: str) -> list[nn.Parameter]:
        """The weights of adapter `adapter_name` held by the adapted blocks (its `B`s), not the shared ones."""
        return [
            weight
            for module in self.model.modules()
            if isinstance(module, SloraAttention) and adapter_name in module.slora_B
            for weight in module.slora_B[adapter_name].parameters()
        ]

    @property
    def uses_prompts(self) -> bool:
        """Whether some adapter of this model has the prompt path (`prompt_augmentation`): only then do heat maps
        matter."""
        return any(getattr(config, "prompt_augmentation", False) for config in self.peft_config.values())

    @property
    def grid_size(self) -> int:
        """Side of the image-embedding grid the heat maps are on (64 for SAM at 1024 px)."""
        return self.__dict__["_slora_state"].grid_size

    @property
    def prompt_input_size(self) -> int:
        """Side of the model input that point coordinates refer to (1024 for SAM)."""
        return self.__dict__["_slora_state"].input_size

    def heat_map_from_points(
        self, input_points: torch.Tensor, input_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`points_to_heat_map` on this model's geometry: points (B, point_batch, N, 2) -> heat map (B, g, g)."""
        return points_to_heat_map(input_points, input_labels, self.prompt_input_size, self.grid_size)

    @contextmanager
    def prompt_heat_map(self, heat_map: torch.Tensor | None) -> Iterator[None]:
        """Use `heat_map` as every SLoRA layer's heat map inside the `with` block, whatever a forward passes.

        Args:
            heat_map: `(B, g, g)` (or `(g, g)`, for every image) on the embedding grid (`grid_size`), e.g. from
                `heat_map_from_points`; None for the zero map (no prompts).

        Blocks nest; the previous heat map is back when the block ends. With activation checkpointing in training
        (gradients on), the recomputed blocks read the heat map again during backward: an outermost block's heat
        map then stays after the block, unpinned, until the next forward of the model replaces it (as a forward's
        own heat map does), so a backward run after the block sees it.
        """
        state = self.__dict__["_slora_state"]
        if heat_map is not None:
            heat_map = state.check_heat_map(heat_map)
        previous = (state.heat_map, state.pinned)
        state.heat_map, state.pinned = heat_map, True
        try:
            yield
        finally:
            nested = previous[1]
            if not nested and state.recomputes(self.model):
                state.heat_map, state.pinned = heat_map, False
            else:
                state.heat_map, state.pinned = previous

    @contextmanager
    def prompts(self, input_points: torch.Tensor, input_labels: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """`prompt_heat_map(heat_map_from_points(input_points, input_labels))`; yields the heat map (B, g, g).

        Args:
            input_points: `(B, point_batch, N, 2)` points as (x, y) in the model's input frame (0..1024 for SAM).
            input_labels: `(B, point_batch, N)` labels (1 positive; others leave no mark); None: all positive.
        """
        heat_map = self.heat_map_from_points(input_points, input_labels)
        with self.prompt_heat_map(heat_map):
            yield heat_map

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        for handle in self.__dict__.get("_prompt_hooks", []):
            handle.remove()
        return super()._unload_and_optionally_merge(merge=False, **kwargs)
