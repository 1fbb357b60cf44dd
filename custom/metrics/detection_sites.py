"""Where detections fall: each detection of a study attributed to a labelled region (a diagnostic).

The cluster-matching metric (:mod:`custom.metrics.cluster_matching`) counts false detections; this module
says *what they lie on*, given named regions of the study (on a synthetic cohort: the embolus mimics the
phantom painted, the arterial and venous lumen, the body). It answers "does the model fire on
unopacified veins, lymph nodes or flow artefacts, or on nothing in particular?", the question of the
paper's error analysis (iExplain, "Error Analysis" and Fig. 5: reduced contrast in veins, contrast
timing, imaging artefacts, veins mistaken for arteries).

Rule: a detection is a 3D connected component (26-connectivity, as in the metric) of ``prediction >=
threshold``; it is *matched* when it shares a voxel with the reference mask. Its *site* is the first region,
in the order given, that holds at least ``min_share`` of its voxels; ``fallback`` when none does. Regions may
overlap; the order settles ties, so list the specific ones (mimics) before the general ones (lumen, body).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from custom.metrics.cluster_matching import label_clusters

__all__ = ["DetectionSite", "detection_sites", "regions_touched", "site_counts"]


@dataclass(frozen=True)
class DetectionSite:
    """One detection and the region it falls on.

    Attributes:
        voxels: its voxel count.
        matched: whether it shares a voxel with the reference mask (a true positive by the cluster rule).
        site: the name of the first region holding at least ``min_share`` of its voxels, or the fallback.
        share: the fraction of its voxels inside that region (NaN for the fallback).
    """

    voxels: int
    matched: bool
    site: str
    share: float


def _check_grids(prediction: np.ndarray, ref_mask: np.ndarray, regions: Mapping[str, np.ndarray]) -> None:
    if prediction.ndim != 3 or prediction.shape != ref_mask.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {ref_mask.shape} must be the same 3D grid")
    for name, region in regions.items():
        if region.shape != prediction.shape:
            raise ValueError(f"region {name!r} has shape {region.shape}, the prediction {prediction.shape}")


def detection_sites(
    prediction: np.ndarray,
    ref_mask: np.ndarray,
    regions: Mapping[str, np.ndarray],
    threshold: float = 0.5,
    min_share: float = 0.2,
    fallback: str = "elsewhere",
) -> list[DetectionSite]:
    """Attribute every detection of one study to a region.

    Args:
        prediction: 3D probability map or mask; detection voxels are ``prediction >= threshold``.
        ref_mask: reference mask on the same grid (nonzero = PE).
        regions: ordered ``{name: boolean mask}`` on the same grid (see the module docstring).
        threshold: binarisation threshold (the metric's).
        min_share: smallest fraction of a detection's voxels that makes a region its site, in ``(0, 1]``.
        fallback: the site of a detection that no region holds enough of.

    Returns:
        One :class:`DetectionSite` per detection, in the metric's label order.

    Raises:
        ValueError: arrays on different grids, NaN in the prediction, or ``min_share`` outside ``(0, 1]``.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    prediction, ref_mask = np.asarray(prediction), np.asarray(ref_mask)
    _check_grids(prediction, ref_mask, regions)
    if np.issubdtype(prediction.dtype, np.floating) and np.isnan(prediction).any():
        raise ValueError("prediction contains NaN")
    labels, count = label_clusters(prediction >= threshold)
    if count == 0:
        return []
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids = flat[where]
    sizes = np.bincount(ids, minlength=count + 1)
    matched = np.bincount(ids, weights=(ref_mask.reshape(-1)[where] != 0), minlength=count + 1) > 0
    shares = {name: np.bincount(ids, weights=np.asarray(region, dtype=bool).reshape(-1)[where], minlength=count + 1) / np.maximum(sizes, 1)
              for name, region in regions.items()}
    sites = []
    for k in range(1, count + 1):
        site, share = fallback, float("nan")
        for name, fraction in shares.items():
            if fraction[k] >= min_share:
                site, share = name, float(fraction[k])
                break
        sites.append(DetectionSite(int(sizes[k]), bool(matched[k]), site, share))
    return sites


def regions_touched(prediction: np.ndarray, instances: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Which instances of a labelled volume any detection voxel touches.

    Args:
        prediction: 3D probability map or mask (detection voxels ``>= threshold``).
        instances: integer volume on the same grid, ``k`` for instance ``k`` (1-based), 0 elsewhere.
        threshold: binarisation threshold.

    Returns:
        Sorted 1-based labels of the instances that share a voxel with a detection.
    """
    prediction, instances = np.asarray(prediction), np.asarray(instances)
    if prediction.shape != instances.shape:
        raise ValueError(f"prediction {prediction.shape} and instances {instances.shape} must be the same grid")
    touched = np.unique(instances[(prediction >= threshold) & (instances > 0)])
    return touched.astype(np.int64)


def site_counts(sites: list[DetectionSite], matched: bool = False) -> dict[str, int]:
    """Detections per site, counting the matched (``matched=True``) or the false ones."""
    return dict(Counter(s.site for s in sites if s.matched == matched))
