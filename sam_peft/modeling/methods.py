"""The fine-tuning methods, in one registry: what the training recipe builds, what a model card says of each, and
which keep the image encoder frozen (so that its output can be cached).

`METHODS` maps the recipe's name of a method (`method: conv_lora` in a config) to its `Method`; `method_of_peft_type`
finds one by the `peft_type` that an adapter's config records. A method that a recipe trains has a `build`: it
turns the recipe's model arguments into what is trained beside the mask decoder, which every method trains in full:
an adapter (a PEFT config), or some of the base model's own weights (`PartialTuning`, none for decoder-only
training).

Three kinds of methods:

- sam-peft's tuners (conv_lora, cad, sam_adapter, slora) and LoRA on SAM's attention, each with its own arguments;
- `peft`: any of peft's own tuners (`PEFT_TYPES`), from the config's `peft_config` mapping (`peft_type` and the
  fields of that type's config class), on the image encoder's attention projections unless it names its targets;
- partial fine-tuning of the base model's own weights: decoder_only, bias_only, norm_only, attention_only,
  last_blocks and full.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import MISSING, dataclass, fields
from typing import Any

from peft import PEFT_TYPE_TO_CONFIG_MAPPING, LoraConfig, PeftConfig, PeftType, PromptLearningConfig
from torch import nn

from ..tuners.cad import CadConfig
from ..tuners.conv_lora import ConvLoraConfig
from ..tuners.sam_adapter import SamAdapterConfig
from ..tuners.slora import SloraConfig
from ..tuners.targets import (
    ATTENTION_TARGETS,
    BLOCK_NORM_TARGETS,
    CONVOLUTIONAL_ENCODER,
    ENCODER_BLOCKS,
    MLP_OUTPUT_TARGETS,
    QKV_TARGETS,
    architecture_name,
    default_target_modules,
    restrict_to_blocks,
)
from .semantic_sam import image_embedding_channels

TRAIN_RECIPE = "recipes/train.py"
CONTINUAL_RECIPE = "recipes/continual.py"


@dataclass(frozen=True)
class Method:
    """A fine-tuning method.

    Attributes:
        name: The recipe's name (`--method conv_lora`).
        title: How people write it ("Conv-LoRA").
        peft_type: The `peft_type` of its adapter config; "DECODER_ONLY" for decoder-only training (no adapter).
        description: The model card's paragraph on the method.
        hyperparameters: The recipe's model arguments that shape it, listed on the card.
        frozen_encoder: Whether the image encoder's output stays what the base model computes (its output can then
            be cached during training).
        recipe: The recipe that trains it.
        build: `build(args, model)` -> what the method trains of `model` (the base model, before any wrapper)
            beside its mask decoder, from the recipe's model arguments: the PEFT config of its adapter, a
            `PartialTuning` (some of the base model's own weights), or None (the mask decoder alone). Only for
            methods of `TRAIN_RECIPE`.
        required: The model arguments among `hyperparameters` that the method cannot do without (None is an
            error), e.g. `peft_config` for `peft`.
    """

    name: str
    title: str
    peft_type: str
    description: str
    hyperparameters: tuple[str, ...] = ()
    frozen_encoder: bool = False
    recipe: str = TRAIN_RECIPE
    build: Callable[[Any, Any], PeftConfig | PartialTuning | None] | None = None
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartialTuning:
    """What a method without an adapter trains besides the mask decoder: these parameters of the base model, by
    name (`model.named_parameters()`), all others frozen; none for decoder-only training.

    The trained weights are saved by name (`sam_peft.training.save_trained`), so a model built the same way loads
    them."""

    parameters: tuple[str, ...] = ()


def _conv_lora(args: Any, model: Any) -> PeftConfig:
    return ConvLoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        num_experts=args.num_experts,
        top_k=args.top_k,
        moe_loss_weight=args.moe_loss_weight,
    )


def _model_type(model: nn.Module) -> str | None:
    return model.config.to_dict().get("model_type")


def last_block_indices(model: nn.Module, count: int | None) -> list[int] | None:
    """The indices of the last `count` blocks of `model`'s image encoder (`ENCODER_BLOCKS`), or None for None.

    Raises:
        ValueError: for an encoder without blocks (a convolutional one, an unknown architecture), or a count out of
            `1..number of blocks`.
    """
    if count is None:
        return None
    model_type = _model_type(model)
    if model_type not in ENCODER_BLOCKS:
        known = ", ".join(architecture_name(name) for name in ENCODER_BLOCKS)
        raise ValueError(
            f"last_blocks selects blocks of a transformer image encoder ({known}); {architecture_name(model_type)} "
            "has none that sam-peft knows."
        )
    total = len(model.get_submodule(ENCODER_BLOCKS[model_type]))
    if not 1 <= count <= total:
        raise ValueError(f"last_blocks must be between 1 and the image encoder's {total} blocks, got {count}.")
    return list(range(total - count, total))


def _block_targets(method: str, mapping: dict[str, str], args: Any, model: nn.Module) -> str:
    """The default target pattern of `method` in `mapping` for `model`, on the last `args.last_blocks` blocks when
    that is set."""
    pattern = default_target_modules(method, mapping, model.config.to_dict(), {"edgetam": CONVOLUTIONAL_ENCODER})
    blocks = last_block_indices(model, getattr(args, "last_blocks", None))
    return pattern if blocks is None else restrict_to_blocks(pattern, blocks)


def _lora(args: Any, model: Any) -> PeftConfig:
    # peft's LoRA knows neither SAM's attention projections nor the model's task head: both are named
    return LoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=_block_targets("LoRA", QKV_TARGETS, args, model),
        modules_to_save=["mask_decoder"],
    )


def _slora(args: Any, model: Any) -> PeftConfig:
    # One domain, one adapter (SAMCL's module per domain and selector is recipes/continual.py). Prompt-free, no
    # forward has points, so the adapter learns a constant prompt (a heat map on the embedding grid); prompted, the
    # encoder reads the heat map of the points that prompted training and evaluation give it. SLoRA has no scaling
    # or dropout: of the LoRA arguments only `r` applies (the paper's rank is 10).
    return SloraConfig(
        r=args.r,
        prompt_augmentation=True,
        learned_prompt=args.task == "prompt_free",
        modules_to_save=["mask_decoder"],
    )


def _cad(args: Any, model: Any) -> PeftConfig:
    # the adapter's output is added to the image embedding
    channels = image_embedding_channels(model.config)
    return CadConfig(image_size=args.cad_image_size, channels=channels, scale=args.cad_scale)


# peft's tuners of named modules that the `peft` method does not build, by `peft_type`, with the reason.
_TOKEN_LAYOUT = (
    "its layers read their input as (batch, tokens, channels), and SAM's image encoders (every generation) pass "
    "their tokens to the attention projections as (batch, height, width, channels)"
)
_PEFT_REFUSALS = {
    "ADALORA": (
        "AdaLoRA reallocates its ranks from the training loop (`update_and_allocate` after each step), which the "
        "training recipe does not call"
    ),
    "GRALORA": _TOKEN_LAYOUT,
    "OFT": _TOKEN_LAYOUT + " (OFT unfolds a 4-dimensional input as a convolution's)",
    "POLY": "Polytropon routes each forward by task ids (`task_ids`), which segmentation batches do not have",
    "SHADOW": "its shadow backbone mirrors a language model's layers (num_hidden_layers of a text config)",
    "TINYLORA": (
        "its weights are shared by the adapted layers and saved once, which sam-peft's loading of a run's weights "
        "takes for missing weights"
    ),
    "UNILORA": (
        "its weights are shared by the adapted layers and saved once, which sam-peft's loading of a run's weights "
        "takes for missing weights"
    ),
}


def _adapts_modules(config_class: type) -> bool:
    """Whether peft's config class `config_class` is a tuner of named modules (its `target_modules`, and others
    trained in full: `modules_to_save`) rather than prompt learning for a text model or a mixture of adapters."""
    names = {f.name for f in fields(config_class)}
    # read from the class: building a config may import an optional dependency (AdaMSS: scikit-learn)
    return {"target_modules", "modules_to_save"} <= names and not issubclass(config_class, PromptLearningConfig)


def _available_peft_types() -> tuple[str, ...]:
    return tuple(
        sorted(
            peft_type.value
            for peft_type in PeftType
            if peft_type.value not in _PEFT_REFUSALS
            and (config_class := PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)) is not None
            and _adapts_modules(config_class)
        )
    )


# The `peft_type`s of `method: peft`: peft's own tuners of named modules (LoRA, with `use_dora` DoRA, IA3, LoHa,
# LoKr, VeRA, BOFT, ...), but for `_PEFT_REFUSALS`. Some have shape constraints that their defaults do not meet on
# small encoders (C3A's and VB-LoRA's block sizes, MiSS's rank, RoAd's groups, SHiRA's rank): peft's error says which.
PEFT_TYPES = _available_peft_types()
# The default targets of the peft types that adapt other layers than the attention input projections.
_DEFAULT_TARGETS = {"LN_TUNING": BLOCK_NORM_TARGETS}


def _peft_type(value: Any) -> str:
    """The `peft_type` of a `peft_config` mapping, upper-cased, checked against `PEFT_TYPES`."""
    if value is None:
        raise ValueError(f"peft_config needs a peft_type: one of {', '.join(PEFT_TYPES)}.")
    name = str(getattr(value, "value", value)).upper()
    if name in PEFT_TYPES:
        return name
    if name in _PEFT_REFUSALS:
        available = ", ".join(PEFT_TYPES)
        raise ValueError(f"peft_type {name} is not available: {_PEFT_REFUSALS[name]}. Use one of {available}.")
    own = method_of_peft_type(name)
    if own is not None:
        raise ValueError(
            f"peft_type {name} is sam-peft's {own.title}: use method: {own.name} (with its arguments) rather than "
            "method: peft."
        )
    raise ValueError(f"Unknown peft_type {value!r} in peft_config; expected one of {', '.join(PEFT_TYPES)}.")


def _coerce_numbers(config_class: type, values: dict) -> dict:
    """`values` with the numeric strings that YAML leaves as strings (`1e-4`) turned into the numbers that the
    config class's float and int fields default to."""
    defaults = {f.name: f.default for f in fields(config_class) if f.default is not MISSING}
    coerced = dict(values)
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(value, str) and type(default) in (int, float):
            with suppress(ValueError):  # else the config class says what it expects
                coerced[key] = type(default)(value)
    return coerced


def make_peft_config(peft_config: Mapping[str, Any], args: Any = None, model: nn.Module | None = None) -> PeftConfig:
    """peft's config of the `peft_config` mapping of a run (`peft_type` and fields of that type's config class),
    built by peft's own class (`PEFT_TYPE_TO_CONFIG_MAPPING`). `peft_config` is not modified.

    With `model` (the base model), sam-peft completes what peft cannot know of SAM: the targets default to the
    image encoder's attention input projections (`QKV_TARGETS` of the model's generation; for IA3, with its
    paper's feed-forward layers, the MLPs' output layers scaled at their input; for LN_TUNING, the blocks'
    LayerNorms), restricted to the last `args.last_blocks` blocks when that is set, and `modules_to_save` always
    holds the mask decoder. Without it, the mapping is checked only (as the recipe's arguments are parsed).

    Raises:
        ValueError: for a missing or unknown `peft_type` (listing `PEFT_TYPES`), fields that its config class does
            not have (named), values that the class refuses, `last_blocks` with targets of one's own, and
            `layers_to_transform` without targets of one's own.
    """
    if not isinstance(peft_config, Mapping):
        raise ValueError(
            f"peft_config must be a mapping (peft_type and the fields of its config), got {peft_config!r}."
        )
    values = dict(peft_config)
    peft_type = _peft_type(values.pop("peft_type", None))
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    accepted = {f.name for f in fields(config_class) if f.init}
    unknown = sorted(map(str, set(values) - accepted))
    if unknown:
        raise ValueError(
            f"peft_config: {config_class.__name__} ({peft_type}) has no field {', '.join(map(repr, unknown))}; see "
            f"peft's documentation of {config_class.__name__} for its fields."
        )
    values = _coerce_numbers(config_class, values)
    if model is not None:
        values.update(_completed(peft_type, values, args, model))
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"peft_config ({peft_type}, {config_class.__name__}) is refused by peft: {error}") from error


def _completed(peft_type: str, values: dict, args: Any, model: nn.Module) -> dict:
    """The values of a `peft_config` that sam-peft sets on `model`: default targets, the mask decoder saved."""
    completed = {"modules_to_save": sorted({*(values.get("modules_to_save") or ()), "mask_decoder"})}
    own_targets = values.get("target_modules") is not None
    if own_targets and getattr(args, "last_blocks", None) is not None:
        raise ValueError(
            "last_blocks restricts the default targets of peft_config to the last blocks; with target_modules of "
            "your own, choose the blocks in them (or with layers_to_transform and a list of target names)."
        )
    if not own_targets and values.get("layers_to_transform") is not None:
        raise ValueError(
            "peft_config's layers_to_transform needs target_modules of your own, as a list of names (e.g. "
            "['attn.qkv']): peft refuses it with the default targets, which are a pattern. To adapt the last N "
            "blocks, set last_blocks: N instead."
        )
    if own_targets:
        if peft_type == "IA3" and values.get("feedforward_modules") is None:
            completed["feedforward_modules"] = []  # every target scaled at its output
        return completed
    attention = _block_targets(peft_type, _DEFAULT_TARGETS.get(peft_type, QKV_TARGETS), args, model)
    if peft_type == "IA3" and values.get("feedforward_modules") is None:
        # (IA)^3's paper: keys and values scaled at their output, the MLP's inner activations at the input of its
        # output layer
        feedforward = _block_targets(peft_type, MLP_OUTPUT_TARGETS, args, model)
        completed["target_modules"] = f"{attention}|{feedforward}"
        completed["feedforward_modules"] = feedforward
    else:
        completed["target_modules"] = attention
    return completed


def _peft(args: Any, model: nn.Module) -> PeftConfig:
    return make_peft_config(args.peft_config, args, model)


def _encoder_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if name.startswith("vision_encoder.")}


def _parameters_of_modules(model: nn.Module, keep: Callable[[str, nn.Module], bool]) -> list[str]:
    """The names of the parameters (their own, not their children's) of the image encoder's modules that `keep`."""
    return [
        f"{name}.{parameter_name}"
        for name, module in model.named_modules()
        if name.startswith("vision_encoder.") and keep(name, module)
        for parameter_name, _ in module.named_parameters(recurse=False)
    ]


def _partial(select: Callable[[Any, nn.Module], list[str]]) -> Callable[[Any, nn.Module], PartialTuning]:
    """A `build` training the image-encoder parameters that `select(args, model)` names (none is an error)."""

    def build(args: Any, model: nn.Module) -> PartialTuning:
        names = select(args, model)
        if not names:
            raise ValueError(
                f"method {args.method} trains nothing of this {architecture_name(_model_type(model))} image encoder."
            )
        return PartialTuning(tuple(sorted(set(names))))

    return build


def _biases(args: Any, model: nn.Module) -> list[str]:
    return [name for name in _encoder_parameters(model) if name.endswith(".bias")]


def _is_layer_norm(module: nn.Module) -> bool:
    # transformers' channels-first LayerNorms (SamLayerNorm, ...) are nn.LayerNorm, or at least named so
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def _norms(args: Any, model: nn.Module) -> list[str]:
    return _parameters_of_modules(model, lambda name, module: _is_layer_norm(module))


def _attention(args: Any, model: nn.Module) -> list[str]:
    pattern = default_target_modules(
        "attention_only", ATTENTION_TARGETS, model.config.to_dict(), {"edgetam": CONVOLUTIONAL_ENCODER}
    )
    return _parameters_of_modules(model, lambda name, module: re.fullmatch(pattern, name) is not None)


def _last_blocks(args: Any, model: nn.Module) -> list[str]:
    blocks = last_block_indices(model, args.last_blocks)
    prefixes = tuple(f"{ENCODER_BLOCKS[_model_type(model)]}.{index}." for index in blocks)
    return [name for name in _encoder_parameters(model) if name.startswith(prefixes)]


def _full(args: Any, model: nn.Module) -> list[str]:
    return list(_encoder_parameters(model))


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            name="conv_lora",
            title="Conv-LoRA",
            peft_type="CONV_LORA",
            description=(
                "Conv-LoRA (Zhong et al., *Convolution Meets LoRA: Parameter Efficient Finetuning for Segment Anything "
                "Model*, ICLR 2024) adds LoRA to the fused qkv projection of every image-encoder block, with a mixture "
                "of convolutional experts at several scales inside the low-rank bottleneck and a noisy top-1 gate."
            ),
            hyperparameters=("r", "lora_alpha", "num_experts", "top_k", "moe_loss_weight"),
            build=_conv_lora,
        ),
        Method(
            name="lora",
            title="LoRA",
            peft_type="LORA",
            description=(
                "LoRA (Hu et al. 2021) on the image encoder's attention input projections (fused qkv; SAM 3: q, k "
                "and v), in every block or, with `last_blocks`, in the last blocks only."
            ),
            hyperparameters=("r", "lora_alpha", "last_blocks"),
            build=_lora,
        ),
        Method(
            name="peft",
            title="peft",
            peft_type="PEFT",
            description=(
                "One of peft's own methods (LoRA, DoRA, IA3, LoHa, LoKr, VeRA, BOFT, ...), configured by "
                "`peft_config` (its `peft_type` and the fields of peft's config class), on the image encoder's "
                "attention input projections unless it names its `target_modules` (IA3: with the MLPs' output "
                "layers as feed-forward modules), in the last blocks only with `last_blocks`."
            ),
            hyperparameters=("peft_config", "last_blocks"),
            build=_peft,
            required=("peft_config",),
        ),
        Method(
            name="cad",
            title="CAD",
            peft_type="CAD",
            description=(
                "CAD (*Memory Efficient Convolutional Adapter for SAM*, 2024): a convolutional adapter running beside "
                "the frozen image encoder on a downsized copy of the image, its features added to the encoder's "
                "output."
            ),
            hyperparameters=("cad_image_size", "cad_scale"),
            frozen_encoder=True,
            build=_cad,
        ),
        Method(
            name="sam_adapter",
            title="SAM-Adapter",
            peft_type="SAM_ADAPTER",
            description=(
                "SAM-Adapter (Chen et al., *SAM Fails to Segment Anything?*, 2023): per-block MLP adapters fed with "
                "patch-embedding and high-frequency features of the image."
            ),
            build=lambda args, model: SamAdapterConfig(),
        ),
        Method(
            name="slora",
            title="SLoRA",
            peft_type="SLORA",
            description=(
                "SLoRA (Wang et al., *SAMCL*, AAAI 2026): LoRA with one down-projection shared by the adapted blocks, "
                "plus point-prompt heat maps in the image encoder (prompted) or a learned constant prompt "
                "(prompt-free). recipes/continual.py trains one per domain with SAMCL's selector."
            ),
            hyperparameters=("r",),
            build=_slora,
        ),
        Method(
            name="decoder_only",
            title="Decoder-only tuning",
            peft_type="DECODER_ONLY",
            description="The image and prompt encoders stay frozen; only the mask decoder is trained.",
            frozen_encoder=True,
            build=lambda args, model: PartialTuning(),
        ),
        Method(
            name="bias_only",
            title="Bias-only tuning (BitFit)",
            peft_type="BIAS_ONLY",
            description=(
                "BitFit (Ben Zaken et al., 2022) on the image encoder: every bias of the image encoder (its "
                "LayerNorms' included) is trained, with the mask decoder; every weight stays frozen."
            ),
            build=_partial(_biases),
        ),
        Method(
            name="norm_only",
            title="LayerNorm tuning",
            peft_type="NORM_ONLY",
            description=(
                "The weights and biases of every LayerNorm of the image encoder (its blocks' and its neck's) are "
                "trained, with the mask decoder; everything else stays frozen."
            ),
            build=_partial(_norms),
        ),
        Method(
            name="attention_only",
            title="Attention tuning",
            peft_type="ATTENTION_ONLY",
            description=(
                "The attention layers of every image-encoder block are trained in full: the input projections "
                "(fused qkv; SAM 3: q, k, v) and the output projection, weights and biases (not SAM's relative "
                "position tables), with the mask decoder."
            ),
            build=_partial(_attention),
        ),
        Method(
            name="last_blocks",
            title="Last-blocks tuning",
            peft_type="LAST_BLOCKS",
            description=(
                "The last `last_blocks` blocks of the image encoder are trained in full, with the mask decoder; the "
                "earlier blocks, the patch embedding and the neck stay frozen."
            ),
            hyperparameters=("last_blocks",),
            build=_partial(_last_blocks),
            required=("last_blocks",),
        ),
        Method(
            name="full",
            title="Full fine-tuning",
            peft_type="FULL",
            description=(
                "The whole image encoder is trained, with the mask decoder (the prompt encoder stays frozen): the "
                "ceiling that parameter-efficient methods are measured against."
            ),
            build=_partial(_full),
        ),
    )
}


def recipe_methods(recipe: str = TRAIN_RECIPE) -> tuple[str, ...]:
    """The names of the methods that `recipe` trains."""
    return tuple(name for name, method in METHODS.items() if method.recipe == recipe)


def get_method(name: str, recipe: str = TRAIN_RECIPE) -> Method:
    """The method `name` as `recipe` trains it.

    Raises:
        ValueError: for an unknown name, or a method that another recipe trains, listing the available ones.
    """
    method = METHODS.get(name)
    if method is None:
        raise ValueError(f"Unknown method {name!r}; expected one of {recipe_methods(recipe)}.")
    if method.recipe != recipe:
        raise ValueError(
            f"{method.title} ({name!r}) is trained by {method.recipe}; {recipe} trains {recipe_methods(recipe)}."
        )
    return method


def method_of_peft_type(peft_type: str) -> Method | None:
    """The method whose adapters have `peft_type` (e.g. "CONV_LORA"), or None (another PEFT method)."""
    return next((method for method in METHODS.values() if method.peft_type == peft_type), None)


def adapter_peft_type(args: Any) -> str:
    """The `peft_type` that a run's model card names: its method's, or for `method: peft` the type in its
    `peft_config` (LORA, IA3, ...)."""
    if args.method == "peft" and isinstance(getattr(args, "peft_config", None), Mapping):
        return _peft_type(args.peft_config.get("peft_type"))
    return METHODS[args.method].peft_type
