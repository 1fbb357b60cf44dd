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

Two exact implementations, bit-identical results (``method`` of :func:`hysteresis_threshold`):

- ``"dilate"``: the definition. Each dilation is a separable max filter (three 1D ``max_pool3d``
  passes, exact for a box); the loop runs until the region is stable (a chain of ``k`` links needs
  ``k`` iterations). Runs on any torch device and batches over all leading dimensions; used for
  non-CPU tensors and kept as the reference.
- ``"label"``: one connected-component labelling with scipy, for CPU tensors. With box radii
  ``r = size // 2`` per axis, a candidate joins iff a chain of candidates links it to a seed with
  consecutive voxels at most ``r_i`` apart on every axis ``i``. Give every candidate ``a`` the
  one-sided box ``[a_i, a_i + k_i - 1]`` per axis, ``k_i = max(r_i, 1)`` (a 1D max filter per axis).
  Two such boxes are 26-adjacent or overlapping iff ``|a_i - b_i| <= r_i`` on every axis with
  ``r_i >= 1`` (intervals of length ``k`` starting at ``a`` and ``b`` touch iff ``|a - b| <= k``); an axis
  with ``r_i = 0`` gets no box extent and no connectivity, so boxes touch along it iff ``a_i = b_i``. Every
  box is itself connected, so the components of the union of boxes under that connectivity (26 in
  3D, fewer with ``r_i = 0``) are exactly the chains of candidates; the result is the candidates whose
  component holds a seed. Clipping the boxes at the volume's upper border (or at the candidates'
  bounding box) changes nothing: for ``a < b < n`` the clipped box ``[a, min(a + k - 1, n - 1)]``
  touches ``[b, ..]`` iff ``b <= min(a + k, n)``, i.e. iff ``b - a <= k``. Seeds are candidates
  (``low <= high``, and the comparisons are monotone), so every seed lies in a box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["HYSTERESIS_METHODS", "HysteresisMethod", "box_dilate", "hysteresis_threshold"]

HysteresisMethod = Literal["auto", "label", "dilate"]
HYSTERESIS_METHODS: tuple[str, ...] = ("auto", "label", "dilate")


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




def _resolve_method(method: str, device: torch.device) -> str:
    if method not in HYSTERESIS_METHODS:
        raise ValueError(f"method must be one of {HYSTERESIS_METHODS}, got {method!r}")
    if method == "auto":
        return "label" if device.type == "cpu" else "dilate"
    return method


def _reconstruct_by_dilation(candidates: torch.Tensor, seeds: torch.Tensor, sizes: tuple[int, int, int]) -> torch.Tensor:
    """Geodesic reconstruction by iterated box dilation (the reference; any device).

    Args:
        candidates: bool ``(N, Z, Y, X)``, voxels above the low threshold.
        seeds: bool ``(N, Z, Y, X)``, voxels above the high threshold.
        sizes: odd box sizes ``(Z, Y, X)``.

    Returns:
        Bool ``(N, Z, Y, X)`` region.
    """
    candidate_mask = candidates[:, None].float()
    region = seeds[:, None].float()
    while True:
        grown = box_dilate(region, sizes) * candidate_mask
        if torch.equal(grown, region):
            break
        region = grown
    return region[:, 0].bool()


def _one_sided_box(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
    """Binary dilation along one axis: every set voxel ``a`` also sets ``a + 1 .. a + length - 1``.

    Args:
        mask: bool array (not modified).
        length: box length ``k >= 1`` (``1``: a copy).
        axis: the axis.

    Returns:
        ``out[i] = any(mask[i - k + 1 .. i])`` (voxels before the start count as unset), by
        doubling: ``O(log k)`` shifted ORs.
    """
    result = mask.copy()
    length = min(length, mask.shape[axis])  # the box is clipped at the end of the axis anyway
    span = 1  # result[i] = any(mask[i - span + 1 .. i])
    while span < length:
        shift = min(span, length - span)
        target = [slice(None)] * mask.ndim
        source = [slice(None)] * mask.ndim
        target[axis] = slice(shift, None)
        source[axis] = slice(None, mask.shape[axis] - shift)
        result[tuple(target)] |= result[tuple(source)].copy()
        span += shift
    return result


def _reconstruct_by_labels(candidates: np.ndarray, seeds: np.ndarray, sizes: tuple[int, int, int]) -> np.ndarray:
    """Geodesic reconstruction by labelling the candidates' one-sided boxes (see the module docstring).

    Args:
        candidates: bool ``(N, Z, Y, X)``, voxels above the low threshold.
        seeds: bool ``(N, Z, Y, X)``, voxels above the high threshold, a subset of ``candidates``.
        sizes: odd box sizes ``(Z, Y, X)``.

    Returns:
        Bool ``(N, Z, Y, X)`` region.
    """
    result = np.zeros(candidates.shape, dtype=bool)
    if not seeds.any():
        return result
    # only the candidates' bounding box matters: cropping clips boxes at borders, which is harmless
    bounds = []
    for axis in range(4):
        other = tuple(a for a in range(4) if a != axis)
        present = np.flatnonzero(candidates.any(axis=other))
        bounds.append(slice(int(present[0]), int(present[-1]) + 1))
    window = tuple(bounds)
    inside = candidates[window]
    boxes = inside
    structure = np.zeros((3, 3, 3, 3), dtype=bool)
    reach = tuple(slice(0, 3) if size // 2 >= 1 else slice(1, 2) for size in sizes)
    structure[(1, *reach)] = True  # no connectivity across the batch axis
    for axis, size in enumerate(sizes, start=1):
        if size // 2 >= 2:  # box [a, a + r - 1] for each candidate a; r <= 1 needs no dilation
            boxes = _one_sided_box(boxes, size // 2, axis)
    labels, count = ndimage.label(boxes, structure=structure)
    keep = np.zeros(count + 1, dtype=bool)
    keep[labels[seeds[window]]] = True
    keep[0] = False
    if np.count_nonzero(inside) * 8 < inside.size:  # sparse candidates: look up only those
        where = np.flatnonzero(inside)
        joined = np.zeros(inside.shape, dtype=bool)
        joined.reshape(-1)[where] = keep[labels.reshape(-1)[where]]
        result[window] = joined
    else:
        result[window] = keep[labels] & inside
    return result


def hysteresis_threshold(
    heatmap: torch.Tensor,
    high: float,
    low: float | None = None,
    neighbourhood: Sequence[int] = (5, 15, 15),
    method: HysteresisMethod = "auto",
) -> torch.Tensor:
    """Binary clusters of a heatmap by hysteresis thresholding with a box neighbourhood.

    Condrea et al. 2025, 3.2: seeds above the high threshold, candidates above the low threshold
    (``high / 2``) joining when connected to seeds within a 15 x 15 x 5 neighbourhood; see the module
    docstring for the exact semantics and the two implementations, which give identical results.

    Args:
        heatmap: ``(..., Z, Y, X)`` float tensor (e.g. IG attributions of ``(B, 7, H, W)`` mini-volumes);
            every leading index is clustered independently.
        high: seed threshold (strictly above joins); calibrated on validation data (paper 3.2).
        low: candidate threshold (strictly above may join); default ``high / 2`` as in the paper.
        neighbourhood: odd box sizes ``(Z, Y, X)``; paper: 5 slices x 15 x 15 pixels.
        method: ``"dilate"``: iterated separable box dilation in torch (the reference, any device);
            ``"label"``: one scipy connected-component labelling on the CPU (much faster there; a
            non-CPU heatmap is copied to the CPU and the result back); ``"auto"`` (default):
            ``"label"`` for CPU tensors, ``"dilate"`` otherwise.

    Returns:
        Bool tensor of the heatmap's shape and device: the seeds and every candidate connected to a
        seed through a chain of candidates, each within the box of the previous one.
    """
    if heatmap.dim() < 3:
        raise ValueError(f"heatmap must have at least 3 dimensions (Z, Y, X), got shape {tuple(heatmap.shape)}")
    low = high / 2.0 if low is None else float(low)
    if low > high:
        raise ValueError(f"low threshold {low} is above the high threshold {high}")
    sizes = _check_neighbourhood(neighbourhood)
    chosen = _resolve_method(method, heatmap.device)
    shape = heatmap.shape
    if heatmap.numel() == 0:
        return torch.zeros(shape, dtype=torch.bool, device=heatmap.device)
    values = heatmap.detach().reshape(math.prod(shape[:-3]), *shape[-3:])
    # the same comparisons for both methods; low <= high makes every seed a candidate
    candidates = values > low
    seeds = values > high
    if chosen == "dilate":
        region = _reconstruct_by_dilation(candidates, seeds, sizes)
    else:
        labelled = _reconstruct_by_labels(candidates.cpu().numpy(), seeds.cpu().numpy(), sizes)
        region = torch.from_numpy(labelled).to(heatmap.device)
    return region.reshape(shape)
