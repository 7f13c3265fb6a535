"""Parameter names of the original SAM (`segment_anything`'s `Sam`) and their transformers `SamModel` names.

The authors of SAM-Adapter and CAD extend the original SAM code, so their checkpoints name SAM's weights as it
does (`image_encoder.blocks.3.norm1.weight`); transformers renames them (`vision_encoder.layers.3.layer_norm1.weight`).
The renaming below has the same effect as the key table of transformers' conversion script
(`transformers/models/sam/convert_sam_to_hf.py`); no tensor is reshaped or transposed.
"""

from __future__ import annotations

import re

# The original SAM keeps its pixel normalisation as buffers; transformers' processor does it instead.
PIXEL_NORMALISATION_KEYS = ("pixel_mean", "pixel_std")

# Positions inside the original `nn.Sequential` modules -> transformers' module names.
_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_MASK_DOWNSCALING = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
# The original 3-layer MLP's `layers.<i>` -> transformers' `SamFeedForward` (proj_in, layers.0, proj_out).
_MLP_LAYERS = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}

# (pattern, new name of the matched text, the names of the numbered positions) in the order they apply.
_RENAMES: tuple[tuple[re.Pattern[str], str, dict[str, str] | None], ...] = tuple(
    (re.compile(pattern), replacement, positions)
    for pattern, replacement, positions in (
        (r"^image_encoder\.", "vision_encoder.", None),
        (r"^vision_encoder\.blocks\.", "vision_encoder.layers.", None),
        (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection.", None),
        (r"^vision_encoder\.neck\.(\d+)\.", "vision_encoder.neck.{}.", _NECK),
        (r"\.norm(\d|_final_attn)\.", r".layer_norm\1.", None),
        (r"^mask_decoder\.output_upscaling\.(\d+)\.", "mask_decoder.{}.", _UPSCALING),
        (r"\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.", ".\\1.{}.", _MLP_LAYERS),
        (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed.", None),
        (r"^prompt_encoder\.mask_downscaling\.(\d+)\.", "prompt_encoder.mask_embed.{}.", _MASK_DOWNSCALING),
        (
            r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
            "prompt_encoder.shared_embedding.positional_embedding",
            None,
        ),
    )
)


def sam_key_to_transformers(key: str) -> str:
    """The transformers `SamModel` name of the original SAM state-dict key `key` (unchanged when no rule applies).

    Examples: `image_encoder.blocks.0.norm1.weight` -> `vision_encoder.layers.0.layer_norm1.weight`,
    `mask_decoder.output_upscaling.3.bias` -> `mask_decoder.upscale_conv2.bias`,
    `mask_decoder.iou_prediction_head.layers.1.weight` -> `mask_decoder.iou_prediction_head.layers.0.weight`.
    A numbered position the original modules do not have (`neck.7`) is left as it is.
    """
    for pattern, replacement, positions in _RENAMES:
        match = pattern.search(key)
        if match is None:
            continue
        if positions is None:
            key = pattern.sub(replacement, key, count=1)
        elif match.group(match.lastindex) in positions:
            new = match.expand(replacement.format(positions[match.group(match.lastindex)]))
            key = key[: match.start()] + new + key[match.end() :]
    return key
