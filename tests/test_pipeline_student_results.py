"""The report's training minutes of the students come from the bundle's own record, which sums resumed attempts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custom.pipeline.run import PipelineRun
from custom.pipeline.student_stages import student_results

REPORT = {"cluster": {"sensitivity": 0.5, "ppv": 0.1, "f1": 0.2, "tp": 1, "fp": 9, "fn": 1, "fp_per_study": 4.5},
          "strict": {"sensitivity": 0.0, "ppv": 0.0, "f1": 0.0}, "settings": {"threshold": 0.5}, "per_study": {"a": {}, "b": {}}}


def _write(path: Path, content: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def test_training_minutes_sum_the_resumed_attempts_and_fall_back_to_the_stage_time(tmp_path):
    work = tmp_path / "work"
    run = PipelineRun(work, "tiny")
    # a student training interrupted after 20 minutes, then resumed for 5: the stage recorded its last attempt only
    _write(work / "stages.json", {f"{name}_train": {"status": "done", "seconds": 300.0} for name in ("student", "finetuned", "random_init")})
    for name in ("student", "finetuned", "random_init"):
        _write(work / "student" / "eval" / f"{name}_test_metrics.json", REPORT)
    _write(work / "student" / "logs" / "train_minutes.json", {"minutes": 25.0, "iterations": 1200, "seconds_per_iteration": 1.25})
    _write(work / "student" / "logs" / "finetuned" / "train_minutes.json", {"minutes": 3.5, "iterations": 240, "seconds_per_iteration": 0.9})
    (work / "student" / "logs" / "random_init").mkdir(parents=True)
    (work / "student" / "logs" / "random_init" / "train_minutes.json").write_text("{broken")  # unreadable: the stage's time
    rows = student_results(run)
    assert rows["student"]["train_minutes"] == pytest.approx(25.0)
    assert rows["finetuned"]["train_minutes"] == pytest.approx(3.5)
    assert rows["random_init"]["train_minutes"] == pytest.approx(5.0)
    assert rows["student"]["f1"] == 0.2 and rows["student"]["n_studies"] == 2
