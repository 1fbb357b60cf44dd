"""Training wall-time record (custom.student.train_time)."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from custom.student.train_time import TrainingTimeWriter


def test_minutes_accumulate_over_a_resumed_run(tmp_path) -> None:
    path = tmp_path / "logs" / "train_minutes.json"
    engine = Engine(lambda e, b: time.sleep(0.01))
    TrainingTimeWriter(path).attach(engine)
    engine.run(range(3), max_epochs=2)
    first = json.loads(path.read_text())
    assert first["iterations"] == 6
    assert 0.06 / 60 <= first["minutes"] < 1.0
    assert first["seconds_per_iteration"] >= 0.01

    resumed = Engine(lambda e, b: time.sleep(0.01))
    TrainingTimeWriter(path).attach(resumed)
    resumed.load_state_dict({"iteration": 6, "max_epochs": 2, "epoch_length": 3})
    resumed.run(range(3), max_epochs=3)
    second = json.loads(path.read_text())
    assert second["iterations"] == 9
    assert second["minutes"] > first["minutes"]

    fresh = Engine(lambda e, b: None)
    TrainingTimeWriter(path).attach(fresh)
    fresh.run(range(2), max_epochs=1)  # a new run from iteration 0 starts the count again
    assert json.loads(path.read_text())["minutes"] < first["minutes"]


def test_interval_writes_before_the_epoch_ends(tmp_path) -> None:
    path = tmp_path / "t.json"
    seen = []
    engine = Engine(lambda e, b: seen.append(json.loads(path.read_text())["iterations"] if path.is_file() else None))
    TrainingTimeWriter(path, interval=2).attach(engine)
    engine.run(range(5), max_epochs=1)
    assert seen == [None, None, 2, 2, 4]
    assert json.loads(path.read_text())["iterations"] == 5


def test_a_checkpoint_loaded_after_the_writer_attached_is_seen(tmp_path) -> None:
    """As in train.json: the writer is a train handler, the CheckpointLoader (a STARTED handler) is attached later."""
    path = tmp_path / "train_minutes.json"
    engine = Engine(lambda e, b: time.sleep(0.02))
    TrainingTimeWriter(path).attach(engine)
    engine.run(range(2), max_epochs=2)
    first = json.loads(path.read_text())

    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"trainer": engine.state_dict()}, checkpoint)
    resumed = Engine(lambda e, b: time.sleep(0.02))
    TrainingTimeWriter(path).attach(resumed)
    CheckpointLoader(str(checkpoint), {"trainer": resumed}).attach(resumed)
    start = time.perf_counter()
    resumed.run(range(2), max_epochs=4)
    seconds = time.perf_counter() - start
    second = json.loads(path.read_text())
    assert second["iterations"] == 8
    assert second["minutes"] >= first["minutes"] + 4 * 0.02 / 60  # the minutes before the interruption are kept
    assert second["seconds_per_iteration"] >= seconds / 4 * 0.9  # over the 4 iterations of this run, not all 8

    torch.save({"trainer": resumed.state_dict()}, checkpoint)
    rerun = Engine(lambda e, b: None)  # a finished run rerun: nothing to train, the record stays
    TrainingTimeWriter(path).attach(rerun)
    CheckpointLoader(str(checkpoint), {"trainer": rerun}).attach(rerun)
    rerun.run(range(2), max_epochs=4)
    assert json.loads(path.read_text()) == second


@pytest.mark.parametrize("record", ['{"minutes": null}', "{not json", '{"minutes": -3}', "[]"])
def test_a_bad_record_does_not_stop_the_resumed_training(tmp_path, caplog, record) -> None:
    path = tmp_path / "train_minutes.json"
    path.write_text(record)
    resumed = Engine(lambda e, b: None)
    TrainingTimeWriter(path).attach(resumed)
    resumed.load_state_dict({"iteration": 6, "max_epochs": 2, "epoch_length": 3})
    with caplog.at_level(logging.WARNING, logger="custom.student.train_time"):
        resumed.run(range(3), max_epochs=3)
    written = json.loads(path.read_text())
    assert written["iterations"] == 9 and 0.0 <= written["minutes"] < 1.0  # counted from 0
    assert "unreadable training time" in caplog.text and str(path) in caplog.text
