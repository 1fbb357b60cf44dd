"""custom.metrics.slice_level: the slice AUC of the slice's level alone (the classifier's baseline in the report)
and a classifier's AUC within levels; and the pipeline's baseline record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom.handlers import roc_auc
from custom.metrics import level_bins, slice_level_auc, within_level_auc
from custom.pipeline.results import slice_level_baseline
from custom.pipeline.run import PipelineRun


def _study(n: int, positive: range) -> list[int]:
    labels = [0] * n
    for i in positive:
        labels[i] = 1
    return labels


def test_level_alone_ranks_slices_by_the_training_rate_at_their_relative_level():
    # training: positives in the middle fifth of every study, whatever its length
    training = [_study(50, range(20, 30)), _study(100, range(40, 60))]
    assert slice_level_auc(training, [_study(80, range(32, 48))], n_bins=5) == pytest.approx(1.0)
    # positives at the top of the test study: the level points the wrong way
    assert slice_level_auc(training, [_study(80, range(0, 16))], n_bins=5) < 0.5
    # a test split with one class only has no AUC
    assert slice_level_auc(training, [[0] * 10]) is None and slice_level_auc(training, []) is None


def test_level_alone_matches_a_hand_computed_auc():
    training = [[0, 0, 1, 1], [0, 1, 1, 0]]  # 2 bins: rates (1+1)/(4+2) = 1/3 for the first half, (3+1)/(4+2) = 2/3
    test = [[1, 0, 1, 1]]  # scores 1/3, 1/3, 2/3, 2/3; the one negative (slice 1) scores 1/3
    # positives 1/3 (tie: 0.5), 2/3 (win: 1), 2/3 (win: 1) against it
    assert slice_level_auc(training, test, n_bins=2) == pytest.approx((0.5 + 1 + 1) / 3)
    assert slice_level_auc([[0] * 4] * 2, test, n_bins=2) == pytest.approx(0.5)  # no positive anywhere: all ties
    assert slice_level_auc([], test) is None  # nothing to learn the level from
    with pytest.raises(ValueError, match="n_bins"):
        slice_level_auc(training, test, n_bins=0)


def test_baseline_reads_the_prepared_datalist(tmp_path):
    run = PipelineRun(tmp_path / "work", "tiny")
    rng = np.random.default_rng(0)
    entries = {split: [{"slice_labels": _study(int(rng.integers(30, 60)), range(10, 18))} for _ in range(3)]
               for split in ("training", "validation", "test")}
    run.prepared.mkdir(parents=True)
    (run.prepared / "datalist.json").write_text(json.dumps(entries))
    baseline = slice_level_baseline(run)
    expected = slice_level_auc([e["slice_labels"] for e in entries["training"]], [e["slice_labels"] for e in entries["test"]])
    assert baseline["slice_auc"] == pytest.approx(expected) and baseline["n_bins"] == 20 and 0.5 < expected <= 1.0


def test_level_bins_split_any_study_length_evenly():
    assert level_bins(4, 2).tolist() == [0, 0, 1, 1] and level_bins(5, 5).tolist() == [0, 1, 2, 3, 4]
    counts = np.bincount(level_bins(96, 20))
    assert counts.size == 20 and set(counts.tolist()) == {4, 5} and counts.sum() == 96 and level_bins(0).size == 0


def test_within_level_auc_is_half_for_a_classifier_that_reads_the_level_only():
    rng = np.random.default_rng(1)
    prior = np.exp(-(((np.arange(20) - 10) / 3.0) ** 2))[level_bins(60)]  # positive rate by level bin
    labels = [(rng.random(60) < prior).astype(int) for _ in range(20)]
    level_only = [prior for _ in labels]  # the level's prior, no pixels
    oracle = [lab + 0.01 * s for lab, s in zip(labels, level_only)]  # knows every slice
    assert roc_auc(np.concatenate(level_only), np.concatenate(labels)) > 0.8  # a good AUC from the level alone
    assert within_level_auc(level_only, labels) == pytest.approx(0.5)  # ... and nothing beyond it
    assert within_level_auc(oracle, labels) == pytest.approx(1.0)
    # within one bin the measure is the plain AUC
    scores = rng.random(40); truth = (rng.random(40) < 0.4).astype(int)
    assert within_level_auc([scores], [truth], n_bins=1) == pytest.approx(roc_auc(scores, truth))
    with pytest.raises(ValueError, match="same number"):
        within_level_auc([scores], [truth[:-1]])
    with pytest.raises(ValueError, match="finite"):
        within_level_auc([np.where(np.arange(40) == 3, np.nan, scores)], [truth])
    assert within_level_auc([scores], [np.zeros(40, dtype=int)]) is None
