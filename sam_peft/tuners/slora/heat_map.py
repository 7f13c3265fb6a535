"""Point prompts as a heat map on SAM's image-embedding grid, the input of SLoRA's prompt augmentation.

Each positive point marks the cell of the embedding grid it falls in (row = y, column = x, as the tokens are laid
out), the map is blurred as `cv2.GaussianBlur(map, (9, 9), 0)` blurs it and multiplied by 255, as the official
SAMCL code does (`utils.py`, `generate_heatmap`). Everything runs in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The 1-D kernel of `cv2.GaussianBlur(image, (9, 9), 0)` (`cv2.getGaussianKernel(9, 0)`), in 256ths. For sizes up
# to 9 and no sigma, OpenCV (4.x) takes fixed tables instead of sampling a Gaussian with its default sigma
# (`0.3 * ((9 - 1) / 2 - 1) + 0.8 = 1.7` for 9): this one has a variance of 2.75 cells^2 (sigma 1.66). A kernel
# sampled with sigma 1.7 would differ by up to 1e-3 on a unit impulse.
OPENCV_GAUSSIAN_KERNEL_9 = (4, 13, 30, 51, 60, 51, 30, 13, 4)

# The factor of the blurred map before the prompt branch in the official code (`heatmap * 255`): an isolated point
# peaks at 255 * (60 / 256)^2 = 14.0 instead of 0.055. Trained modules expect it.
OFFICIAL_HEAT_MAP_SCALE = 255.0


def gaussian_kernel_1d(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenCV's 9-tap Gaussian kernel `OPENCV_GAUSSIAN_KERNEL_9 / 256`, (9,); it sums to 1."""
    return torch.tensor(OPENCV_GAUSSIAN_KERNEL_9, dtype=torch.float64).div(256).to(dtype)


def gaussian_blur(heat_map: torch.Tensor) -> torch.Tensor:
    """Blurs (B, h, w) maps as `cv2.GaussianBlur(map, (9, 9), 0)`: `gaussian_kernel_1d` along both axes.

    The border is OpenCV's default (`BORDER_REFLECT_101`, torch's "reflect" padding), so both sides of the map must
    be longer than 4 cells.
    """
    if heat_map.ndim != 3:
        raise ValueError(f"gaussian_blur expects maps of shape (batch, height, width), got {tuple(heat_map.shape)}.")
    size = len(OPENCV_GAUSSIAN_KERNEL_9)
    pad = size // 2
    if min(heat_map.shape[-2:]) <= pad:
        raise ValueError(
            f"A {size} x {size} blur with a mirrored border needs maps longer than {pad} cells per side, got "
            f"{tuple(heat_map.shape[-2:])}."
        )
    kernel = gaussian_kernel_1d(heat_map.dtype).to(heat_map.device)
    blurred = F.pad(heat_map[:, None], (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(blurred, kernel.view(1, 1, size, 1))
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, size))
    return blurred[:, 0]


def points_to_heat_map(
    input_points: torch.Tensor,
    input_labels: torch.Tensor | None,
    input_size: int,
    grid_size: int,
    scale: float = OFFICIAL_HEAT_MAP_SCALE,
) -> torch.Tensor:
    """The heat map of each image's positive points on the embedding grid, (B, grid_size, grid_size), float32.

    A point (x, y) marks cell `(row, col) = (floor(y * grid / input_size), floor(x * grid / input_size))` with 1
    (clamped to the grid; several points in one cell still give 1), then the map is blurred by `gaussian_blur`
    (OpenCV's 9 x 9 Gaussian) and multiplied by `scale`, in float64 as OpenCV and NumPy compute it. Only points
    labelled 1 count: negative points (0), background (-1) and padding (-10) leave no mark. All point batches of an
    image go into its one map, since the image encoder runs once per image.

    Args:
        input_points: `(B, point_batch, N, 2)` (or `(B, N, 2)`) points as (x, y) in the frame of the model's input,
            as `SamProcessor` gives them (0..1024 for SAM's 1024 px input).
        input_labels: `(B, point_batch, N)` (or `(B, N)`) point labels; None marks every point, as `SamModel`
            treats missing labels.
        input_size: Side of the model's square input the points refer to (SAM's prompt encoder: 1024).
        grid_size: Side of the image-embedding grid (SAM: 64).
        scale: Factor of the blurred map; the official code's 255 by default, which modules trained with it need.
    """
    if input_points.ndim == 3:
        input_points = input_points[:, None]
        input_labels = None if input_labels is None else input_labels[:, None]
    if input_points.ndim != 4 or input_points.shape[-1] != 2:
        raise ValueError(
            "input_points must have shape (batch, point_batch, points, 2) or (batch, points, 2) with (x, y) last; "
            f"got {tuple(input_points.shape)}."
        )
    if input_labels is None:
        input_labels = torch.ones(input_points.shape[:-1], dtype=torch.int64, device=input_points.device)
    if tuple(input_labels.shape) != tuple(input_points.shape[:-1]):
        raise ValueError(
            f"input_labels has shape {tuple(input_labels.shape)} but input_points {tuple(input_points.shape)}: give "
            "one label per point."
        )
    if input_size <= 0 or grid_size <= 0:
        raise ValueError(f"input_size and grid_size must be positive, got {input_size} and {grid_size}.")
    batch_size = input_points.shape[0]
    coordinates = input_points.reshape(batch_size, -1, 2).to(torch.float64)
    cells = torch.floor(coordinates * grid_size / input_size).long().clamp_(0, grid_size - 1)  # (B, P * N, 2)
    flat_index = cells[..., 1] * grid_size + cells[..., 0]  # row-major: row = y, column = x
    positive = (input_labels.reshape(batch_size, -1) == 1).to(torch.float64)
    impulses = torch.zeros(batch_size, grid_size * grid_size, dtype=torch.float64, device=input_points.device)
    impulses = impulses.scatter_reduce(1, flat_index, positive, reduce="amax")
    return (gaussian_blur(impulses.view(batch_size, grid_size, grid_size)) * scale).to(torch.float32)
