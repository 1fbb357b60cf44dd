"""Per-study student output files (custom.student.outputs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom.io.errors import InputError
from custom.io.nifti import read_volume
from custom.student.outputs import SaveStudentOutputsd, pending_entries, student_output_paths

AFFINE = np.array([[-0.7, 0.0, 0.0, 5.0], [0.0, -0.7, 0.0, -3.0], [0.0, 0.0, 2.0, 40.0], [0.0, 0.0, 0.0, 1.0]])


def _item(shape_xyz=(6, 5, 4), uid: str | None = "1.2.3") -> dict:
    image = MetaTensor(torch.zeros((1, *shape_xyz)), affine=torch.as_tensor(AFFINE), meta={"filename_or_obj": "/d/images/9.8.7.nii.gz"})
    prob = torch.zeros((1, *shape_xyz))
    prob[0, 1, 2, 3] = 0.9  # x=1, y=2, z=3
    prob[0, 4, 0, 0] = 0.4
    item = {"image": image, "pred": prob}
    if uid:
        item["study_uid"] = uid
    return item


def test_writes_probability_mask_and_findings_on_the_image_grid(tmp_path) -> None:
    SaveStudentOutputsd(keys="pred", output_dir=tmp_path, threshold=0.5)(_item())
    paths = student_output_paths(tmp_path, "1.2.3")
    prob, prob_affine = read_volume(paths["prob"])
    mask, mask_affine = read_volume(paths["mask"])
    assert prob.shape == (4, 5, 6) and prob.dtype == np.float32  # (Z, Y, X) in memory
    assert np.allclose(prob_affine, AFFINE) and np.allclose(mask_affine, AFFINE)
    assert prob[3, 2, 1] == pytest.approx(0.9) and prob[0, 0, 4] == pytest.approx(0.4)
    assert mask.dtype == np.uint8 and mask.sum() == 1 and mask[3, 2, 1] == 1
    findings = json.loads(paths["clusters"].read_text())
    assert findings["study_uid"] == "1.2.3" and findings["n_clusters"] == 1
    assert findings["clusters"][0]["centroid_zyx"] == [3.0, 2.0, 1.0]
    assert findings["clusters"][0]["slice_range"] == [3, 3]


def test_uid_falls_back_to_the_image_file_name(tmp_path) -> None:
    SaveStudentOutputsd(keys="pred", output_dir=tmp_path)(_item(uid=None))
    assert all(p.is_file() for p in student_output_paths(tmp_path, "9.8.7").values())


def test_bad_predictions_name_the_study(tmp_path) -> None:
    item = _item()
    item["pred"] = torch.zeros((2, 6, 5, 4))
    with pytest.raises(InputError, match="9.8.7.nii.gz.*one-channel"):
        SaveStudentOutputsd(keys="pred", output_dir=tmp_path)(item)
    item = _item()
    item["pred"] = torch.zeros((1, 6, 5, 3))
    with pytest.raises(InputError, match="grid"):
        SaveStudentOutputsd(keys="pred", output_dir=tmp_path)(item)
    item = _item()
    item["pred"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        SaveStudentOutputsd(keys="pred", output_dir=tmp_path)(item)
    assert not any(tmp_path.iterdir())


def test_pending_entries_skip_complete_studies(tmp_path) -> None:
    entries = [{"image": "/d/images/a.nii.gz", "study_uid": "a"}, {"image": "/d/images/b.nii.gz"}, {"image": "/d/c.nii.gz", "study_uid": "c"}]
    for name, path in student_output_paths(tmp_path, "a").items():
        path.write_text("x")
    partial = student_output_paths(tmp_path, "b")
    partial["prob"].write_text("x")  # an interrupted study is redone
    assert pending_entries(entries, tmp_path) == entries[1:]


SETTINGS = {"weights_sha256": "ab" * 32, "threshold": 0.6, "window": (100, 400), "patch_size": [128, 128, 64]}


def test_findings_record_the_output_settings(tmp_path) -> None:
    SaveStudentOutputsd(keys="pred", output_dir=tmp_path, settings=SETTINGS)(_item())
    findings = json.loads(student_output_paths(tmp_path, "1.2.3")["clusters"].read_text())
    assert findings["settings"] == {**SETTINGS, "window": [100, 400]}  # as JSON reads it back
    SaveStudentOutputsd(keys="pred", output_dir=tmp_path / "plain")(_item())
    assert "settings" not in json.loads(student_output_paths(tmp_path / "plain", "1.2.3")["clusters"].read_text())


def test_pending_entries_redo_studies_made_with_other_settings(tmp_path, caplog) -> None:
    """After a retrain (new weights hash) or with another threshold, existing outputs are not kept."""
    entries = [{"image": f"/d/images/{uid}.nii.gz", "study_uid": uid} for uid in ("a", "b", "c", "d", "e")]
    for uid, settings in (("a", SETTINGS), ("b", {**SETTINGS, "weights_sha256": "cd" * 32}), ("c", {**SETTINGS, "threshold": 0.5}), ("d", None)):
        SaveStudentOutputsd(keys="pred", output_dir=tmp_path, settings=settings)(_item(uid=uid))
    for uid in "abcd":
        assert all(p.is_file() for p in student_output_paths(tmp_path, uid).values())
    assert pending_entries(entries, tmp_path) == entries[4:]  # without settings: completeness only
    with caplog.at_level("INFO", logger="custom.student.outputs"):
        assert pending_entries(entries, tmp_path, SETTINGS) == entries[1:]
    assert "b_clusters.json was made with other settings (weights_sha256 'cdcd" in caplog.text
    assert "c_clusters.json was made with other settings (threshold 0.5 -> 0.6)" in caplog.text
    assert "d_clusters.json records no settings" in caplog.text
    student_output_paths(tmp_path, "a")["clusters"].write_text("{broken")  # unreadable: redone, not an error
    assert pending_entries(entries, tmp_path, SETTINGS)[0] == entries[0]


def test_an_interrupted_rewrite_is_not_taken_for_a_finished_study(tmp_path, monkeypatch) -> None:
    """The findings mark a study complete: they go before the maps are replaced, so a crash mid-write means 'redo'."""
    import custom.student.outputs as outputs

    SaveStudentOutputsd(keys="pred", output_dir=tmp_path, settings=SETTINGS)(_item())
    entries = [{"image": "/d/images/1.2.3.nii.gz", "study_uid": "1.2.3"}]
    assert pending_entries(entries, tmp_path, SETTINGS) == []

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "write_volume", crash)
    with pytest.raises(KeyboardInterrupt):
        SaveStudentOutputsd(keys="pred", output_dir=tmp_path, settings={**SETTINGS, "threshold": 0.7})(_item())
    assert pending_entries(entries, tmp_path, SETTINGS) == entries  # the old settings no longer pass for it
