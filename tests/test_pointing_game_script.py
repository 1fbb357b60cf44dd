"""scripts/pointing_game.py as the pipeline runs it: the prepared datalist, reference masks, no ``--mask_dir``."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from custom.io.nifti import write_volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 32, 32)
CONFIGS = ["train.json", "demo.json"]
OVERRIDES = {"feature_stage": 1}


def _script() -> dict:
    return runpy.run_path(str(REPO / "scripts" / "pointing_game.py"))


def _prepared(root: Path) -> list[dict]:
    """A prepared folder: a positive study with a reference mask, a positive one without (no boxes), a negative one."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[:, 12:20, 12:20] = 300
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:4, 14:18, 14:18] = 1
    for uid in ("boxed", "unboxed", "negative"):
        write_volume(root / "images" / f"{uid}.nii.gz", hu, np.eye(4))
    write_volume(root / "labels" / "boxed.nii.gz", mask, np.eye(4))
    positive = [0, 0, 1, 1, 0, 0, 0, 0]
    return [
        {"image": "images/boxed.nii.gz", "label": "labels/boxed.nii.gz", "study_uid": "boxed", "slice_labels": positive, "pe_present": 1},
        {"image": "images/unboxed.nii.gz", "study_uid": "unboxed", "slice_labels": positive, "pe_present": 1},
        {"image": "images/negative.nii.gz", "study_uid": "negative", "slice_labels": [0] * 8, "pe_present": 0},
    ]


def _bundle(root: Path) -> Path:
    """A classifier bundle folder with untrained weights of the demo network."""
    (root / "models").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "classifier" / "configs" / c) for c in CONFIGS])
    parser.update({"bundle_root": str(root), "device": "$torch.device('cpu')", **OVERRIDES})
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def test_positive_studies_skips_a_positive_study_without_reference_mask(tmp_path):
    entries = _prepared(tmp_path)
    studies, skipped = _script()["positive_studies"](entries, str(tmp_path), (100.0, 700.0))
    assert skipped == ["unboxed"]
    assert len(studies) == 1
    volume, mask = studies[0]
    assert volume.shape == SHAPE and mask.sum() == 32


def test_cli_without_mask_dir_runs_and_reports_the_skipped_studies(tmp_path, capsys):
    entries = _prepared(tmp_path / "prepared")
    (tmp_path / "prepared" / "datalist.json").write_text(json.dumps({"test": entries}))
    bundle = _bundle(tmp_path / "bundle")
    out = tmp_path / "pg.json"
    _script()["main"](str(bundle), str(tmp_path / "prepared" / "datalist.json"), str(tmp_path / "prepared"), str(out),
                      config_files=json.dumps(CONFIGS), overrides=OVERRIDES, slices_per_study=1, n_steps=2)
    summary = json.loads(out.read_text())
    assert summary["skipped_no_mask"] == 1 and summary["studies"] == 1 and summary["total"] == 1
    assert "skipped 1 positive test studies without a reference mask: unboxed" in capsys.readouterr().err


def test_cli_writes_strict_json_when_no_positive_slice_is_left(tmp_path):
    entries = _prepared(tmp_path / "prepared")[1:]  # the unboxed positive and the negative: nothing to explain
    (tmp_path / "prepared" / "datalist.json").write_text(json.dumps({"test": entries}))
    bundle = _bundle(tmp_path / "bundle")
    out = tmp_path / "pg.json"
    _script()["main"](str(bundle), str(tmp_path / "prepared" / "datalist.json"), str(tmp_path / "prepared"), str(out),
                      config_files=json.dumps(CONFIGS), overrides=OVERRIDES, n_steps=2)
    summary = json.loads(out.read_text(), parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    assert summary["hit_rate"] is None and summary["total"] == 0 and summary["skipped_no_mask"] == 1


def test_pipeline_summary_of_a_game_without_positive_slices(tmp_path):
    from custom.pipeline.run import PipelineRun

    path = tmp_path / "pointing_game.json"
    path.write_text(json.dumps({"hit_rate": None, "total": 0, "skipped_no_mask": 2}))
    assert PipelineRun._pointing_game_summary(path) == (
        "hit rate n/a on 0 positive test slices (2 positive studies without a reference mask skipped)")
    path.write_text(json.dumps({"hit_rate": 0.5, "total": 4}))  # written before skipped_no_mask existed
    assert PipelineRun._pointing_game_summary(path) == "hit rate 0.50 on 4 positive test slices"
