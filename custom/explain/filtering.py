"""Pseudo-label cluster filtering by size and by distance from the study centre (Condrea et al. 2025, 3.2, 4.2).

"We apply empirically determined size and location filters: clusters smaller than a size threshold ...
or beyond a 2D Euclidean distance threshold from the study center ... are removed", with the numbers
"smaller than 100 voxels" and "beyond 160 pixels from the center" at 512 px (Table 3);
``custom.explain.grid_scaling`` scales them to other grids.

A cluster is a connected component of the study mask with 26-connectivity (faces, edges and corners,
``custom.metrics.label_clusters``, equal to ``scipy.ndimage.label``). Its centre is the centroid of its voxels; the study centre is the in-plane
image centre ``((H - 1) / 2, (W - 1) / 2)``, and the distance between them is measured in-plane, in
pixels of the grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from custom.metrics.cluster_matching import label_clusters

__all__ = ["FILTER_OFF_CENTER", "FILTER_SMALL", "Cluster", "filter_clusters", "label_clusters"]

FILTER_SMALL = "small"
FILTER_OFF_CENTER = "off_center"


@dataclass(frozen=True)
class Cluster:
    """One connected component of a study mask.

    Attributes:
        label: its label in the array returned by :func:`label_clusters` (1-based).
        voxels: its size in voxels.
        center_zyx: centroid (slice, row, column), in voxels.
        bbox_zyx: ``(z0, y0, x0, z1, y1, x1)``, half-open voxel bounds.
        center_distance_px: in-plane distance of the centroid from the image centre, in pixels.
        kept: whether it passes both filters.
        removed_by: ``None`` if kept, else ``"small"`` or ``"off_center"`` (the size test comes first).
    """

    label: int
    voxels: int
    center_zyx: tuple[float, float, float]
    bbox_zyx: tuple[int, int, int, int, int, int]
    center_distance_px: float
    kept: bool
    removed_by: str | None

    def to_dict(self) -> dict:
        """JSON-ready dictionary of the fields."""
        return asdict(self)


def filter_clusters(
    mask: np.ndarray,
    min_cluster_voxels: int = 100,
    max_center_distance_px: float = 160.0,
) -> tuple[np.ndarray, list[Cluster], np.ndarray]:
    """Remove small clusters and clusters far from the study centre.

    Args:
        mask: ``(Z, Y, X)`` study mask (non-zero = PE).
        min_cluster_voxels: clusters with fewer voxels are removed (paper: 100 at 512 px).
        max_center_distance_px: clusters whose centroid lies farther than this from the image centre,
            in-plane, are removed (paper: 160 px at 512 px).

    Returns:
        ``(filtered_mask uint8, clusters, labels)``: the mask of the kept clusters, every cluster in
        label order, and the int32 label array.
    """
    labels, count = label_clusters(mask)
    filtered = np.zeros(labels.shape, dtype=np.uint8)
    if count == 0:
        return filtered, [], labels
    index = np.arange(1, count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    centroids = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, dtype=np.float32), labels, index), dtype=np.float64)
    centroids = centroids.reshape(count, 3)
    image_center = (np.asarray(labels.shape[1:], dtype=np.float64) - 1.0) / 2.0
    distances = np.hypot(*(centroids[:, 1:] - image_center).T)
    small = sizes < min_cluster_voxels
    off_center = distances > max_center_distance_px
    kept = ~small & ~off_center
    filtered[np.isin(labels, index[kept])] = 1
    clusters = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        removed_by = FILTER_SMALL if small[i] else FILTER_OFF_CENTER if off_center[i] else None
        clusters.append(
            Cluster(
                label=i + 1,
                voxels=int(sizes[i]),
                center_zyx=tuple(float(c) for c in centroids[i]),
                bbox_zyx=tuple(int(s.start) for s in box) + tuple(int(s.stop) for s in box),
                center_distance_px=float(distances[i]),
                kept=bool(kept[i]),
                removed_by=removed_by,
            )
        )
    return filtered, clusters, labels
