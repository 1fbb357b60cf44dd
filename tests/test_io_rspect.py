"""custom.io.rspect: layouts, label CSV, box CSV (column mapping), box masks, label order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from custom.io.errors import InputError
from custom.io.rspect import (
    DEFAULT_BOX_COLUMNS,
    Box,
    StudyLabels,
    box_mask,
    find_study_dirs,
    read_boxes,
    read_slice_labels,
    resolve_box_columns,
    slice_labels_in_order,
)


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in row) for row in rows]) + "\n")
    return path


def test_find_study_dirs_train_test_and_direct(tmp_path):
    for split, study in [("train", "b1"), ("train", "a2"), ("test", "c3")]:
        (tmp_path / "kaggle" / split / study / "series").mkdir(parents=True)
    (tmp_path / "kaggle" / "train" / ".cache").mkdir()
    assert [p.relative_to(tmp_path / "kaggle").as_posix() for p in find_study_dirs(tmp_path / "kaggle")] == [
        "train/a2",
        "train/b1",
        "test/c3",
    ]
    (tmp_path / "only_test" / "test" / "s9" / "x").mkdir(parents=True)
    assert [p.name for p in find_study_dirs(tmp_path / "only_test")] == ["s9"]
    assert [p.name for p in find_study_dirs(tmp_path / "kaggle" / "train")] == ["a2", "b1"]
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no study folders"):
        find_study_dirs(tmp_path / "none")


def test_label_csv_keeps_uids_opaque(tmp_path):
    header = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image", "negative_exam_for_pe"]
    rows = [
        ["00000000e123", "0e5bd8e2b5b4", "000000000001", 1, 0],
        ["00000000e123", "0e5bd8e2b5b4", "1e5000000000", 0, 0],
        ["6897fa9de148", "aaaaaaaaaaaa", "bbbbbbbbbbbb", 0, 1],
    ]
    labels = read_slice_labels(_csv(tmp_path / "train.csv", header, rows))
    assert set(labels) == {"00000000e123", "6897fa9de148"}
    study = labels["00000000e123"]
    assert study.sop_labels == {"000000000001": 1, "1e5000000000": 0} and study.series_uids == {"0e5bd8e2b5b4"}
    assert study.errors == []


def test_label_csv_bad_rows_fail_only_their_study(tmp_path):
    header = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "pe_present_on_image"]
    rows = [["s1", "r1", "a", 2], ["s1", "r1", "b", 1], ["s1", "r1", "b", 0], ["s2", "r2", "c", 1]]
    labels = read_slice_labels(_csv(tmp_path / "train.csv", header, rows))
    assert (
        len(labels["s1"].errors) == 2
        and "must be 0 or 1" in labels["s1"].errors[0]
        and "has labels 1 and 0" in labels["s1"].errors[1]
    )
    assert labels["s2"].errors == []
    with pytest.raises(InputError, match=r"train.csv:2: study s1"):
        slice_labels_in_order(["a", "b"], labels["s1"], "train.csv")


def test_label_csv_missing_column_lists_columns(tmp_path):
    path = _csv(tmp_path / "test.csv", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"], [["a", "b", "c"]])
    with pytest.raises(
        InputError,
        match=r"test.csv: missing required column\(s\) 'pe_present_on_image'; "
        r"columns found: \['StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID'\]",
    ):
        read_slice_labels(path)


def test_slice_labels_follow_the_sorted_order_and_reject_unknown_sops():
    labels = StudyLabels("st", {"se"}, {"c": 1, "a": 0, "b": 1})
    assert slice_labels_in_order(["b", "c", "a"], labels, "train.csv") == [1, 1, 0]
    with pytest.raises(
        InputError,
        match=r"train.csv: study st: 1 label row\(s\) name SOPInstanceUIDs that are not in the series \(e.g. c\)",
    ):
        slice_labels_in_order(["a", "b"], labels, "train.csv")
    with pytest.raises(InputError, match=r"1 of 4 slices have no label row \(e.g. d\)"):
        slice_labels_in_order(["a", "b", "c", "d"], labels, "train.csv")


def test_box_csv_default_columns_several_rows_per_slice(tmp_path):
    header = list(DEFAULT_BOX_COLUMNS.values())
    rows = [
        ["st", "se", "s1", "RightLower", 2, 3, 4, 2],
        ["st", "se", "s1", "LeftMain", 10, 5, 3, 3],
        ["st", "se", "s2", "", "", "", "", ""],  # a slice listed without a box
        ["other", "se2", "t1", "Main", 1.5, 1, 2, 2],
    ]
    boxes = read_boxes(_csv(tmp_path / "boxes.csv", header, rows))
    assert [b.sop_uid for b in boxes["st"]] == ["s1", "s1"] and boxes["st"][0].artery == "RightLower"
    assert boxes["st"][1] == Box("st", "se", "s1", "LeftMain", 10.0, 5.0, 3.0, 3.0, line=3)
    mask, notes = box_mask(["s0", "s1", "s2"], (12, 16), boxes["st"], "boxes.csv")
    expected = np.zeros((3, 12, 16), np.uint8)
    expected[1, 3:5, 2:6] = 1  # rows [y, y+height), columns [x, x+width)
    expected[1, 5:8, 10:13] = 1
    np.testing.assert_array_equal(mask, expected)
    assert notes == []
    fractional, _ = box_mask(["t1"], (4, 6), boxes["other"], "boxes.csv")
    np.testing.assert_array_equal(np.flatnonzero(fractional[0].any(axis=0)), [2, 3])  # [1.5, 3.5) holds columns 2 and 3


def test_box_mask_rejects_unknown_sop_and_clips(tmp_path):
    inside = Box("st", None, "s1", None, -2, 0, 4, 2, line=7)
    mask, notes = box_mask(["s1"], (4, 4), [inside], "boxes.csv")
    assert mask[0, :2, :2].all() and mask.sum() == 4 and "clipped" in notes[0]
    with pytest.raises(
        InputError, match=r"boxes.csv:9: study st: box on SOPInstanceUID zz, which is not in the series"
    ):
        box_mask(["s1"], (4, 4), [Box("st", None, "zz", None, 0, 0, 1, 1, line=9)], "boxes.csv")
    with pytest.raises(InputError, match=r"covers no pixel"):
        box_mask(["s1"], (4, 4), [Box("st", None, "s1", None, 10, 0, 1, 1, line=3)], "boxes.csv")


def test_box_column_mapping_dict_and_file(tmp_path):
    header = ["study", "sop", "bx", "by", "bw", "bh"]
    path = _csv(tmp_path / "boxes_renamed.csv", header, [["st", "s1", 0, 0, 2, 2]])
    mapping = {
        "StudyInstanceUID": "study",
        "SOPInstanceUID": "sop",
        "x": "bx",
        "y": "by",
        "width": "bw",
        "height": "bh",
    }
    boxes = read_boxes(path, mapping)
    assert boxes["st"][0].series_uid is None and boxes["st"][0].width == 2.0
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps(mapping))
    assert read_boxes(path, mapping_file) == boxes
    with pytest.raises(InputError, match=r"unknown field\(s\) \['z'\]"):
        resolve_box_columns({"z": "zz"})


def test_box_csv_missing_required_column_lists_columns(tmp_path):
    path = _csv(
        tmp_path / "boxes.csv", ["StudyInstanceUID", "SOPInstanceUID", "X", "Y", "W", "H"], [["st", "s1", 0, 0, 1, 1]]
    )
    with pytest.raises(InputError) as caught:
        read_boxes(path)
    message = str(caught.value)
    assert "missing required column(s) 'x', 'y', 'width', 'height'" in message
    assert "columns found: ['StudyInstanceUID', 'SOPInstanceUID', 'X', 'Y', 'W', 'H']" in message
    with pytest.raises(InputError, match=r"'bx' \(for x\)"):
        read_boxes(path, {"x": "bx", "y": "Y", "width": "W", "height": "H"})


def test_box_csv_bad_values(tmp_path):
    header = list(DEFAULT_BOX_COLUMNS.values())
    with pytest.raises(InputError, match=r"boxes.csv:2: box x, y, width, height must be numbers"):
        read_boxes(_csv(tmp_path / "boxes.csv", header, [["st", "se", "s1", "", 1, "", 2, 2]]))
    with pytest.raises(InputError, match=r"boxes.csv:3: invalid box"):
        read_boxes(
            _csv(
                tmp_path / "boxes.csv", header, [["st", "se", "s1", "", 1, 1, 2, 2], ["st", "se", "s1", "", 1, 1, 0, 2]]
            )
        )


def test_box_mask_rejects_a_box_on_another_series():
    boxes = [Box("st", "se", "s1", None, 0, 0, 2, 2, line=4), Box("st", "other", "s1", None, 1, 1, 2, 2, line=5)]
    with pytest.raises(
        InputError,
        match=r"boxes.csv:5: study st: box on SOPInstanceUID s1 of series other, but the prepared series is se",
    ):
        box_mask(["s1"], (4, 4), boxes, "boxes.csv", series_uid="se")
    mask, _ = box_mask(["s1"], (4, 4), boxes[:1], "boxes.csv", series_uid="se")
    assert mask.sum() == 4
    no_series_column = Box("st", None, "s1", None, 0, 0, 2, 2, line=6)  # nothing to check against
    assert box_mask(["s1"], (4, 4), [no_series_column], "boxes.csv", series_uid="se")[0].sum() == 4
