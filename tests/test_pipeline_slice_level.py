"""The classifier's baseline: the slice AUC of the slice's level alone, learned from the training slice labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom.pipeline.results import slice_level_auc, slice_level_baseline
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
    test = [[1, 0, 0, 1]]  # scores 1/3, 1/3, 2/3, 2/3: the pair (1st, 3rd) wrong, (1st, 2nd) and (4th, 3rd) ties
    # positives {0: 1/3, 3: 2/3}, negatives {1: 1/3, 2: 2/3}: pairs 1/3v1/3 tie, 1/3v2/3 lose, 2/3v1/3 win, 2/3v2/3 tie
    assert slice_level_auc(training, test, n_bins=2) == pytest.approx((0.5 + 0 + 1 + 0.5) / 4)
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
