"""The RSPECT (RSNA STR Pulmonary Embolism CT) layout, its label CSV and the box CSV.

Layout (Kaggle release): ``train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
with ``train.csv`` (one row per slice, ``pe_present_on_image``); the test set uses the same
layout under ``test/``. The RSPECT-augmented box CSV has one row per box (several rows per slice
where several emboli cross it): ``StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, Artery,
x, y, width, height`` in pixels of the slice as stored (``x`` = column; a box covers columns
``[x, x + width)`` and rows ``[y, y + height)``, docs/conventions.md). Its column names are not
confirmed for the public release, so they are configurable.

UIDs are opaque strings everywhere (the public data uses 12-character hex pseudo-UIDs): the CSVs
are read with the ``csv`` module, never with type inference.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from custom.io.errors import InputError

__all__ = [
    "BOX_COLUMNS_OPTIONAL",
    "BOX_COLUMNS_REQUIRED",
    "DEFAULT_BOX_COLUMNS",
    "LABEL_COLUMNS",
    "Box",
    "StudyLabels",
    "box_mask",
    "find_study_dirs",
    "read_boxes",
    "read_slice_labels",
    "resolve_box_columns",
    "slice_labels_in_order",
]

LABEL_COLUMNS: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image")
"""Columns of the Kaggle label CSV that the slice labels need (the exam-level columns are not read)."""

BOX_COLUMNS_REQUIRED: tuple[str, ...] = ("StudyInstanceUID", "SOPInstanceUID", "x", "y", "width", "height")
BOX_COLUMNS_OPTIONAL: tuple[str, ...] = ("SeriesInstanceUID", "Artery")
DEFAULT_BOX_COLUMNS: dict[str, str] = {
    name: name
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Artery", "x", "y", "width", "height")
}
"""Field -> CSV column name of the box CSV; override any subset with ``box_columns``."""

_SPLIT_DIRS = ("train", "test")


@dataclass
class StudyLabels:
    """Slice labels of one study from the label CSV.

    Attributes:
        study_uid: ``StudyInstanceUID``.
        series_uids: the series the rows name (normally one).
        sop_labels: ``SOPInstanceUID`` -> ``pe_present_on_image`` (0 or 1).
        errors: problems found in this study's rows (the study fails, the others go on).
    """

    study_uid: str
    series_uids: set[str] = field(default_factory=set)
    sop_labels: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Box:
    """One row of the box CSV, in pixels of the slice as stored.

    Attributes:
        study_uid, series_uid, sop_uid: the slice (``series_uid`` is ``None`` when the CSV has no
            series column).
        artery: the ``Artery`` value, or ``None``.
        x, y, width, height: the box covers columns ``[x, x + width)``, rows ``[y, y + height)``.
        line: its line in the CSV, for messages.
    """

    study_uid: str
    series_uid: str | None
    sop_uid: str
    artery: str | None
    x: float
    y: float
    width: float
    height: float
    line: int


def find_study_dirs(rspect_dir: str | os.PathLike) -> list[Path]:
    """Study folders of an RSPECT-layout cohort.

    Args:
        rspect_dir: a folder holding ``train/`` and/or ``test/`` (each holding study folders), or a
            folder that directly holds study folders (``<Study>/<Series>/*.dcm``).

    Returns:
        The study folders, ``train/`` ones first, each group sorted by name. Hidden folders are skipped.

    Raises:
        InputError: ``rspect_dir`` is not a folder or holds no study folder.
    """
    root = Path(rspect_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    parents = [root / name for name in _SPLIT_DIRS if (root / name).is_dir()] or [root]
    studies = [
        child
        for parent in parents
        for child in sorted(parent.iterdir())
        if child.is_dir() and not child.name.startswith(".")
    ]
    if not studies:
        raise InputError(
            f"{root}: no study folders (expected train/<Study>/<Series>/*.dcm, test/<Study>/..., or "
            "<Study>/<Series>/*.dcm)"
        )
    return studies


def _open_csv(
    path: Path, required: Sequence[str], wanted_by: Mapping[str, str] | None = None
) -> tuple[Iterable[dict[str, str]], list[str]]:
    if not path.is_file():
        raise InputError(f"{path}: CSV file not found")
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle)
    found = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = found
    missing = [name for name in required if name not in found]
    if missing:
        handle.close()
        described = ", ".join(
            f"'{name}'" + (f" (for {wanted_by[name]})" if wanted_by and wanted_by[name] != name else "")
            for name in missing
        )
        raise InputError(f"{path}: missing required column(s) {described}; columns found: {found}")

    def rows() -> Iterable[dict[str, str]]:
        with handle:
            yield from reader

    return rows(), found


def read_slice_labels(labels_csv: str | os.PathLike) -> dict[str, StudyLabels]:
    """Per-slice PE labels of the Kaggle RSPECT label CSV (``train.csv``).

    Args:
        labels_csv: CSV with at least :data:`LABEL_COLUMNS`; rows in any order.

    Returns:
        ``StudyInstanceUID`` -> :class:`StudyLabels`. A bad row (label not 0/1, conflicting
        duplicate) is recorded in that study's ``errors`` so only that study fails.

    Raises:
        InputError: the file is missing or lacks a required column (the message lists the columns found).
    """
    path = Path(labels_csv)
    rows, _ = _open_csv(path, LABEL_COLUMNS)
    studies: dict[str, StudyLabels] = {}
    for line, row in enumerate(rows, start=2):
        study_uid = (row["StudyInstanceUID"] or "").strip()
        sop_uid = (row["SOPInstanceUID"] or "").strip()
        if not study_uid:
            raise InputError(f"{path}:{line}: empty StudyInstanceUID")
        labels = studies.setdefault(study_uid, StudyLabels(study_uid))
        labels.series_uids.add((row["SeriesInstanceUID"] or "").strip())
        raw = (row["pe_present_on_image"] or "").strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if value not in (0.0, 1.0) or not sop_uid:
            labels.errors.append(
                f"{path}:{line}: study {study_uid}: pe_present_on_image must be 0 or 1 with a SOPInstanceUID, got "
                f"{raw!r} for {sop_uid!r}"
            )
            continue
        previous = labels.sop_labels.setdefault(sop_uid, int(value))
        if previous != int(value):
            labels.errors.append(
                f"{path}:{line}: study {study_uid}: SOPInstanceUID {sop_uid} has labels {previous} and {int(value)}"
            )
    return studies


def resolve_box_columns(box_columns: Mapping[str, str] | str | os.PathLike | None = None) -> dict[str, str]:
    """The box CSV column mapping: :data:`DEFAULT_BOX_COLUMNS` updated with ``box_columns``.

    Args:
        box_columns: ``{field: csv_column}`` for the fields whose column is named differently
            (fields: ``StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, Artery, x, y, width,
            height``), or the path of a JSON file holding such a mapping, or ``None``.

    Returns:
        The full mapping field -> CSV column name.

    Raises:
        InputError: an unknown field, a non-string column name, or an unreadable mapping file.
    """
    if box_columns is None:
        return dict(DEFAULT_BOX_COLUMNS)
    if isinstance(box_columns, (str, os.PathLike)):
        path = Path(box_columns)
        try:
            box_columns = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: cannot read the box column mapping ({err})") from None
        if not isinstance(box_columns, dict):
            raise InputError(f"{path}: the box column mapping must be a JSON object field -> column")
    unknown = sorted(set(box_columns) - set(DEFAULT_BOX_COLUMNS))
    if unknown:
        raise InputError(f"box column mapping: unknown field(s) {unknown}; fields are {list(DEFAULT_BOX_COLUMNS)}")
    if not all(isinstance(v, str) and v for v in box_columns.values()):
        raise InputError(f"box column mapping: column names must be non-empty strings, got {dict(box_columns)}")
    return {**DEFAULT_BOX_COLUMNS, **box_columns}


def read_boxes(
    boxes_csv: str | os.PathLike, box_columns: Mapping[str, str] | str | os.PathLike | None = None
) -> dict[str, list[Box]]:
    """Boxes of the RSPECT-augmented box CSV, grouped by study.

    Args:
        boxes_csv: the box CSV (one row per box; several rows per slice are all kept).
        box_columns: column mapping, see :func:`resolve_box_columns`. ``SeriesInstanceUID`` and
            ``Artery`` are optional columns; the others are required.

    Returns:
        ``StudyInstanceUID`` -> its boxes in file order. Rows whose four coordinates are all empty
        (a slice listed without a box) are skipped.

    Raises:
        InputError: the file is missing, a required column is missing (the message lists the
            columns found), or a row has a non-numeric, partly empty, non-finite or non-positive box.
    """
    path = Path(boxes_csv)
    columns = resolve_box_columns(box_columns)
    required = [columns[name] for name in BOX_COLUMNS_REQUIRED]
    rows, found = _open_csv(path, required, wanted_by={columns[name]: name for name in BOX_COLUMNS_REQUIRED})
    series_column = columns["SeriesInstanceUID"] if columns["SeriesInstanceUID"] in found else None
    artery_column = columns["Artery"] if columns["Artery"] in found else None
    boxes: dict[str, list[Box]] = {}
    for line, row in enumerate(rows, start=2):
        raw = [(row[columns[name]] or "").strip() for name in ("x", "y", "width", "height")]
        if not any(raw):
            continue
        try:
            x, y, width, height = (float(v) for v in raw)
        except ValueError:
            raise InputError(f"{path}:{line}: box x, y, width, height must be numbers, got {raw}") from None
        if not all(math.isfinite(v) for v in (x, y, width, height)) or width <= 0 or height <= 0:
            raise InputError(
                f"{path}:{line}: invalid box x={x}, y={y}, width={width}, height={height} (finite, positive size "
                "expected)"
            )
        study_uid = (row[columns["StudyInstanceUID"]] or "").strip()
        sop_uid = (row[columns["SOPInstanceUID"]] or "").strip()
        if not study_uid or not sop_uid:
            raise InputError(f"{path}:{line}: empty StudyInstanceUID or SOPInstanceUID")
        boxes.setdefault(study_uid, []).append(
            Box(
                study_uid=study_uid,
                series_uid=(row[series_column] or "").strip() or None if series_column else None,
                sop_uid=sop_uid,
                artery=(row[artery_column] or "").strip() or None if artery_column else None,
                x=x,
                y=y,
                width=width,
                height=height,
                line=line,
            )
        )
    return boxes


def slice_labels_in_order(sop_uids: Sequence[str], labels: StudyLabels, source: str) -> list[int]:
    """The label of each slice in sorted order.

    Args:
        sop_uids: ``SOPInstanceUID`` of each slice, in sorted order (``CTSeries.sop_uids``).
        labels: the study's rows of the label CSV.
        source: the label CSV or study, for messages.

    Returns:
        ``pe_present_on_image`` of each slice, in the order of ``sop_uids``.

    Raises:
        InputError: the study's rows had errors, name SOPs that are not in the series, or leave
            slices of the series without a label.
    """
    if labels.errors:
        raise InputError(labels.errors[0] + (f" (and {len(labels.errors) - 1} more)" if len(labels.errors) > 1 else ""))
    known = set(sop_uids)
    unknown = sorted(set(labels.sop_labels) - known)
    if unknown:
        raise InputError(
            f"{source}: study {labels.study_uid}: {len(unknown)} label row(s) name SOPInstanceUIDs that are not in "
            "the series "
            f"(e.g. {', '.join(unknown[:3])})"
        )
    unlabeled = [sop for sop in sop_uids if sop not in labels.sop_labels]
    if unlabeled:
        raise InputError(
            f"{source}: study {labels.study_uid}: {len(unlabeled)} of {len(sop_uids)} slices have no label row (e.g. "
            f"{', '.join(unlabeled[:3])})"
        )
    return [labels.sop_labels[sop] for sop in sop_uids]


def box_mask(
    sop_uids: Sequence[str],
    shape_yx: tuple[int, int],
    boxes: Sequence[Box],
    source: str,
    series_uid: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Reference mask of a study: on each slice, the union of all its filled boxes.

    Args:
        sop_uids: ``SOPInstanceUID`` of each slice, in sorted order.
        shape_yx: ``(Rows, Columns)`` of the slices.
        boxes: the study's boxes (every row, several per slice allowed).
        source: the box CSV, for messages.
        series_uid: ``SeriesInstanceUID`` of the series the mask is for; a box whose CSV row names
            another series is rejected (boxes without a series column are not checked).

    Returns:
        ``(mask, notes)``: uint8 ``(Z, Y, X)`` mask (1 inside any box) and notes about boxes
        clipped at the image border. A box covers columns ``[x, x + width)`` and rows
        ``[y, y + height)``; with fractional coordinates, the pixels whose index lies in that range.

    Raises:
        InputError: a box names another series than ``series_uid`` or a SOP that is not in the
            series, or lies wholly outside the image; the message names the CSV line.
    """
    index = {sop: k for k, sop in enumerate(sop_uids)}
    rows, cols = shape_yx
    mask = np.zeros((len(sop_uids), rows, cols), dtype=np.uint8)
    notes = []
    for box in boxes:
        if series_uid is not None and box.series_uid is not None and box.series_uid != series_uid:
            raise InputError(
                f"{source}:{box.line}: study {box.study_uid}: box on SOPInstanceUID {box.sop_uid} of series "
                f"{box.series_uid}, but the prepared series is {series_uid}"
            )
        k = index.get(box.sop_uid)
        if k is None:
            raise InputError(
                f"{source}:{box.line}: study {box.study_uid}: box on SOPInstanceUID {box.sop_uid}, which is not in "
                "the series"
            )
        c0, c1 = math.ceil(box.x), math.ceil(box.x + box.width)
        r0, r1 = math.ceil(box.y), math.ceil(box.y + box.height)
        if c1 <= 0 or r1 <= 0 or c0 >= cols or r0 >= rows or c1 <= c0 or r1 <= r0:
            raise InputError(
                f"{source}:{box.line}: study {box.study_uid}: box x={box.x}, y={box.y}, width={box.width}, "
                f"height={box.height} "
                f"covers no pixel of the {rows}x{cols} slice {box.sop_uid}"
            )
        if c0 < 0 or r0 < 0 or c1 > cols or r1 > rows:
            notes.append(f"{source}:{box.line}: box clipped to the {rows}x{cols} image")
        mask[k, max(r0, 0) : min(r1, rows), max(c0, 0) : min(c1, cols)] = 1
    return mask, notes
