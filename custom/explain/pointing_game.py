"""Pointing game: does the classifier's explanation point at the embolus?

For each positive slice, the top pixel of the Integrated Gradients map of its mini-volume's centre
slice is a *hit* when it lies on an embolus of that slice or within ``tolerance_px`` pixels of one
(Euclidean, in-plane). The hit rate over positive slices measures whether a classifier looks at
the embolus (a usable teacher) or at a shortcut such as the slice's anatomical level. It is the
localisation column of the report's Table 1 analog (Condrea et al. 2025, Table 1 reports AUC/F1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from custom.explain.integrated_gradients import IntegratedGradientsExplainer

__all__ = ["PointingGameResult", "pointing_game"]


@dataclass
class PointingGameResult:
    """Hits over the positive slices that were explained.

    Attributes:
        hits: number of positive slices whose top attribution pixel lies on or near an embolus.
        total: positive slices explained.
        distances_px: per slice, the distance from the top pixel to the nearest embolus pixel.
    """

    hits: int
    total: int
    distances_px: list[float]

    @property
    def hit_rate(self) -> float:
        """``hits / total`` (NaN without positive slices)."""
        return self.hits / self.total if self.total else float("nan")


def pointing_game(
    explainer: IntegratedGradientsExplainer,
    studies: Iterable[tuple[np.ndarray, np.ndarray]],
    tolerance_px: float = 3.0,
    depth: int = 7,
    batch_size: int = 16,
    max_slices_per_study: int | None = None,
) -> PointingGameResult:
    """Play the pointing game on the positive slices of windowed studies.

    Args:
        explainer: an IG explainer over the classifier (its references, steps and noise are used as is).
        studies: ``(volume_windowed (Z, H, W), embolus_mask (Z, H, W))`` pairs on the classifier's grid.
        tolerance_px: a top pixel within this in-plane distance of an embolus pixel is a hit (3 px).
        depth: mini-volume depth.
        batch_size: mini-volumes explained per call.
        max_slices_per_study: explain at most this many positive slices per study, evenly spaced
            (``None``: all).

    Returns:
        A :class:`PointingGameResult`.
    """
    from custom.explain.aggregation import window_slice_indices

    hits, distances = 0, []
    for volume, mask in studies:
        volume_t = torch.as_tensor(np.asarray(volume, dtype=np.float32))
        mask = np.asarray(mask) > 0
        if volume_t.shape != mask.shape:
            raise ValueError(f"volume {tuple(volume_t.shape)} and mask {mask.shape} differ in shape")
        positive = np.flatnonzero(mask.any(axis=(1, 2)))
        if max_slices_per_study is not None and positive.size > max_slices_per_study:
            positive = positive[np.linspace(0, positive.size - 1, max_slices_per_study).round().astype(int)]
        if positive.size == 0:
            continue
        sources = window_slice_indices(volume_t.shape[0], depth)
        for start in range(0, positive.size, batch_size):
            centres = positive[start : start + batch_size]
            attributions = explainer(volume_t[sources[torch.as_tensor(centres)]])[:, depth // 2]
            flat = attributions.flatten(1).argmax(dim=1).cpu().numpy()
            for centre, index in zip(centres, flat):
                row, col = divmod(int(index), mask.shape[2])
                # distance from every pixel to the nearest embolus pixel of the centre slice
                distance = ndimage.distance_transform_edt(~mask[centre])[row, col]
                distances.append(float(distance))
                hits += int(distance <= tolerance_px)
    return PointingGameResult(hits=hits, total=len(distances), distances_px=distances)
