"""Tests of custom.metrics.cluster_matching: hand-built edge cases, strict IoU, brute-force agreement, metric."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import custom.metrics.cluster_matching as cluster_matching
from custom.metrics import (
    DETAIL_COLUMNS,
    ClusterCounts,
    ClusterMatchingMetric,
    cluster_overlaps,
    count_matches,
    label_clusters,
    match_clusters,
)

SHAPE = (8, 24, 24)


def _volume() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.uint8)


# ----------------------------------------------------------------------------- slow reference implementation
def _brute_force_label(mask: np.ndarray) -> list[set[tuple[int, int, int]]]:
    """26-connected components by breadth-first search over voxel tuples."""
    remaining = {tuple(int(c) for c in v) for v in np.argwhere(mask)}
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
    components = []
    while remaining:
        seed = remaining.pop()
        component, frontier = {seed}, [seed]
        while frontier:
            z, y, x = frontier.pop()
            for dz, dy, dx in offsets:
                neighbour = (z + dz, y + dy, x + dx)
                if neighbour in remaining:
                    remaining.remove(neighbour)
                    component.add(neighbour)
                    frontier.append(neighbour)
        components.append(component)
    return components


def _brute_force_boxify(detection: set[tuple[int, int, int]]) -> set[tuple[int, int, int]]:
    """Per slice (axis 0), the filled bounding rectangle of the detection's voxels."""
    boxed = set()
    for z in {v[0] for v in detection}:
        ys = [v[1] for v in detection if v[0] == z]
        xs = [v[2] for v in detection if v[0] == z]
        boxed |= {(z, y, x) for y in range(min(ys), max(ys) + 1) for x in range(min(xs), max(xs) + 1)}
    return boxed


def _brute_force_match(pred: np.ndarray, ref: np.ndarray, strict: bool = False, iou_threshold: float = 0.5):
    detections, pes = _brute_force_label(pred), _brute_force_label(ref)
    matched = set()
    for i, detection in enumerate(detections):
        boxed = _brute_force_boxify(detection) if strict else detection
        for j, pe in enumerate(pes):
            if strict:
                hit = len(boxed & pe) / len(boxed | pe) > iou_threshold
            else:
                hit = bool(detection & pe)
            if hit:
                matched.add((i, j))
    tp = len({j for _, j in matched})
    return ClusterCounts(tp=tp, fp=len(detections) - len({i for i, _ in matched}), fn=len(pes) - tp)


def _random_blobs(rng: np.random.Generator, shape: tuple[int, int, int], density: float) -> np.ndarray:
    """Sparse random blobs: random seeds grown by one random-structure dilation."""
    seeds = rng.random(shape) < density
    return ndimage.binary_dilation(seeds, structure=rng.random((3, 3, 3)) < 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- labelling
def test_label_clusters_equals_full_volume_scipy_label():
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 20, 3))
        mask = rng.random(shape) < rng.uniform(0.0, 0.4)
        labels, count = label_clusters(mask)
        expected, expected_count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected)
        assert labels.dtype == np.int32 and labels.shape == shape


def test_label_clusters_dense_fallback_equals_sparse(monkeypatch):
    rng = np.random.default_rng(1)
    mask = rng.random((10, 12, 14)) < 0.3
    sparse = label_clusters(mask)
    monkeypatch.setattr(cluster_matching, "_DENSE_VOXELS", 5)
    dense = label_clusters(mask)
    assert sparse[1] == dense[1]
    np.testing.assert_array_equal(sparse[0], dense[0])


def test_label_clusters_uses_26_connectivity_and_any_nonzero_value():
    mask = _volume()
    mask[1, 1, 1] = 3  # corner-touching diagonal neighbours are one cluster
    mask[2, 2, 2] = 1
    mask[5, 5, 5] = 7
    labels, count = label_clusters(mask)
    assert count == 2
    assert labels[1, 1, 1] == labels[2, 2, 2] == 1 and labels[5, 5, 5] == 2
    assert label_clusters(_volume())[1] == 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="differ in shape"):
        match_clusters(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="3D"):
        label_clusters(np.zeros((3, 4)))


# ----------------------------------------------------------------------------- edge cases of the rule
def test_one_detection_spanning_two_pes_gives_two_tp_and_no_fp():
    ref, pred = _volume(), _volume()
    ref[2:4, 2:6, 2:6] = 1
    ref[2:4, 2:6, 12:16] = 1
    pred[3, 4, 3:14] = 1  # a bar across both
    counts = match_clusters(pred, ref)
    assert counts == ClusterCounts(tp=2, fp=0, fn=0)
    assert counts.sensitivity == counts.ppv == counts.f1 == 1.0


def test_two_detections_on_one_pe_give_one_tp_and_no_fp():
    ref, pred = _volume(), _volume()
    ref[2:5, 2:12, 2:12] = 1
    pred[3, 3:5, 3:5] = 1
    pred[3, 8:10, 8:10] = 1
    assert label_clusters(pred)[1] == 2
    counts = match_clusters(pred, ref)
    assert counts == ClusterCounts(tp=1, fp=0, fn=0)
    assert counts.ppv == 1.0


def test_empty_prediction_has_zero_sensitivity_and_no_fp():
    ref = _volume()
    ref[1:3, 1:4, 1:4] = 1
    ref[5:7, 10:14, 10:14] = 1
    counts = match_clusters(_volume(), ref)
    assert counts == ClusterCounts(tp=0, fp=0, fn=2)
    assert counts.sensitivity == 0.0
    assert counts.f1 == 0.0
    assert math.isnan(counts.ppv)  # 0/0: no detection at all


def test_empty_reference_makes_every_detection_fp_and_sensitivity_nan():
    pred = _volume()
    pred[1, 1:3, 1:3] = 1
    pred[6, 20:22, 20:22] = 1
    counts = match_clusters(pred, _volume())
    assert counts == ClusterCounts(tp=0, fp=2, fn=0)
    assert math.isnan(counts.sensitivity)  # documented choice: undefined, not 0
    assert counts.ppv == 0.0
    assert counts.f1 == 0.0
    assert counts.as_dict()["fp_per_study"] == 2.0


def test_both_empty_gives_nan_rates():
    counts = match_clusters(_volume(), _volume())
    assert counts == ClusterCounts(0, 0, 0)
    assert all(math.isnan(v) for v in (counts.sensitivity, counts.ppv, counts.f1))


def test_f1_is_harmonic_mean_and_counts_pool_by_sum():
    counts = ClusterCounts(tp=3, fp=1, fn=2)
    harmonic = 2 * counts.sensitivity * counts.ppv / (counts.sensitivity + counts.ppv)
    assert counts.f1 == pytest.approx(harmonic)
    pooled = counts + ClusterCounts(tp=1, fp=3, fn=0)
    assert pooled == ClusterCounts(4, 4, 2)
    report = pooled.as_dict(n_studies=4)
    assert report == {"tp": 4, "fp": 4, "fn": 2, "sensitivity": 4 / 6, "ppv": 0.5, "f1": 8 / 14, "fp_per_study": 1.0}


def test_perfect_prediction_gives_f1_one_also_strict():
    ref = _volume()
    ref[1:4, 2:6, 2:9] = 1
    ref[5:8, 12:20, 14:18] = 1
    ref[0, 20:23, 1:3] = 1
    for strict in (False, True):
        counts = match_clusters(ref.copy(), ref, strict=strict)
        assert counts == ClusterCounts(tp=3, fp=0, fn=0)
        assert counts.f1 == 1.0


# ----------------------------------------------------------------------------- strict variant
def _strict_reference() -> np.ndarray:
    ref = _volume()
    ref[2:4, 5:15, 5:15] = 1  # one PE, 2 slices of a 10x10 box: 200 voxels
    return ref


def test_strict_iou_just_above_half_matches():
    ref, pred = _strict_reference(), _volume()
    pred[2, 5:15, 5:15] = 1  # 100 voxels
    pred[3, 5, 5] = 1  # +1 -> IoU 101/200 = 0.505
    assert match_clusters(pred, ref, strict=True) == ClusterCounts(tp=1, fp=0, fn=0)


def test_strict_iou_exactly_half_does_not_match():
    ref, pred = _strict_reference(), _volume()
    pred[2, 5:15, 5:15] = 1  # IoU 100/200 = 0.5, not above
    assert match_clusters(pred, ref, strict=True) == ClusterCounts(tp=0, fp=1, fn=1)
    assert match_clusters(pred, ref, strict=True, iou_threshold=0.49) == ClusterCounts(tp=1, fp=0, fn=0)
    assert match_clusters(pred, ref) == ClusterCounts(tp=1, fp=0, fn=0)  # non-strict: they touch


def test_strict_boxifies_the_detection_per_slice():
    ref, pred = _strict_reference(), _volume()
    for z in (2, 3):  # a thin diagonal per slice: raw IoU 20/200, boxified 10x10 per slice: IoU 1
        pred[z, np.arange(5, 15), np.arange(5, 15)] = 1
    assert match_clusters(pred, ref, strict=True) == ClusterCounts(tp=1, fp=0, fn=0)
    # boxified per slice, not per volume: two slices with boxes far apart stay two boxes
    pred2 = _volume()
    pred2[2, 5:15, 5:15] = 1
    pred2[3, 5:15, 5] = 1
    pred2[3, 14, 5:15] = 1  # an L on slice 3 whose box is the full 10x10
    assert match_clusters(pred2, ref, strict=True) == ClusterCounts(tp=1, fp=0, fn=0)


def test_strict_ring_around_pe_matches_though_it_touches_no_voxel():
    # documented consequence of boxification: a ring whose box covers the PE has IoU 200/288 > 0.5
    ref, pred = _strict_reference(), _volume()
    for z in (2, 3):
        pred[z, 4:16, 4] = pred[z, 4:16, 15] = pred[z, 4, 4:16] = pred[z, 15, 4:16] = 1
    assert match_clusters(pred, ref) == ClusterCounts(tp=0, fp=1, fn=1)
    assert match_clusters(pred, ref, strict=True) == ClusterCounts(tp=1, fp=0, fn=0)


def test_strict_slice_axis_follows_the_layout():
    rng = np.random.default_rng(5)
    for _ in range(10):
        ref, pred = _random_blobs(rng, (6, 14, 16), 0.01), _random_blobs(rng, (6, 14, 16), 0.01)
        zyx = match_clusters(pred, ref, strict=True, slice_axis=0)
        xyz = match_clusters(pred.transpose(2, 1, 0), ref.transpose(2, 1, 0), strict=True, slice_axis=2)
        assert zyx == xyz == match_clusters(pred.transpose(2, 1, 0), ref.transpose(2, 1, 0), strict=True, slice_axis=-1)


def _random_boxes(rng: np.random.Generator, shape: tuple[int, int, int], count: int) -> np.ndarray:
    """A reference like RSPECT-augmented: per PE, one random box per slice over a few slices."""
    ref = np.zeros(shape, dtype=np.uint8)
    for _ in range(count):
        z0 = int(rng.integers(0, shape[0]))
        y, x = int(rng.integers(0, shape[1] - 2)), int(rng.integers(0, shape[2] - 2))
        for z in range(z0, min(shape[0], z0 + int(rng.integers(1, 4)))):
            ref[z, y : y + int(rng.integers(1, 5)), x : x + int(rng.integers(1, 5))] = 1
    return ref


# ----------------------------------------------------------------------------- brute force agreement
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        shape = tuple(int(s) for s in rng.integers(4, 14, 3))
        ref = _random_blobs(rng, shape, rng.uniform(0.002, 0.03))
        pred = _random_blobs(rng, shape, rng.uniform(0.002, 0.03))
        for strict in (False, True):
            expected = _brute_force_match(pred, ref, strict=strict)
            assert match_clusters(pred, ref, strict=strict) == expected, (seed, strict)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force_on_noisy_copies_of_box_references(seed):
    """Predictions close to the reference, so the strict IoU rule is exercised on both sides of 0.5."""
    rng = np.random.default_rng(100 + seed)
    strict_total = ClusterCounts()
    for _ in range(6):
        shape = (int(rng.integers(4, 10)), 16, 16)
        ref = _random_boxes(rng, shape, int(rng.integers(1, 5)))
        pred = ref * (rng.random(shape) < rng.uniform(0.4, 0.95)) | _random_blobs(rng, shape, 0.003)
        for strict in (False, True):
            counts = match_clusters(pred, ref, strict=strict)
            assert counts == _brute_force_match(pred, ref, strict=strict), (seed, strict)
        strict_total = strict_total + counts
    assert strict_total.tp > 0 and strict_total.fn > 0  # both outcomes of the IoU test occur


def test_overlap_pairs_are_the_touching_pairs():
    ref, pred = _volume(), _volume()
    ref[1:3, 1:5, 1:5] = 1
    ref[5:7, 10:14, 10:14] = 1
    pred[2, 2:12, 3] = 1  # touches PE 1 only
    pred[6, 13:16, 13:16] = 1  # touches PE 2
    pred[0, 20, 20] = 1  # touches none
    overlaps = cluster_overlaps(pred, ref)
    assert (overlaps.n_pred, overlaps.n_ref) == (3, 2)
    assert sorted(map(tuple, overlaps.pairs.tolist())) == [(2, 1), (3, 2)]  # raster order: (0, 20, 20) is 1
    assert count_matches(overlaps) == ClusterCounts(tp=2, fp=1, fn=0)
    thresholded = cluster_overlaps(pred.astype(np.float32) * 0.7, ref, threshold=0.5)
    np.testing.assert_array_equal(thresholded.pairs, overlaps.pairs)


# ----------------------------------------------------------------------------- MONAI metric
def _batch(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds = [rng.random((6, 14, 16)).astype(np.float32) * _random_blobs(rng, (6, 14, 16), 0.01) for _ in range(n)]
    refs = [_random_blobs(rng, (6, 14, 16), 0.01) for _ in range(n)]
    return preds, refs


def test_metric_pools_studies_batch_and_list_inputs_alike():
    rng = np.random.default_rng(11)
    preds, refs = _batch(rng, 5)
    expected = [match_clusters(p >= 0.3, r, strict=False) for p, r in zip(preds, refs)]
    metric = ClusterMatchingMetric(threshold=0.3)
    metric(torch.as_tensor(np.stack(preds)[:, None]), torch.as_tensor(np.stack(refs)[:, None]))  # batch of 5
    by_list = ClusterMatchingMetric(threshold=0.3)
    for p, r in zip(preds, refs):  # batches of 1 as lists of channel-first tensors
        by_list([torch.as_tensor(p)[None]], [torch.as_tensor(r)[None]])
    pooled = sum(expected, ClusterCounts()).as_dict(n_studies=5)
    for m in (metric, by_list):
        report = m.aggregate()
        assert report.keys() == pooled.keys()
        for key in pooled:
            assert report[key] == pytest.approx(pooled[key], nan_ok=True)
        rows = m.per_study()
        assert [(r["tp"], r["fp"], r["fn"]) for r in rows] == [(c.tp, c.fp, c.fn) for c in expected]
        assert m.get_buffer().shape == (5, len(DETAIL_COLUMNS))
    metric.reset()
    with pytest.raises(ValueError, match="no study"):
        metric.aggregate()


def test_metric_two_channel_input_and_strict_layout():
    rng = np.random.default_rng(12)
    preds, refs = _batch(rng, 2)
    probs = torch.as_tensor(np.stack(preds)[:, None])
    two_channel = torch.cat([1 - probs, probs], dim=1)
    ref = torch.as_tensor(np.stack(refs)[:, None])
    one_hot_ref = torch.cat([1 - ref, ref], dim=1)
    a, b = ClusterMatchingMetric(strict=True), ClusterMatchingMetric(strict=True)
    a(probs, ref)
    b(two_channel, one_hot_ref)
    assert a.per_study() == b.per_study()
    # the metric's default slice axis is the last spatial one (MONAI's X, Y, Z)
    expected = [match_clusters(p >= 0.5, r, strict=True, slice_axis=2) for p, r in zip(preds, refs)]
    assert [(r["tp"], r["fp"], r["fn"]) for r in a.per_study()] == [(c.tp, c.fp, c.fn) for c in expected]
    with pytest.raises(ValueError, match="channel"):
        a(torch.zeros(1, 3, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))
