"""Randomly initialised SAM models of the published sizes (and tiny ones) for tests, examples and benchmarks.

Real checkpoints come from `SamModel.from_pretrained("facebook/sam-vit-base")` (SAM 2.1:
`Sam2Model.from_pretrained("facebook/sam2.1-hiera-small")`); these helpers build the same architectures, of every
generation (SAM, SAM 2 / 2.1, SAM 3's tracker), without downloading anything. `SamVisionConfig` initialises the
vision encoder with a standard deviation of 1e-10, which makes every block nearly the identity and adapters look
inert, so `random_sam` re-initialises the encoder the way ViTs are usually initialised.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    PreTrainedModel,
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
    Sam3TrackerConfig,
    Sam3TrackerMaskDecoderConfig,
    Sam3TrackerModel,
    Sam3TrackerPromptEncoderConfig,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)
from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

# hidden size, blocks, heads, global-attention blocks (Kirillov et al. 2023, Table 13).
_VIT_SIZES = {
    "vit-b": (768, 12, 12, (2, 5, 8, 11)),
    "vit-l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit-h": (1280, 32, 16, (7, 15, 23, 31)),
}
# SAM 2.1's Hiera sizes (the released configs): width and heads of the first stage (both double at each stage), blocks
# per stage, global-attention blocks, window of each stage, background size of the windowed position embedding.
_HIERA_SIZES = {
    "sam2-hiera-t": (96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "sam2-hiera-s": (96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "sam2-hiera-b+": (112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "sam2-hiera-l": (144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}
VARIANTS = ("tiny", *_VIT_SIZES, "sam2-tiny", *_HIERA_SIZES, "sam3-tiny", "sam3")
_MODEL_CLASSES = {"sam": SamModel, "sam2": Sam2Model, "sam3_tracker": Sam3TrackerModel}


def sam_config(variant: str = "vit-b", image_size: int | None = None) -> SamConfig | Sam2Config | Sam3TrackerConfig:
    """The config of `variant` at `image_size` pixels: a `SamConfig` ("tiny", "vit-b", "vit-l", "vit-h"), a
    `Sam2Config` ("sam2-tiny", "sam2-hiera-t", "sam2-hiera-s", "sam2-hiera-b+", "sam2-hiera-l") or a
    `Sam3TrackerConfig` ("sam3-tiny", "sam3").

    The full-size variants match the released checkpoints (SAM and SAM 2.1: 1024 px, embeddings 256 x 64 x 64;
    SAM 3: 1008 px, 256 x 72 x 72). "tiny" (default 128 px: 4 blocks of width 32, 16 x 16 tokens in 4 x 4 windows,
    32-channel neck and decoder) keeps every code path of SAM (windowed and global blocks, padding-free windows,
    prompt encoder, two-way decoder) at a size that runs in milliseconds on a CPU; "sam2-tiny" (128 px: four Hiera
    stages of widths 16..128 with one or two blocks each, windows 4, 2, 4, 2, query pooling between stages, one
    global block, three FPN levels) and "sam3-tiny" (112 px: 4 blocks of width 32 on 8 x 8 tokens, windows of
    4 x 4 and two global blocks, rotary embeddings, three FPN levels) do the same for the later generations.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown SAM variant {variant!r}; expected one of {VARIANTS}.")
    if variant == "sam2-tiny" or variant in _HIERA_SIZES:
        return _sam2_config(variant, image_size)
    if variant.startswith("sam3"):
        return _sam3_config(variant, image_size)
    if variant == "tiny":
        image_size = image_size or 128
        patch_size = 8
        vision = SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            window_size=4,
            global_attn_indexes=[1, 3],
            output_channels=32,
            mlp_dim=64,
            num_pos_feats=16,
        )
        prompt = SamPromptEncoderConfig(
            hidden_size=32, image_size=image_size, patch_size=patch_size, mask_input_channels=4
        )
        decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
        return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)

    image_size = image_size or 1024
    hidden_size, num_layers, num_heads, global_blocks = _VIT_SIZES[variant]
    vision = SamVisionConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        global_attn_indexes=list(global_blocks),
        image_size=image_size,
    )
    prompt = SamPromptEncoderConfig(image_size=image_size)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=SamMaskDecoderConfig())


def _sam2_config(variant: str, image_size: int | None) -> Sam2Config:
    """`sam_config` of the SAM 2 variants: Hiera's patch embedding has stride 4 and each later stage halves the grid."""
    if variant == "sam2-tiny":
        image_size, width, heads, blocks, global_blocks, windows, background = (
            image_size or 128,
            16,
            1,
            (1, 1, 2, 1),
            (3,),
            (4, 2, 4, 2),
            (4, 4),
        )
        hidden = 32
    else:
        image_size = image_size or 1024
        width, heads, blocks, global_blocks, windows, background = _HIERA_SIZES[variant]
        hidden = 256
    widths = [width * 2**stage for stage in range(4)]
    backbone = Sam2HieraDetConfig(
        hidden_size=width,
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[heads * 2**stage for stage in range(4)],
        blocks_per_stage=list(blocks),
        global_attention_blocks=list(global_blocks),
        window_size_per_stage=list(windows),
        window_positional_embedding_background_size=list(background),
        image_size=[image_size, image_size],
    )
    grid = image_size // 4
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=widths[::-1],
        backbone_feature_sizes=[[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]],
        fpn_hidden_size=hidden,
    )
    if variant != "sam2-tiny":
        return Sam2Config(vision_config=vision, prompt_encoder_config=Sam2PromptEncoderConfig(image_size=image_size))
    prompt = Sam2PromptEncoderConfig(hidden_size=hidden, image_size=image_size, mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def _sam3_config(variant: str, image_size: int | None) -> Sam3TrackerConfig:
    """`sam_config` of the SAM 3 tracker variants: 14 px patches, FPN levels at 4, 2 and 1 times the token grid."""
    if variant == "sam3":
        image_size = image_size or 1008
        backbone = Sam3ViTConfig(image_size=image_size)
        hidden, prompt, decoder = 256, {}, {}
    else:
        image_size = image_size or 112
        backbone = Sam3ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=image_size,
            window_size=4,
            global_attn_indexes=[1, 3],
            pretrain_image_size=56,
        )
        hidden = 32
        prompt = {"hidden_size": hidden, "mask_input_channels": 4}
        decoder = {"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32}
    grid = image_size // backbone.patch_size
    vision = Sam3VisionConfig(
        backbone_config=backbone,
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        scale_factors=[4.0, 2.0, 1.0],  # the tracker's three levels (the detector's neck adds a fourth, at 0.5)
    )
    return Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config=Sam3TrackerPromptEncoderConfig(image_size=image_size, patch_size=14, **prompt),
        mask_decoder_config=Sam3TrackerMaskDecoderConfig(**decoder),
    )


@torch.no_grad()
def init_vision_weights_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Re-initialise every `vision_encoder` Linear/Conv2d with N(0, std) and zero bias, in place.

    Works on any model holding a SAM vision encoder (`SamModel`, a PEFT-wrapped one, ...). Returns `model`.
    """
    for name, module in model.named_modules():
        if "vision_encoder" in name and isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def init_positional_encoding_(model: nn.Module) -> nn.Module:
    """Draws SAM's random Fourier position encoding (the Gaussian matrix shared by the image and the prompt
    encoders) from N(0, 1), in place, as SAM's `PositionEmbeddingRandom` (scale 1) does and as the released
    checkpoints hold it. transformers initialises SAM's with a standard deviation of `hidden_size // 2` (16 for the
    tiny model, 128 for the released sizes): sines of such frequencies vary from pixel to pixel, so points and boxes
    can hardly be told apart. SAM 2 / SAM 3's encodings are drawn with scale 1 already and are left as they are.
    Returns `model`.
    """
    encoding = getattr(model, "shared_image_embedding", None)
    if isinstance(model, SamModel) and encoding is not None:
        with torch.no_grad():
            encoding.positional_embedding.normal_()
    return model


def random_sam(
    variant: str = "tiny",
    image_size: int | None = None,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
) -> PreTrainedModel:
    """A model of `variant` (`sam_config`) with random weights, a realistic vision-encoder initialisation and SAM's
    position encoding at the released checkpoints' scale (`init_positional_encoding_`): a `SamModel`, a `Sam2Model`
    ("sam2-..." variants) or a `Sam3TrackerModel` ("sam3..." variants).

    With `device="meta"` nothing is allocated (for parameter counting) and no initialisation runs.
    """
    config = sam_config(variant, image_size)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = _MODEL_CLASSES[config.model_type](config)
    if torch.device(device).type != "meta":
        init_vision_weights_(model)
        init_positional_encoding_(model)
    return model.eval()
