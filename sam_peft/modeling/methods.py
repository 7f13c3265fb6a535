"""The fine-tuning methods, in one registry: what the training recipe builds, what a model card says of each, and
which keep the image encoder frozen (so that its output can be cached).

`METHODS` maps the recipe's name of a method (`method: conv_lora` in a config) to its `Method`; `method_of_peft_type`
finds one by the `peft_type` that an adapter's config records. A method that a recipe trains has a `build`: it
turns the recipe's model arguments into the PEFT config (`None` when nothing but the mask decoder trains).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peft import LoraConfig, PeftConfig

from ..tuners.cad import CadConfig
from ..tuners.conv_lora import ConvLoraConfig
from ..tuners.sam_adapter import SamAdapterConfig
from ..tuners.targets import QKV_TARGETS, default_target_modules
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
        build: `build(args, model)` -> the PEFT config for `model` from the recipe's model arguments, or None to
            train the mask decoder alone. Only for methods of `TRAIN_RECIPE`.
    """

    name: str
    title: str
    peft_type: str
    description: str
    hyperparameters: tuple[str, ...] = ()
    frozen_encoder: bool = False
    recipe: str = TRAIN_RECIPE
    build: Callable[[Any, Any], PeftConfig | None] | None = None


def _conv_lora(args: Any, model: Any) -> PeftConfig:
    return ConvLoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        num_experts=args.num_experts,
        top_k=args.top_k,
        moe_loss_weight=args.moe_loss_weight,
    )


def _lora(args: Any, model: Any) -> PeftConfig:
    # peft's LoRA knows neither SAM's attention projections nor the model's task head: both are named
    return LoraConfig(
        r=args.r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=default_target_modules("LoRA", QKV_TARGETS, model.config.to_dict()),
        modules_to_save=["mask_decoder"],
    )


def _cad(args: Any, model: Any) -> PeftConfig:
    # the adapter's output is added to the image embedding
    channels = image_embedding_channels(model.config)
    return CadConfig(image_size=args.cad_image_size, channels=channels, scale=args.cad_scale)


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
            description="LoRA (Hu et al. 2021) on the image encoder's fused qkv projections.",
            hyperparameters=("r", "lora_alpha"),
            build=_lora,
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
                "plus point-prompt heat maps."
            ),
            recipe=CONTINUAL_RECIPE,
        ),
        Method(
            name="decoder_only",
            title="Decoder-only tuning",
            peft_type="DECODER_ONLY",
            description="The image and prompt encoders stay frozen; only the mask decoder is trained.",
            frozen_encoder=True,
            build=lambda args, model: None,
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
