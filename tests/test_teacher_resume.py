"""Resuming the teacher (custom.teacher.run_cohort): a study is done only when made with the current settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from custom.io.nifti import write_volume
from custom.teacher import TeacherFactory, TeacherOutputs, run_cohort

SHAPE = (8, 32, 32)
SETTINGS = dict(n_steps=2, clf_threshold=0.5, autocast_dtype=None, channels_last=False, fold_batchnorm=False,
                max_batch=8, windows_per_batch=1, max_rounds=1, scale_to_grid=False, neighbourhood=(3, 5, 5),
                min_voxels=1, min_cluster_voxels=1, max_center_distance_px=100.0)


def _network() -> nn.Module:
    """Calls every window positive (a large bias), so the high threshold decides the pseudo-label."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(7, 1, 3, padding=1), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    with torch.no_grad():
        network[0].bias.fill_(5.0)
    return network


def _studies(root: Path, uids=("s0",)) -> list[dict]:
    hu = np.full(SHAPE, -1000, np.int16)
    hu[:, 12:20, 12:20] = 300
    studies = []
    for uid in uids:
        write_volume(root / "images" / f"{uid}.nii.gz", hu, np.diag([-1.0, -1.0, 2.0, 1.0]))
        studies.append({"image": str(root / "images" / f"{uid}.nii.gz"), "study_uid": uid})
    return studies


def _record(out: Path, uid: str = "s0") -> dict:
    return json.loads((out / "clusters" / f"{uid}.json").read_text())


def test_rerun_with_the_same_settings_skips_and_keeps_the_files(tmp_path):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    mtime = (out / "clusters" / "s0.json").stat().st_mtime_ns
    index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    assert index["studies"][0]["status"] == "skipped" and index["done"] == ["s0"]
    assert (out / "clusters" / "s0.json").stat().st_mtime_ns == mtime


def test_rerun_with_another_high_threshold_redoes_the_study_and_says_why(tmp_path, caplog):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e9, **SETTINGS), studies, out)
    assert _record(out)["voxels_unfiltered"] == 0  # nothing reaches a threshold of 1e9
    with caplog.at_level(logging.INFO, logger="custom.teacher.cohort"):
        index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    assert index["studies"][0]["status"] == "done" and index["done"] == ["s0"]
    record = _record(out)
    assert record["settings"]["high_threshold"] == 1e-9 and record["voxels_unfiltered"] > 0
    assert TeacherOutputs(out).read_volume("pseudo_unfiltered", "s0").sum() == record["voxels_unfiltered"]
    assert "study s0 redone" in caplog.text and "high_threshold 1000000000.0 -> 1e-09" in caplog.text


@pytest.mark.parametrize("change", [{"min_cluster_voxels": 50}, {"max_rounds": 2}, {"n_steps": 4}, {"clf_threshold": 0.6}])
def test_any_setting_of_the_output_invalidates_it(tmp_path, change):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    index = run_cohort(TeacherFactory(_network(), 1e-9, **{**SETTINGS, **change}), studies, out)
    assert index["studies"][0]["status"] == "done"
    (key, value), = change.items()
    assert _record(out)["settings"][key] == value


def test_settings_that_do_not_change_the_output_keep_it(tmp_path):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    index = run_cohort(TeacherFactory(_network(), 1e-9, **{**SETTINGS, "max_batch": 4, "windows_per_batch": 2}), studies, out)
    assert index["studies"][0]["status"] == "skipped"


def test_another_window_redoes_the_study(tmp_path, caplog):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    with caplog.at_level(logging.INFO, logger="custom.teacher.cohort"):
        index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out, window=(40.0, 400.0))
    assert index["studies"][0]["status"] == "done" and _record(out)["window"] == [40.0, 400.0]
    assert "was made with window [100.0, 700.0]" in caplog.text


def test_a_record_of_the_older_layout_without_settings_is_redone(tmp_path, caplog):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    record = _record(out)
    del record["settings"]
    (out / "clusters" / "s0.json").write_text(json.dumps(record))
    with caplog.at_level(logging.INFO, logger="custom.teacher.cohort"):
        index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    assert index["studies"][0]["status"] == "done" and _record(out)["settings"]["high_threshold"] == 1e-9
    assert "records no settings (older layout)" in caplog.text


def test_a_stale_study_that_fails_to_redo_is_not_listed_as_done(tmp_path):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e9, **SETTINGS), studies, out)
    Path(studies[0]["image"]).write_bytes(b"not a nifti file")
    index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    assert index["studies"][0]["status"] == "failed" and index["done"] == [] and index["failed"] == ["s0"]
    assert not TeacherOutputs(out).is_done("s0")  # the stale record is gone: evaluation does not use it


def test_sharded_ranks_redo_only_their_own_stale_studies(tmp_path):
    studies, out = _studies(tmp_path, ("s0", "s1", "s2")), tmp_path / "out"
    for rank in (0, 1):
        run_cohort(TeacherFactory(_network(), 1e9, **SETTINGS), studies, out, rank=rank, world_size=2)
    # rank 1 reruns with the new threshold first: rank 0's studies are still stale, so not done
    index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out, rank=1, world_size=2)
    assert [(r["study_uid"], r["status"]) for r in index["studies"]] == [("s1", "done")] and index["done"] == ["s1"]
    index = run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out, rank=0, world_size=2)
    assert [(r["study_uid"], r["status"]) for r in index["studies"]] == [("s0", "done"), ("s2", "done")]
    assert index["done"] == ["s0", "s1", "s2"]
    assert {_record(out, uid)["settings"]["high_threshold"] for uid in ("s0", "s1", "s2")} == {1e-9}


def test_outdated_compares_the_grid_settings_of_the_recorded_shape(tmp_path):
    studies, out = _studies(tmp_path), tmp_path / "out"
    factory = TeacherFactory(_network(), 1e-9, **{**SETTINGS, "scale_to_grid": True})
    run_cohort(factory, studies, out)
    outputs = TeacherOutputs(out)
    shapes = []

    def settings_of(shape):
        shapes.append(list(shape))
        return factory.output_settings(shape[1], shape[2])

    assert outputs.outdated("s0", settings_of, (100.0, 700.0)) is None and shapes == [list(SHAPE)]
    assert outputs.is_done("s0", settings_of) and outputs.is_done("s0")
    other_grid = factory.output_settings(64, 64)  # scaled to another grid: other pixel settings
    assert "other settings" in outputs.outdated("s0", other_grid)
    assert outputs.outdated("missing", other_grid).startswith("no ")
    (out / "clusters" / "s0.json").write_text("{not json")
    assert "cannot read the teacher's study record" in outputs.outdated("s0", settings_of)


def test_a_factory_without_high_threshold_fails_before_touching_finished_studies(tmp_path):
    studies, out = _studies(tmp_path), tmp_path / "out"
    run_cohort(TeacherFactory(_network(), 1e-9, **SETTINGS), studies, out)
    with pytest.raises(ValueError, match="no high threshold"):
        run_cohort(TeacherFactory(_network(), None, **SETTINGS), studies, out)
    assert TeacherOutputs(out).is_done("s0")
