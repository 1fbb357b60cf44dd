"""Per-PE findings of a student prediction: connected clusters with their position, size and confidence.

The student (Condrea et al. 2025, section 3.3) outputs a PE probability per voxel. A finding is a
3D connected component (26-connectivity, as in the cluster-matching metric of section 3.4) of the
thresholded probability map. For each one this module reports what a reader or the MONAI Deploy
app needs: the centroid (voxel and patient coordinates), the volume in millilitres, the maximum
probability inside it (its FROC confidence) and the slice range it spans.

Arrays follow ``docs/conventions.md``: ``(Z, Y, X)`` in memory; ``affine`` maps the on-disk
``(X, Y, Z)`` voxel index to RAS millimetres (``custom.io.geometry.affine_from_dicom``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from custom.io.geometry import LPS_TO_RAS
from custom.metrics.cluster_matching import CONNECTIVITY_26

__all__ = ["find_clusters", "study_findings"]


def find_clusters(
    probability: np.ndarray, affine: np.ndarray, threshold: float = 0.5, min_voxels: int = 1
) -> list[dict[str, Any]]:
    """Connected clusters of ``probability >= threshold`` with their summary, most confident first.

    Args:
        probability: PE probability, ``(Z, Y, X)``, values in ``[0, 1]``.
        affine: ``4x4`` RAS affine of the on-disk ``(X, Y, Z)`` array.
        threshold: a voxel belongs to a finding when its probability is at least this value.
        min_voxels: clusters with fewer voxels are dropped.

    Returns:
        One dict per cluster, sorted by decreasing ``max_probability`` (ties: larger first), with
        ``id`` (1-based rank), ``voxels``, ``volume_ml``, ``max_probability``, ``mean_probability``,
        ``centroid_zyx`` (voxel index, float), ``centroid_ras_mm``, ``centroid_lps_mm`` (DICOM patient
        coordinates) and ``slice_range`` (first and last slice index, inclusive, in sorted order).

    Raises:
        ValueError: ``probability`` is not 3D, ``affine`` is not ``4x4``, or ``probability`` has NaN.
    """
    prob = np.asarray(probability, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if prob.ndim != 3:
        raise ValueError(f"expected a 3D (Z, Y, X) probability map, got shape {prob.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {affine.shape}")
    if np.isnan(prob).any():
        raise ValueError("probability map contains NaN")
    return _summarize_components(prob, affine, float(threshold), int(min_voxels))


def study_findings(
    probability: np.ndarray, affine: np.ndarray, study_uid: str, threshold: float = 0.5, min_voxels: int = 1
) -> dict[str, Any]:
    """The findings document of one study, as written to ``<uid>_clusters.json``.

    Args:
        probability: PE probability, ``(Z, Y, X)``.
        affine: RAS affine of the on-disk ``(X, Y, Z)`` array.
        study_uid: StudyInstanceUID of the study.
        threshold: probability threshold of the mask.
        min_voxels: smallest cluster reported.

    Returns:
        ``{"study_uid", "threshold", "shape_zyx", "voxel_volume_ml", "max_probability" (study-level
        PE score: the highest voxel probability), "n_clusters", "clusters": [...]}`` with clusters
        from :func:`find_clusters`.
    """
    clusters = find_clusters(probability, affine, threshold=threshold, min_voxels=min_voxels)
    prob = np.asarray(probability)
    return {
        "study_uid": str(study_uid),
        "threshold": float(threshold),
        "shape_zyx": [int(s) for s in prob.shape],
        "voxel_volume_ml": _voxel_volume_ml(np.asarray(affine, dtype=np.float64)),
        "max_probability": float(prob.max()) if prob.size else 0.0,
        "n_clusters": len(clusters),
        "clusters": clusters,
    }


def _voxel_volume_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3])) / 1000.0)


def _summarize_components(prob: np.ndarray, affine: np.ndarray, threshold: float, min_voxels: int) -> list[dict]:
    labels, count = ndimage.label(prob >= threshold, structure=CONNECTIVITY_26)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    max_prob = np.asarray(ndimage.maximum(prob, labels, index), dtype=np.float64).reshape(-1)
    mean_prob = np.asarray(ndimage.mean(prob, labels, index), dtype=np.float64).reshape(-1)
    centroids_zyx = np.asarray(ndimage.center_of_mass(np.ones_like(prob), labels, index), dtype=np.float64).reshape(-1, 3)
    boxes = ndimage.find_objects(labels)
    voxel_ml = _voxel_volume_ml(affine)
    # voxel (i=x, j=y, k=z) -> RAS; centroid_zyx is reversed to (x, y, z)
    centroids_xyz1 = np.concatenate([centroids_zyx[:, ::-1], np.ones((count, 1))], axis=1)
    ras = centroids_xyz1 @ affine.T
    lps = ras @ LPS_TO_RAS.T  # the RAS <-> LPS flip is its own inverse
    order = sorted(range(count), key=lambda c: (-max_prob[c], -voxels[c], c))
    clusters = []
    for c in order:
        if voxels[c] < min_voxels:
            continue
        z_slice = boxes[c][0]
        clusters.append(
            {
                "id": len(clusters) + 1,
                "voxels": int(voxels[c]),
                "volume_ml": float(voxels[c] * voxel_ml),
                "max_probability": float(max_prob[c]),
                "mean_probability": float(mean_prob[c]),
                "centroid_zyx": [float(v) for v in centroids_zyx[c]],
                "centroid_ras_mm": [float(v) for v in ras[c, :3]],
                "centroid_lps_mm": [float(v) for v in lps[c, :3]],
                "slice_range": [int(z_slice.start), int(z_slice.stop - 1)],
            }
        )
    return clusters
