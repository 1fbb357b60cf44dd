"""custom.student.calibration: the student's probability threshold chosen on the validation split."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.metrics.scoring import StudyFiles
from custom.student.calibration import (
    calibrate_student_threshold,
    calibrate_threshold,
    load_calibration,
    read_threshold,
)

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 24, 24)
AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def _study(root: Path, uid: str, prob: np.ndarray, ref: np.ndarray) -> StudyFiles:
    write_volume(root / "out" / f"{uid}_prob.nii.gz", prob.astype(np.float32), AFFINE)
    write_volume(root / "labels" / f"{uid}.nii.gz", ref.astype(np.uint8), AFFINE)
    return StudyFiles(uid, root / "out" / f"{uid}_prob.nii.gz", root / "labels" / f"{uid}.nii.gz")


def _two_emboli(root: Path, uid: str = "1.2.3") -> StudyFiles:
    """Embolus A found at 0.9, embolus B at 0.65; false detections at 0.55 and 0.75.

    F1 by threshold: 0.5 -> 2 TP, 2 FP (0.667); 0.6 -> 2 TP, 1 FP (0.8); 0.7 -> 1 TP, 1 FP (0.5);
    0.8 -> 1 TP, 0 FP (0.667); 0.95 -> nothing (0).
    """
    ref, prob = np.zeros(SHAPE), np.zeros(SHAPE)
    ref[1:3, 2:6, 2:6] = 1
    ref[5:7, 14:18, 14:18] = 1
    prob[1:3, 3:6, 3:6] = 0.9
    prob[5:7, 15:18, 15:18] = 0.65
    prob[2, 18:21, 2:5] = 0.55
    prob[6, 2:5, 18:21] = 0.75
    return _study(root, uid, prob, ref)


def test_best_pooled_f1_wins(tmp_path) -> None:
    result = calibrate_threshold([_two_emboli(tmp_path)], candidates=(0.5, 0.6, 0.7, 0.8, 0.95))
    assert result["threshold"] == 0.6 and result["calibrated"]
    assert result["validation_f1"] == pytest.approx(0.8)
    rows = {r["threshold"]: r for r in result["candidates"]}
    assert [rows[t]["tp"] for t in (0.5, 0.6, 0.7, 0.8, 0.95)] == [2, 2, 1, 1, 0]
    assert [rows[t]["fp"] for t in (0.5, 0.6, 0.7, 0.8, 0.95)] == [2, 1, 1, 0, 0]
    assert [rows[t]["detection_voxels"] for t in (0.5, 0.6, 0.7, 0.8, 0.95)] == [54, 45, 27, 18, 0]
    assert [rows[t]["largest_detection_voxels"] for t in (0.5, 0.6, 0.7, 0.8, 0.95)] == [18, 18, 18, 18, 0]
    assert result["n_studies"] == 1 and result["n_references"] == 2


def test_counts_are_pooled_over_studies(tmp_path) -> None:
    """A second study with one embolus found only above 0.85 and a false detection at 0.7 moves the optimum."""
    ref, prob = np.zeros(SHAPE), np.zeros(SHAPE)
    ref[3:5, 10:14, 10:14] = 1
    prob[3:5, 11:13, 11:13] = 0.97
    prob[0, 0:4, 0:4] = 0.7
    studies = [_two_emboli(tmp_path), _study(tmp_path, "4.5.6", prob, ref)]
    result = calibrate_threshold(studies, candidates=(0.5, 0.6, 0.7, 0.8))
    rows = {r["threshold"]: r for r in result["candidates"]}
    assert (rows[0.6]["tp"], rows[0.6]["fp"], rows[0.6]["fn"]) == (3, 2, 0)  # F1 0.75
    assert (rows[0.8]["tp"], rows[0.8]["fp"], rows[0.8]["fn"]) == (2, 0, 1)  # F1 0.8
    assert result["threshold"] == 0.8 and result["n_references"] == 3


def test_default_candidates_do_not_go_below_the_default_where_blobs_win(tmp_path) -> None:
    """At a low threshold a study-wide haze becomes one detection touching every embolus: the
    intersection rule scores it F1 1.0. The default candidates start at the default threshold."""
    ref, prob = np.zeros(SHAPE), np.full(SHAPE, 0.35)
    ref[1:3, 2:6, 2:6] = 1
    ref[5:7, 14:18, 14:18] = 1
    prob[1:3, 3:6, 3:6] = 0.9  # embolus A found
    prob[4, 20:23, 20:23] = 0.8  # one false detection
    study = _study(tmp_path, "5.5", prob, ref)
    blob = calibrate_threshold([study], candidates=(0.3, 0.5))
    assert blob["threshold"] == 0.3 and blob["validation_f1"] == 1.0
    assert blob["candidates"][0]["largest_detection_voxels"] == prob.size
    result = calibrate_threshold([study])
    assert result["threshold"] >= 0.5 and result["candidates"][0]["threshold"] == 0.5


def test_ties_go_to_the_default_then_to_the_lower(tmp_path) -> None:
    ref, prob = np.zeros(SHAPE), np.zeros(SHAPE)
    ref[2:4, 5:9, 5:9] = 1
    prob[2:4, 6:8, 6:8] = 0.99  # the same F1 (1.0) at every candidate
    study = _study(tmp_path, "7.8.9", prob, ref)
    assert calibrate_threshold([study], candidates=(0.3, 0.5, 0.7))["threshold"] == 0.5
    assert calibrate_threshold([study], candidates=(0.3, 0.4, 0.6, 0.7))["threshold"] == 0.4


def test_no_match_keeps_the_default(tmp_path) -> None:
    ref, prob = np.zeros(SHAPE), np.zeros(SHAPE)
    ref[2:4, 5:9, 5:9] = 1
    prob[6, 18:22, 18:22] = 0.9  # a false detection only
    result = calibrate_threshold([_study(tmp_path, "1.1", prob, ref)], candidates=(0.3, 0.5, 0.9), default=0.5)
    assert result["threshold"] == 0.5 and not result["calibrated"] and result["validation_f1"] == 0.0


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(InputError, match="no validation study"):
        calibrate_threshold([])
    study = _two_emboli(tmp_path)
    with pytest.raises(ValueError, match=r"thresholds must lie in \(0, 1\), got 1.0"):
        calibrate_threshold([study], candidates=(0.5, 1.0))
    with pytest.raises(ValueError, match="at least one candidate"):
        calibrate_threshold([study], candidates=())
    nan = np.zeros(SHAPE)
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="contains NaN"):
        calibrate_threshold([_study(tmp_path, "2.2", nan, np.zeros(SHAPE))])


def test_from_datalist_entries_writes_and_reads_back(tmp_path) -> None:
    study = _two_emboli(tmp_path, "1.2.3")
    entries = [
        {"image": str(tmp_path / "images" / "1.2.3.nii.gz"), "label": str(study.reference), "study_uid": "1.2.3"},
        {"image": str(tmp_path / "images" / "9.9.nii.gz"), "study_uid": "9.9"},  # no reference: skipped
    ]
    ckpt = tmp_path / "models"
    assert read_threshold(ckpt, default=0.5) == 0.5  # nothing calibrated yet
    result = calibrate_student_threshold(entries, tmp_path / "out", ckpt / "threshold.json", candidates=(0.5, 0.6, 0.7))
    written = json.loads((ckpt / "threshold.json").read_text())
    assert written["threshold"] == result["threshold"] == 0.6 and written["output_dir"] == str(tmp_path / "out")
    assert read_threshold(ckpt) == 0.6 and load_calibration(ckpt / "threshold.json")["n_studies"] == 1
    # an entry whose inference output is missing is named
    entries.append({"image": "x/3.3.nii.gz", "label": str(study.reference), "study_uid": "3.3"})
    with pytest.raises(InputError, match=r"3.3_prob.nii.gz: no probability map for validation study 3.3"):
        calibrate_student_threshold(entries, tmp_path / "out", ckpt / "threshold.json")
    assert read_threshold(ckpt) == 0.6  # the earlier calibration is intact


def test_a_calibration_of_other_weights_is_refused(tmp_path) -> None:
    """Retrained weights in the folder make the old calibration stale: reading it is an error, not a silent threshold."""
    study = _two_emboli(tmp_path)
    entries = [{"image": "x/1.2.3.nii.gz", "label": str(study.reference), "study_uid": "1.2.3"}]
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"weights of run 1")
    calibrate_student_threshold(entries, tmp_path / "out", ckpt / "threshold.json", candidates=(0.5, 0.6))
    assert len(json.loads((ckpt / "threshold.json").read_text())["weights_sha256"]) == 64
    assert read_threshold(ckpt) == 0.6
    (ckpt / "model.pt").write_bytes(b"weights of run 2")
    with pytest.raises(InputError, match="threshold.json: calibrated for other weights than .*model.pt"):
        read_threshold(ckpt)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a student threshold calibration"),
    ('{"f1": 0.3}', "not a student threshold calibration"),
    ('{"threshold": 0}', r"threshold 0.0 is not in \(0, 1\)"),
    ('{"threshold": 1.5}', r"threshold 1.5 is not in \(0, 1\)"),
    ('{"threshold": NaN}', r"threshold nan is not in \(0, 1\)"),
    ('{"threshold": "0.7"}', "threshold '0.7' is not a number"),
    ('{"threshold": "abc"}', "threshold 'abc' is not a number"),
    ('{"threshold": true}', "threshold True is not a number"),
    ('{"threshold": null}', "threshold None is not a number"),
])
def test_bad_calibration_files_are_named(tmp_path, content, message) -> None:
    (tmp_path / "threshold.json").write_text(content)
    with pytest.raises(InputError, match=f"threshold.json: {message}"):
        read_threshold(tmp_path)
    with pytest.raises(InputError, match="no student threshold calibration"):
        load_calibration(tmp_path / "missing.json")


def test_read_threshold_checks_its_default(tmp_path) -> None:
    """The uncalibrated default is a threshold too: a bad one is refused, not returned (e.g. -1 from a config)."""
    assert read_threshold(tmp_path, "0.4") == 0.4
    for default, message in [(-1, r"default threshold must lie in \(0, 1\), got -1"),
                             (7, r"default threshold must lie in \(0, 1\), got 7"),
                             (1.0, r"default threshold must lie in \(0, 1\), got 1"),
                             ("abc", "default threshold must be a number, got 'abc'"),
                             (float("nan"), "default threshold must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            read_threshold(tmp_path, default)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.8}))
    assert read_threshold(tmp_path) == 0.8
    with pytest.raises(ValueError, match="default threshold must lie"):  # checked whether or not the file exists
        read_threshold(tmp_path, -1)


def test_score_script_uses_the_calibration(tmp_path, monkeypatch) -> None:
    study = _two_emboli(tmp_path)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 0.8}))
    out = tmp_path / "metrics.json"
    monkeypatch.setattr(sys, "argv", ["score.py", "--pred_dir", str(study.prediction.parent), "--reference_dir",
                                      str(study.reference.parent), "--out", str(out), "--calibration", str(tmp_path / "threshold.json"),
                                      "--froc_threshold", "0.5"])
    runpy.run_path(str(REPO / "scripts" / "score.py"), run_name="__main__")
    report = json.loads(out.read_text())
    assert report["settings"]["threshold"] == 0.8
    assert (report["cluster"]["tp"], report["cluster"]["fp"]) == (1, 0)
    assert report["froc"]["detection_threshold"] == 0.5
