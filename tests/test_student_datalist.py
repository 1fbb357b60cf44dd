"""Training/validation entries of the student's three regimes (custom.student.datalist)."""

from __future__ import annotations

import os

import pytest

from custom.io.errors import InputError
from custom.student.datalist import annotated_subset, attach_pseudo_labels, labelled_entries


def _entries(n: int, with_labels: bool = True) -> list[dict]:
    return [
        {"image": f"/d/images/{i}.nii.gz", "study_uid": f"1.2.{i}", **({"label": f"/d/labels/{i}.nii.gz"} if with_labels else {})}
        for i in range(n)
    ]


def test_labelled_entries_keep_order_and_copy() -> None:
    entries = _entries(4)
    del entries[1]["label"]
    entries[2]["label"] = ""
    kept = labelled_entries(entries)
    assert [e["study_uid"] for e in kept] == ["1.2.0", "1.2.3"]
    kept[0]["label"] = "changed"
    assert entries[0]["label"] == "/d/labels/0.nii.gz"


def test_pseudo_labels_replace_reference_masks(tmp_path) -> None:
    entries = _entries(2, with_labels=False)
    for e in entries:
        (tmp_path / f"{e['study_uid']}.nii.gz").write_bytes(b"")
    out = attach_pseudo_labels(entries, tmp_path)
    assert [e["label"] for e in out] == [os.path.join(str(tmp_path), f"1.2.{i}.nii.gz") for i in range(2)]
    assert "label" not in entries[0]


def test_missing_pseudo_label_names_the_study(tmp_path) -> None:
    with pytest.raises(InputError, match=r"1\.2\.0\.nii\.gz: no pseudo-label for study 1\.2\.0"):
        attach_pseudo_labels(_entries(1), tmp_path)
    with pytest.raises(InputError, match="no 'study_uid'"):
        attach_pseudo_labels([{"image": "/d/x.nii.gz"}], tmp_path)


def test_without_pseudo_dir_the_datalist_labels_are_used() -> None:
    entries = _entries(3)
    assert attach_pseudo_labels(entries, "") == entries
    with pytest.raises(InputError, match="1.2.0.*has no 'label'"):
        attach_pseudo_labels(_entries(1, with_labels=False), None)


def test_annotated_subset_is_fixed_and_order_free() -> None:
    entries = _entries(12)
    entries[5].pop("label")  # not annotated: never chosen
    subset = annotated_subset(entries, 0.25)
    assert len(subset) == 3  # ceil(0.25 * 11)
    assert all(e.get("label") for e in subset)
    assert [e["study_uid"] for e in annotated_subset(list(reversed(entries)), 0.25)] == [e["study_uid"] for e in reversed(subset)]
    assert annotated_subset(entries, 1.0) == labelled_entries(entries)
    other_seed = annotated_subset(entries, 0.25, seed="another")
    assert len(other_seed) == 3
    assert annotated_subset(_entries(3, with_labels=False), 0.5) == []
    with pytest.raises(ValueError, match="fraction"):
        annotated_subset(entries, 0.0)
