"""The studies the teacher runs on: datalist splits (studies named by ``custom.io.datalist.entry_uid``), windowed images and reference masks.

A datalist follows ``docs/conventions.md``: ``{"training": [...], "validation": [...], "test": [...]}``
with entries ``{"image": "images/<uid>.nii.gz", "label": "labels/<uid>.nii.gz", "study_uid": ...}``,
paths relative to the datalist's folder (MONAI's ``load_decathlon_datalist`` resolves them).

The teacher explains the classifier, so it windows the HU image exactly as the classifier's data
does (``custom.data.window_hu`` with the classifier config's ``window``, default level 100 / width 700).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist

from custom.data.minivolume import window_hu
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.nifti import read_checked_volume

__all__ = ["load_studies", "read_reference_mask", "read_windowed_image"]


def load_studies(
    datalist: str | os.PathLike,
    keys: str | Sequence[str] = ("training", "validation", "test"),
    base_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """The entries of one or several datalist splits, paths made absolute, each study once.

    Args:
        datalist: the ``datalist.json`` of a prepared cohort.
        keys: split name(s), e.g. ``"validation"`` or ``["training", "validation", "test"]``.
        base_dir: folder the entries' paths are relative to (default: the datalist's folder).

    Returns:
        The entries in split order, then datalist order; an entry gets ``"split"`` (its key). A study
        listed in two splits is kept once (its first occurrence).

    Raises:
        InputError: the datalist cannot be read, a split is missing, or an entry has no ``image``.
    """
    path = os.fspath(datalist)
    names = [keys] if isinstance(keys, str) else list(keys)
    try:
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the datalist ({error})") from error
    missing = [key for key in names if key not in content]
    if missing:
        raise InputError(f"{path}: no split {missing} in the datalist (it has {sorted(k for k in content if k != 'meta')})")
    studies, seen = [], set()
    for key in names:
        for entry in content[key]:
            if not isinstance(entry, dict) or not entry.get("image"):
                raise InputError(f"{path}: a {key!r} entry has no 'image': {entry}")
        if not content[key]:
            continue
        # is_segmentation: ``label`` is a path relative to base_dir as well
        for entry in load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir):
            uid = entry_uid(entry)
            if uid in seen:
                continue
            seen.add(uid)
            studies.append({**entry, "split": key})
    return studies


def read_windowed_image(entry: Mapping[str, Any], window: Sequence[float] = (100.0, 700.0)) -> tuple[np.ndarray, np.ndarray]:
    """The study's HU image windowed to [0, 1] like the classifier's input, and its affine.

    Args:
        entry: a datalist entry with an absolute ``image`` path.
        window: ``(level, width)`` in HU, the classifier config's ``window``.

    Returns:
        ``(volume (Z, Y, X) float32 in [0, 1], affine)``.

    Raises:
        InputError: the file cannot be read or holds NaN / infinite values.
    """
    path = os.fspath(entry["image"])
    hu, affine = read_checked_volume(path, "image")
    return window_hu(hu, float(window[0]), float(window[1])), affine


def read_reference_mask(entry: Mapping[str, Any], shape: Sequence[int], label_key: str = "label") -> np.ndarray:
    """The study's reference mask (nonzero = PE) as ``(Z, Y, X)`` uint8, checked against the study grid.

    Args:
        entry: a datalist entry with an absolute ``label_key`` path.
        shape: the study's ``(Z, Y, X)`` shape.
        label_key: key of the mask path.

    Raises:
        InputError: no mask path, an unreadable file, a shape other than ``shape``, or NaN / infinite voxels
            (a NaN is nonzero, so it would count as PE; the message gives their number).
    """
    if not entry.get(label_key):
        raise InputError(f"{entry.get('image', entry_uid(entry))}: the datalist entry has no {label_key!r} mask")
    path = os.fspath(entry[label_key])
    mask, _ = read_checked_volume(path, "reference mask")
    if tuple(mask.shape) != tuple(shape):
        raise InputError(f"{path}: reference mask of shape {mask.shape} but the study is {tuple(shape)}")
    return (mask != 0).astype(np.uint8)
