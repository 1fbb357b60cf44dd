"""Hysteresis clustering of IG heatmaps with a box neighbourhood (Condrea et al. 2025, 3.2).

"Pixels above the high threshold are included, and pixels above the low threshold are included if
connected to high-threshold pixels within a defined neighborhood (15x15x5)"; the low threshold is half
the high one.

Semantics (geodesic reconstruction by dilation with a box, not face connectivity as in
``skimage.filters.apply_hysteresis_threshold``): ``seeds = heatmap > high``,
``candidates = heatmap > low``, and the region grows as ``region <- candidates & dilate(region, box)``
until it is stable. A candidate joins when it lies inside the box centred on a voxel already in the
region, so chains of candidates grow transitively. The box is ``neighbourhood = (Z, Y, X)`` voxels,
slices first, as in the project's ``(Z, Y, X)`` layout: the paper's 15x15 in-plane x 5 slices is
``(5, 15, 15)``, i.e. a candidate joins when it is at most 2 slices and at most 7 rows and 7
columns (Chebyshev distance) from a region voxel.

Each dilation is a separable max filter (three 1D ``max_pool3d`` passes, exact for a box), so the
clustering runs on any torch device and batches over all leading dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["box_dilate", "hysteresis_threshold"]


def _check_neighbourhood(neighbourhood: Sequence[int]) -> tuple[int, int, int]:
    sizes = tuple(int(n) for n in neighbourhood)
    if len(sizes) != 3 or any(n < 1 or n % 2 == 0 for n in sizes):
        raise ValueError(f"neighbourhood must be three odd positive sizes (Z, Y, X), got {tuple(neighbourhood)}")
    return sizes  # type: ignore[return-value]


def box_dilate(volumes: torch.Tensor, neighbourhood: Sequence[int]) -> torch.Tensor:
    """Grey/binary dilation of ``(N, 1, Z, Y, X)`` float volumes with a centred ``(Z, Y, X)`` box.

    Args:
        volumes: float tensor ``(N, 1, Z, Y, X)``.
        neighbourhood: odd box sizes ``(Z, Y, X)``.

    Returns:
        The dilated volumes, same shape (voxels outside the volume do not contribute).
    """
    result = volumes
    for axis, size in enumerate(_check_neighbourhood(neighbourhood)):
        if size == 1:
            continue
        kernel = [1, 1, 1]
        kernel[axis] = size
        padding = [0, 0, 0]
        padding[axis] = size // 2
        result = F.max_pool3d(result, kernel_size=tuple(kernel), stride=1, padding=tuple(padding))
    return result


def hysteresis_threshold(
    heatmap: torch.Tensor,
    high: float,
    low: float | None = None,
    neighbourhood: Sequence[int] = (5, 15, 15),
) -> torch.Tensor:
    """Binary clusters of a heatmap by hysteresis thresholding with a box neighbourhood.

    Args:
        heatmap: ``(..., Z, Y, X)`` float tensor (e.g. IG attributions of ``(B, 7, H, W)`` mini-volumes).
        high: seed threshold (strictly above joins); calibrated on validation data (paper 3.2).
        low: candidate threshold (strictly above may join); default ``high / 2`` as in the paper.
        neighbourhood: odd box sizes ``(Z, Y, X)``; paper: 5 slices x 15 x 15 pixels.

    Returns:
        Bool tensor of the heatmap's shape: the seeds and every candidate connected to a seed through
        a chain of candidates, each within the box of the previous one.
    """
    if heatmap.dim() < 3:
        raise ValueError(f"heatmap must have at least 3 dimensions (Z, Y, X), got shape {tuple(heatmap.shape)}")
    low = high / 2.0 if low is None else float(low)
    if low > high:
        raise ValueError(f"low threshold {low} is above the high threshold {high}")
    _check_neighbourhood(neighbourhood)
    shape = heatmap.shape
    values = heatmap.reshape(-1, 1, *shape[-3:])
    candidates = values > low
    region = (values > high).float()
    candidate_mask = candidates.float()
    while True:
        grown = box_dilate(region, neighbourhood) * candidate_mask
        if torch.equal(grown, region):
            break
        region = grown
    return region.bool().reshape(shape)
