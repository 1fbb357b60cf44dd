"""Tests of custom.metrics.froc: confidences, the curve on hand-built studies, monotonicity, average sensitivity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from custom.metrics import (
    FP_RATES,
    ClusterCounts,
    average_sensitivity,
    detection_confidences,
    froc_curve,
    froc_from_scores,
    match_clusters,
    score_detections,
    sensitivity_at,
)

SHAPE = (6, 20, 20)


def _study() -> tuple[np.ndarray, np.ndarray]:
    """Two PEs; detections: 0.9 on PE 1, 0.6 on PE 1 too, 0.7 false positive, 0.3 false positive; PE 2 missed."""
    prob, ref = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.uint8)
    ref[1:3, 2:10, 2:10] = 1
    ref[4, 12:16, 12:16] = 1
    prob[1, 3:5, 3:5] = 0.9
    prob[1, 3, 3] = 0.95  # confidence is the maximum inside the detection
    prob[2, 8, 8] = 0.6  # a second detection on PE 1
    prob[0, 15:17, 2:4] = 0.7
    prob[5, 0, 19] = 0.3
    return prob, ref


def test_detection_confidences_max_and_mean():
    prob = np.zeros(SHAPE, np.float32)
    prob[1, 1:3, 1:3] = [[0.2, 0.4], [0.6, 0.8]]
    prob[4, 10, 10:12] = [0.9, 0.7]
    np.testing.assert_allclose(detection_confidences(prob, threshold=0.1), [0.8, 0.9], rtol=1e-6)
    np.testing.assert_allclose(detection_confidences(prob, threshold=0.1, reduction="mean"), [0.5, 0.8], rtol=1e-6)
    np.testing.assert_allclose(detection_confidences(prob, threshold=0.5), [0.8, 0.9], rtol=1e-6)  # 0.6, 0.8 left
    np.testing.assert_allclose(detection_confidences(prob, threshold=0.5, reduction="mean"), [0.7, 0.8], rtol=1e-6)
    assert detection_confidences(np.zeros(SHAPE), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="reduction"):
        detection_confidences(prob, 0.5, reduction="median")


def test_score_detections_on_hand_built_study():
    prob, ref = _study()
    scores = score_detections(prob, ref, threshold=0.25)
    # PE 1: best of 0.95 and 0.6; PE 2: missed
    np.testing.assert_allclose(scores.reference_scores, [0.95, -np.inf], rtol=1e-6)
    np.testing.assert_allclose(np.sort(scores.false_positive_scores), [0.3, 0.7], rtol=1e-6)


def test_froc_curve_on_hand_built_studies():
    prob, ref = _study()
    empty_ref = np.zeros(SHAPE, np.uint8)
    fp_only = np.zeros(SHAPE, np.float32)
    fp_only[3, 10, 10] = 0.8
    result = froc_curve([(prob, ref), (fp_only, empty_ref)], threshold=0.25)
    assert (result.n_studies, result.n_references) == (2, 2)
    np.testing.assert_allclose(result.thresholds, [0.95, 0.8, 0.7, 0.3], rtol=1e-6)
    np.testing.assert_allclose(result.sensitivity, [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(result.fp_per_study, [0.0, 0.5, 1.0, 1.5])
    # (0, 0.5) is reached at FP 0, so every rate sees sensitivity 0.5
    np.testing.assert_allclose(sensitivity_at(result), [0.5] * len(FP_RATES))
    assert average_sensitivity(result) == pytest.approx(0.5)


def test_average_sensitivity_interpolates_linearly_from_the_origin():
    prob, ref = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.uint8)
    ref[1, 1:3, 1:3] = 1
    ref[4, 10:12, 10:12] = 1
    prob[0, 15, 15] = 0.9  # FP first
    prob[1, 1, 1] = 0.8  # then PE 1
    prob[4, 10, 10] = 0.5  # then PE 2
    result = froc_curve([(prob, ref)], threshold=0.4)
    np.testing.assert_allclose(result.fp_per_study, [1, 1, 1])
    np.testing.assert_allclose(result.sensitivity, [0.0, 0.5, 1.0])
    # points (0, 0) anchor, (1, 1.0) best at FP 1; rates below 1 interpolate, above stay at 1
    expected = np.array([0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(sensitivity_at(result), expected)
    assert average_sensitivity(result) == pytest.approx(expected.mean())
    assert average_sensitivity(result, fp_rates=(0.5,)) == pytest.approx(0.5)


def _random_study(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ref = ndimage.binary_dilation(rng.random(SHAPE) < 0.004, iterations=1).astype(np.uint8)
    blobs = ndimage.binary_dilation(rng.random(SHAPE) < 0.006, iterations=1)
    prob = np.where(blobs, rng.random(SHAPE), 0.0).astype(np.float32)
    return prob, ref


def test_froc_is_monotonic_and_ends_at_the_cluster_operating_point():
    rng = np.random.default_rng(3)
    studies = [_random_study(rng) for _ in range(8)]
    result = froc_curve(studies, threshold=0.2)
    assert result.thresholds.size > 10
    assert np.all(np.diff(result.thresholds) < 0)
    assert np.all(np.diff(result.fp_per_study) >= 0)
    assert np.all(np.diff(result.sensitivity) >= 0)
    pooled = sum((match_clusters(p >= 0.2, r) for p, r in studies), ClusterCounts())
    assert result.sensitivity[-1] == pytest.approx(pooled.sensitivity)
    assert result.fp_per_study[-1] == pytest.approx(pooled.fp / len(studies))
    at = sensitivity_at(result)
    assert np.all(np.diff(at) >= 0) and 0 <= average_sensitivity(result) <= 1
    assert average_sensitivity(result) == pytest.approx(at.mean())
    # a higher candidate threshold can only lower the curve's end point
    assert froc_curve(studies, threshold=0.6).sensitivity[-1] <= result.sensitivity[-1]


def test_froc_without_reference_or_detection():
    no_pe = froc_curve([(np.full(SHAPE, 0.9, np.float32), np.zeros(SHAPE, np.uint8))])
    assert no_pe.n_references == 0 and np.isnan(no_pe.sensitivity).all()
    assert math.isnan(average_sensitivity(no_pe)) and np.isnan(sensitivity_at(no_pe)).all()
    ref = np.zeros(SHAPE, np.uint8)
    ref[2, 2, 2] = 1
    nothing = froc_curve([(np.zeros(SHAPE, np.float32), ref)])
    assert nothing.thresholds.size == 0
    assert average_sensitivity(nothing) == 0.0
    with pytest.raises(ValueError, match="at least one study"):
        froc_from_scores([])
