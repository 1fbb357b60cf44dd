"""``prepare``: an RSPECT-layout cohort -> NIfTI images, box masks, slice labels and a MONAI datalist.

Issue 2 item 4 and issue 12. Each study folder is read once with
:func:`custom.io.dicom.read_ct_series` (the series the label CSV names, else the CT series with
most slices) and written as ``O/images/<StudyInstanceUID>.nii.gz`` (int16 HU);
``O/labels/<StudyInstanceUID>.nii.gz`` (uint8, union of every filled box of each slice) where a box
CSV is given; ``O/datalist.json`` (docs/conventions.md) with a seeded train/validation/test split
by study, stratified by ``pe_present``; ``O/failures.json``.

A study folder's CSV rows are found by the ``StudyInstanceUID`` of its DICOM files (the folder
name is only a fallback), so a folder not named by its UID keeps its labels and boxes.

Studies are independent: they run in parallel processes, a failing study is recorded and the
others go on, and a finished study (outputs plus ``O/records/<folder>.json`` whose input digest
matches: its CSV rows and its files' paths, sizes and modification times) is skipped on a rerun.
Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from custom.io.atomic import write_json_atomic
from custom.io.dicom import list_study_files, peek_study_uid, read_ct_series
from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.io.rspect import (
    Box,
    StudyLabels,
    box_mask,
    find_study_dirs,
    read_boxes,
    read_slice_labels,
    resolve_box_columns,
    slice_labels_in_order,
)

__all__ = ["PrepareReport", "build_datalist", "prepare_cohort", "prepare_study"]

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
"""Bumped when the outputs of a study change meaning; older records are then redone."""

_SAFE_UID = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class PrepareReport:
    """What :func:`prepare_cohort` did.

    Attributes:
        out_dir: the output folder.
        n_studies: study folders found.
        prepared: StudyInstanceUIDs converted in this run.
        skipped: StudyInstanceUIDs whose outputs were already complete (resumed).
        failures: ``{"folder", "study", "error"}`` per study that could not be prepared.
        datalist_path: ``O/datalist.json``.
        notes: cohort-level notes (CSV rows without a study folder, unlabeled studies).
    """

    out_dir: Path
    n_studies: int
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    datalist_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every study was prepared."""
        return not self.failures


@dataclass(frozen=True)
class _StudyTask:
    study_dir: Path
    out_dir: Path
    labels: StudyLabels | None
    boxes: tuple[Box, ...] | None
    labels_source: str | None
    boxes_source: str | None
    digest: str


def prepare_cohort(
    rspect_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    boxes_csv: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    split: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    workers: int = 2,
    box_columns: Mapping[str, str] | str | os.PathLike | None = None,
) -> PrepareReport:
    """Convert every study of an RSPECT-layout cohort; resumable, parallel, atomic.

    Args:
        rspect_dir: folder with ``train/`` and/or ``test/`` (``<Study>/<Series>/*.dcm``), or a folder
            that directly holds study folders.
        out_dir: output folder ``O`` (created).
        boxes_csv: RSPECT-augmented box CSV; when given, ``O/labels/<uid>.nii.gz`` is written
            (docs/conventions.md: boxes -> filled union per slice; no boxes and negative on every
            slice -> all-zero mask; positive without boxes -> no label).
        labels_csv: Kaggle label CSV; default ``<rspect_dir>/train.csv`` when it exists. Rows (and
            boxes) are matched to a study folder by the ``StudyInstanceUID`` of its DICOM files, by
            the folder name only when no rows name that UID. Studies without rows get no
            ``slice_labels`` and go to the ``test`` split.
        split: fractions ``(training, validation, test)`` of the labeled studies, summing to 1.
        seed: seed of the split (by study, stratified by ``pe_present``), an integer >= 0.
        workers: processes, an integer >= 1; 1 runs in this process.
        box_columns: box CSV column mapping (see :func:`custom.io.rspect.resolve_box_columns`).

    Returns:
        The :class:`PrepareReport`; ``O/datalist.json`` and ``O/failures.json`` are written even
        when some studies fail.

    Raises:
        InputError: the whole cohort is unusable, before any study is converted: ``rspect_dir``
            has no study folders; a CSV is missing or lacks a required column; a box CSV row is
            bad (see :func:`custom.io.rspect.read_boxes`); the label CSV labels none of the study
            folders (e.g. a header only); ``split``, ``seed`` or ``workers`` is invalid. After the
            studies: a label CSV is in use but the training split is empty (``failures.json`` is
            written, ``datalist.json`` is not). Problems of one study never raise: they are failures.
    """
    root = Path(rspect_dir)
    out = Path(out_dir)
    fractions = _check_split(split)
    seed = _check_seed(seed)
    workers = _check_workers(workers)
    study_dirs = find_study_dirs(root)
    labels_defaulted = labels_csv is None and (root / "train.csv").is_file()
    if labels_defaulted:
        labels_csv = root / "train.csv"
    labels = read_slice_labels(labels_csv) if labels_csv is not None else {}
    columns = resolve_box_columns(box_columns) if boxes_csv is not None else None
    boxes = read_boxes(boxes_csv, columns) if boxes_csv is not None else None
    report = PrepareReport(out_dir=out, n_studies=len(study_dirs))

    tasks = []
    for study_dir in study_dirs:
        files = list_study_files(study_dir)
        peeked = peek_study_uid(files) if labels or boxes else None
        key = _csv_key(study_dir.name, peeked[0] if peeked else None, labels, boxes or {})
        study_labels = labels.get(key)
        study_boxes = None if boxes is None else tuple(boxes.get(key, ()))
        digest = _digest(study_labels, study_boxes, _file_stats(study_dir, files))
        tasks.append(_StudyTask(study_dir, out, study_labels, study_boxes, _str(labels_csv), _str(boxes_csv), digest))

    labels_in_use = labels_csv is not None
    if labels_in_use and not any(task.labels is not None for task in tasks):
        if labels_defaulted and all(d.parent == root / "test" for d in study_dirs):
            report.notes.append(f"{labels_csv}: labels none of the test/ studies; they are prepared unlabeled")
            labels_in_use = False
        else:
            raise InputError(_unmatched_labels_message(labels_csv, labels, root, len(study_dirs)))
    used = {task.labels.study_uid for task in tasks if task.labels is not None}
    orphan_labels = sorted(set(labels) - used)
    if orphan_labels:
        report.notes.append(
            f"{labels_csv}: {len(orphan_labels)} studies have label rows but no study folder with that "
            f"StudyInstanceUID (or folder name) (e.g. {', '.join(orphan_labels[:3])})"
        )
    if boxes:
        used_boxes = {box.study_uid for task in tasks for box in (task.boxes or ())}
        orphan_boxes = sorted(set(boxes) - used_boxes)
        if orphan_boxes:
            report.notes.append(
                f"{boxes_csv}: {len(orphan_boxes)} studies have boxes but no study folder with that "
                f"StudyInstanceUID (or folder name) (e.g. {', '.join(orphan_boxes[:3])})"
            )

    records: dict[Path, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        record = _finished_record(task)
        if record is not None:
            records[task.study_dir] = record
            logger.info("%s: already prepared, skipped", task.study_dir.name)
        else:
            todo.append(task)
    for task, record in _run(todo, workers):
        records[task.study_dir] = record
        _log_record(task, record)
    _fail_duplicate_uids(records)
    done_now = {task.study_dir for task in todo}
    for task in tasks:
        record = records[task.study_dir]
        if record["status"] == "ok":
            (report.prepared if task.study_dir in done_now else report.skipped).append(record["study_uid"])

    report.failures = [
        {"folder": str(task.study_dir), "study": task.study_dir.name, "error": records[task.study_dir]["error"]}
        for task in tasks
        if records[task.study_dir]["status"] != "ok"
    ]
    ok_records = [records[task.study_dir] for task in tasks if records[task.study_dir]["status"] == "ok"]
    unlabeled = [r["study_uid"] for r in ok_records if "slice_labels" not in r]
    if unlabeled:
        report.notes.append(
            f"{len(unlabeled)} studies have no slice labels; they go to the test split (e.g. "
            f"{', '.join(unlabeled[:3])})"
        )
    meta = {
        "rspect_dir": str(root),
        "labels_csv": _str(labels_csv),
        "boxes_csv": _str(boxes_csv),
        "box_columns": columns,
        "n_study_folders": len(study_dirs),
        "failed_studies": [f["study"] for f in report.failures],
        "unlabeled_studies": unlabeled,
        "notes": report.notes,
    }
    datalist = build_datalist(ok_records, fractions, seed, meta)
    if labels_in_use and fractions[0] > 0 and not datalist["training"]:
        write_json_atomic(out / "failures.json", report.failures)
        (out / "datalist.json").unlink(missing_ok=True)  # never leave an earlier run's datalist beside this failure
        n_labeled = sum(1 for r in ok_records if "pe_present" in r)
        example = f"; e.g. {report.failures[0]['study']}: {report.failures[0]['error']}" if report.failures else ""
        raise InputError(
            f"{labels_csv}: the training split is empty: {n_labeled} labeled studies prepared, "
            f"{len(report.failures)} of {len(study_dirs)} studies failed (see {out / 'failures.json'}{example}); "
            f"split {list(fractions)}"
        )
    report.datalist_path = out / "datalist.json"
    write_json_atomic(report.datalist_path, datalist)
    write_json_atomic(out / "failures.json", report.failures)
    return report


def prepare_study(
    study_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels: StudyLabels | None = None,
    boxes: Sequence[Box] | None = None,
    labels_source: str = "label CSV",
    boxes_source: str = "box CSV",
) -> dict[str, Any]:
    """Convert one study folder; raises on bad input (no record is written).

    Args:
        study_dir: ``<Study>/`` folder (all series below it are considered).
        out_dir: output folder ``O``.
        labels: the study's label rows, or ``None`` (no slice labels).
        boxes: the study's boxes, or ``None`` when no box CSV is given (then no label file).
        labels_source, boxes_source: names of the CSVs, for messages.

    Returns:
        The study's datalist entry (docs/conventions.md) plus ``notes``, ``shape_zyx``,
        ``spacing_zyx`` and ``transfer_syntaxes``.

    Raises:
        InputError: see :func:`custom.io.dicom.read_ct_series` and :mod:`custom.io.rspect`; also
            label rows or boxes filed under a study that is neither the series' StudyInstanceUID
            nor the folder name, and boxes naming another series than the one prepared.
    """
    study_dir, out = Path(study_dir), Path(out_dir)
    series_uid = None
    if labels is not None:
        named = sorted(labels.series_uids - {""})
        if len(named) > 1:
            raise InputError(
                f"{labels_source}: study {labels.study_uid} names {len(named)} series ({', '.join(named)}); one "
                "expected"
            )
        series_uid = named[0] if named else None
    series = read_ct_series(study_dir, series_uid=series_uid, dtype=np.int16)  # rounded and range-checked
    uid = series.study_uid
    if not _SAFE_UID.match(uid):
        raise InputError(
            f"{study_dir}: StudyInstanceUID {uid!r} cannot name a file (letters, digits, '.', '_', '-' only)"
        )
    notes = ([f"{study_dir}: the label CSV names series {series_uid}"] if series_uid else []) + list(series.notes)
    if uid != study_dir.name:
        notes.append(
            f"{study_dir}: folder name differs from the StudyInstanceUID {uid}; outputs are named by the UID and CSV "
            "rows are matched by it"
        )
    notes += _check_rows_belong(study_dir, uid, series.series_uid, labels, boxes, labels_source, boxes_source)
    entry: dict[str, Any] = {
        "image": f"images/{uid}.nii.gz",
        "study_uid": uid,
        "series_uid": series.series_uid,
        "n_slices": series.n_slices,
    }
    slice_labels = slice_labels_in_order(series.sop_uids, labels, labels_source) if labels is not None else None
    if slice_labels is not None:
        entry["slice_labels"] = slice_labels
        entry["pe_present"] = int(any(slice_labels))

    mask = None
    if boxes is not None:
        if boxes:
            mask, box_notes = box_mask(
                series.sop_uids, series.volume_zyx.shape[1:], boxes, boxes_source, series_uid=series.series_uid
            )
            notes += box_notes
            if slice_labels is not None:
                boxed_negative = int(sum(1 for k, label in enumerate(slice_labels) if label == 0 and mask[k].any()))
                if boxed_negative:
                    notes.append(
                        f"{study_dir}: {boxed_negative} slice(s) with boxes are labelled pe_present_on_image = 0"
                    )
        elif slice_labels is not None and not any(slice_labels):
            mask = np.zeros(series.volume_zyx.shape, dtype=np.uint8)
        else:
            notes.append(
                f"{study_dir}: {'positive' if slice_labels else 'unlabeled'} study without boxes: no label file"
            )

    write_volume(out / entry["image"], series.volume_zyx, series.affine)
    if mask is not None:
        entry["label"] = f"labels/{uid}.nii.gz"
        write_volume(out / entry["label"], mask, series.affine, dtype=np.uint8)
    elif (out / f"labels/{uid}.nii.gz").exists():
        (out / f"labels/{uid}.nii.gz").unlink()  # stale label of an earlier run with other boxes
    entry.update(
        notes=notes,
        shape_zyx=list(series.volume_zyx.shape),
        spacing_zyx=list(series.spacing_zyx),
        transfer_syntaxes=list(series.transfer_syntaxes),
    )
    return entry


def build_datalist(
    records: Sequence[Mapping[str, Any]], split: Sequence[float], seed: int, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The MONAI datalist (``load_decathlon_datalist`` style) of prepared studies.

    Args:
        records: per-study records of :func:`prepare_study` (datalist entry fields plus extras).
        split: fractions ``(training, validation, test)`` of the labeled studies.
        seed: seed of the split. Studies are split within each ``pe_present`` stratum, so each
            part keeps the cohort's positive rate; unlabeled studies all go to ``test``. The split
            depends only on the set of studies, their ``pe_present`` and the seed.
        meta: extra ``meta`` fields.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "meta": {...}}``, entries sorted
        by ``study_uid`` within each part.
    """
    fractions = _check_split(split)
    seed = _check_seed(seed)
    keys = ("image", "label", "study_uid", "series_uid", "n_slices", "slice_labels", "pe_present")
    entries = {r["study_uid"]: {k: r[k] for k in keys if k in r} for r in records}
    parts: dict[str, list[str]] = {"training": [], "validation": [], "test": []}
    rng = np.random.default_rng(seed)
    for stratum in (0, 1):
        uids = sorted(uid for uid, e in entries.items() if e.get("pe_present") == stratum)
        uids = [uids[i] for i in rng.permutation(len(uids))]
        n_train = round(len(uids) * fractions[0])
        n_val = round(len(uids) * (fractions[0] + fractions[1])) - n_train
        parts["training"] += uids[:n_train]
        parts["validation"] += uids[n_train : n_train + n_val]
        parts["test"] += uids[n_train + n_val :]
    parts["test"] += [uid for uid, e in entries.items() if "pe_present" not in e]
    datalist: dict[str, Any] = {name: [entries[uid] for uid in sorted(uids)] for name, uids in parts.items()}
    datalist["meta"] = {
        **(meta or {}),
        "split": {"fractions": list(fractions), "seed": seed, "stratified_by": "pe_present", "unlabeled": "test"},
        "n_studies": {name: len(uids) for name, uids in parts.items()},
        "image": "int16 HU, NIfTI (X, Y, Z) + RAS affine; slices sorted along the slice normal",
        "slice_labels": "pe_present_on_image of slice k in sorted order",
    }
    return datalist


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in split)
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise InputError(
            f"split must be three non-negative fractions (training, validation, test) summing to 1, got {tuple(split)}"
        )
    return values  # type: ignore[return-value]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r} ({type(seed).__name__})")
    return int(seed)


def _check_workers(workers: Any) -> int:
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise InputError(f"workers must be an integer >= 1 (processes), got {workers!r} ({type(workers).__name__})")
    return int(workers)


def _csv_key(folder_name: str, dicom_uid: str | None, labels: Mapping[str, Any], boxes: Mapping[str, Any]) -> str:
    """The CSV study key of a folder: its DICOM StudyInstanceUID, the folder name only when no row names the UID."""
    if dicom_uid is not None and (dicom_uid in labels or dicom_uid in boxes):
        return dicom_uid
    if folder_name in labels or folder_name in boxes:
        return folder_name
    return dicom_uid or folder_name


def _unmatched_labels_message(
    labels_csv: str | os.PathLike, labels: Mapping[str, StudyLabels], root: Path, n_folders: int
) -> str:
    if not labels:
        return (
            f"{labels_csv}: no label rows (a header only?): none of the {n_folders} studies under {root} would be "
            "labeled, so the training and validation splits would be empty"
        )
    return (
        f"{labels_csv}: labels none of the {n_folders} study folders under {root}: its {len(labels)} studies (e.g. "
        f"{', '.join(sorted(labels)[:3])}) match no folder's StudyInstanceUID (read from its DICOM files) nor "
        "folder name"
    )


def _check_rows_belong(
    study_dir: Path,
    uid: str,
    series_uid: str,
    labels: StudyLabels | None,
    boxes: Sequence[Box] | None,
    labels_source: str,
    boxes_source: str,
) -> list[str]:
    """Raise when label rows or boxes were filed under another study; note a match by folder name."""
    accepted = {uid, study_dir.name}
    notes = []
    if labels is not None:
        if labels.study_uid not in accepted:
            raise InputError(
                f"{labels_source}: label rows of study {labels.study_uid} were matched to {study_dir}, but its series "
                f"{series_uid} has StudyInstanceUID {uid} (files of another study in the folder?)"
            )
        if labels.study_uid != uid:
            notes.append(
                f"{study_dir}: label rows matched by the folder name {labels.study_uid}; no row names the "
                f"StudyInstanceUID {uid}"
            )
    for box in boxes or ():
        if box.study_uid not in accepted:
            raise InputError(
                f"{boxes_source}:{box.line}: box of study {box.study_uid} was matched to {study_dir}, but its series "
                f"{series_uid} has StudyInstanceUID {uid} (files of another study in the folder?)"
            )
    if boxes and any(box.study_uid != uid for box in boxes):
        notes.append(
            f"{study_dir}: boxes matched by the folder name {study_dir.name}; no box names the StudyInstanceUID {uid}"
        )
    return notes


def _file_stats(study_dir: Path, files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of each file (``os.stat`` only, nothing is read)."""
    stats = []
    for path in files:
        try:
            stat = path.stat()
        except OSError:  # vanished since listed: the study's read reports it
            continue
        stats.append((path.relative_to(study_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    return stats


def _str(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(path)


def _digest(
    labels: StudyLabels | None, boxes: tuple[Box, ...] | None, files: Sequence[tuple[str, int, int]] = ()
) -> str:
    """Fingerprint of what a study's outputs depend on: its CSV rows and its files (path, size, mtime)."""
    content = {
        "version": RECORD_VERSION,
        "files": [list(f) for f in files],
        "labels": (
            None if labels is None else [sorted(labels.series_uids), sorted(labels.sop_labels.items()), labels.errors]
        ),
        "boxes": None if boxes is None else [asdict(b) for b in boxes],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _record_path(task: _StudyTask) -> Path:
    return task.out_dir / "records" / f"{task.study_dir.name}.json"


def _finished_record(task: _StudyTask) -> dict[str, Any] | None:
    path = _record_path(task)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("status") != "ok" or record.get("digest") != task.digest:
        return None
    if not all((task.out_dir / record[key]).is_file() for key in ("image", "label") if key in record):
        return None
    return record


def _prepare_task(task: _StudyTask) -> dict[str, Any]:
    """Worker entry: never raises; a failure is returned as a record."""
    record_path = _record_path(task)
    try:
        entry = prepare_study(
            task.study_dir,
            task.out_dir,
            task.labels,
            task.boxes,
            task.labels_source or "label CSV",
            task.boxes_source or "box CSV",
        )
    except InputError as err:
        record_path.unlink(missing_ok=True)
        return {"status": "failed", "error": str(err)}
    except Exception as err:  # one broken study must not stop the cohort; the message says what broke
        record_path.unlink(missing_ok=True)
        return {"status": "failed", "error": f"{task.study_dir}: unexpected {type(err).__name__}: {err}"}
    record = {"status": "ok", "folder": str(task.study_dir), "digest": task.digest, **entry}
    write_json_atomic(record_path, record)
    return record


def _run(tasks: Sequence[_StudyTask], workers: int) -> list[tuple[_StudyTask, dict[str, Any]]]:
    if workers <= 1 or len(tasks) <= 1:
        return [(task, _prepare_task(task)) for task in tasks]
    results = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        futures = {pool.submit(_prepare_task, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                record = future.result()
            except Exception as err:  # a worker died (killed, out of memory): the study fails, the others go on
                record = {
                    "status": "failed",
                    "error": f"{task.study_dir}: worker process failed ({type(err).__name__}: {err})",
                }
            results.append((task, record))
    return results


def _fail_duplicate_uids(records: dict[Path, dict[str, Any]]) -> None:
    by_uid: dict[str, list[Path]] = {}
    for folder, record in records.items():
        if record["status"] == "ok":
            by_uid.setdefault(record["study_uid"], []).append(folder)
    for uid, folders in by_uid.items():
        if len(folders) > 1:
            for folder in folders:
                others = ", ".join(str(f) for f in folders if f != folder)
                records[folder] = {
                    "status": "failed",
                    "error": f"{folder}: StudyInstanceUID {uid} is also the study of {others}; outputs would collide",
                }


def _log_record(task: _StudyTask, record: Mapping[str, Any]) -> None:
    if record["status"] != "ok":
        logger.error("%s: FAILED: %s", task.study_dir.name, record["error"])
        return
    logger.info("%s: prepared %s (%d slices)", task.study_dir.name, record["study_uid"], record["n_slices"])
    for note in record.get("notes", []):
        logger.info("%s: %s", task.study_dir.name, note)
