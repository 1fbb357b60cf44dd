"""The datalists each stage sees, derived from ``prepare``'s datalist.

Weak supervision is enforced here: the classifier and the teacher get a datalist whose training
studies carry slice labels only (no ``label`` mask path), so box annotations can reach them only
through the validation split, where the teacher's threshold is calibrated (paper 3.2: "optimized
on the evaluation set"). Box masks are otherwise used for evaluation on the test split and for the
annotated fine-tuning subset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from custom.io.atomic import write_json_atomic

__all__ = ["absolute_entries", "annotated_datalist", "student_datalist", "weak_datalist"]


def absolute_entries(entries: list[Mapping[str, Any]], base_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Copies of the entries with ``image``/``label`` made absolute against ``base_dir``."""
    out = []
    for entry in entries:
        entry = dict(entry)
        for key in ("image", "label"):
            if entry.get(key) and not os.path.isabs(entry[key]):
                entry[key] = os.path.join(os.fspath(base_dir), entry[key])
        out.append(entry)
    return out


def weak_datalist(datalist: Mapping[str, Any], base_dir: str | os.PathLike, path: Path) -> Path:
    """Write the classifier's and teacher's datalist: no box masks on the training split."""
    weak = {
        "training": [{k: v for k, v in e.items() if k != "label"} for e in absolute_entries(datalist["training"], base_dir)],
        "validation": absolute_entries(datalist["validation"], base_dir),
        "test": [{k: v for k, v in e.items() if k != "label"} for e in absolute_entries(datalist["test"], base_dir)],
    }
    write_json_atomic(path, weak)
    return path


def student_datalist(datalist: Mapping[str, Any], base_dir: str | os.PathLike, pseudo_dir: Path, path: Path) -> Path:
    """Training on the teacher's pseudo-labels; validation on the reference masks; test for evaluation."""
    training = []
    for entry in absolute_entries(datalist["training"], base_dir):
        pseudo = pseudo_dir / f"{entry['study_uid']}.nii.gz"
        if not pseudo.is_file():
            raise FileNotFoundError(f"{pseudo}: no pseudo-label for training study {entry['study_uid']}")
        training.append({**entry, "label": str(pseudo)})
    write_json_atomic(path, {
        "training": training,
        "validation": [e for e in absolute_entries(datalist["validation"], base_dir) if e.get("label")],
        "test": [e for e in absolute_entries(datalist["test"], base_dir) if e.get("label")],
    })
    return path


def annotated_datalist(datalist: Mapping[str, Any], base_dir: str | os.PathLike, path: Path) -> Path:
    """The training split with its human masks; the student bundle's ``finetune``/``random_init``
    configs take their annotated subset (paper: 25 %, ``annotated_fraction``) from it."""
    annotated = [e for e in absolute_entries(datalist["training"], base_dir) if e.get("label")]
    if not annotated:
        raise ValueError("no training study has a reference mask: there is nothing to fine-tune on")
    write_json_atomic(path, {
        "training": annotated,
        "validation": [e for e in absolute_entries(datalist["validation"], base_dir) if e.get("label")],
        "test": [e for e in absolute_entries(datalist["test"], base_dir) if e.get("label")],
    })
    return path
