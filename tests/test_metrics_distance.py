"""The host engine's feature transform for the weighted F: the compiled extension and the scipy fallback both equal
scipy's own transform, and give the same metrics. Tests of the compiled one are skipped where it was not built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from sam_peft.metrics import compute_sod_metrics
from sam_peft.metrics.sod import host
from sam_peft.metrics.sod.host import host_transform, nearest_foreground_host

needs_compiled = pytest.mark.skipif(
    host_transform() != "compiled",
    reason="sam_peft.metrics.sod._edt was not built (no C compiler at install); the metrics use scipy's transform",
)


def scipy_reference(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances and flat nearest-foreground indices straight from scipy, as PySODMetrics gets them."""
    feature_rows, feature_cols = distance_transform_edt(~gt, return_distances=False, return_indices=True)
    rows, cols = np.indices(gt.shape)
    squared = (feature_rows - rows) ** 2 + (feature_cols - cols) ** 2
    return squared, feature_rows * gt.shape[1] + feature_cols


def transform(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    squared, index = nearest_foreground_host(np.ascontiguousarray(gt), np.full((2, *gt.shape), -7, dtype=np.int32))
    return squared, index


@pytest.fixture(params=["compiled", "scipy"])
def which_transform(request, monkeypatch):
    """Runs a test with the compiled transform (skipped where it was not built) and with the scipy fallback."""
    if request.param == "compiled" and host_transform() != "compiled":
        pytest.skip("sam_peft.metrics.sod._edt was not built (no C compiler at install)")
    if request.param == "scipy":
        monkeypatch.setattr(host, "_compiled_transform", None)
    assert host_transform() == request.param
    return request.param


def masks_with_ties() -> list[np.ndarray]:
    """Shapes where many pixels have several nearest foreground pixels, and degenerate sizes."""
    masks = []
    lattice = np.zeros((31, 40), dtype=bool)
    lattice[::5, ::5] = True  # every pixel between four lattice points is equidistant to them
    masks.append(lattice)
    masks.append(np.indices((17, 23)).sum(axis=0) % 2 == 0)  # checkerboard
    diamond = np.zeros((21, 21), dtype=bool)
    diamond[[0, 10, 10, 20], [10, 0, 20, 10]] = True
    masks.append(diamond)
    for shape in [(1, 1), (1, 37), (37, 1), (2, 2)]:
        masks.append(np.ones(shape, dtype=bool))
        single = np.zeros(shape, dtype=bool)
        single[-1, -1] = True
        masks.append(single)
    corners = np.zeros((50, 9), dtype=bool)
    corners[[0, -1], [0, -1]] = True
    masks.append(corners)
    return masks


def random_masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    masks = []
    for _ in range(count):
        height, width = rng.integers(1, 48, 2)
        mask = rng.random((height, width)) < rng.choice([0.002, 0.02, 0.1, 0.5, 0.95])
        mask[rng.integers(height), rng.integers(width)] = True
        masks.append(mask)
    return masks


def test_host_transform_equals_scipy(which_transform):
    """Exact squared distances and the same nearest pixel among equidistant ones (smallest column, then row)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:300, :517]
    blob = ((rows - 140) / 90.0) ** 2 + ((cols - 300) / 160.0) ** 2 < 1
    blob |= rng.random(blob.shape) < 0.0005
    masks = [*masks_with_ties(), *random_masks(rng, 400), blob, blob.T.copy()]
    for number, mask in enumerate(masks):
        squared, index = transform(mask)
        expected_squared, expected_index = scipy_reference(mask)
        assert np.array_equal(squared, expected_squared), f"squared distances differ on mask {number}"
        assert np.array_equal(index, expected_index), f"nearest pixels differ on mask {number}"


@needs_compiled
def test_scipy_fallback_gives_the_same_transform_and_metrics(monkeypatch):
    rng = np.random.default_rng(1)
    masks = random_masks(rng, 30)
    compiled = [transform(mask) for mask in masks]
    predictions = [torch.rand(mask.shape, generator=torch.Generator().manual_seed(i)) for i, mask in enumerate(masks)]
    references = [torch.from_numpy(mask) for mask in masks]
    expected = compute_sod_metrics(predictions, references)

    monkeypatch.setattr(host, "_compiled_transform", None)
    assert host_transform() == "scipy"
    for mask, (squared, index) in zip(masks, compiled, strict=True):
        fallback_squared, fallback_index = transform(mask)
        assert np.array_equal(fallback_squared, squared) and np.array_equal(fallback_index, index)
    assert compute_sod_metrics(predictions, references) == expected


@needs_compiled
def test_compiled_transform_names_bad_buffers():
    compiled = host._compiled_transform
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 2] = True
    squared, index = np.empty((4, 5), np.int32), np.empty((4, 5), np.int32)
    with pytest.raises(ValueError, match="no foreground pixel"):
        compiled(np.zeros((4, 5), dtype=bool), squared, index)
    with pytest.raises(TypeError, match=r"mask must be bool or uint8, got items of format 'd' and 8 bytes"):
        compiled(mask.astype(np.float64), squared, index)
    with pytest.raises(TypeError, match=r"index must be int32, got items of format '[lq]' and 8 bytes"):
        compiled(mask, squared, index.astype(np.int64))
    with pytest.raises(ValueError, match="must have the shape of mask"):
        compiled(mask, np.empty((5, 4), np.int32), index)
    with pytest.raises(ValueError, match="mask must be 2-D, got 3 dimensions"):
        compiled(mask[None], squared, index)
    with pytest.raises(ValueError, match="not C-contiguous"):
        compiled(np.asfortranarray(mask), squared, index)
    read_only = np.empty((4, 5), np.int32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        compiled(mask, read_only, index)
    compiled(mask, squared, index)  # the arrays above were left intact and still work
    assert squared[1, 2] == 0 and index[0, 0] == 1 * 5 + 2


def test_host_transform_takes_any_memory_layout(which_transform):
    mask = np.random.default_rng(2).random((13, 29)) < 0.1
    mask[3, 4] = True
    squared, index = transform(mask)
    transposed = nearest_foreground_host(np.ascontiguousarray(mask.T).T, np.empty((2, 13, 29), np.int32))
    assert np.array_equal(transposed[0], squared) and np.array_equal(transposed[1], index)
