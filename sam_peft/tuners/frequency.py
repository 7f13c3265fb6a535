"""The FFT high-pass that CAD and SAM-Adapter feed to their adapters as a hand-crafted image feature (shared by
both tuners, so it sits directly under `tuners/`, below them)."""

from __future__ import annotations

import math

import torch


def high_pass_magnitude(images: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """Magnitude of the high-frequency part of `images`, (B, C, H, W) -> (B, C, H, W), real and non-negative.

    `fftshift(fft2(x, norm="forward"))` is zeroed on a centred square of half-side `int(sqrt(H * W * ratio) // 2)`
    (the low frequencies; 128 for 512 x 512 and 0.25), shifted back, inverted with `ifft2(norm="forward")`, and the
    absolute value of the real part is returned, as in the official code of SAM-Adapter and CAD. Computed in float32
    (float64 for float64 input); the result has the input's dtype.
    """
    height, width = images.shape[-2:]
    half = int(math.sqrt(height * width * ratio) // 2)
    x = images if images.dtype == torch.float64 else images.float()
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))
    top, left = height // 2 - half, width // 2 - half
    spectrum[..., max(top, 0) : height // 2 + half, max(left, 0) : width // 2 + half] = 0
    high = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="forward").real
    return high.abs().to(images.dtype)
