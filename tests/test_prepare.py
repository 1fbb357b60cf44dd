"""custom.io.prepare and scripts/prepare.py: outputs, datalist, boxes, resume, failures, layouts, codecs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import hu_volume, write_ct_series
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from custom.io.errors import InputError
from custom.io.nifti import read_volume
from custom.io.prepare import build_datalist, prepare_cohort, prepare_study
from custom.io.rspect import Box, StudyLabels

REPO = Path(__file__).resolve().parents[1]
KAGGLE_COLUMNS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "pe_present_on_image",
    "negative_exam_for_pe",
    "qa_motion",
    "qa_contrast",
    "flow_artifact",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
    "leftsided_pe",
    "chronic_pe",
    "true_filling_defect_not_pe",
    "rightsided_pe",
    "acute_and_chronic_pe",
    "central_pe",
    "indeterminate",
]
BOX_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Artery", "x", "y", "width", "height"]
ENTRY_KEYS = {"image", "label", "study_uid", "series_uid", "n_slices", "slice_labels", "pe_present"}


def _hex12(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(16**12)):012x}"


class Cohort:
    """A tiny RSPECT-layout cohort written with plain pydicom, with its CSVs."""

    def __init__(self, root: Path, split: str = "train", seed: int = 0):
        self.root, self.split = root, split
        self.rng = np.random.default_rng(seed)
        self.studies: dict[str, dict] = {}
        self.label_rows: list[list] = []
        self.box_rows: list[list] = []

    def add(
        self,
        name: str,
        n_slices: int = 6,
        positive: tuple[int, ...] = (),
        boxes: dict[int, list] | None = None,
        labeled: bool = True,
        **series_kwargs,
    ) -> dict:
        study_uid = series_kwargs.pop("study_uid", _hex12(self.rng))
        series_uid = series_kwargs.pop("series_uid", _hex12(self.rng))
        sop_uids = [_hex12(self.rng) for _ in range(n_slices)]
        hu = series_kwargs.pop("hu", None)
        hu = hu_volume(n_slices, seed=len(self.studies)) if hu is None else hu
        folder = self.root / self.split / study_uid / series_uid
        info = write_ct_series(
            folder, hu, study_uid=study_uid, series_uid=series_uid, sop_uids=sop_uids, **series_kwargs
        )
        slice_labels = [int(k in positive) for k in range(n_slices)]
        if labeled:
            exam = [int(not positive)] + [0] * 12
            self.label_rows += [
                [study_uid, series_uid, sop, label, *exam] for sop, label in zip(sop_uids, slice_labels)
            ]
        for k, rects in (boxes or {}).items():
            self.box_rows += [[study_uid, series_uid, sop_uids[k], "RightMain", *rect] for rect in rects]
        self.studies[name] = {**info, "hu": hu, "slice_labels": slice_labels, "boxes": boxes or {}, "folder": folder}
        return self.studies[name]

    def write_csvs(self, boxes_name: str = "boxes.csv", box_header: list[str] = BOX_COLUMNS) -> tuple[Path, Path]:
        order = self.rng.permutation(len(self.label_rows))  # rows in arbitrary order
        labels_csv, boxes_csv = self.root / "train.csv", self.root / boxes_name
        with labels_csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(KAGGLE_COLUMNS)
            writer.writerows(self.label_rows[i] for i in order)
        with boxes_csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(box_header)
            writer.writerows(self.box_rows)
        return labels_csv, boxes_csv


def _expected_mask(study: dict, shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for k, rects in study["boxes"].items():
        for x, y, w, h in rects:
            mask[k, y : y + h, x : x + w] = 1
    return mask


def _basic_cohort(root: Path) -> tuple[Cohort, Path, Path]:
    cohort = Cohort(root)
    cohort.add("pos", positive=(2, 3), boxes={2: [(2, 3, 5, 4), (10, 6, 3, 3)], 3: [(4, 4, 6, 2)]})
    cohort.add("neg")
    cohort.add("pos_nobox", positive=(1,), instance_numbers=[6, 5, 4, 3, 2, 1])
    cohort.add("neg2", n_slices=5, study_uid="00000000e123")
    labels_csv, boxes_csv = cohort.write_csvs()
    return cohort, labels_csv, boxes_csv


def test_prepare_writes_images_labels_and_datalist(tmp_path):
    cohort, _, boxes_csv = _basic_cohort(tmp_path / "C")
    out = tmp_path / "P"
    report = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)  # labels_csv defaults to C/train.csv
    assert report.ok and len(report.prepared) == 4 and report.skipped == []
    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test", "meta"}
    entries = {e["study_uid"]: e for part in ("training", "validation", "test") for e in datalist[part]}
    assert len(entries) == 4 and datalist["meta"]["split"]["seed"] == 0
    for name, study in cohort.studies.items():
        entry = entries[study["study_uid"]]
        assert set(entry) == ENTRY_KEYS - ({"label"} if name == "pos_nobox" else set())
        assert entry["image"] == f"images/{study['study_uid']}.nii.gz" and entry["series_uid"] == study["series_uid"]
        assert entry["slice_labels"] == study["slice_labels"] and entry["pe_present"] == int(any(study["slice_labels"]))
        assert entry["n_slices"] == len(study["slice_labels"])
        image = nib.load(out / entry["image"])
        assert image.get_data_dtype() == np.int16
        volume, affine = read_volume(out / entry["image"])
        np.testing.assert_array_equal(volume, study["hu"])
        np.testing.assert_allclose(
            affine @ [0, 0, 1, 1], [60.0, 45.0, 101.25, 1.0], atol=1e-4
        )  # LPS (-60,-45,100)+1.25 z -> RAS
        if name != "pos_nobox":
            mask, mask_affine = read_volume(out / entry["label"])
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, _expected_mask(study, volume.shape))
            np.testing.assert_array_equal(mask_affine, affine)
    assert not (out / "labels" / f"{cohort.studies['pos_nobox']['study_uid']}.nii.gz").exists()
    assert json.loads((out / "failures.json").read_text()) == []

    from monai.data import load_decathlon_datalist

    loaded = load_decathlon_datalist(out / "datalist.json", data_list_key="training", base_dir=out)
    assert all(Path(item["image"]).is_file() for item in loaded)


def test_resume_skips_finished_studies_and_redoes_changed_ones(tmp_path):
    cohort, _, boxes_csv = _basic_cohort(tmp_path / "C")
    out = tmp_path / "P"
    prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    uids = {name: study["study_uid"] for name, study in cohort.studies.items()}
    image = out / "images" / f"{uids['neg']}.nii.gz"
    stamp = image.stat().st_mtime_ns
    again = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    assert again.prepared == [] and sorted(again.skipped) == sorted(uids.values())
    assert image.stat().st_mtime_ns == stamp
    image.unlink()  # an interrupted study: output missing -> redone
    with boxes_csv.open("a", newline="") as handle:  # a new box for "pos" -> its inputs changed -> redone
        csv.writer(handle).writerow(
            [uids["pos"], cohort.studies["pos"]["series_uid"], cohort.studies["pos"]["sop_uids"][0], "Main", 0, 0, 2, 2]
        )
    third = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    assert sorted(third.prepared) == sorted([uids["neg"], uids["pos"]]) and len(third.skipped) == 2
    mask, _ = read_volume(out / "labels" / f"{uids['pos']}.nii.gz")
    assert mask[0, :2, :2].all()


def _bad_cohort(root: Path) -> tuple[Cohort, dict[str, str]]:
    cohort = Cohort(root)
    good = cohort.add("good", positive=(1,), boxes={1: [(1, 1, 3, 3)]})
    with_mr = cohort.add("with_mr")  # a non-CT series beside the CT series: ignored with a note
    write_ct_series(with_mr["folder"].parent / "mr_series", hu_volume(8), study_uid=with_mr["study_uid"], modality="MR")
    truncated = cohort.add("truncated")
    truncated["files"][3].write_bytes(truncated["files"][3].read_bytes()[:-50])
    non_ct = cohort.add("non_ct", modality="MR", labeled=False)
    missing = cohort.add("missing")
    missing["files"][2].unlink()
    duplicate = cohort.add("duplicate", positions=np.array([[0, 0, z] for z in (0.0, 1.0, 2.0, 3.0, 3.0, 4.0)]))
    unknown = cohort.add("unknown_sop")
    cohort.label_rows.append([unknown["study_uid"], unknown["series_uid"], "deadbeef0000", 0] + [0] * 13)
    empty = root / "train" / "abcdefabcdef"
    empty.mkdir(parents=True)
    expected = {
        truncated["study_uid"]: rf"{truncated['files'][3].name}: truncated",
        non_ct["study_uid"]: rf"no CT image series.*({'|'.join(f.name for f in non_ct['files'])}): Modality MR",
        missing["study_uid"]: rf"{missing['files'][3].name}: missing slice",
        duplicate[
            "study_uid"
        ]: rf"({duplicate['files'][3].name}|{duplicate['files'][4].name}): two slices at one position: it and "
        rf"({duplicate['files'][3].name}|{duplicate['files'][4].name})",
        unknown[
            "study_uid"
        ]: r"train.csv: study .* name SOPInstanceUIDs that are not in the series \(e.g. deadbeef0000\)",
        "abcdefabcdef": r"abcdefabcdef: empty folder",
    }
    return cohort, expected


def test_bad_studies_fail_alone_and_the_cli_exits_nonzero(tmp_path):
    cohort, expected = _bad_cohort(tmp_path / "C")
    _, boxes_csv = cohort.write_csvs()
    out = tmp_path / "P"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "prepare.py"),
            "--rspect_dir",
            str(tmp_path / "C"),
            "--out_dir",
            str(out),
            "--boxes_csv",
            str(boxes_csv),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "6 studies failed" in result.stderr
    failures = {f["study"]: f["error"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == set(expected)
    for study, pattern in expected.items():
        assert re.search(pattern, failures[study]), (study, failures[study])
        assert study in result.stderr
    datalist = json.loads((out / "datalist.json").read_text())
    prepared = {e["study_uid"] for part in ("training", "validation", "test") for e in datalist[part]}
    assert prepared == {cohort.studies["good"]["study_uid"], cohort.studies["with_mr"]["study_uid"]}
    assert sorted(datalist["meta"]["failed_studies"]) == sorted(expected)
    record = json.loads((out / "records" / f"{cohort.studies['with_mr']['study_uid']}.json").read_text())
    assert any("ignored non-CT (Modality MR" in note for note in record["notes"])
    assert "ignored non-CT (Modality MR" in result.stderr  # the series choice is logged


def test_kaggle_test_layout_without_labels(tmp_path):
    cohort = Cohort(tmp_path / "K", split="test")
    a = cohort.add("a", labeled=False)
    b = cohort.add("b", labeled=False, n_slices=4)
    report = prepare_cohort(tmp_path / "K", tmp_path / "P", workers=1)
    assert report.ok and sorted(report.prepared) == sorted([a["study_uid"], b["study_uid"]])
    datalist = json.loads((tmp_path / "P" / "datalist.json").read_text())
    assert datalist["training"] == [] and datalist["validation"] == []
    assert [e["study_uid"] for e in datalist["test"]] == sorted([a["study_uid"], b["study_uid"]])
    assert all(set(e) == {"image", "study_uid", "series_uid", "n_slices"} for e in datalist["test"])
    assert sorted(datalist["meta"]["unlabeled_studies"]) == sorted([a["study_uid"], b["study_uid"]])


def test_mixed_transfer_syntaxes_prepare_to_the_same_nifti(tmp_path):
    syntaxes = [
        JPEG2000Lossless,
        RLELossless,
        JPEGLSLossless,
        DeflatedExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        JPEG2000Lossless,
    ]
    hu = hu_volume(len(syntaxes), rows=48, cols=40, seed=42)
    outputs = []
    for tag, syntax in (("plain", ExplicitVRLittleEndian), ("mixed", syntaxes)):
        cohort = Cohort(tmp_path / tag, seed=7)  # same seed: same UIDs
        study = cohort.add(
            "s", n_slices=len(syntaxes), hu=hu, transfer_syntax=syntax, positive=(3,), boxes={3: [(5, 5, 4, 4)]}
        )
        _, boxes_csv = cohort.write_csvs()
        assert prepare_cohort(tmp_path / tag, tmp_path / f"P_{tag}", boxes_csv=boxes_csv, workers=1).ok
        outputs.append(tmp_path / f"P_{tag}" / "images" / f"{study['study_uid']}.nii.gz")
    plain, mixed = (nib.load(p) for p in outputs)
    np.testing.assert_array_equal(np.asarray(plain.dataobj), np.asarray(mixed.dataobj))
    np.testing.assert_array_equal(plain.affine, mixed.affine)
    assert plain.header.binaryblock == mixed.header.binaryblock
    np.testing.assert_array_equal(read_volume(outputs[1])[0], hu)


def test_the_series_named_by_the_label_csv_is_used(tmp_path):
    cohort = Cohort(tmp_path / "C")
    study = cohort.add("two", n_slices=4, positive=(1,))
    # a second, longer CT reconstruction that the label CSV does not name
    write_ct_series(
        study["folder"].parent / "recon", hu_volume(9, seed=3), study_uid=study["study_uid"], slice_spacing=0.6
    )
    cohort.write_csvs()
    report = prepare_cohort(tmp_path / "C", tmp_path / "P", workers=1)
    assert report.ok
    record = json.loads((tmp_path / "P" / "records" / f"{study['study_uid']}.json").read_text())
    assert record["series_uid"] == study["series_uid"] and record["n_slices"] == 4
    assert any(f"the label CSV names series {study['series_uid']}" in note for note in record["notes"])
    assert any(f"using series {study['series_uid']} (4 slices; requested)" in note for note in record["notes"])


def test_box_column_mapping(tmp_path):
    cohort = Cohort(tmp_path / "C")
    study = cohort.add("s", positive=(2,), boxes={2: [(3, 4, 5, 6)]})
    renamed = ["study", "series", "sop", "artery", "bx", "by", "bw", "bh"]
    _, boxes_csv = cohort.write_csvs(box_header=renamed)
    with pytest.raises(
        InputError,
        match=r"missing required column\(s\) 'StudyInstanceUID', 'SOPInstanceUID', 'x', 'y', 'width', 'height'; "
        r"columns found: \['study'",
    ):
        prepare_cohort(tmp_path / "C", tmp_path / "P", boxes_csv=boxes_csv, workers=1)
    mapping = dict(zip(BOX_COLUMNS, renamed))
    assert prepare_cohort(tmp_path / "C", tmp_path / "P", boxes_csv=boxes_csv, workers=1, box_columns=mapping).ok
    mask, _ = read_volume(tmp_path / "P" / "labels" / f"{study['study_uid']}.nii.gz")
    assert mask.sum() == 30 and mask[2, 4:10, 3:8].all()


def test_split_is_seeded_by_study_and_stratified():
    records = [
        {
            "image": f"images/s{i:02d}.nii.gz",
            "study_uid": f"s{i:02d}",
            "series_uid": "x",
            "n_slices": 3,
            "slice_labels": [0, int(i < 10), 0],
            "pe_present": int(i < 10),
        }
        for i in range(20)
    ]
    records.append({"image": "images/u.nii.gz", "study_uid": "u", "series_uid": "x", "n_slices": 3})
    first = build_datalist(records, (0.6, 0.2, 0.2), seed=1)
    assert first == build_datalist(list(reversed(records)), (0.6, 0.2, 0.2), seed=1)
    assert [len(first[p]) for p in ("training", "validation", "test")] == [12, 4, 5]
    for part, n_pos in (("training", 6), ("validation", 2)):
        assert sum(e["pe_present"] for e in first[part]) == n_pos
    assert "u" in {e["study_uid"] for e in first["test"]}
    other = build_datalist(records, (0.6, 0.2, 0.2), seed=2)
    assert {e["study_uid"] for e in other["training"]} != {e["study_uid"] for e in first["training"]}
    with pytest.raises(InputError, match="summing to 1"):
        build_datalist(records, (0.5, 0.2, 0.2), seed=0)


# ---- CSV rows matched by the DICOM StudyInstanceUID -----------------------------------------------


def _entries(out: Path) -> dict[str, tuple[str, dict]]:
    datalist = json.loads((out / "datalist.json").read_text())
    return {e["study_uid"]: (part, e) for part in ("training", "validation", "test") for e in datalist[part]}


def test_study_folder_not_named_by_its_uid_keeps_its_labels_and_boxes(tmp_path):
    cohort, _, boxes_csv = _basic_cohort(tmp_path / "C")
    pos = cohort.studies["pos"]
    study_dir = pos["folder"].parent
    study_dir.rename(study_dir.parent / "patient_001")  # an archive export: folder not named by the UID
    out = tmp_path / "P"
    report = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    assert report.ok and not any("no study folder" in note for note in report.notes), report.notes
    _, entry = _entries(out)[pos["study_uid"]]
    assert entry["slice_labels"] == pos["slice_labels"] and entry["pe_present"] == 1
    mask, _ = read_volume(out / entry["label"])
    np.testing.assert_array_equal(mask, _expected_mask(pos, mask.shape))
    record = json.loads((out / "records" / "patient_001.json").read_text())
    assert any("CSV rows are matched by it" in note for note in record["notes"])


def test_rows_filed_under_the_folder_name_are_a_fallback_with_a_note(tmp_path):
    cohort, labels_csv, boxes_csv = _basic_cohort(tmp_path / "C")
    pos = cohort.studies["pos"]
    pos["folder"].parent.rename(pos["folder"].parent.parent / "patient_7")
    for path in (labels_csv, boxes_csv):
        path.write_text(path.read_text().replace(pos["study_uid"], "patient_7"))
    out = tmp_path / "P"
    assert prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1).ok
    _, entry = _entries(out)[pos["study_uid"]]
    assert entry["slice_labels"] == pos["slice_labels"] and "label" in entry
    notes = json.loads((out / "records" / "patient_7.json").read_text())["notes"]
    assert any("label rows matched by the folder name patient_7" in note for note in notes)
    assert any("boxes matched by the folder name patient_7" in note for note in notes)


def test_prepare_study_rejects_rows_of_another_study(tmp_path):
    cohort = Cohort(tmp_path / "C")
    study = cohort.add("s", n_slices=3)
    study_dir = study["folder"].parent
    foreign = StudyLabels("someotherstudy", {study["series_uid"]}, {sop: 0 for sop in study["sop_uids"]})
    with pytest.raises(InputError, match=rf"label rows of study someotherstudy were matched to .*{study['study_uid']}"):
        prepare_study(study_dir, tmp_path / "P", labels=foreign)
    box = Box("someotherstudy", None, study["sop_uids"][0], None, 0, 0, 2, 2, line=9)
    with pytest.raises(InputError, match=r"box CSV:9: box of study someotherstudy was matched to"):
        prepare_study(study_dir, tmp_path / "P", boxes=[box])


def test_boxes_naming_another_series_fail_their_study(tmp_path):
    cohort, _, boxes_csv = _basic_cohort(tmp_path / "C")
    pos = cohort.studies["pos"]
    boxes_csv.write_text(boxes_csv.read_text().replace(pos["series_uid"], "777777777777"))
    report = prepare_cohort(tmp_path / "C", tmp_path / "P", boxes_csv=boxes_csv, workers=1)
    assert [f["study"] for f in report.failures] == [pos["study_uid"]]
    assert re.search(
        rf"boxes.csv:2: study {pos['study_uid']}: box on SOPInstanceUID \w+ of series 777777777777, but the prepared "
        rf"series is {pos['series_uid']}",
        report.failures[0]["error"],
    )
    assert len(report.prepared) == 3  # the other studies go on


# ---- resume sees changed DICOM files ---------------------------------------------------------------


def test_resume_redoes_a_study_whose_dicom_files_changed(tmp_path):
    cohort, _, boxes_csv = _basic_cohort(tmp_path / "C")
    out = tmp_path / "P"
    prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    neg = cohort.studies["neg"]
    changed = neg["files"][0]
    ds = pydicom.dcmread(changed)
    ds.RescaleIntercept = "-1000"  # same size on disk: only the modification time tells
    ds.save_as(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    again = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    assert again.prepared == [neg["study_uid"]] and len(again.skipped) == 3
    volume, _ = read_volume(out / "images" / f"{neg['study_uid']}.nii.gz")
    np.testing.assert_array_equal(volume[0], neg["hu"][0] + 24)
    neg["files"][-1].unlink()  # a slice removed: the study is redone (and now fails on its label rows)
    third = prepare_cohort(tmp_path / "C", out, boxes_csv=boxes_csv, workers=1)
    assert [f["study"] for f in third.failures] == [neg["study_uid"]] and len(third.skipped) == 3


# ---- cohort-level checks: labels that label nothing, empty training split, seed and workers ---------


def test_label_csv_with_a_header_only_stops_the_cohort(tmp_path):
    _, labels_csv, boxes_csv = _basic_cohort(tmp_path / "C")
    labels_csv.write_text(",".join(KAGGLE_COLUMNS) + "\n")
    with pytest.raises(InputError, match=r"train.csv: no label rows \(a header only\?\)"):
        prepare_cohort(tmp_path / "C", tmp_path / "P", boxes_csv=boxes_csv, workers=1)
    assert not (tmp_path / "P").exists()  # before any study


def test_label_csv_labelling_none_of_the_studies_stops_the_cohort(tmp_path):
    _basic_cohort(tmp_path / "C")
    other = Cohort(tmp_path / "Other", seed=5)
    other.add("x")
    other_labels, _ = other.write_csvs()
    with pytest.raises(InputError, match=r"train.csv: labels none of the 4 study folders under .*: its 1 studies"):
        prepare_cohort(tmp_path / "C", tmp_path / "P", labels_csv=other_labels, workers=1)


def test_default_train_csv_that_labels_no_test_study_is_only_noted(tmp_path):
    cohort = Cohort(tmp_path / "K", split="test")
    cohort.add("a", labeled=False)
    train = Cohort(tmp_path / "elsewhere", seed=3)
    train.add("t")
    labels_csv, _ = train.write_csvs()
    (tmp_path / "K" / "train.csv").write_text(labels_csv.read_text())  # Kaggle root with test/ only
    report = prepare_cohort(tmp_path / "K", tmp_path / "P", workers=1)
    assert report.ok and any("labels none of the test/ studies" in note for note in report.notes)


def test_empty_training_split_stops_the_cohort(tmp_path):
    cohort = Cohort(tmp_path / "C")
    broken = cohort.add("labeled_but_broken", positive=(1,))
    broken["files"][2].unlink()  # its only labeled study fails
    cohort.add("unlabeled", labeled=False)
    cohort.write_csvs()
    out = tmp_path / "P"
    out.mkdir()
    (out / "datalist.json").write_text("{}")  # an earlier run's datalist must not survive
    with pytest.raises(InputError, match=r"training split is empty: 0 labeled studies prepared, 1 of 2 studies failed"):
        prepare_cohort(tmp_path / "C", out, workers=1)
    assert not (out / "datalist.json").exists()
    assert [f["study"] for f in json.loads((out / "failures.json").read_text())] == [broken["study_uid"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"seed": 1.5}, r"seed must be an integer >= 0, got 1\.5"),
        ({"seed": "abc"}, r"seed must be an integer >= 0, got 'abc'"),
        ({"seed": True}, r"seed must be an integer >= 0, got True"),
        ({"workers": 0}, r"workers must be an integer >= 1 \(processes\), got 0"),
        ({"workers": -2}, r"workers must be an integer >= 1"),
        ({"workers": 2.5}, r"workers must be an integer >= 1 \(processes\), got 2\.5"),
        ({"workers": "two"}, r"workers must be an integer >= 1 \(processes\), got 'two'"),
    ],
)
def test_seed_and_workers_are_checked_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        prepare_cohort(tmp_path / "does_not_exist", tmp_path / "P", **{"workers": 1, **kwargs})
    assert not (tmp_path / "P").exists()


def test_cli_exits_2_for_cohort_problems_and_its_help_lists_them(tmp_path):
    _, _, boxes_csv = _basic_cohort(tmp_path / "C")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = [sys.executable, str(REPO / "scripts" / "prepare.py")]
    args = ["--rspect_dir", str(tmp_path / "C"), "--out_dir", str(tmp_path / "P")]

    def run(*extra):
        return subprocess.run([*script, *args, *extra], capture_output=True, text=True, env=env, timeout=120)

    result = run("--seed", "-3")
    assert result.returncode == 2 and "error: seed must be an integer >= 0, got -3" in result.stderr
    result = run("--workers", "0")
    assert result.returncode == 2 and "error: workers must be an integer >= 1" in result.stderr
    with boxes_csv.open("a") as handle:
        handle.write("a,b,c,Main,1,1,-2,2\n")  # one bad box row stops the whole cohort (documented)
    result = run("--boxes_csv", str(boxes_csv), "--workers", "1")
    assert result.returncode == 2 and re.search(r"boxes.csv:\d+: invalid box", result.stderr), result.stderr
    assert not (tmp_path / "P").exists()
    shown = subprocess.run([*script, "--help"], capture_output=True, text=True, env=env, timeout=120)
    help_text = shown.stdout + shown.stderr  # fire writes its help to stderr when not on a terminal
    assert "a bad box CSV row (one bad box row stops the whole cohort" in " ".join(help_text.split())
