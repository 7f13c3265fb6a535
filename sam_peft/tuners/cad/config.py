"""Configuration of CAD, the memory-efficient convolutional adapter (Kim et al. 2024, arXiv 2409.15889)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import PeftConfig

from ..base import SamPeftConfigMixin

CAD = "CAD"

# The whole vision encoder of transformers' SamModel / SamHQModel / SamForSemanticSegmentation: CAD wraps it, runs
# it without autograd and adds the adapter's output to its `last_hidden_state`. Full match, so nothing inside the
# encoder (and no `vision_encoder` of another model nested deeper) is taken.
SAM_VISION_ENCODER_TARGET = "vision_encoder"

# `SamImageProcessor`'s defaults: pixel_values = (rgb / 255 - mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class CadConfig(SamPeftConfigMixin, PeftConfig):
    """Configuration for a CAD adapter: a small CNN beside SAM's frozen image encoder.

    `embedding = encoder(pixel_values) [no autograd] + scale * adapter(x)`, where `x` (B, 6, S, S) is the image
    at `image_size` S (RGB on the 0..255 scale, recovered from the model's own normalised `pixel_values`) and the
    magnitude of its FFT high-pass, each channel divided by its maximum; the adapter is a 1x1 conv to `channels`,
    three residual blocks `conv3x3 (dilation 2) -> BatchNorm -> LeakyReLU -> + input -> AvgPool2d(2)`, the three
    block outputs average-pooled to the embedding grid and summed, then `tanh`. The defaults are the paper's and the
    official code's: S = 512, 256 channels, scale 0.1, about 1.77M parameters (1,773,568).

    Deviation from the official code: it feeds the raw 512 x 512 image (resized without keeping the aspect ratio)
    to the adapter. Here the adapter derives its input from the same `pixel_values` SAM's encoder reads (resized to
    the longest side and padded, normalised), so users pass nothing extra and a cached encoder output can be
    combined with it: the pixel values are resized to S (bilinear with antialiasing) and un-normalised with
    `pixel_mean` / `pixel_std` / `pixel_scale` (SamImageProcessor's defaults). The padding therefore reaches the
    adapter as the mean colour, and non-square images keep their aspect ratio. Because every input channel is
    divided by its own maximum, the RGB scale only matters through the 1e-5 guard of that division.

    Args:
        image_size: Side S of the adapter's square input (the paper: 512). A multiple of 8. Smaller values save
            memory and time (tests use 64); the paper's geometry has S / 8 equal to the embedding grid (64).
        channels: Width of the adapter (the paper: 256). Must equal the channels of the image embedding (SAM's
            neck: 256), since the adapter's output is added to it.
        scale: Factor of the adapter's output in the sum (the paper: 0.1).
        high_pass_ratio: Share of the spectrum's area removed by the high-pass: a centred square of half-side
            `int(sqrt(S * S * ratio) // 2)` (128 at 512 px with 0.25) is zeroed.
        negative_slope: LeakyReLU slope of the blocks (the official code: 0.1). Positive.
        pixel_mean: Per-channel mean that normalised `pixel_values` (0..1 scale).
        pixel_std: Per-channel standard deviation that normalised `pixel_values`.
        pixel_scale: Multiplies the un-normalised 0..1 image (255 gives the official 0..255 RGB).
        target_modules: The vision encoder to wrap (one regex, full match, or a list of names). Defaults to SAM's
            `vision_encoder`.
        exclude_modules: Module names or regex to leave out.
        modules_to_save: Modules besides the adapter that are trained and saved in full. The paper trains the mask
            decoder: pass `["mask_decoder"]` on a `SamModel`; on a `SamForSemanticSegmentation` the decoder is
            trained by default.
    """

    image_size: int = field(default=512, metadata={"help": "Side of the adapter's square input (paper: 512)."})
    channels: int = field(default=256, metadata={"help": "Adapter width; equals the embedding channels (256)."})
    scale: float = field(default=0.1, metadata={"help": "Factor of the adapter output added to the embedding."})
    high_pass_ratio: float = field(default=0.25, metadata={"help": "Share of the spectrum removed by the high-pass."})
    negative_slope: float = field(default=0.1, metadata={"help": "LeakyReLU slope of the residual blocks."})
    pixel_mean: list[float] = field(
        default_factory=lambda: list(IMAGENET_MEAN), metadata={"help": "Mean that normalised pixel_values."}
    )
    pixel_std: list[float] = field(
        default_factory=lambda: list(IMAGENET_STD), metadata={"help": "Std that normalised pixel_values."}
    )
    pixel_scale: float = field(default=255.0, metadata={"help": "Scale of the un-normalised RGB input."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "The vision encoder to wrap; default: SAM's vision_encoder."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full besides the adapter."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # peft's PeftType is a closed enum; a plain string compares and hashes like its members
        # (see sam_peft/_registration.py).
        self.peft_type = CAD
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = set(self.target_modules)
        self.pixel_mean = [float(value) for value in self.pixel_mean]
        self.pixel_std = [float(value) for value in self.pixel_std]
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size <= 0 or self.image_size % 8:
            raise ValueError(
                f"CadConfig.image_size must be a positive multiple of 8 (three 2x poolings), got {self.image_size!r}."
            )
        if not isinstance(self.channels, int) or self.channels <= 0:
            raise ValueError(f"CadConfig.channels must be a positive integer, got {self.channels!r}.")
        if not 0.0 < self.high_pass_ratio < 1.0:
            raise ValueError(f"CadConfig.high_pass_ratio must be in (0, 1), got {self.high_pass_ratio!r}.")
        if not self.negative_slope > 0.0:
            raise ValueError(
                f"CadConfig.negative_slope must be positive (the LeakyReLU runs in place), got {self.negative_slope!r}."
            )
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(
                "CadConfig.pixel_mean and pixel_std need three values (RGB), the std positive; got "
                f"{self.pixel_mean} and {self.pixel_std}."
            )
        if not self.pixel_scale > 0:
            raise ValueError(f"CadConfig.pixel_scale must be positive, got {self.pixel_scale!r}.")
