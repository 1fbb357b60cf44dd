"""Write synthetic studies in the RSPECT layout: DICOM tree, ``train.csv``, box CSV, masks, ``cohort.json``.

Layout (docs/conventions.md)::

    D/train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   CT DICOM, int16 + rescale
    D/train.csv        Kaggle RSPECT columns, one row per slice, rows shuffled
    D/boxes.csv        StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, Artery, x, y, width, height
    D/masks/<StudyInstanceUID>.nii.gz   instance mask (k = embolus k) on the study grid
    D/cohort.json      per study: UIDs, geometry, contrast, noise, emboli, confounders
    D/records/<index>.json              per-study record; the CSVs and cohort.json are rebuilt from these

Each study is written into a temporary sibling folder and renamed into place, then its mask and
finally its record are written atomically: a crash never leaves half a study, and a rerun skips
every study whose record exists.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import uuid
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pydicom.valuerep import DSfloat

from custom.io.atomic import write_json_atomic, write_text_atomic
from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.synth.phantom import IMAGE_ORIENTATION, PhantomConfig, SyntheticStudy, generate_study

__all__ = ["BOX_COLUMNS", "RESCALE_INTERCEPT", "TRAIN_COLUMNS", "UID_STYLES", "exam_labels", "study_uids", "write_cohort", "write_study"]

TRAIN_COLUMNS: tuple[str, ...] = (
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
)
"""The columns of the Kaggle RSPECT ``train.csv``, in its order."""

BOX_COLUMNS: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Artery", "x", "y", "width", "height")
"""The columns of the RSPECT-augmented box CSV."""

UID_STYLES: tuple[str, ...] = ("dicom", "hex12")
"""``dicom``: valid ``2.25.<uuid>`` UIDs; ``hex12``: 12-character hex pseudo-UIDs like the public Kaggle data."""

RESCALE_INTERCEPT = -1024
"""Stored value = HU - RescaleIntercept (RescaleSlope 1)."""

_UID_NAMESPACE = uuid.UUID("0f6b1d2e-5b0c-4d5e-9a57-6a1c9e2f7d10")
_RECORD_FORMAT = "iexplain-synth-record/1"


def study_uids(seed: int, index: int, n_slices: int, uid_style: str = "dicom") -> dict:
    """Deterministic UIDs of one study.

    Args:
        seed: cohort seed.
        index: study index.
        n_slices: number of slices (one SOP Instance UID each, in slice order k).
        uid_style: one of ``UID_STYLES``.

    Returns:
        ``{"study", "series", "frame_of_reference", "sops": [...]}``.
    """
    if uid_style not in UID_STYLES:
        raise InputError(f"uid_style {uid_style!r}: expected one of {UID_STYLES}")

    def make(role: str) -> str:
        name = f"iexplain-synth/{seed}/{index}/{role}"
        if uid_style == "hex12":
            return hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"

    return {
        "study": make("study"),
        "series": make("series"),
        "frame_of_reference": make("frame"),
        "sops": [make(f"sop/{k}") for k in range(n_slices)],
    }


def exam_labels(study: SyntheticStudy) -> dict[str, int]:
    """Exam-level Kaggle labels consistent with the slice labels and the emboli.

    ``negative_exam_for_pe`` is 1 iff no slice is positive; central/left/right follow the emboli's
    arteries (a saddle embolus is central, left and right); the RV/LV flags are one-hot for
    positive exams and both 0 for negative ones (Kaggle convention); ``flow_artifact`` follows the
    study's flow-artefact mimics; every embolus is acute, and no QA problem is simulated.

    Args:
        study: the generated study.

    Returns:
        Column -> 0/1 for the exam-level columns of ``TRAIN_COLUMNS``.
    """
    positive = study.pe_present
    central = left = right = 0
    for embolus in study.emboli:
        if embolus.kind == "saddle":
            central = left = right = 1
        elif embolus.artery in ("Main PA", "Right PA", "Left PA"):
            central = 1
        if embolus.side == "L":
            left = 1
        elif embolus.side == "R":
            right = 1
    strain = int(positive and study.params["rv_lv_ratio"] >= 1.0)
    return {
        "negative_exam_for_pe": int(not positive),
        "qa_motion": 0,
        "qa_contrast": 0,
        "flow_artifact": int(any(c["kind"] == "flow_artifact" for c in study.confounders)),
        "rv_lv_ratio_gte_1": strain,
        "rv_lv_ratio_lt_1": int(positive) - strain,
        "leftsided_pe": left,
        "chronic_pe": 0,
        "true_filling_defect_not_pe": 0,
        "rightsided_pe": right,
        "acute_and_chronic_pe": 0,
        "central_pe": central,
        "indeterminate": 0,
    }


def _ds(value: float) -> DSfloat:
    return DSfloat(round(float(value), 4), auto_format=True)


def _slice_dataset(study: SyntheticStudy, uids: dict, k: int) -> Dataset:
    """The CT Image Storage dataset of slice ``k`` (0 = most inferior)."""
    nz, ny, nx = study.hu.shape
    sop = uids["sops"][k]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "iExplain synthetic phantom"
    ds.PatientName = f"Synthetic^Phantom{study.index:05d}"
    ds.PatientID = f"SYNTH-{study.seed}-{study.index:05d}"
    ds.StudyDate = "20000101"
    ds.StudyTime = "000000"
    ds.StudyID = str(study.index)
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Synthetic CTPA"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = nz - k  # head to feet, against our z order, like many scanners
    x, y, z = study.image_position(k)
    ds.ImagePositionPatient = [_ds(x), _ds(y), _ds(z)]
    ds.ImageOrientationPatient = [_ds(v) for v in IMAGE_ORIENTATION]
    ds.SliceLocation = _ds(z)
    ds.PixelSpacing = [_ds(study.spacing[1]), _ds(study.spacing[2])]
    ds.SliceThickness = _ds(study.spacing[0])
    ds.KVP = 100
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(RESCALE_INTERCEPT)
    ds.RescaleSlope = _ds(1)
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(100)
    ds.WindowWidth = _ds(700)
    stored = (study.hu[k] - RESCALE_INTERCEPT).astype(np.int16)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _study_entry(study: SyntheticStudy, uids: dict) -> dict:
    """The study's ``cohort.json`` entry."""
    nz, ny, nx = study.hu.shape
    return {
        "index": study.index,
        "study_uid": uids["study"],
        "series_uid": uids["series"],
        "frame_of_reference_uid": uids["frame_of_reference"],
        "mask": f"masks/{uids['study']}.nii.gz",
        "geometry": {
            "shape_zyx": [nz, ny, nx],
            "spacing_zyx": list(study.spacing),
            "pixel_spacing": [study.spacing[1], study.spacing[2]],
            "slice_thickness": study.spacing[0],
            "image_orientation": list(IMAGE_ORIENTATION),
            "first_position": [round(v, 4) for v in study.image_position(0)],
            "affine": study.affine().round(6).tolist(),
        },
        "pe_present": int(study.pe_present),
        "n_positive_slices": int(study.slice_labels.sum()),
        "artery_hu": study.params["artery_hu"],
        "vein_hu": study.params["vein_hu"],
        "left_heart_hu": study.params["left_heart_hu"],
        "noise_sd": study.params["noise_sd"],
        "blur_sigma": study.params["blur_sigma"],
        "rv_lv_ratio": study.params["rv_lv_ratio"],
        "emboli": [
            {
                "label": e.label,
                "kind": e.kind,
                "artery": e.artery,
                "side": e.side,
                "morphology": e.morphology,
                "defect_hu": e.defect_hu,
                "voxels": e.voxels,
                "mean_hu": e.mean_hu,
                "core_hu": e.core_hu,
                "z_range": list(e.z_range),
                "centroid_zyx": list(e.centroid_zyx),
            }
            for e in study.emboli
        ],
        "confounders": study.confounders,
    }


def _settings(seed: int, uid_style: str, config: PhantomConfig) -> dict:
    return {"seed": seed, "uid_style": uid_style, "config": json.loads(json.dumps(asdict(config)))}


def write_study(out_dir: str | os.PathLike, index: int, seed: int, config: PhantomConfig | None = None, uid_style: str = "dicom") -> Path:
    """Generate study ``index`` and write its DICOM series, mask and record (skipped when already written).

    Args:
        out_dir: cohort folder ``D``.
        index: study index.
        seed: cohort seed.
        config: phantom settings.
        uid_style: one of ``UID_STYLES``.

    Returns:
        The path of the study's record ``D/records/<index>.json``.
    """
    config = config or PhantomConfig()
    out = Path(out_dir)
    record_path = out / "records" / f"{index:06d}.json"
    settings = _settings(seed, uid_style, config)
    if record_path.exists():
        record = _read_record(record_path)
        if record["settings"] != settings:
            theirs, ours = record["settings"], settings
            changed = sorted(k for k in ("seed", "uid_style") if theirs.get(k) != ours[k])
            changed += sorted(f"config.{k}" for k in ours["config"] if theirs.get("config", {}).get(k) != ours["config"][k])
            raise InputError(f"{record_path}: written with other settings (differs in {', '.join(changed)}); use a new out_dir")
        if (out / "train" / record["study"]["study_uid"]).is_dir() and (out / record["study"]["mask"]).exists():
            return record_path
    study = generate_study(index, seed, config)
    uids = study_uids(seed, index, study.hu.shape[0], uid_style)
    final = out / "train" / uids["study"]
    partial = out / "train" / f".partial-{uids['study']}"
    shutil.rmtree(partial, ignore_errors=True)
    series_dir = partial / uids["series"]
    series_dir.mkdir(parents=True)
    order = np.random.default_rng([seed, index, 2]).permutation(study.hu.shape[0])
    try:
        with warnings.catch_warnings():
            # hex12 pseudo-UIDs (like the public Kaggle data) are not valid DICOM UIDs: pydicom warns.
            warnings.filterwarnings("ignore", message="Invalid value for VR UI")
            for k in order:  # files are written in arbitrary order
                _slice_dataset(study, uids, int(k)).save_as(series_dir / f"{uids['sops'][k]}.dcm", enforce_file_format=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    entry = _study_entry(study, uids)
    write_volume(out / entry["mask"], study.mask, study.affine(), dtype=np.uint8)
    record = {
        "format": _RECORD_FORMAT,
        "settings": settings,
        "study": entry,
        "sop_uids": uids["sops"],
        "slice_labels": study.slice_labels.astype(int).tolist(),
        "exam": exam_labels(study),
        "boxes": [
            [b.slice_index, study.emboli[b.label - 1].artery, b.x, b.y, b.width, b.height] for b in study.boxes()
        ],
    }
    write_json_atomic(record_path, record)
    return record_path


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: unreadable study record ({error})") from error
    if record.get("format") != _RECORD_FORMAT:
        raise InputError(f"{path}: not a synthetic study record (format {record.get('format')!r})")
    return record


def _write_study_job(args: tuple) -> str:
    return str(write_study(*args))


def write_cohort(
    out_dir: str | os.PathLike,
    n_studies: int,
    seed: int = 0,
    config: PhantomConfig | None = None,
    workers: int = 1,
    uid_style: str = "dicom",
) -> Path:
    """Write a synthetic cohort (resumable): studies ``0 .. n_studies - 1``, then the CSVs and ``cohort.json``.

    Args:
        out_dir: cohort folder ``D`` (created if missing).
        n_studies: number of studies.
        seed: cohort seed; study ``i`` depends only on ``(seed, i, config)``.
        config: phantom settings.
        workers: processes generating studies in parallel (results do not depend on it).
        uid_style: one of ``UID_STYLES``.

    Returns:
        ``out_dir`` as a path.
    """
    config = config or PhantomConfig()
    if n_studies < 1:
        raise InputError(f"{out_dir}: n_studies must be at least 1, got {n_studies}")
    if workers < 1:
        raise InputError(f"{out_dir}: workers must be at least 1, got {workers}")
    if uid_style not in UID_STYLES:
        raise InputError(f"{out_dir}: uid_style {uid_style!r} is not one of {UID_STYLES}")
    out = Path(out_dir)
    extra = sorted(p.name for p in (out / "records").glob("*.json") if p.stem.isdigit() and int(p.stem) >= n_studies)
    if extra:
        raise InputError(f"{out}: holds records of studies beyond n_studies={n_studies} ({extra[0]} ...); use a new out_dir or more studies")
    jobs = [(str(out), index, seed, config, uid_style) for index in range(n_studies)]
    if workers == 1:
        records = [_write_study_job(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            records = list(pool.map(_write_study_job, jobs))
    _write_tables(out, [_read_record(Path(p)) for p in records], seed, uid_style, config)
    return out


def _write_tables(out: Path, records: list[dict], seed: int, uid_style: str, config: PhantomConfig) -> None:
    """``train.csv`` (rows shuffled), ``boxes.csv`` and ``cohort.json`` from the per-study records."""
    rows = []
    for record in records:
        study = record["study"]
        for sop, label in zip(record["sop_uids"], record["slice_labels"]):
            rows.append({"StudyInstanceUID": study["study_uid"], "SeriesInstanceUID": study["series_uid"], "SOPInstanceUID": sop, "pe_present_on_image": label, **record["exam"]})
    order = np.random.default_rng([seed, len(records), 3]).permutation(len(rows))
    write_text_atomic(out / "train.csv", _csv(TRAIN_COLUMNS, [rows[i] for i in order]))
    boxes = []
    for record in records:
        study = record["study"]
        for k, artery, x, y, width, height in record["boxes"]:
            boxes.append(
                {"StudyInstanceUID": study["study_uid"], "SeriesInstanceUID": study["series_uid"], "SOPInstanceUID": record["sop_uids"][k], "Artery": artery, "x": x, "y": y, "width": width, "height": height}
            )
    write_text_atomic(out / "boxes.csv", _csv(BOX_COLUMNS, boxes))
    cohort = {"format": "iexplain-synth-cohort/1", "n_studies": len(records), **_settings(seed, uid_style, config), "studies": [r["study"] for r in records]}
    write_json_atomic(out / "cohort.json", cohort)


def _csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
