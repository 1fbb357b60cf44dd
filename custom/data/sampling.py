"""Balanced slice sampling for the 2.5D classifier.

About 5% of CTPA slices show an embolus, so slices are drawn with weights that give positives
and negatives equal total probability. Optionally negatives are also matched to the positives'
anatomical level: a negative's weight follows the density of positive slices at its relative
level in the study. Without it a classifier can separate the classes by *where* a slice is (most
emboli sit near the central arteries) instead of *what* it shows, and its explanations then point
at anatomy rather than at the embolus, which the iExplain teacher cannot use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import DistributedWeightedRandomSampler
from torch.utils.data import Dataset, Sampler, WeightedRandomSampler

from custom.io.errors import InputError

__all__ = ["balanced_slice_weights", "balanced_slice_sampler"]


def balanced_slice_weights(
    labels: Sequence[int] | np.ndarray,
    levels: Sequence[float] | np.ndarray | None = None,
    level_bins: int = 10,
    level_floor: float = 0.05,
    level_mix: float = 0.5,
) -> np.ndarray:
    """Per-slice sampling weights: positives and negatives get equal total weight.

    Args:
        labels: slice labels (0/1).
        levels: relative level of each slice in its study in ``[0, 1]``; when given, negatives are
            weighted by the positives' level histogram (``level_bins`` bins).
        level_bins: bins of the level histogram.
        level_floor: each bin's share is at least this fraction of the largest, so levels without
            positives are still sampled now and then.
        level_mix: share of the negative mass that follows the positives' levels; the rest is
            spread uniformly over all negatives, so the classifier still sees every level (a
            classifier never shown the top and bottom of the chest scores them arbitrarily).

    Returns:
        float64 weights summing to 1.

    Raises:
        ValueError: ``labels`` is empty, not 1D, or holds a value other than 0 and 1 (an unlabelled
            slice's -1 is not a negative).
    """
    values = np.asarray(labels)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("labels must be a non-empty 1D sequence")
    if values.dtype != bool:
        if not np.issubdtype(values.dtype, np.number) or not np.isin(values, (0, 1)).all():
            bad = values[~np.isin(values, (0, 1))] if np.issubdtype(values.dtype, np.number) else values
            raise ValueError(f"slice labels must be 0 or 1, got {', '.join(sorted({repr(v) for v in bad.tolist()})[:5])}")
    labels = values.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    weights = np.zeros(labels.size, dtype=np.float64)
    if n_pos == 0 or n_neg == 0:
        weights[:] = 1.0 / labels.size
        return weights
    weights[labels] = 0.5 / n_pos
    negative_weight = np.ones(n_neg, dtype=np.float64)
    if levels is not None:
        levels = np.clip(np.asarray(levels, dtype=np.float64), 0.0, 1.0)
        bins = np.minimum((levels * level_bins).astype(np.int64), level_bins - 1)
        pos_hist = np.bincount(bins[labels], minlength=level_bins).astype(np.float64)
        pos_hist = np.maximum(pos_hist / pos_hist.max(), level_floor)
        neg_count = np.bincount(bins[~labels], minlength=level_bins).astype(np.float64)
        matched = (pos_hist / np.maximum(neg_count, 1.0))[bins[~labels]]
        negative_weight = level_mix * matched / matched.sum() + (1.0 - level_mix) / n_neg
    weights[~labels] = 0.5 * negative_weight / negative_weight.sum()
    return weights


def balanced_slice_sampler(
    dataset: Dataset,
    num_samples: int,
    match_levels: bool = False,
    distributed: bool = False,
    seed: int = 0,
) -> Sampler:
    """A weighted sampler over a :class:`~custom.data.minivolume.MiniVolumeDataset`.

    Args:
        dataset: has ``labels`` (and ``levels`` when ``match_levels``).
        num_samples: slices drawn per epoch (per rank when distributed).
        match_levels: weight negatives by the positives' level histogram.
        distributed: shard across ranks with MONAI's ``DistributedWeightedRandomSampler``.
        seed: sampling seed.

    Raises:
        InputError: a slice of the dataset has no 0/1 label (an unlabelled study's -1), naming the studies.
    """
    labels = np.asarray(dataset.labels)
    unlabelled = ~np.isin(labels, (0, 1))
    if unlabelled.any():
        index, uids = getattr(dataset, "index", None), getattr(dataset, "study_uids", None)
        studies = sorted({uids[int(s)] for s in np.asarray(index)[unlabelled, 0]}) if index is not None and uids else []
        raise InputError(
            f"training data: {int(unlabelled.sum())} slices without a 0/1 label (values {sorted(set(labels[unlabelled].tolist()))[:5]})"
            + (f" in studies {studies[:5]}{' ...' if len(studies) > 5 else ''}" if studies else "")
            + ": every training study needs slice_labels"
        )
    weights = balanced_slice_weights(labels, dataset.levels if match_levels else None)
    if distributed:
        return DistributedWeightedRandomSampler(
            dataset, weights=weights.tolist(), num_samples_per_rank=num_samples, shuffle=True, seed=seed
        )
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights), num_samples=num_samples, replacement=True, generator=generator)
