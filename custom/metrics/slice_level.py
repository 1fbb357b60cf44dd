"""How much of a slice classifier's AUC the slice's level in its study explains.

Emboli are not spread evenly along the body axis: in real CTPA they sit at the levels of the central,
lobar and segmental arteries, and the synthetic cohort follows that. A slice classifier can therefore
reach a fair slice AUC by recognising *where* a slice lies (the anatomy of that level) without looking
at an embolus, and the iExplain teacher then has nothing to explain. Two numbers separate the two:

- :func:`slice_level_auc`: the AUC of a classifier that sees only the slice's relative level (the
  positive rate of the training slices at that level);
- :func:`within_level_auc`: a classifier's AUC counting only pairs of slices at the same level, i.e.
  what it knows beyond the level (0.5: nothing).

Levels are ``(index + 0.5) / n_slices`` in ``n_bins`` equal bins; slices must be in body-axis order
(prepared studies are sorted by ImagePositionPatient). The pairs of a level are pooled across studies,
so "beyond the level" also credits what tells whole studies apart (contrast, body size, a study with
emboli elsewhere), not only the embolus on the slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_LEVEL_BINS", "level_bins", "slice_level_auc", "within_level_auc"]

#: equal bins of relative level: each a 1/20 of the study's length
DEFAULT_LEVEL_BINS = 20


def level_bins(n_slices: int, n_bins: int = DEFAULT_LEVEL_BINS) -> np.ndarray:
    """The level bin (``0 .. n_bins - 1``) of each of ``n_slices`` slices in body-axis order."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return np.minimum(((np.arange(n_slices) + 0.5) / max(n_slices, 1) * n_bins).astype(int), n_bins - 1)


def _pooled(studies: Sequence[Sequence[float]], n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    studies = [np.asarray(values, dtype=float) for values in studies if len(values)]
    if not studies:
        return np.zeros(0, dtype=int), np.zeros(0)
    return np.concatenate([level_bins(len(values), n_bins) for values in studies]), np.concatenate(studies)


def _pair_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mann-Whitney: (positive-negative pairs ranked right, ties counted half; number of pairs)."""
    positive, negative = scores[labels > 0], scores[labels <= 0]
    if positive.size == 0 or negative.size == 0:
        return 0.0, 0.0
    order = np.sort(negative)
    below = np.searchsorted(order, positive, side="left")
    ties = np.searchsorted(order, positive, side="right") - below
    return float(below.sum() + 0.5 * ties.sum()), float(positive.size * negative.size)


def slice_level_auc(training: Sequence[Sequence[int]], test: Sequence[Sequence[int]], n_bins: int = DEFAULT_LEVEL_BINS) -> float | None:
    """Test slice AUC of a classifier that sees only where a slice lies in its study.

    Each test slice scores the positive rate of the training slices in its level bin (a +1/+2 Laplace
    prior): what the slice labels alone say about the level, no pixel looked at.

    Args:
        training: slice labels (0/1) per training study, in body-axis order.
        test: slice labels per test study, in body-axis order.
        n_bins: level bins.

    Returns:
        The AUC, or ``None`` when there are no training slices or the test slices are all of one class.
    """
    train_bins, train_labels = _pooled(training, n_bins)
    if train_labels.size == 0:
        return None
    test_bins, test_labels = _pooled(test, n_bins)
    positives = np.bincount(train_bins, weights=train_labels, minlength=n_bins)
    totals = np.bincount(train_bins, minlength=n_bins)
    right, pairs = _pair_counts(((positives + 1.0) / (totals + 2.0))[test_bins], test_labels)
    return right / pairs if pairs else None


def within_level_auc(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]], n_bins: int = DEFAULT_LEVEL_BINS) -> float | None:
    """A slice classifier's AUC over positive-negative pairs at the same level only.

    Pools the pairs of every level bin (across studies), so each bin weighs by its number of pairs.
    A classifier that only reads the level scores 0.5; one that finds the emboli keeps its AUC.

    Args:
        scores: the classifier's scores per study, in body-axis order.
        labels: slice labels (0/1) per study, the same shapes.
        n_bins: level bins.

    Returns:
        The AUC, or ``None`` when no bin holds both classes.

    Raises:
        ValueError: mismatched shapes, or a score that is not finite.
    """
    if len(scores) != len(labels) or any(len(s) != len(lab) for s, lab in zip(scores, labels)):
        raise ValueError("scores and labels need the same number of studies and of slices per study")
    bins, values = _pooled(scores, n_bins)
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite (a NaN or infinite score cannot be ranked)")
    _, truth = _pooled(labels, n_bins)
    right = pairs = 0.0
    for b in np.unique(bins):
        r, p = _pair_counts(values[bins == b], truth[bins == b])
        right, pairs = right + r, pairs + p
    return right / pairs if pairs else None
