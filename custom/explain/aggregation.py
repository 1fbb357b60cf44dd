"""Whole-study sliding window: one mini-volume per slice and Gaussian-weighted aggregation (paper 3.2).

"To create a heatmap for the entire CTPA volume, this process is applied in a sliding window centered
on each slice. Predictions are aggregated as a Gaussian-weighted (sigma = 0.8) sum of neighboring
slices."

Windows: the mini-volume of slice ``k`` holds slices ``clip(k - 3 .. k + 3, 0, Z - 1)`` (the study ends
are replicated, the rule of the classifier's data, ``custom.data.minivolume``). Channel ``d`` of
window ``k`` (offset ``d - 3``) therefore shows study slice ``clip(k + d - 3)``.

Aggregation: channel ``d`` of every window votes for the study slice it shows with weight
``g(d) = exp(-(d - 3)^2 / (2 sigma^2))`` (1 at the window's own centre slice, 0.46 one slice away,
0.04 two away with sigma = 0.8)::

    soft[z] = sum_{k, d -> z} g(d) m_k[d] / sum_{k, d -> z} g(d)

The sum runs over *all* windows of the study, including those the classifier called negative (their
mask is empty), so ``soft`` is the Gaussian-weighted fraction of the windows that see a voxel and
put it into a cluster, in [0, 1]; normalising per study slice handles the replicated ends. The
final mask is ``soft >= mask_threshold`` (``custom.explain.teacher``, default 0.5, a weighted
majority): the window centred on the slice alone carries 1 / 2.005 = 0.4987 of an interior slice's
weight, so a voxel needs its own window and at least one neighbouring window, or the windows of both
neighbouring slices (0.4566) and one more, to be kept.
"""

from __future__ import annotations

import torch

__all__ = ["aggregate_windows", "slice_window_weights", "window_slice_indices"]


def window_slice_indices(n_slices: int, depth: int = 7, device: torch.device | str | None = None) -> torch.Tensor:
    """Study slice shown by each channel of each window: ``(n_slices, depth)`` int64, ends replicated.

    Row ``k`` equals ``custom.data.minivolume_indices(k, n_slices, depth)``; built for all windows at
    once so that it can gather every mini-volume of a study on the device in one indexing operation.
    """
    if depth < 1 or depth % 2 == 0:
        raise ValueError(f"window depth must be odd and positive, got {depth}")
    if n_slices < 1:
        raise ValueError(f"a study needs at least one slice, got {n_slices}")
    offsets = torch.arange(depth, device=device) - depth // 2
    return (torch.arange(n_slices, device=device).unsqueeze(1) + offsets).clamp_(0, n_slices - 1)


def slice_window_weights(depth: int = 7, sigma: float = 0.8) -> torch.Tensor:
    """Gaussian weight of each window channel by its offset from the centre: ``(depth,)`` float32, peak 1."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    offsets = torch.arange(depth, dtype=torch.float64) - depth // 2
    return torch.exp(-(offsets**2) / (2.0 * sigma**2)).float()


def aggregate_windows(
    window_maps: torch.Tensor,
    centers: torch.Tensor,
    n_slices: int,
    sigma: float = 0.8,
) -> torch.Tensor:
    """Gaussian-weighted vote of window maps onto the study grid (see the module docstring).

    Args:
        window_maps: ``(P, depth, H, W)`` maps of the windows that have any (e.g. the positive ones);
            bool or float in [0, 1]. Windows not listed count as all-zero.
        centers: ``(P,)`` centre slice of each listed window.
        n_slices: ``Z``, the number of slices (and windows) of the study.
        sigma: Gaussian sigma in slices (paper: 0.8).

    Returns:
        ``(Z, H, W)`` float32 soft map in [0, 1] on the maps' device.
    """
    if window_maps.dim() != 4:
        raise ValueError(f"expected (P, depth, H, W) window maps, got shape {tuple(window_maps.shape)}")
    n_windows, depth, height, width = window_maps.shape
    device = window_maps.device
    centers = torch.as_tensor(centers, dtype=torch.int64, device=device).reshape(-1)
    if centers.numel() != n_windows:
        raise ValueError(f"{n_windows} window maps but {centers.numel()} centres")
    if n_windows and (int(centers.min()) < 0 or int(centers.max()) >= n_slices):
        raise ValueError(f"window centres outside a study of {n_slices} slices")
    weights = slice_window_weights(depth, sigma).to(device)
    sources = window_slice_indices(n_slices, depth, device)
    total_weight = torch.zeros(n_slices, device=device).index_add_(0, sources.reshape(-1), weights.repeat(n_slices))
    votes = torch.zeros((n_slices, height, width), dtype=torch.float32, device=device)
    if n_windows:
        weighted = window_maps.float() * weights.view(1, depth, 1, 1)
        votes.index_add_(0, sources[centers].reshape(-1), weighted.reshape(-1, height, width))
    return votes / total_weight.view(-1, 1, 1)

