"""The classifier's validation curve across a resumed training run (custom.handlers.SliceClassificationReport)."""

from __future__ import annotations

import json
import time

import torch
from ignite.engine import Engine

from custom.handlers import SliceClassificationReport

BATCH = [{"study_uid": "s0", "slice_index": i, "label": torch.tensor([float(i % 2)])} for i in range(4)]


def _evaluator(report: SliceClassificationReport) -> Engine:
    """Scores the slices; each epoch stands for the evaluation after that training epoch."""

    def evaluate(engine: Engine, batch: list) -> list:
        time.sleep(0.05)
        return [{"pred": torch.tensor([0.2 + 0.5 * (i % 2)])} for i in range(len(batch))]

    engine = Engine(evaluate)
    report.attach(engine)
    return engine


def test_a_resumed_run_continues_the_curve(tmp_path) -> None:
    path = tmp_path / "logs" / "validation_history.json"
    _evaluator(SliceClassificationReport(history_file=str(path))).run([BATCH], max_epochs=2)
    first = json.loads(path.read_text())
    # the run was interrupted during epoch 3 after the checkpoint of epoch 2, with a record of epoch 3 left over
    path.write_text(json.dumps(first + [{**first[-1], "epoch": 3, "minutes": 99.0}]))

    resumed = _evaluator(SliceClassificationReport(history_file=str(path), resume=True))
    resumed.load_state_dict({"iteration": 2, "epoch_length": 1, "max_epochs": 2})
    resumed.run([BATCH], max_epochs=4)
    history = json.loads(path.read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[:2] == first
    minutes = [r["minutes"] for r in history]
    assert minutes == sorted(minutes) and minutes[2] < 99.0  # goes on from epoch 2's minutes


def test_a_new_run_replaces_the_curve(tmp_path) -> None:
    path = tmp_path / "validation_history.json"
    path.write_text(json.dumps([{"epoch": 1, "minutes": 5.0, "slice_auc": 0.5}]))
    _evaluator(SliceClassificationReport(history_file=str(path))).run([BATCH], max_epochs=1)
    history = json.loads(path.read_text())
    assert len(history) == 1 and history[0]["minutes"] < 5.0


def test_the_report_separates_what_the_classifier_knows_beyond_the_level() -> None:
    """Two studies of 10 slices: study a has an embolus on slices 4-5, study b none. A classifier that scores
    the level only (high at slices 4-5 of any study) has a fair slice AUC and a within-level AUC of 0.5; one
    that sees the embolus scores 1.0 on both."""
    labels = {"a": [1 if 4 <= i <= 5 else 0 for i in range(10)], "b": [0] * 10}
    level_only = [0.9 if 4 <= i <= 5 else 0.1 for i in range(10)]
    batches = [[{"study_uid": s, "slice_index": i, "label": torch.tensor([float(labels[s][i])])} for i in range(10)] for s in labels]

    def metrics(scores: dict) -> dict:
        report = SliceClassificationReport()
        engine = Engine(lambda e, batch: [{"pred": torch.tensor([scores[b["study_uid"]][b["slice_index"]]])} for b in batch])
        report.attach(engine)
        engine.run(batches, max_epochs=1)
        return engine.state.metrics

    reads_the_level = metrics({"a": level_only, "b": level_only})
    assert reads_the_level["slice_auc"] > 0.9 and reads_the_level["within_level_auc"] == 0.5
    sees_the_embolus = metrics({"a": [0.2 + 0.7 * y for y in labels["a"]], "b": [0.1] * 10})
    assert sees_the_embolus["slice_auc"] == 1.0 and sees_the_embolus["within_level_auc"] == 1.0
    diverged = metrics({"a": [float("nan")] * 10, "b": level_only})  # a NaN network: NaN, not a crash
    assert diverged["within_level_auc"] != diverged["within_level_auc"]
