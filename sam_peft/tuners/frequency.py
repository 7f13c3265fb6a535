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
    if torch.compiler.is_exporting():  # torch.export / ONNX: the same values without complex tensors
        return real_high_pass_magnitude(images, ratio)
    height, width = images.shape[-2:]
    half = int(math.sqrt(height * width * ratio) // 2)
    x = images if images.dtype == torch.float64 else images.float()
    spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))
    top, left = height // 2 - half, width // 2 - half
    spectrum[..., max(top, 0) : height // 2 + half, max(left, 0) : width // 2 + half] = 0
    high = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="forward").real
    return high.abs().to(images.dtype)


def _real_high_pass_matrices(size: int, half: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of the `(size, size)` operator that keeps, along one axis, the frequencies that
    `high_pass_magnitude` zeroes (its centred band, in fftshifted order): `ifft(band * fft(x))` as a matrix."""
    band = torch.zeros(size, dtype=torch.float64)
    band[max(size // 2 - half, 0) : size // 2 + half] = 1
    band = torch.fft.ifftshift(band)
    eye = torch.eye(size, dtype=torch.complex128)
    operator = torch.fft.ifft(band[:, None] * torch.fft.fft(eye, dim=0), dim=0)
    return operator.real.to(device, dtype), operator.imag.to(device, dtype)


def real_high_pass_magnitude(images: torch.Tensor, ratio: float = 0.25) -> torch.Tensor:
    """`high_pass_magnitude` without complex numbers (ONNX has none; used while exporting): the zeroed square of
    the spectrum is the product of one band per axis, so its low-pass part is `P_H x P_W^T` with the 1-D band
    operators `P` (complex constants), and the high-pass part `x - Re(P_H x P_W^T)`."""
    height, width = images.shape[-2:]
    half = int(math.sqrt(height * width * ratio) // 2)
    x = images if images.dtype == torch.float64 else images.float()
    rows_real, rows_imag = _real_high_pass_matrices(height, half, x.device, x.dtype)
    cols_real, cols_imag = _real_high_pass_matrices(width, half, x.device, x.dtype)
    low = rows_real @ x @ cols_real.T - rows_imag @ x @ cols_imag.T
    return (x - low).abs().to(images.dtype)
