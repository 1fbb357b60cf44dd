"""The paper's pixel-unit settings, scaled from its 512 x 512 slices to another in-plane grid.

Condrea et al. 2025 state their iExplain numbers in voxels of 512 x 512 CTPA slices: the 15 x 15 x 5
hysteresis neighbourhood (3.2), the 50-voxel stop condition of Algorithm 1 (3.2), and the filters
"smaller than 100 voxels" and "beyond 160 pixels from the center" (4.2). On an ``H x W`` grid covering
the same field of view (a 512 px reconstruction resampled in-plane, as the synthetic and demo data
are), a length of ``L`` pixels becomes ``L * f`` with ``f = sqrt(H * W) / 512`` and a voxel count
``n`` becomes ``n * f^2``; the slice axis is not resampled, so the 5-slice extent and voxel
counts along z are unchanged. The paper does not report its pixel spacing, so the scaling uses the
grid size, not the spacing.

Rounding: voxel counts to the nearest integer, halves up (at least 1); neighbourhood sizes to the nearest odd
integer (at least 1, a box needs a centre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PAPER_IMAGE_SIZE_PX", "GridSettings", "scale_paper_settings"]

PAPER_IMAGE_SIZE_PX = 512


@dataclass(frozen=True)
class GridSettings:
    """Paper settings on a given grid (arguments of ``custom.explain.IExplainTeacher``).

    Attributes:
        neighbourhood: hysteresis box ``(Z, Y, X)``.
        min_voxels: Algorithm 1 stops after a round with fewer new voxels.
        min_cluster_voxels: size filter.
        max_center_distance_px: location filter.
        blur_sigma_px: sigma of the blurred IG reference.
    """

    neighbourhood: tuple[int, int, int]
    min_voxels: int
    min_cluster_voxels: int
    max_center_distance_px: float
    blur_sigma_px: float


def _nearest_odd(value: float) -> int:
    lower = 2 * math.floor((value - 1) / 2) + 1
    return max(1, lower if value - lower <= lower + 2 - value else lower + 2)


def _nearest_count(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def scale_paper_settings(
    height: int,
    width: int,
    paper_size_px: int = PAPER_IMAGE_SIZE_PX,
    neighbourhood: Sequence[int] = (5, 15, 15),
    min_voxels: int = 50,
    min_cluster_voxels: int = 100,
    max_center_distance_px: float = 160.0,
    blur_sigma_px: float = 7.0,
) -> GridSettings:
    """Scale the paper's 512 px settings to an ``height x width`` grid (see the module docstring).

    Args:
        height: rows of the target grid.
        width: columns of the target grid.
        paper_size_px: in-plane size the settings were given for (paper: 512).
        neighbourhood: hysteresis box ``(Z, Y, X)`` at ``paper_size_px``.
        min_voxels: Algorithm 1 voxel stop condition at ``paper_size_px``.
        min_cluster_voxels: size filter at ``paper_size_px``.
        max_center_distance_px: location filter at ``paper_size_px``.
        blur_sigma_px: blurred-reference sigma at ``paper_size_px``.

    Returns:
        The scaled :class:`GridSettings`.
    """
    if height < 1 or width < 1 or paper_size_px < 1:
        raise ValueError(f"grid sizes must be positive, got {height}x{width} and {paper_size_px}")
    factor = math.sqrt(height * width) / paper_size_px
    depth, rows, columns = (int(n) for n in neighbourhood)
    return GridSettings(
        neighbourhood=(depth, _nearest_odd(rows * factor), _nearest_odd(columns * factor)),
        min_voxels=_nearest_count(min_voxels * factor**2),
        min_cluster_voxels=_nearest_count(min_cluster_voxels * factor**2),
        max_center_distance_px=max_center_distance_px * factor,
        blur_sigma_px=blur_sigma_px * factor,
    )
