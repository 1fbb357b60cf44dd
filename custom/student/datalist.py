"""Which studies the student trains and validates on, and with which masks.

The prepared datalist (``docs/conventions.md``) gives each study its image and, where boxes exist,
its human reference mask as ``label``. The student's three regimes (Condrea et al. 2025, 3.3 and
Table 5) read it differently:

- weakly supervised training: every training study, with the teacher's pseudo-label
  ``<pseudo_label_dir>/<uid>.nii.gz`` as ``label`` (:func:`attach_pseudo_labels`);
- validation and test: the studies that have a human reference mask (:func:`labelled_entries`);
- fine-tuning and random initialisation: a fixed fraction (paper: 25%) of the annotated training
  studies with their human masks (:func:`annotated_subset`); both regimes get the same subset.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from custom.io.errors import InputError

__all__ = ["annotated_subset", "attach_pseudo_labels", "labelled_entries"]


def labelled_entries(entries: Sequence[Mapping[str, Any]], label_key: str = "label") -> list[dict[str, Any]]:
    """The entries that have a reference mask.

    Args:
        entries: datalist entries.
        label_key: key of the mask path.

    Returns:
        Copies of the entries with a non-empty ``label_key``, in order.
    """
    return [dict(e) for e in entries if e.get(label_key)]


def attach_pseudo_labels(
    entries: Sequence[Mapping[str, Any]],
    pseudo_label_dir: str | os.PathLike | None,
    uid_key: str = "study_uid",
    label_key: str = "label",
) -> list[dict[str, Any]]:
    """Replace each entry's ``label`` by the teacher's pseudo-label of its study.

    Args:
        entries: datalist entries, each with a ``study_uid``.
        pseudo_label_dir: the teacher's ``pseudo/`` folder (``<uid>.nii.gz`` per study). ``None`` or
            ``""`` keeps the entries' own labels (a datalist already pointing at pseudo-labels).
        uid_key: key of the StudyInstanceUID.
        label_key: key the pseudo-label path is written to.

    Returns:
        Copies of the entries with ``label_key`` set to the pseudo-label path.

    Raises:
        InputError: an entry has no StudyInstanceUID, or its pseudo-label file does not exist, or
            (without ``pseudo_label_dir``) an entry has no label of its own.
    """
    if not pseudo_label_dir:
        for entry in entries:
            if not entry.get(label_key):
                raise InputError(
                    f"{entry.get('image', entry)}: training entry of study {entry.get(uid_key)} has no {label_key!r}; "
                    "give pseudo_label_dir or a datalist whose training labels are the teacher's pseudo-labels"
                )
        return [dict(e) for e in entries]
    out = []
    for entry in entries:
        uid = entry.get(uid_key)
        if not uid:
            raise InputError(f"{entry.get('image', entry)}: datalist entry has no {uid_key!r}, cannot find its pseudo-label")
        path = os.path.join(os.fspath(pseudo_label_dir), f"{uid}.nii.gz")
        if not os.path.isfile(path):
            raise InputError(f"{path}: no pseudo-label for study {uid}; run the teacher on the training split first")
        out.append({**entry, label_key: path})
    return out


def annotated_subset(
    entries: Sequence[Mapping[str, Any]],
    fraction: float,
    uid_key: str = "study_uid",
    label_key: str = "label",
    seed: str = "iexplain-annotated-subset",
) -> list[dict[str, Any]]:
    """A fixed, reproducible fraction of the studies that have a human reference mask.

    The order is the SHA-1 of ``seed + uid``, so the subset depends only on the study UIDs: the
    fine-tuned and the randomly initialised models train on exactly the same studies.

    Args:
        entries: datalist entries; those without ``label_key`` are ignored.
        fraction: share of the annotated studies to keep, in ``(0, 1]`` (paper: 0.25).
        uid_key: key of the StudyInstanceUID (the image path is used when absent).
        label_key: key of the human mask.
        seed: salt of the ordering.

    Returns:
        ``ceil(fraction * n_annotated)`` entries (at least one when any exists), in datalist order.

    Raises:
        ValueError: ``fraction`` is not in ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    annotated = labelled_entries(entries, label_key)
    if not annotated:
        return []
    keep = max(1, math.ceil(fraction * len(annotated) - 1e-9))

    def rank(entry: Mapping[str, Any]) -> str:
        key = str(entry.get(uid_key) or entry.get("image"))
        return hashlib.sha1(f"{seed}{key}".encode()).hexdigest()

    chosen = {id(e) for e in sorted(annotated, key=rank)[:keep]}
    return [e for e in annotated if id(e) in chosen]
