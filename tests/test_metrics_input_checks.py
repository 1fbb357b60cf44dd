"""Input checks of the scoring: non-finite voxels in the files, threshold values, ``scripts/score.py`` exit status.

Also the teacher's reference-mask and image readers (``custom.teacher.studies``), which read the same kind of
files for its evaluation.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import fire
import numpy as np
import pytest
import torch

from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.metrics.cluster_matching import (
    ClusterMatchingMetric,
    check_iou_threshold,
    check_probability_threshold,
    real_number,
)
from custom.metrics.scoring import check_settings, score_directories
from custom.teacher.studies import read_reference_mask, read_windowed_image

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 32, 32)
AFFINE = np.diag([-0.7, -0.7, 2.0, 1.0])
UID = "1.2.3"


def _study(root: Path, ref: np.ndarray | None = None, prob: np.ndarray | None = None) -> tuple[Path, Path]:
    """One study: a PE on slices 2-3 found exactly at 0.9 (a true positive) unless ``ref`` / ``prob`` are given."""
    if ref is None:
        ref = np.zeros(SHAPE, np.float32)
        ref[2:4, 5:10, 5:10] = 1
    if prob is None:
        prob = np.zeros(SHAPE, np.float32)
        prob[2:4, 5:10, 5:10] = 0.9
    write_volume(root / "ref" / f"{UID}.nii.gz", ref, AFFINE)
    write_volume(root / "pred" / f"{UID}_prob.nii.gz", prob, AFFINE)
    return root / "pred", root / "ref"


# ----------------------------------------------------------------------------- non-finite voxels
def test_nan_in_the_reference_is_refused_not_counted_as_embolus(tmp_path):
    ref = np.zeros(SHAPE, np.float32)
    ref[2:4, 5:10, 5:10] = 1
    ref[6, 20:25, 20:25] = np.nan  # was a second, missed "PE": sensitivity 0.5 instead of 1
    pred_dir, ref_dir = _study(tmp_path, ref=ref)
    with pytest.raises(InputError) as error:
        score_directories(pred_dir, ref_dir)
    message = str(error.value)
    assert message.startswith(str(ref_dir / f"{UID}.nii.gz"))
    assert "reference mask contains NaN or infinite values (25 of 8192 voxels: 25 NaN, 0 infinite)" in message


@pytest.mark.parametrize("value, counts", [(np.inf, "1 of 8192 voxels: 0 NaN, 1 infinite"),
                                           (-np.inf, "1 of 8192 voxels: 0 NaN, 1 infinite"),
                                           (np.nan, "1 of 8192 voxels: 1 NaN, 0 infinite")])
def test_non_finite_prediction_voxels_are_refused(tmp_path, value, counts):
    prob = np.zeros(SHAPE, np.float32)
    prob[2:4, 5:10, 5:10] = 0.9
    prob[6, 20, 20] = value  # +inf was a detection (an FP)
    pred_dir, ref_dir = _study(tmp_path, prob=prob)
    with pytest.raises(InputError) as error:
        score_directories(pred_dir, ref_dir)
    assert str(error.value).startswith(str(pred_dir / f"{UID}_prob.nii.gz"))
    assert f"prediction contains NaN or infinite values ({counts})" in str(error.value)


def test_nan_in_the_contrast_filter_image_is_refused(tmp_path):
    pred_dir, ref_dir = _study(tmp_path)
    image = np.full(SHAPE, 300.0, np.float32)
    write_volume(tmp_path / "img" / f"{UID}.nii.gz", image, AFFINE)
    kept = score_directories(pred_dir, ref_dir, image_dir=tmp_path / "img", contrast_min_share=0.5)
    assert kept["cluster"]["tp"] == 1  # all contrast-filled: the detection stays
    image[:, 0:16] = np.nan  # around the detection: it was silently removed (a true positive lost)
    write_volume(tmp_path / "img" / f"{UID}.nii.gz", image, AFFINE)
    with pytest.raises(InputError) as error:
        score_directories(pred_dir, ref_dir, image_dir=tmp_path / "img", contrast_min_share=0.5)
    assert str(error.value).startswith(str(tmp_path / "img" / f"{UID}.nii.gz"))
    assert "(4096 of 8192 voxels: 4096 NaN, 0 infinite)" in str(error.value)


def _datalist(root: Path, label: np.ndarray, image: np.ndarray) -> dict:
    write_volume(root / "image.nii.gz", image, AFFINE)
    write_volume(root / "label.nii.gz", label, AFFINE)
    return {"image": str(root / "image.nii.gz"), "label": str(root / "label.nii.gz"), "study_uid": UID}


def test_teacher_reference_mask_with_nan_is_refused(tmp_path):
    label = np.zeros(SHAPE, np.float32)
    label[2, 5:10, 5:10] = 1
    entry = _datalist(tmp_path, label, np.zeros(SHAPE, np.float32))
    assert int(read_reference_mask(entry, SHAPE).sum()) == 25
    label[6, 20:24, 20:24] = np.nan  # was 16 more PE voxels
    entry = _datalist(tmp_path, label, np.zeros(SHAPE, np.float32))
    with pytest.raises(InputError) as error:
        read_reference_mask(entry, SHAPE)
    assert str(error.value).startswith(str(tmp_path / "label.nii.gz"))
    assert "reference mask contains NaN or infinite values (16 of 8192 voxels: 16 NaN, 0 infinite)" in str(error.value)


def test_teacher_image_reader_counts_non_finite_voxels(tmp_path):
    image = np.full(SHAPE, -1000.0, np.float32)
    image[3, 12:18, 12:18] = np.nan
    image[4, 0, 0] = np.inf
    entry = _datalist(tmp_path, np.zeros(SHAPE, np.uint8), image)
    with pytest.raises(InputError) as error:
        read_windowed_image(entry)
    assert str(error.value).startswith(str(tmp_path / "image.nii.gz"))
    assert "(37 of 8192 voxels: 36 NaN, 1 infinite)" in str(error.value)


# ----------------------------------------------------------------------------- threshold values
def test_real_number_converts_numeric_strings_and_refuses_the_rest():
    assert real_number("0.25", "x") == 0.25 and real_number(np.float32(0.5), "x") == 0.5 and real_number(1, "x") == 1.0
    for value, message in [("abc", "x must be a number, got 'abc'"), (True, "x must be a number, got True"),
                           (None, "x must be a number, got None"), ("nan", "x must be a finite number"),
                           (float("inf"), "x must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            real_number(value, "x")


def test_threshold_ranges():
    assert check_probability_threshold(1) == 1.0 and check_probability_threshold("1e-3") == 1e-3
    assert check_iou_threshold(0) == 0.0 and check_iou_threshold("0.5") == 0.5
    for value in (0, -1, 1.5):
        with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
            check_probability_threshold(value)
    for value in (1, -3, 1.5):
        with pytest.raises(ValueError, match=r"iou_threshold must lie in \[0, 1\)"):
            check_iou_threshold(value)


@pytest.mark.parametrize("setting, value, message", [
    ("threshold", -1, r"threshold must lie in \(0, 1\]"),
    ("threshold", 1.5, r"threshold must lie in \(0, 1\]"),
    ("threshold", "nan", "threshold must be a finite number"),
    ("threshold", "abc", "threshold must be a number, got 'abc'"),
    ("froc_threshold", -2, r"froc_threshold must lie in \(0, 1\]"),
    ("iou_threshold", -3, r"iou_threshold must lie in \[0, 1\)"),
    ("contrast_min_share", -0.5, r"contrast_min_share must lie in \[0, 1\]"),
    ("contrast_min_share", 1.5, r"contrast_min_share must lie in \[0, 1\]"),
    ("contrast_hu", "abc", "contrast_hu must be a number"),
])
def test_score_directories_refuses_bad_settings(tmp_path, setting, value, message):
    pred_dir, ref_dir = _study(tmp_path)
    with pytest.raises(ValueError, match=message):
        score_directories(pred_dir, ref_dir, **{setting: value})


def test_valid_settings_are_converted_and_edge_values_kept(tmp_path):
    pred_dir, ref_dir = _study(tmp_path)
    report = score_directories(pred_dir, ref_dir, threshold="0.4", froc_threshold="0.3", iou_threshold=0)
    assert report["settings"]["threshold"] == 0.4 and report["froc"]["detection_threshold"] == 0.3
    assert report["settings"]["iou_threshold"] == 0.0 and report["cluster"]["tp"] == 1
    assert score_directories(pred_dir, ref_dir, threshold=1)["cluster"]["tp"] == 0  # nothing reaches 1
    assert check_settings(contrast_min_share=1, image_dir="images")["contrast_min_share"] == 1.0
    with pytest.raises(ValueError, match="needs image_dir"):
        check_settings(contrast_min_share=0.5)


def test_cluster_matching_metric_checks_its_thresholds():
    for kwargs, message in [({"threshold": -1}, r"threshold must lie in \(0, 1\]"),
                            ({"threshold": "abc"}, "threshold must be a number"),
                            ({"iou_threshold": -3}, r"iou_threshold must lie in \[0, 1\)"),
                            ({"iou_threshold": 1.0}, r"iou_threshold must lie in \[0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            ClusterMatchingMetric(**kwargs)
    metric = ClusterMatchingMetric(threshold="0.3", iou_threshold=0)
    assert metric.threshold == 0.3 and metric.iou_threshold == 0.0
    pred, ref = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    pred[0, 0, 1, 1, 1], ref[0, 0, 1, 1, 1] = 0.4, 1
    metric(pred, ref)
    assert metric.aggregate()["tp"] == 1


# ----------------------------------------------------------------------------- scripts/score.py
def _run_score(args: list[str]) -> None:
    script = runpy.run_path(str(REPO / "scripts" / "score.py"))
    fire.Fire(script["main"], command=args)


@pytest.mark.parametrize("option, value, message", [
    ("--threshold", "-1", r"error: bad option: threshold must lie in (0, 1]"),
    ("--threshold", "1.5", r"error: bad option: threshold must lie in (0, 1]"),
    ("--threshold", "nan", "error: bad option: threshold must be a finite number, got 'nan'"),
    ("--threshold", "abc", "error: bad option: threshold must be a number, got 'abc'"),
    ("--iou_threshold", "-3", r"error: bad option: iou_threshold must lie in [0, 1)"),
    ("--froc_threshold", "-2", r"error: bad option: froc_threshold must lie in (0, 1]"),
    ("--contrast_min_share", "-0.5", r"error: bad option: contrast_min_share must lie in [0, 1]"),
])
def test_cli_exits_2_on_a_bad_option(tmp_path, capsys, option, value, message):
    pred_dir, ref_dir = _study(tmp_path)
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as stop:
        _run_score(["--pred_dir", str(pred_dir), "--reference_dir", str(ref_dir), "--out", str(out), option, value])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_cli_exits_2_with_the_message_on_bad_input(tmp_path, capsys):
    ref = np.zeros(SHAPE, np.float32)
    ref[6, 20:25, 20:25] = np.nan
    pred_dir, ref_dir = _study(tmp_path, ref=ref)
    out = tmp_path / "metrics.json"
    with pytest.raises(SystemExit) as stop:
        _run_score(["--pred_dir", str(pred_dir), "--reference_dir", str(ref_dir), "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ref_dir / (UID + '.nii.gz')}: the reference mask contains NaN")
    assert not out.exists()
    with pytest.raises(SystemExit) as stop:  # a missing folder, and a bad calibration file, the same way
        _run_score(["--pred_dir", str(tmp_path / "missing"), "--reference_dir", str(ref_dir), "--out", str(out)])
    assert stop.value.code == 2 and "missing: not a folder" in capsys.readouterr().err
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 1.5}))
    with pytest.raises(SystemExit) as stop:
        _run_score(["--pred_dir", str(pred_dir), "--reference_dir", str(ref_dir), "--out", str(out),
                    "--calibration", str(tmp_path / "threshold.json")])
    assert stop.value.code == 2 and "threshold.json: threshold 1.5 is not in (0, 1)" in capsys.readouterr().err
