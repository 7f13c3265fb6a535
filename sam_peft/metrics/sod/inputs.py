"""What `SODMetrics` accepts, checked batch by batch: the forms of predictions and references, and their reading.

A prediction is floating point in [0, 1], bool, or uint8, where a map whose max is at most 1 is a 0/1 mask and
any other holds grey levels 0..255 (level / 255, PySODMetrics' reading of PNGs). A reference is bool, or 0/1
or 0/255 in any integer or floating point dtype, or floating point in [0, 1] (foreground > 0.5); anything
else is refused with a ValueError that names the image. Maps of one size come stacked as (B, H, W) batches
(`sam_peft.metrics._inputs.group_by_size`). CPU tensors are checked with numpy, whose comparisons and integer
reductions are several times faster than torch's there; other devices with torch.
"""

from __future__ import annotations

import numpy as np
import torch

from .._inputs import first_failing

PREDICTION_FORMS = (
    "floating point maps in [0, 1] or uint8 maps (0/1 masks if the map's max is at most 1, else grey levels "
    "0..255 read as level / 255) or bool masks"
)
REFERENCE_FORMS = (
    "a bool mask, a mask of 0s and 1s or of 0s and 255s (foreground 1 or 255; any integer or floating point "
    "dtype), or a floating point mask in [0, 1] (foreground > 0.5)"
)
_NUMPY_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
)


def _on_host(x: torch.Tensor) -> bool:
    """Whether `x` is a CPU tensor that numpy can view."""
    return x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES


def per_image(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-image "min" or "max" of a (B, H, W) tensor: (B,), on the CPU for CPU tensors."""
    if _on_host(x):
        return torch.from_numpy(getattr(x.detach().numpy().reshape(len(x), -1), reduction)(axis=1))
    return getattr(x.flatten(1), f"a{reduction}")(dim=1)


def check_predictions(predictions: torch.Tensor, indices: list[int]) -> None:
    """Checks that a (B, H, W) batch of predictions has one of the `PREDICTION_FORMS`.

    Args:
        predictions: (B, H, W) maps of one dtype.
        indices: input positions of the B images, for error messages.

    Raises:
        TypeError: for other dtypes (e.g. int64: pass 0/1 masks as bool or uint8).
        ValueError: for NaN or values outside [0, 1], naming the first offending image.
    """
    check_prediction_dtype(predictions.dtype)
    if predictions.is_floating_point():
        check_prediction_range(per_image(predictions, "min"), per_image(predictions, "max"), indices)


def check_prediction_dtype(dtype: torch.dtype) -> None:
    """Raises the TypeError of `check_predictions` for dtypes other than floating point, uint8 and bool."""
    if not (dtype.is_floating_point or dtype in (torch.uint8, torch.bool)):
        raise TypeError(f"Predictions must be {PREDICTION_FORMS}, got {dtype}.")


def check_prediction_range(low: torch.Tensor, high: torch.Tensor, indices: list[int]) -> None:
    """Raises the ValueError of `check_predictions` from the (B,) per-image min and max of floating point maps."""
    bad = first_failing(indices, low.isnan() | high.isnan())
    if bad is not None:
        raise ValueError(f"Prediction {bad} contains NaN.")
    bad = first_failing(indices, (low < 0) | (high > 1))
    if bad is not None:
        raise ValueError(f"Prediction {bad} has values outside [0, 1]; pass probabilities, not logits.")


def predictions_as_float64(predictions: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float64 values in [0, 1] of checked predictions (`check_predictions`), on their device."""
    pred = predictions.detach().to(torch.float64)
    if predictions.dtype == torch.uint8:
        grey = pred.amax(dim=(1, 2), keepdim=True) > 1
        pred = pred / torch.where(grey, 255.0, 1.0)
    return pred


def prepare_predictions(predictions: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Checks a batch of predictions (`check_predictions`) and returns their float64 values (B, H, W) in [0, 1]."""
    check_predictions(predictions, indices)
    return predictions_as_float64(predictions)


def _only_0_and_255(x: torch.Tensor) -> torch.Tensor:
    """Per image of a (B, H, W) tensor without negative values, whether it holds only 0s and 255s: (B,) bool (on
    the CPU for CPU tensors). On the CPU image by image with numpy, whose full counts are several times faster than
    counts along an axis."""
    if _on_host(x):
        images = x.detach().numpy()
        return torch.tensor([np.count_nonzero(image) == np.count_nonzero(image == 255) for image in images])
    return (x != 0).sum(dim=(1, 2)) == (x == 255).sum(dim=(1, 2))


def _distinct_values(x: torch.Tensor, shown: int = 6) -> str:
    """The distinct values of `x` for an error message: "{0, 7}", or the first `shown` and their number."""
    values = torch.unique(x.detach().cpu()).tolist()
    text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:shown])
    return f"{{{text}}}" if len(values) <= shown else f"{{{text}, ...}} ({len(values)} distinct values)"


def binarize_references(references: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Ground-truth masks as bool, by one rule for every dtype (`REFERENCE_FORMS`).

    A reference is a bool mask; or, in any integer or floating point dtype, a mask of 0s and 1s or of 0s and
    255s (all-zero, all-one and all-255 maps included; 0/1 and 0/255 read the same way in every dtype); or,
    in a floating point dtype, a soft mask in [0, 1]. Foreground is `> 0.5`, i.e. the value 1 or 255
    (PySODMetrics' `> 128` on 0/255 PNG masks gives the same masks).

    Args:
        references: (B, H, W) masks of one dtype.
        indices: input positions of the B images, for error messages.

    Returns:
        (B, H, W) bool, on the device of `references`.

    Raises:
        TypeError: for complex masks.
        ValueError: for any other values (e.g. {0, 7}, {0, 1, 255}, negative values, grey levels 0..255),
            naming the first offending image, its values and the accepted forms.
    """
    if references.dtype == torch.bool:
        return references
    if references.is_complex():
        raise TypeError(f"References must be {REFERENCE_FORMS}, got {references.dtype}.")
    if references.dtype not in _NUMPY_DTYPES:  # e.g. uint16, bfloat16: fewer torch kernels
        references = references.to(torch.float64 if references.is_floating_point() else torch.int64)
    high = per_image(references, "max")
    bad = (
        torch.zeros_like(high, dtype=torch.bool)
        if references.dtype == torch.uint8
        else per_image(references, "min") < 0
    )
    wide = high > 1  # must then hold only 0s and 255s
    if bool(wide.any()):
        bad |= wide & ~_only_0_and_255(references).to(wide.device)
    failing = first_failing(indices, bad)
    if failing is not None:
        image = references[indices.index(failing)]
        raise ValueError(
            f"Reference {failing} ({references.dtype}) has the values {_distinct_values(image)}; a reference "
            f"must be {REFERENCE_FORMS}. Binarise a grey-level mask first (PySODMetrics reads `mask > 128`)."
        )
    # The same masks: valid integer masks hold only 0 and 1 or 255 (an integer comparison is much faster).
    threshold = 0.5 if references.is_floating_point() else 0
    if _on_host(references):
        return torch.from_numpy(np.greater(references.detach().numpy(), threshold))
    return references > threshold
