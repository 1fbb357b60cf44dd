"""FROC of per-PE detection (issue 3, item 4): sensitivity against mean false positives per study.

Candidates are the detections of the probability map binarised at ``threshold`` (``prob >= threshold``,
26-connected components, as in :mod:`custom.metrics.cluster_matching`). Each detection gets a confidence,
the maximum probability inside it by default (``reduction``). Sweeping a confidence cut ``t`` keeps the
detections with confidence ``>= t``; matching is the cluster rule, so at cut ``t``:

- a PE is found when a kept detection overlaps it, i.e. when the largest confidence among the detections
  overlapping it is ``>= t`` (its *score*; ``-inf`` when no detection overlaps it);
- the false positives are the kept detections that overlap no PE.

At the lowest cut every candidate is kept, so the curve ends exactly at the cluster-matching operating
point of ``threshold`` (same sensitivity, same FP per study). The curve is the one-point-per-distinct-
confidence staircase; :func:`average_sensitivity` interpolates it linearly at the FP rates (LUNA16 style
0.125 ... 8 FP/study) with :func:`monai.metrics.compute_froc_score`, anchored at ``(0, 0)`` (no detection kept)
and held flat beyond the last point (sensitivity cannot grow past keeping every candidate).

``monai.metrics.compute_froc_curve_data`` is not used for the curve: it starts its sweep at the second-lowest
confidence (``all_probs[1:]``), so it drops the operating point that keeps every detection (with a single
true detection its curve is all zeros), and it loops in Python over thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from monai.metrics import compute_froc_score
from scipy import ndimage

from custom.metrics.cluster_matching import ClusterOverlaps, cluster_overlaps

__all__ = [
    "FP_RATES",
    "DetectionScores",
    "FROCResult",
    "average_sensitivity",
    "detection_confidences",
    "froc_curve",
    "froc_from_scores",
    "score_detections",
    "sensitivity_at",
]

#: False-positive rates (per study) at which the average sensitivity is reported.
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

_REDUCTIONS = {"max": ndimage.maximum, "mean": ndimage.mean}


def _confidences(prob: np.ndarray, overlaps: ClusterOverlaps, reduction: str) -> np.ndarray:
    """Per detection (label order), the ``reduction`` of ``prob`` over its voxels."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {sorted(_REDUCTIONS)}, got {reduction!r}")
    if overlaps.n_pred == 0:
        return np.zeros(0, dtype=np.float64)
    values = prob[np.unravel_index(overlaps.pred_index, overlaps.shape)].astype(np.float64)
    reduced = _REDUCTIONS[reduction](values, labels=overlaps.pred_labels, index=np.arange(1, overlaps.n_pred + 1))
    return np.asarray(reduced, dtype=np.float64).reshape(overlaps.n_pred)


def detection_confidences(prob: np.ndarray, threshold: float = 0.5, reduction: str = "max") -> np.ndarray:
    """Confidence of every detection of ``prob >= threshold``.

    Args:
        prob: 3D probability map.
        threshold: binarisation threshold of the candidates.
        reduction: ``"max"`` (maximum probability inside the detection) or ``"mean"``.

    Returns:
        ``(n,)`` float64 confidences, entry ``i`` for label ``i + 1`` of
        ``custom.metrics.label_clusters(prob >= threshold)``.
    """
    prob = np.asarray(prob)
    no_reference = np.broadcast_to(np.zeros((), dtype=bool), prob.shape)  # no memory
    overlaps = cluster_overlaps(prob, no_reference, threshold)
    return _confidences(prob, overlaps, reduction)


@dataclass(frozen=True)
class DetectionScores:
    """What one study contributes to a FROC curve.

    Attributes:
        reference_scores: ``(n_ref,)`` per reference PE, the largest confidence among the detections that
            overlap it, ``-inf`` when none does.
        false_positive_scores: confidences of the detections that overlap no PE.
    """

    reference_scores: np.ndarray
    false_positive_scores: np.ndarray


def score_detections(
    prob: np.ndarray,
    ref_mask: np.ndarray,
    threshold: float = 0.5,
    reduction: str = "max",
    overlaps: ClusterOverlaps | None = None,
) -> DetectionScores:
    """Confidences of one study's PEs (found or missed) and of its false-positive detections.

    Args:
        prob: 3D probability map.
        ref_mask: reference mask of the same shape (nonzero = PE).
        threshold: binarisation threshold of the candidates.
        reduction: detection confidence, ``"max"`` or ``"mean"`` of the probabilities inside it.
        overlaps: ``cluster_overlaps(prob, ref_mask, threshold)`` when the caller already has it.

    Returns:
        The study's :class:`DetectionScores`.
    """
    prob = np.asarray(prob)
    if overlaps is None:
        overlaps = cluster_overlaps(prob, ref_mask, threshold)
    confidences = _confidences(prob, overlaps, reduction)
    reference_scores = np.full(overlaps.n_ref, -np.inf)
    detections, pes = overlaps.pairs[:, 0], overlaps.pairs[:, 1]
    np.maximum.at(reference_scores, pes - 1, confidences[detections - 1])
    is_false_positive = np.ones(overlaps.n_pred, dtype=bool)
    is_false_positive[detections - 1] = False
    return DetectionScores(reference_scores, confidences[is_false_positive])


@dataclass(frozen=True)
class FROCResult:
    """A FROC curve, one point per distinct confidence cut, cuts decreasing.

    Attributes:
        fp_per_study: mean false positives per study at each cut (non-decreasing).
        sensitivity: fraction of reference PEs found at each cut (non-decreasing; NaN when there is no PE).
        thresholds: the confidence cuts (decreasing); a detection is kept when its confidence is ``>=`` the cut.
        n_studies: number of studies.
        n_references: number of reference PEs over all studies.
    """

    fp_per_study: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    n_studies: int
    n_references: int


def froc_from_scores(scores: Sequence[DetectionScores]) -> FROCResult:
    """The FROC curve of a set of studies from their :class:`DetectionScores`.

    Args:
        scores: one entry per study (studies without PE or detection count in the FP-per-study denominator).

    Returns:
        The :class:`FROCResult`.
    """
    if len(scores) == 0:
        raise ValueError("a FROC curve needs at least one study")
    reference = np.sort(np.concatenate([s.reference_scores for s in scores]).astype(np.float64))
    false_pos = np.sort(np.concatenate([s.false_positive_scores for s in scores]).astype(np.float64))
    thresholds = np.unique(np.concatenate([reference[np.isfinite(reference)], false_pos]))[::-1]
    found = reference.size - np.searchsorted(reference, thresholds, side="left")
    kept_false = false_pos.size - np.searchsorted(false_pos, thresholds, side="left")
    sensitivity = found / reference.size if reference.size else np.full(thresholds.size, np.nan)
    return FROCResult(
        fp_per_study=kept_false / len(scores),
        sensitivity=sensitivity.astype(np.float64),
        thresholds=thresholds,
        n_studies=len(scores),
        n_references=int(reference.size),
    )


def froc_curve(
    studies: Iterable[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5, reduction: str = "max"
) -> FROCResult:
    """FROC curve of ``(prob, ref_mask)`` pairs; the iterable is consumed once, one study at a time.

    Args:
        studies: ``(probability map, reference mask)`` per study, same-shaped 3D arrays.
        threshold: binarisation threshold of the candidate detections.
        reduction: detection confidence, ``"max"`` or ``"mean"``.

    Returns:
        The :class:`FROCResult`.
    """
    return froc_from_scores([score_detections(prob, ref, threshold, reduction) for prob, ref in studies])


def _interpolation_points(result: FROCResult) -> tuple[np.ndarray, np.ndarray]:
    """Curve points in MONAI's order (FP decreasing), anchored at (0, 0), one point per distinct FP rate."""
    fps = np.concatenate([[0.0], result.fp_per_study])
    sens = np.concatenate([[0.0], result.sensitivity])
    distinct_fps, start = np.unique(fps, return_index=True)
    best = np.maximum.reduceat(sens, start)  # fps is sorted, so each FP value is one contiguous run
    return distinct_fps[::-1], best[::-1]


def sensitivity_at(result: FROCResult, fp_rates: Sequence[float] = FP_RATES) -> np.ndarray:
    """Sensitivity of the curve at each FP-per-study rate (linear interpolation, as :func:`average_sensitivity`).

    Returns:
        ``(len(fp_rates),)`` sensitivities; NaN when there is no reference PE.
    """
    if result.n_references == 0:
        return np.full(len(fp_rates), np.nan)
    fps, sens = _interpolation_points(result)
    return np.interp(np.asarray(fp_rates, dtype=np.float64), fps[::-1], sens[::-1])


def average_sensitivity(result: FROCResult, fp_rates: Sequence[float] = FP_RATES) -> float:
    """Mean sensitivity at the given FP-per-study rates (the FROC score; NaN when there is no reference PE).

    Args:
        result: the curve (:func:`froc_curve`).
        fp_rates: false positives per study; default 0.125, 0.25, 0.5, 1, 2, 4, 8.

    Returns:
        The average sensitivity, via ``monai.metrics.compute_froc_score``.
    """
    if result.n_references == 0:
        return float("nan")
    fps, sens = _interpolation_points(result)
    return float(compute_froc_score(fps, sens, tuple(float(r) for r in fp_rates)))
