"""Cluster size / location filters and the scaling of the paper's 512 px settings."""

from __future__ import annotations

import numpy as np
import pytest

from custom.explain.filtering import filter_clusters, label_clusters
from custom.explain.grid_scaling import scale_paper_settings


def test_clusters_are_26_connected():
    mask = np.zeros((3, 5, 5), np.uint8)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner-to-corner chain
    mask[0, 4, 4] = 1
    labels, count = label_clusters(mask)
    assert count == 2
    assert labels[0, 0, 0] == labels[2, 2, 2] != labels[0, 4, 4]


def test_size_filter():
    mask = np.zeros((4, 40, 40), np.uint8)
    mask[0:2, 18:23, 18:23] = 1  # 50 voxels
    mask[0:2, 2:5, 2:5] = 1  # 18 voxels
    filtered, clusters, _ = filter_clusters(mask, min_cluster_voxels=50, max_center_distance_px=100.0)
    assert [c.voxels for c in clusters] == [18, 50]
    assert [c.kept for c in clusters] == [False, True]
    assert clusters[0].removed_by == "small" and clusters[1].removed_by is None
    assert filtered.sum() == 50 and filtered[0, 20, 20] == 1 and filtered[0, 3, 3] == 0
    assert filtered.dtype == np.uint8
    assert filter_clusters(mask, 51, 100.0)[0].sum() == 0


def test_location_filter_uses_the_in_plane_centroid():
    mask = np.zeros((3, 41, 41), np.uint8)  # image centre (20, 20)
    mask[1, 20, 30:33] = 1  # centroid (20, 31): 11 px away
    mask[0:3, 5, 20] = 1  # centroid (1, 5, 20): 15 px away in-plane
    _, clusters, _ = filter_clusters(mask, min_cluster_voxels=1, max_center_distance_px=11.0)
    by_size = {c.bbox_zyx: c for c in clusters}
    near = by_size[(1, 20, 30, 2, 21, 33)]
    far = by_size[(0, 5, 20, 3, 6, 21)]
    assert near.center_distance_px == pytest.approx(11.0) and near.kept
    assert far.center_distance_px == pytest.approx(15.0) and far.removed_by == "off_center"
    assert far.center_zyx == pytest.approx((1.0, 5.0, 20.0))


def test_location_filter_is_in_plane_with_rows_then_columns():
    mask = np.zeros((21, 41, 61), np.uint8)  # (Z, H, W): in-plane centre (row 20, column 30), 3-D centre z = 10
    mask[0, 20, 30] = 1  # slice 0, in-plane centre: 0 px in-plane, 10 voxels in 3-D
    mask[0, 20, 38] = 1  # 8 px off along X (columns)
    _, clusters, _ = filter_clusters(mask, min_cluster_voxels=1, max_center_distance_px=8.0)
    centre, off_x = clusters  # label order: raster order
    assert centre.bbox_zyx == (0, 20, 30, 1, 21, 31) and off_x.bbox_zyx == (0, 20, 38, 1, 21, 39)
    assert centre.center_distance_px == pytest.approx(0.0)  # swapped H/W: 14.1 px; 3-D: 10
    assert off_x.center_distance_px == pytest.approx(8.0)  # swapped H/W: 20.6 px; 3-D: 12.8
    assert centre.kept and off_x.kept  # at the limit is kept
    filtered, clusters, _ = filter_clusters(mask, min_cluster_voxels=1, max_center_distance_px=7.5)
    assert [c.removed_by for c in clusters] == [None, "off_center"]
    assert filtered[0, 20, 30] == 1 and filtered.sum() == 1


def test_size_filter_is_reported_before_the_location_filter():
    mask = np.zeros((2, 41, 41), np.uint8)
    mask[0, 0, 0] = 1  # 1 voxel, 28 px from the centre: fails both filters
    mask[0, 18:22, 18:22] = 1  # 16 voxels at the centre
    filtered, clusters, _ = filter_clusters(mask, min_cluster_voxels=2, max_center_distance_px=10.0)
    assert clusters[0].voxels == 1 and clusters[0].center_distance_px > 10.0
    assert clusters[0].removed_by == "small" and not clusters[0].kept
    assert clusters[1].removed_by is None
    assert filtered[0, 0, 0] == 0 and filtered.sum() == 16


def test_empty_mask():
    filtered, clusters, labels = filter_clusters(np.zeros((2, 8, 8), np.uint8))
    assert clusters == [] and filtered.sum() == 0 and labels.max() == 0


def test_paper_settings_scale_with_the_grid():
    paper = scale_paper_settings(512, 512)
    assert paper.neighbourhood == (5, 15, 15) and paper.min_voxels == 50
    assert paper.min_cluster_voxels == 100 and paper.max_center_distance_px == 160.0
    half = scale_paper_settings(256, 256)
    assert half.neighbourhood == (5, 7, 7)  # 7.5 -> nearest odd
    assert (half.min_voxels, half.min_cluster_voxels) == (13, 25)  # 12.5 rounds half up
    assert half.max_center_distance_px == 80.0 and half.blur_sigma_px == 3.5
    quarter = scale_paper_settings(128, 128)
    assert quarter.neighbourhood == (5, 3, 3) and quarter.min_cluster_voxels == 6 and quarter.min_voxels == 3
    tiny = scale_paper_settings(16, 16)
    assert tiny.neighbourhood == (5, 1, 1) and tiny.min_voxels == 1
    with pytest.raises(ValueError):
        scale_paper_settings(0, 128)
