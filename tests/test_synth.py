"""Tests of the synthetic CTPA cohort: determinism, emboli, boxes, CSVs, DICOM, z-spread, thresholding."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from custom.io.errors import InputError
from custom.io.geometry import affine_from_dicom
from custom.io.nifti import read_volume
from custom.synth import (
    BOX_COLUMNS,
    EMBOLUS_KINDS,
    TRAIN_COLUMNS,
    PhantomConfig,
    embolus_boxes,
    generate_study,
    write_cohort,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = (24, 64, 64)
# Small grid, every study positive with several emboli: boxes, CSVs and DICOM have something to check.
COHORT_CONFIG = PhantomConfig(shape=SMALL, positive_rate=0.7, emboli_per_positive=(3, 5), emboli_count_weights=(1.0, 1.0, 1.0))
COHORT_SEED = 0  # studies 0 and 2 positive, study 1 negative
CLEAN_CONFIG = PhantomConfig(shape=(32, 96, 96), positive_rate=1.0, noise=False, blur=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("cohort") / "C", 3, seed=COHORT_SEED, config=COHORT_CONFIG)


@pytest.fixture(scope="module")
def clean_studies():
    return [generate_study(i, 11, CLEAN_CONFIG) for i in range(4)]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _series(cohort_dir: Path, study_uid: str) -> list[pydicom.Dataset]:
    """The study's slices sorted by ImagePositionPatient z (slice 0 = most inferior)."""
    files = list((cohort_dir / "train" / study_uid).glob("*/*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    for ds, f in zip(datasets, files):
        assert f.name == f"{ds.SOPInstanceUID}.dcm"
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_generation_is_deterministic_per_study():
    a = generate_study(2, 9, PhantomConfig(shape=SMALL, positive_rate=1.0))
    b = generate_study(2, 9, PhantomConfig(shape=SMALL, positive_rate=1.0))
    other = generate_study(3, 9, PhantomConfig(shape=SMALL, positive_rate=1.0))
    assert a.hu.tobytes() == b.hu.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.emboli == b.emboli and a.confounders == b.confounders
    assert a.hu.tobytes() != other.hu.tobytes()
    assert a.hu.dtype == np.float32 and a.mask.dtype == np.uint8
    assert np.array_equal(a.hu, np.rint(a.hu))


def test_cohort_files_do_not_depend_on_n_studies_or_workers(tmp_path):
    config = PhantomConfig(shape=(16, 48, 48), positive_rate=1.0)
    one = write_cohort(tmp_path / "one", 2, seed=3, config=config, workers=1)
    two = write_cohort(tmp_path / "two", 3, seed=3, config=config, workers=2)
    first = json.loads((one / "cohort.json").read_text())["studies"]
    second = json.loads((two / "cohort.json").read_text())["studies"]
    assert first == second[:2]
    for study in first:
        files = sorted((one / "train" / study["study_uid"]).rglob("*.dcm"))
        assert len(files) == 16
        for f in files:
            assert f.read_bytes() == (two / f.relative_to(one)).read_bytes()
        assert np.array_equal(read_volume(one / study["mask"])[0], read_volume(two / study["mask"])[0])


def test_emboli_are_filling_defects_inside_arteries(clean_studies):
    n_emboli = 0
    for study in clean_studies:
        assert study.pe_present
        inside = study.mask > 0
        assert np.all(study.artery_mask[inside]), "embolus voxels outside the arterial lumen"
        assert not np.any(study.vein_mask[inside])
        values = study.hu[inside]
        assert values.min() >= 20 and values.max() <= 70
        # The lumen around the clot is contrast: a filling defect, not a soft-tissue blob.
        lumen = ndimage.binary_erosion(study.artery_mask) & ~inside
        assert np.median(study.hu[lumen]) > 200
        for embolus in study.emboli:
            n_emboli += 1
            voxels = np.argwhere(study.mask == embolus.label)
            assert embolus.voxels == len(voxels) > 0
            assert embolus.kind in EMBOLUS_KINDS and embolus.morphology in ("central", "eccentric", "occlusive")
            assert 20 <= embolus.defect_hu <= 70
            assert (embolus.z_range[0], embolus.z_range[1]) == (voxels[:, 0].min(), voxels[:, 0].max())
        assert np.array_equal(study.slice_labels, (study.mask > 0).any(axis=(1, 2)).astype(np.uint8))
    assert n_emboli >= 6
    # Elongated along the vessel: the biggest clot is longer than it is wide (in mm).
    study = max(clean_studies, key=lambda s: max(e.voxels for e in s.emboli))
    label = max(study.emboli, key=lambda e: e.voxels).label
    points = np.argwhere(study.mask == label) * np.asarray(study.spacing)
    spread = np.sqrt(np.linalg.eigvalsh(np.cov(points.T)))
    assert spread[-1] > 1.5 * spread[0]


def test_boxes_match_the_mask_slice_by_slice(cohort):
    _, rows = _read_csv(cohort / "boxes.csv")
    studies = json.loads((cohort / "cohort.json").read_text())["studies"]
    rows_per_slice = defaultdict(list)
    for row in rows:
        rows_per_slice[row["SOPInstanceUID"]].append(row)
    expected_rows = 0
    for study in studies:
        mask, affine = read_volume(cohort / study["mask"])
        series = _series(cohort, study["study_uid"])
        assert np.allclose(affine, study["geometry"]["affine"], atol=1e-5)
        arteries = {e["label"]: e["artery"] for e in study["emboli"]}
        for k, ds in enumerate(series):
            got = sorted((r["Artery"], int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"])) for r in rows_per_slice[ds.SOPInstanceUID])
            want = []
            for label in np.unique(mask[k])[1:]:
                ys, xs = np.nonzero(mask[k] == label)
                want.append((arteries[int(label)], int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
            assert got == sorted(want), f"slice {k} of {study['study_uid']}"
            expected_rows += len(want)
            for r in rows_per_slice[ds.SOPInstanceUID]:
                assert r["StudyInstanceUID"] == study["study_uid"] and r["SeriesInstanceUID"] == study["series_uid"]
    assert len(rows) == expected_rows > 0
    assert max(len(v) for v in rows_per_slice.values()) >= 2, "no slice with several emboli"
    assert list(_read_csv(cohort / "boxes.csv")[0]) == list(BOX_COLUMNS)


def test_embolus_boxes_are_tight():
    mask = np.zeros((3, 10, 12), dtype=np.uint8)
    mask[1, 2:5, 3:9] = 1
    mask[1, 6, 0] = 2
    mask[2, 7:9, 10:12] = 2
    boxes = [(b.slice_index, b.label, b.x, b.y, b.width, b.height) for b in embolus_boxes(mask)]
    assert boxes == [(1, 1, 3, 2, 6, 3), (1, 2, 0, 6, 1, 1), (2, 2, 10, 7, 2, 2)]


def test_train_csv_columns_and_exam_labels_are_consistent(cohort):
    columns, rows = _read_csv(cohort / "train.csv")
    assert columns == list(TRAIN_COLUMNS)
    studies = {s["study_uid"]: s for s in json.loads((cohort / "cohort.json").read_text())["studies"]}
    by_study = defaultdict(list)
    for row in rows:
        by_study[row["StudyInstanceUID"]].append(row)
    assert set(by_study) == set(studies)
    exam_columns = [c for c in TRAIN_COLUMNS[4:]]
    saw_negative = saw_positive = False
    for uid, study_rows in by_study.items():
        study = studies[uid]
        mask = read_volume(cohort / study["mask"])[0]
        sop_to_k = {ds.SOPInstanceUID: k for k, ds in enumerate(_series(cohort, uid))}
        assert len(study_rows) == len(sop_to_k) == mask.shape[0]
        for row in study_rows:
            assert int(row["pe_present_on_image"]) == int(mask[sop_to_k[row["SOPInstanceUID"]]].any())
            assert row["SeriesInstanceUID"] == study["series_uid"]
        exam = {c: {int(r[c]) for r in study_rows} for c in exam_columns}
        assert all(len(v) == 1 for v in exam.values()), "exam-level values differ between rows"
        exam = {c: v.pop() for c, v in exam.items()}
        positive = any(int(r["pe_present_on_image"]) for r in study_rows)
        assert exam["negative_exam_for_pe"] == int(not positive)
        assert exam["rv_lv_ratio_gte_1"] + exam["rv_lv_ratio_lt_1"] == int(positive)
        sides = {e["side"] for e in study["emboli"]}
        kinds = {e["kind"] for e in study["emboli"]}
        assert exam["leftsided_pe"] == int("L" in sides or "saddle" in kinds)
        assert exam["rightsided_pe"] == int("R" in sides or "saddle" in kinds)
        central = any(e["artery"] in ("Main PA", "Left PA", "Right PA") for e in study["emboli"])
        assert exam["central_pe"] == int(central)
        assert exam["flow_artifact"] == int(any(c["kind"] == "flow_artifact" for c in study["confounders"]))
        assert exam["qa_motion"] == exam["qa_contrast"] == exam["indeterminate"] == exam["chronic_pe"] == 0
        saw_negative |= not positive
        saw_positive |= positive
    assert saw_negative and saw_positive


def test_dicom_is_valid_ct_and_hu_round_trips(cohort):
    study = json.loads((cohort / "cohort.json").read_text())["studies"][0]
    generated = generate_study(study["index"], COHORT_SEED, COHORT_CONFIG)
    series = _series(cohort, study["study_uid"])
    assert len(series) == SMALL[0]
    hu = np.stack([ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in series])
    assert np.array_equal(hu, generated.hu)
    first = series[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert (first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation) == (16, 16, 15, 1)
    assert first.PhotometricInterpretation == "MONOCHROME2" and first.pixel_array.dtype == np.int16
    assert (first.Rows, first.Columns) == SMALL[1:]
    assert [int(ds.InstanceNumber) for ds in series] == list(range(SMALL[0], 0, -1))  # head to feet
    steps = np.diff([float(ds.ImagePositionPatient[2]) for ds in series])
    assert np.allclose(steps, float(first.SliceThickness))
    assert len({ds.StudyInstanceUID for ds in series}) == len({ds.FrameOfReferenceUID for ds in series}) == 1
    affine = affine_from_dicom(first.ImageOrientationPatient, first.ImagePositionPatient, first.PixelSpacing, (0.0, 0.0, steps[0]))
    assert np.allclose(read_volume(cohort / study["mask"])[1], affine, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hex12_uids(tmp_path):
    out = write_cohort(tmp_path / "H", 1, seed=1, config=PhantomConfig(shape=(12, 48, 48)), uid_style="hex12")
    study = json.loads((out / "cohort.json").read_text())["studies"][0]
    ds = _series(out, study["study_uid"])[0]
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert len(uid) == 12 and all(c in "0123456789abcdef" for c in uid)


def test_emboli_spread_over_the_arterial_levels():
    config = PhantomConfig(shape=(48, 96, 96), positive_rate=1.0)
    relative_z = []
    for index in range(5):
        study = generate_study(index, 0, config)
        relative_z += [e.centroid_zyx[0] / (study.hu.shape[0] - 1) for e in study.emboli]
    relative_z = np.array(relative_z)
    assert len(relative_z) >= 10
    # Not all at the hilum: emboli occupy many 10%-levels of the volume, spread over at least 40% of it.
    assert len(np.unique(np.floor(relative_z * 10))) >= 4
    assert relative_z.max() - relative_z.min() >= 0.4
    assert np.mean(np.abs(relative_z - np.median(relative_z)) < 0.05) < 0.7


def test_hu_thresholding_is_a_poor_detector():
    config = PhantomConfig(shape=(48, 128, 128), positive_rate=1.0, emboli_per_positive=(5, 5), emboli_count_weights=(1.0,))
    study = generate_study(0, 2, config)
    emboli = study.mask > 0
    assert len(study.emboli) == 5 and np.count_nonzero(emboli) > 200
    flagged = study.body_mask & (study.hu >= 20) & (study.hu <= 70)
    precision = np.count_nonzero(flagged & emboli) / np.count_nonzero(flagged)
    assert precision < 0.02, f"thresholding finds emboli with precision {precision:.3f}"
    assert np.count_nonzero(flagged & ~emboli) > 50 * np.count_nonzero(emboli)
    # Even knowing where the vessels are, most 20-70 HU voxels near them are mimics (partial volume,
    # unopacified veins, lymph nodes), not emboli.
    near_vessels = flagged & ndimage.binary_dilation(study.artery_mask | study.vein_mask, iterations=2)
    assert np.count_nonzero(near_vessels & emboli) / np.count_nonzero(near_vessels) < 0.5
    # Bone is brighter than contrast: thresholding contrast does not isolate the arteries either.
    bright = study.body_mask & (study.hu > 450)
    assert np.count_nonzero(bright & ~study.artery_mask) > np.count_nonzero(bright & study.artery_mask)
    # Mimics are present in negative studies too.
    negative = generate_study(0, 21, PhantomConfig(shape=(48, 128, 128), positive_rate=0.0))
    assert not negative.pe_present and negative.mask.max() == 0
    kinds = {c["kind"] for i in range(3) for c in generate_study(i, 21, PhantomConfig(shape=SMALL, positive_rate=0.0)).confounders}
    assert {"lymph_node", "unopacified_vein"} <= kinds


def test_resume_skips_finished_studies_and_rebuilds_tables(tmp_path):
    config = PhantomConfig(shape=(12, 48, 48))
    out = write_cohort(tmp_path / "R", 2, seed=2, config=config)
    tables = {name: (out / name).read_bytes() for name in ("train.csv", "boxes.csv", "cohort.json")}
    kept_uid, removed_uid = (study["study_uid"] for study in json.loads(tables["cohort.json"])["studies"])
    dicom = next((out / "train" / kept_uid).rglob("*.dcm"))
    stamp = dicom.stat().st_mtime_ns
    removed_files = {p.relative_to(out): p.read_bytes() for p in (out / "train" / removed_uid).rglob("*.dcm")}
    assert len(removed_files) == 12
    (out / "train.csv").unlink()
    (out / "boxes.csv").unlink()
    shutil.rmtree(out / "train" / removed_uid)  # the second study's DICOM series is lost
    (out / "train" / ".partial-leftover").mkdir()
    os.utime(dicom, ns=(stamp, stamp))
    write_cohort(out, 2, seed=2, config=config)
    assert dicom.stat().st_mtime_ns == stamp  # the finished study is skipped
    regenerated = {p.relative_to(out): p.read_bytes() for p in (out / "train" / removed_uid).rglob("*.dcm")}
    assert regenerated == removed_files  # the lost study is written again, identically
    for name, content in tables.items():
        assert (out / name).read_bytes() == content, name  # the tables are rebuilt byte for byte
    with pytest.raises(InputError, match="other settings"):
        write_cohort(out, 2, seed=3, config=config)
    with pytest.raises(InputError, match="beyond n_studies"):
        write_cohort(out, 1, seed=2, config=config)


def test_bad_settings_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="positive_rate"):
        PhantomConfig(positive_rate=1.5)
    with pytest.raises(InputError, match="shape"):
        PhantomConfig(shape=(4, 64, 64))
    with pytest.raises(InputError, match="uid_style"):
        write_cohort(tmp_path / "X", 1, uid_style="guid")
    with pytest.raises(InputError, match="non-negative"):
        generate_study(-1, 0)


def test_cli_writes_a_cohort(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "synthesize.py"), "--out_dir", str(out), "--n_studies", "1", "--seed", "4", "--shape", "12,48,48", "--positive_rate", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["studies"] == 1 and stats["slices"] == 12
    assert (out / "train.csv").exists() and (out / "boxes.csv").exists() and (out / "cohort.json").exists()
    clash = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "synthesize.py"), "--out_dir", str(out), "--n_studies", "1", "--seed", "5", "--shape", "12,48,48"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert clash.returncode == 2 and "differs in seed" in clash.stderr


def test_mimic_mask_holds_each_confounder_region():
    """``mimic_mask`` labels confounder ``k - 1`` with ``k``; its voxels are the ones the record counts."""
    found = set()
    for index in range(3):
        study = generate_study(index, 21, PhantomConfig(shape=(48, 128, 128), positive_rate=0.5))
        assert study.mimic_mask is not None and study.mimic_mask.shape == study.mask.shape and study.mimic_mask.dtype == np.int16
        regions = [c for c in study.confounders if c["kind"] != "partial_volume"]
        assert study.confounders[-1]["kind"] == "partial_volume"  # the diffuse entry comes last and has no region
        assert int(study.mimic_mask.max()) <= len(regions)
        labelled = 0
        for label, confounder in enumerate(regions, start=1):
            here = study.mimic_mask == label
            # overlapping mimics keep the first one's label, so a later region may hold fewer voxels
            assert np.count_nonzero(here) <= confounder["voxels"]
            labelled += confounder["voxels"] > 0 and np.count_nonzero(here) == confounder["voxels"]
            if confounder["kind"] == "flow_artifact":
                assert np.all(study.artery_mask[here]), "a flow artefact lies outside the arteries"
            if confounder["voxels"] and np.count_nonzero(here):
                z = np.flatnonzero(here.any(axis=(1, 2)))
                assert confounder["z_range"][0] <= z[0] and z[-1] <= confounder["z_range"][1]
            found.add(confounder["kind"])
        assert not np.any((study.mimic_mask > 0) & (study.mask > 0)), "a mimic region covers an embolus"
        if regions and regions[0]["voxels"]:
            assert np.count_nonzero(study.mimic_mask == 1) == regions[0]["voxels"]  # the first region loses nothing
        assert labelled >= len([c for c in regions if c["voxels"]]) - 1  # overlaps are the exception
    assert {"lymph_node", "unopacified_vein"} <= found
