"""CAD's convolutional adapter: its input (image + FFT high-pass), residual blocks and the pooled fusion output.

Shapes: B images, S the adapter's input side (512 in the paper), C its width (256), (h, w) the image-embedding
grid of SAM's encoder (64 x 64 at 1024 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..frequency import high_pass_magnitude
from .config import CadConfig

# Guards the per-channel division by the maximum (official value).
_MAX_EPS = 1e-5


class AvgPool2x2(torch.autograd.Function):
    """`F.avg_pool2d(x, 2)` on (B, C, H, W) with even H and W, keeping nothing for backward but the shape.

    PyTorch's average pooling saves its input for the backward pass; the gradient of a 2x2 mean does not need it
    (each input pixel receives a quarter of its window's gradient). Forward and gradient are bit-identical to
    `F.avg_pool2d`; the block's pre-pooling sum (C x S x S, the adapter's largest tensor) is freed early.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = grad.shape
        expanded = grad[:, :, :, None, :, None].expand(batch, channels, height, 2, width, 2)
        return expanded.reshape(batch, channels, 2 * height, 2 * width) * 0.25


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling with stride 2, (B, C, H, W) -> (B, C, H / 2, W / 2); see `AvgPool2x2`."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return AvgPool2x2.apply(x)


class HighFrequencyInput(nn.Module):
    """The adapter's 6-channel input from SAM's normalised `pixel_values`: (B, 3, H, W) -> (B, 6, S, S).

    The pixel values are resized to S x S (bilinear, antialiased), un-normalised to RGB on the `pixel_scale` scale
    (`(x * std + mean) * scale`), joined by the magnitude of their FFT high-pass, and each of the six channels of
    each image is divided by its maximum + 1e-5 (the official adapter does this to all six channels). No parameters.
    """

    def __init__(self, config: CadConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.high_pass_ratio = config.high_pass_ratio
        self.pixel_scale = config.pixel_scale
        self.pixel_mean = tuple(config.pixel_mean)
        self.pixel_std = tuple(config.pixel_std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"CAD expects RGB pixel_values of shape (batch, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        size = (self.image_size, self.image_size)
        x = pixel_values
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = x.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        rgb = (x * std + mean) * self.pixel_scale
        x = torch.cat([rgb, high_pass_magnitude(rgb, self.high_pass_ratio)], dim=1)
        return x / (x.amax(dim=(2, 3), keepdim=True) + _MAX_EPS)


class DilatedResidualBlock(nn.Module):
    """`AvgPool2d(2)(LeakyReLU(BatchNorm(conv3x3_dilated(x))) + x)`: (B, C, H, W) -> (B, C, H / 2, W / 2).

    The convolution has dilation 2 and "same" padding; Kaiming-normal (fan_out, relu) weights and zero bias,
    BatchNorm weight 1 and bias 0, as in the official code. The LeakyReLU runs in place on the BatchNorm output and
    the pooling keeps no input (`AvgPool2x2`): the saved activations are the block input, the convolution output
    and the activation, without changing any result.
    """

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, dilation=2, padding=2)
        self.norm = nn.BatchNorm2d(channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm(self.conv(x)), self.negative_slope, inplace=True)
        return avg_pool_2x2(y + x)


class ConvAdapter(nn.Module):
    """CAD's adapter: `pixel_values` (B, 3, H, W) -> `tanh(sum_i pool(block_i))` (B, C, h, w), in [-1, 1].

    `HighFrequencyInput` (B, 6, S, S) -> `Conv2d(6, C, 1)` (PyTorch's default init, as in the official code) ->
    three `DilatedResidualBlock`s (S -> S/2 -> S/4 -> S/8); each block's output is adaptive-average-pooled to the
    embedding grid (h, w), the three are summed, then `tanh`. The caller scales the result (0.1) and adds it to the
    image embedding. Parameters: `6C + C + 3 (9C^2 + C + 2C)`, 1,773,568 for C = 256.
    """

    def __init__(self, config: CadConfig) -> None:
        super().__init__()
        self.input = HighFrequencyInput(config)
        self.stem = nn.Conv2d(6, config.channels, kernel_size=1)
        self.blocks = nn.ModuleList(DilatedResidualBlock(config.channels, config.negative_slope) for _ in range(3))

    def forward(self, pixel_values: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        x = self.stem(self.input(pixel_values.to(self.stem.weight.dtype)))
        fused = None
        for block in self.blocks:
            x = block(x)
            pooled = x if tuple(x.shape[-2:]) == tuple(output_size) else F.adaptive_avg_pool2d(x, output_size)
            fused = pooled if fused is None else fused + pooled
        return torch.tanh(fused)
