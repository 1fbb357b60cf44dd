"""Tests of scripts/score.py and custom.metrics.scoring on a temporary folder of NIfTI files."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import fire
import numpy as np
import pytest

from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.metrics import ClusterCounts, match_clusters
from custom.metrics.scoring import format_table, pair_studies, score_directories, score_study, write_report

REPO = Path(__file__).resolve().parents[1]
SHAPE = (6, 20, 24)
AFFINE = np.diag([-0.7, -0.7, 2.0, 1.0])
UIDS = ("1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102", "1.2.826.0.1.3680043.8.498.103")


def _reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:3, 2:8, 2:8] = 1
    ref[4, 12:18, 14:20] = 1
    return ref


def _write_cohort(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Three studies: a probability map, a plain mask, a `_mask` file (plus an unreferenced prediction)."""
    pred_dir, ref_dir = root / "pred", root / "labels"
    probs = {}
    for i, uid in enumerate(UIDS):
        ref = _reference()
        write_volume(ref_dir / f"{uid}.nii.gz", ref, AFFINE)
        prob = np.zeros(SHAPE, np.float32)
        prob[1:3, 2:8, 2:8] = 0.9  # PE 1 found, exactly (strict TP)
        prob[5, 0, 0] = 0.6 + 0.1 * i  # one FP
        if i == 0:
            prob[4, 15, 15] = 0.4  # PE 2 only below the default threshold
        probs[uid] = prob
    write_volume(pred_dir / f"{UIDS[0]}_prob.nii.gz", probs[UIDS[0]], AFFINE)
    write_volume(pred_dir / f"{UIDS[0]}_mask.nii.gz", (probs[UIDS[0]] >= 0.5).astype(np.uint8), AFFINE)
    write_volume(pred_dir / f"{UIDS[1]}.nii.gz", (probs[UIDS[1]] >= 0.5).astype(np.uint8), AFFINE)
    write_volume(pred_dir / f"{UIDS[2]}_mask.nii.gz", (probs[UIDS[2]] >= 0.5).astype(np.uint8), AFFINE)
    write_volume(pred_dir / "1.2.3.999_prob.nii.gz", np.zeros(SHAPE, np.float32), AFFINE)  # no reference
    (pred_dir / f"{UIDS[0]}_clusters.json").write_text("{}")  # ignored
    return pred_dir, ref_dir, probs


def test_pairing_by_uid_and_kind(tmp_path):
    pred_dir, ref_dir, _ = _write_cohort(tmp_path)
    pairs, unreferenced = pair_studies(pred_dir, ref_dir)
    assert [p.uid for p in pairs] == list(UIDS)
    names = [f"{UIDS[0]}_prob.nii.gz", f"{UIDS[1]}.nii.gz", f"{UIDS[2]}_mask.nii.gz"]
    assert [p.prediction.name for p in pairs] == names
    assert unreferenced == ["1.2.3.999"]
    masks, _ = pair_studies(pred_dir, ref_dir, kind="mask")
    assert [p.uid for p in masks] == [UIDS[0], UIDS[2]]
    with pytest.raises(ValueError, match="kind"):
        pair_studies(pred_dir, ref_dir, kind="heatmap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no prob prediction has a reference"):
        pair_studies(pred_dir, tmp_path / "empty", kind="prob")
    with pytest.raises(InputError, match="not a folder"):
        pair_studies(tmp_path / "missing", ref_dir)


def test_score_directories_report(tmp_path):
    pred_dir, ref_dir, probs = _write_cohort(tmp_path)
    report = score_directories(pred_dir, ref_dir, threshold=0.5)
    assert set(report) == {"cluster", "strict", "froc", "per_study", "settings"}
    keys = {"tp", "fp", "fn", "sensitivity", "ppv", "f1", "fp_per_study"}
    assert set(report["cluster"]) == set(report["strict"]) == keys
    assert report["cluster"] == ClusterCounts(tp=3, fp=3, fn=3).as_dict(n_studies=3)
    assert report["strict"] == ClusterCounts(tp=3, fp=3, fn=3).as_dict(n_studies=3)
    assert report["per_study"][UIDS[1]]["cluster"] == match_clusters(probs[UIDS[1]] >= 0.5, _reference()).as_dict()
    assert report["per_study"][UIDS[0]]["prediction"] == f"{UIDS[0]}_prob.nii.gz"
    froc = report["froc"]
    assert froc["n_studies"] == 3 and froc["n_references"] == 6
    assert froc["curve"]["sensitivity"][-1] == pytest.approx(0.5)  # ends at the cluster operating point
    assert froc["curve"]["fp_per_study"][-1] == pytest.approx(1.0)
    assert len(froc["sensitivity_at_fp_rates"]) == len(froc["fp_rates"]) == 7
    assert report["settings"]["predictions_without_reference"] == ["1.2.3.999"]
    # a lower threshold finds PE 2 of the probability-map study
    low = score_directories(pred_dir, ref_dir, threshold=0.3)
    assert low["per_study"][UIDS[0]]["cluster"]["tp"] == 2
    longer = score_directories(pred_dir, ref_dir, threshold=0.5, froc_threshold=0.3)
    assert longer["cluster"] == report["cluster"] and longer["froc"]["curve"]["sensitivity"][-1] == pytest.approx(4 / 6)


def test_partial_detection_separates_strict_from_cluster_counts_and_iou_threshold_is_used(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "labels"
    write_volume(ref_dir / "1.2.3.nii.gz", _reference(), AFFINE)
    prob = np.zeros(SHAPE, np.float32)
    prob[1:3, 2:8, 2:8] = 0.9  # PE 1 exactly: IoU 1
    prob[4, 12:15, 14:20] = 0.9  # half of PE 2 (18 of 36 voxels): IoU 0.5, not above the default 0.5
    prob[5, 0, 0] = 0.7  # one FP
    write_volume(pred_dir / "1.2.3_prob.nii.gz", prob, AFFINE)
    report = score_directories(pred_dir, ref_dir, threshold=0.5)
    assert report["cluster"] == ClusterCounts(tp=2, fp=1, fn=0).as_dict(n_studies=1)
    assert report["strict"] == ClusterCounts(tp=1, fp=2, fn=1).as_dict(n_studies=1)
    assert report["per_study"]["1.2.3"]["strict"] == ClusterCounts(tp=1, fp=2, fn=1).as_dict()
    assert report["settings"]["iou_threshold"] == 0.5
    lower = score_directories(pred_dir, ref_dir, threshold=0.5, iou_threshold=0.4)
    assert lower["strict"] == ClusterCounts(tp=2, fp=1, fn=0).as_dict(n_studies=1)
    assert lower["cluster"] == report["cluster"]
    assert lower["settings"]["iou_threshold"] == 0.4
    assert score_study(prob, _reference(), iou_threshold=0.4).strict == ClusterCounts(tp=2, fp=1, fn=0)
    assert score_study(prob, _reference()).strict == ClusterCounts(tp=1, fp=2, fn=1)


def test_score_study_matches_the_separate_functions():
    prob = np.zeros(SHAPE, np.float32)
    prob[1, 2:5, 2:5] = 0.8
    prob[4, 0, 0] = 0.7
    ref = _reference()
    score = score_study(prob, ref)
    assert score.cluster == match_clusters(prob >= 0.5, ref)
    assert score.strict == match_clusters(prob >= 0.5, ref, strict=True)
    np.testing.assert_allclose(score.froc.false_positive_scores, [0.7], rtol=1e-6)


def test_cli_writes_json_with_null_for_undefined_and_prints_a_table(tmp_path, capsys):
    pred_dir, ref_dir, ref = tmp_path / "p", tmp_path / "r", np.zeros(SHAPE, np.uint8)
    write_volume(ref_dir / "1.2.3.nii.gz", ref, AFFINE)  # no PE at all
    write_volume(pred_dir / "1.2.3_prob.nii.gz", np.zeros(SHAPE, np.float32), AFFINE)
    out = tmp_path / "out" / "metrics.json"
    # the CLI through fire, in this process (a fresh interpreter would spend its time importing torch)
    script = runpy.run_path(str(REPO / "scripts" / "score.py"))
    command = ["--pred_dir", str(pred_dir), "--reference_dir", str(ref_dir), "--out", str(out), "--threshold", "0.4"]
    fire.Fire(script["main"], command=command)
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())  # strict JSON: no NaN tokens
    assert report["cluster"]["sensitivity"] is None and report["cluster"]["f1"] is None
    assert report["cluster"]["fp_per_study"] == 0.0
    assert report["froc"]["average_sensitivity"] is None
    assert report["settings"]["threshold"] == 0.4
    assert "1.2.3" in stdout and "pooled (1 studies)" in stdout
    assert "FROC average sensitivity" in stdout and f"wrote {out}" in stdout


def test_grid_mismatch_names_both_files(tmp_path):
    pred_dir, ref_dir = tmp_path / "p", tmp_path / "r"
    write_volume(ref_dir / "1.2.3.nii.gz", _reference(), AFFINE)
    write_volume(pred_dir / "1.2.3_prob.nii.gz", np.zeros((6, 20, 23), np.float32), AFFINE)
    with pytest.raises(InputError) as shape_error:
        score_directories(pred_dir, ref_dir)
    assert "1.2.3_prob.nii.gz" in str(shape_error.value) and str(ref_dir / "1.2.3.nii.gz") in str(shape_error.value)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0  # same shape, origin moved 5 mm
    write_volume(pred_dir / "1.2.3_prob.nii.gz", np.zeros(SHAPE, np.float32), shifted)
    with pytest.raises(InputError, match="grid differs from its reference"):
        score_directories(pred_dir, ref_dir)
    nan = np.zeros(SHAPE, np.float32)
    nan[0, 0, 0] = np.nan
    write_volume(pred_dir / "1.2.3_prob.nii.gz", nan, AFFINE)
    with pytest.raises(InputError, match="NaN"):
        score_directories(pred_dir, ref_dir)


def test_table_and_report_writer(tmp_path):
    pred_dir, ref_dir, _ = _write_cohort(tmp_path)
    report = score_directories(pred_dir, ref_dir)
    table = format_table(report)
    assert len(table.splitlines()) == 2 + 3 + 2 + 3 + 1  # header, rule, studies, rule, pooled, 3 summary, unscored
    write_report(tmp_path / "m.json", report)
    assert json.loads((tmp_path / "m.json").read_text())["cluster"]["tp"] == 3
