"""Per-PE findings of a student probability map (custom.student.findings)."""

from __future__ import annotations

import numpy as np
import pytest

from custom.io.geometry import LPS_TO_RAS
from custom.student.findings import find_clusters, study_findings

# on-disk (X, Y, Z) -> RAS: 0.8 mm columns (x flipped), 0.7 mm rows, 2.5 mm slices, shifted origin
AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, -0.7, 0.0, 20.0], [0.0, 0.0, 2.5, -100.0], [0.0, 0.0, 0.0, 1.0]])
VOXEL_ML = 0.8 * 0.7 * 2.5 / 1000.0


def _two_clusters() -> np.ndarray:
    prob = np.zeros((10, 12, 14), dtype=np.float32)
    prob[2:4, 3:5, 4:6] = 0.7  # 8 voxels, z 2..3
    prob[6:9, 8, 10] = [0.6, 0.95, 0.6]  # 3 voxels, z 6..8, brightest
    return prob


def test_clusters_sorted_by_confidence_with_geometry() -> None:
    clusters = find_clusters(_two_clusters(), AFFINE, threshold=0.5)
    assert [c["id"] for c in clusters] == [1, 2]
    first, second = clusters
    assert first["voxels"] == 3 and first["max_probability"] == pytest.approx(0.95)
    assert first["slice_range"] == [6, 8]
    assert first["centroid_zyx"] == pytest.approx([7.0, 8.0, 10.0])
    assert first["volume_ml"] == pytest.approx(3 * VOXEL_ML)
    assert first["mean_probability"] == pytest.approx((0.6 + 0.95 + 0.6) / 3)
    assert second["voxels"] == 8 and second["slice_range"] == [2, 3]
    assert second["centroid_zyx"] == pytest.approx([2.5, 3.5, 4.5])
    # centroid (z, y, x) -> voxel (i=x, j=y, k=z) -> RAS, and LPS flips x and y
    expected_ras = AFFINE @ np.array([4.5, 3.5, 2.5, 1.0])
    assert second["centroid_ras_mm"] == pytest.approx(expected_ras[:3].tolist())
    assert second["centroid_lps_mm"] == pytest.approx((LPS_TO_RAS @ expected_ras)[:3].tolist())


def test_diagonal_neighbours_are_one_cluster() -> None:
    prob = np.zeros((5, 5, 5), dtype=np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = prob[3, 3, 3] = 0.9  # corner-connected only: one 26-connected cluster
    clusters = find_clusters(prob, np.eye(4))
    assert len(clusters) == 1 and clusters[0]["voxels"] == 3


def test_threshold_and_min_voxels() -> None:
    prob = _two_clusters()
    assert [c["voxels"] for c in find_clusters(prob, AFFINE, threshold=0.65)] == [1, 8]
    assert [c["voxels"] for c in find_clusters(prob, AFFINE, threshold=0.5, min_voxels=4)] == [8]
    assert find_clusters(prob, AFFINE, threshold=0.99) == []


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="3D"):
        find_clusters(np.zeros((4, 4)), AFFINE)
    with pytest.raises(ValueError, match="4x4"):
        find_clusters(np.zeros((4, 4, 4)), np.eye(3))
    prob = np.zeros((4, 4, 4), dtype=np.float32)
    prob[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_clusters(prob, AFFINE)


def test_study_findings_document() -> None:
    doc = study_findings(_two_clusters(), AFFINE, "1.2.3", threshold=0.5)
    assert doc["study_uid"] == "1.2.3"
    assert doc["n_clusters"] == 2 and len(doc["clusters"]) == 2
    assert doc["max_probability"] == pytest.approx(0.95)
    assert doc["shape_zyx"] == [10, 12, 14]
    assert doc["voxel_volume_ml"] == pytest.approx(VOXEL_ML)
    empty = study_findings(np.zeros((3, 3, 3), dtype=np.float32), AFFINE, "9")
    assert empty["n_clusters"] == 0 and empty["clusters"] == [] and empty["max_probability"] == 0.0
