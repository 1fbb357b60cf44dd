"""Training wall-time record (custom.student.train_time)."""

from __future__ import annotations

import json
import time

from ignite.engine import Engine

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
