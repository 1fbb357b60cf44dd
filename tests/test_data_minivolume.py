"""2.5D mini-volumes, HU windows and balanced sampling (custom.data)."""

import json

import numpy as np
import pytest
import torch

from custom.data import (
    MiniVolumeDataset,
    balanced_slice_sampler,
    balanced_slice_weights,
    extract_minivolume,
    minivolume_indices,
    window_hu,
)
from custom.io.errors import InputError
from custom.io.nifti import write_volume


def test_minivolume_indices_replicate_study_ends():
    assert minivolume_indices(0, 10).tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert minivolume_indices(5, 10).tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert minivolume_indices(9, 10).tolist() == [6, 7, 8, 9, 9, 9, 9]
    assert minivolume_indices(0, 1).tolist() == [0] * 7
    with pytest.raises(ValueError):
        minivolume_indices(0, 10, depth=6)
    with pytest.raises(IndexError):
        minivolume_indices(10, 10)


def test_extract_minivolume_centre_channel_is_the_slice():
    volume = np.arange(10)[:, None, None] * np.ones((10, 4, 5))
    mini = extract_minivolume(volume, 4)
    assert mini.shape == (7, 4, 5)
    assert (mini[3] == 4).all() and (mini[0] == 1).all() and (mini[6] == 7).all()


def test_window_hu_maps_window_to_unit_interval():
    hu = np.array([-1000.0, -250.0, 100.0, 450.0, 2000.0])
    assert np.allclose(window_hu(hu, 100, 700), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert torch.allclose(window_hu(torch.tensor(hu), 100, 700), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError):
        window_hu(hu, 100, 0)


def _study(tmp_path, uid, n_slices, positive):
    volume = np.full((n_slices, 8, 8), -1000, dtype=np.int16)
    volume[:, 4, 4] = np.arange(n_slices) * 10
    write_volume(tmp_path / f"{uid}.nii.gz", volume, np.eye(4))
    labels = [1 if k in positive else 0 for k in range(n_slices)]
    return {"image": str(tmp_path / f"{uid}.nii.gz"), "study_uid": uid, "slice_labels": labels}


def test_dataset_items_follow_slice_order_and_labels(tmp_path):
    data = [_study(tmp_path, "a", 5, {2}), _study(tmp_path, "b", 3, set())]
    dataset = MiniVolumeDataset(data, window=(0, 100))
    assert len(dataset) == 8
    item = dataset[2]
    assert item["image"].shape == (7, 8, 8)
    assert item["label"].tolist() == [1.0] and item["study_uid"] == "a" and item["slice_index"] == 2
    # centre channel is slice 2 (value 20 HU -> (20 + 50) / 100), neighbours replicate the ends
    assert item["image"][3, 4, 4].item() == pytest.approx(0.7)
    assert item["image"][0, 4, 4].item() == pytest.approx(0.5)
    assert dataset.labels.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    assert dataset.levels[4] == pytest.approx(1.0) and dataset.levels[5] == pytest.approx(0.0)


def test_dataset_rejects_label_count_mismatch_and_empty(tmp_path):
    entry = _study(tmp_path, "a", 5, set())
    entry["slice_labels"] = [0, 0, 0]
    with pytest.raises(InputError, match="a.nii.gz: 5 slices but 3 slice labels"):
        MiniVolumeDataset([entry])
    with pytest.raises(InputError, match="no studies"):
        MiniVolumeDataset([])


def test_unlabelled_entries_get_minus_one(tmp_path):
    entry = _study(tmp_path, "a", 4, set())
    entry.pop("slice_labels")
    assert MiniVolumeDataset([entry]).labels.tolist() == [-1] * 4


def test_balanced_weights_split_mass_equally():
    labels = np.array([0] * 95 + [1] * 5)
    weights = balanced_slice_weights(labels)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[labels == 1].sum() == pytest.approx(0.5)
    assert weights[labels == 0].sum() == pytest.approx(0.5)


def test_level_matched_weights_favour_negatives_at_positive_levels():
    levels = np.linspace(0, 1, 100)
    labels = np.zeros(100, dtype=int)
    labels[[45, 50, 55]] = 1  # positives in the middle of the study
    weights = balanced_slice_weights(labels, levels, level_bins=10, level_floor=0.05, level_mix=1.0)
    middle = (~labels.astype(bool)) & (levels >= 0.4) & (levels < 0.6)
    top = (~labels.astype(bool)) & (levels >= 0.9)
    assert weights[labels == 0].sum() == pytest.approx(0.5)
    assert weights[middle].mean() > 10 * weights[top].mean()
    # with a mix, every level keeps at least its uniform share
    mixed = balanced_slice_weights(labels, levels, level_bins=10, level_floor=0.05, level_mix=0.5)
    assert mixed[top].min() >= 0.5 * 0.5 / 97 - 1e-12
    assert mixed[middle].mean() > 2 * mixed[top].mean()


def test_balanced_sampler_draws_both_classes_equally(tmp_path):
    data = [_study(tmp_path, "a", 40, {10, 11}), _study(tmp_path, "b", 40, set())]
    dataset = MiniVolumeDataset(data)
    drawn = dataset.labels[list(balanced_slice_sampler(dataset, num_samples=4000, seed=1))]
    assert 0.45 < drawn.mean() < 0.55


# ------------------------------------------------------------------ labels (unlabelled data is not training data)


@pytest.mark.parametrize("bad", [[0, 2, 0, 0], [0, -1, 0, 0], [0, 0.5, 0, 0], ["0", "1", "0", "0"], [0, None, 0, 0], 1])
def test_slice_labels_must_be_zero_or_one(tmp_path, bad):
    entry = _study(tmp_path, "a", 4, set())
    entry["slice_labels"] = bad
    with pytest.raises(InputError, match=r"a\.nii\.gz: slice.labels must be .*0.*1.*\(study a\)"):
        MiniVolumeDataset([entry])


def test_boolean_and_float_zero_one_labels_are_accepted(tmp_path):
    entry = _study(tmp_path, "a", 4, set())
    entry["slice_labels"] = [False, True, 0.0, 1.0]
    assert MiniVolumeDataset([entry]).labels.tolist() == [0, 1, 0, 1]


def test_require_labels_refuses_an_entry_without_slice_labels(tmp_path):
    labelled, unlabelled = _study(tmp_path, "a", 4, {1}), _study(tmp_path, "b", 4, set())
    unlabelled.pop("slice_labels")
    with pytest.raises(InputError, match=r"b\.nii\.gz: no slice_labels in its datalist\.json\['training'\] entry \(study b\)"):
        MiniVolumeDataset([labelled, unlabelled], require_labels=True, source="datalist.json['training']")


def test_sampler_refuses_unlabelled_slices_naming_the_study(tmp_path):
    labelled, unlabelled = _study(tmp_path, "a", 4, {1}), _study(tmp_path, "b", 4, set())
    unlabelled.pop("slice_labels")
    dataset = MiniVolumeDataset([labelled, unlabelled])  # inference-style: -1 labels
    with pytest.raises(InputError, match=r"4 slices without a 0/1 label \(values \[-1\]\) in studies \['b'\]"):
        balanced_slice_sampler(dataset, num_samples=8)


@pytest.mark.parametrize("labels", [[0, -1, 1], [0, 2, 1], [0.0, 0.5, 1.0], ["0", "1"]])
def test_balanced_weights_refuse_labels_other_than_zero_and_one(labels):
    with pytest.raises(ValueError, match="slice labels must be 0 or 1"):
        balanced_slice_weights(np.array(labels))


# ------------------------------------------------------------------ images and arguments


def _float_study(tmp_path, name, volume):
    write_volume(tmp_path / name, volume.astype(np.float32), np.eye(4))
    return {"image": str(tmp_path / name), "study_uid": name, "slice_labels": [0] * volume.shape[0]}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_hu_are_refused_naming_the_file(tmp_path, value):
    volume = np.full((4, 8, 8), -1000.0)
    volume[2, 3, 3] = value
    with pytest.raises(InputError, match=r"bad\.nii\.gz: the image contains NaN or infinite values \(1 of 256 voxels"):
        MiniVolumeDataset([_float_study(tmp_path, "bad.nii.gz", volume)])


@pytest.mark.parametrize("value", [40000.0, -40000.0])
def test_hu_outside_int16_are_refused_not_wrapped(tmp_path, value):
    volume = np.full((4, 8, 8), -1000.0)
    volume[2, 3, 3] = value
    with pytest.raises(InputError, match=r"big\.nii\.gz: HU values from .* exceed the int16 range"):
        MiniVolumeDataset([_float_study(tmp_path, "big.nii.gz", volume)])


def test_float_hu_within_range_are_rounded_to_int16(tmp_path):
    volume = np.full((4, 8, 8), -1000.0)
    volume[2, 3, 3], volume[2, 3, 4] = 32767.0, 100.6
    dataset = MiniVolumeDataset([_float_study(tmp_path, "ok.nii.gz", volume)])
    assert dataset.volumes[0].dtype == np.int16
    assert dataset.volumes[0][2, 3, 3] == 32767 and dataset.volumes[0][2, 3, 4] == 101


def test_unreadable_images_name_the_file(tmp_path):
    entry = _study(tmp_path, "a", 4, set())
    noise = np.random.default_rng(0).integers(-1000, 1000, (4, 64, 64)).astype(np.int16)  # compresses badly: a long stream
    write_volume(tmp_path / "full.nii.gz", noise, np.eye(4))
    data = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])  # header intact, voxel stream cut
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read the image \(EOFError"):
        MiniVolumeDataset([{**entry, "image": str(tmp_path / "cut.nii.gz")}])
    with pytest.raises(InputError, match=r"none\.nii\.gz: cannot read the image"):
        MiniVolumeDataset([{**entry, "image": "none.nii.gz"}], base_dir=tmp_path)


@pytest.mark.parametrize("depth", [-1, 0, 2, 3.0, True])
def test_depth_must_be_a_positive_odd_integer(tmp_path, depth):
    entry = _study(tmp_path, "a", 4, set())
    with pytest.raises(ValueError, match="depth must be a positive odd integer"):
        MiniVolumeDataset([entry], depth=depth)
    with pytest.raises(ValueError, match="depth must be a positive odd integer"):
        minivolume_indices(0, 4, depth=depth)


def test_empty_data_names_its_source():
    with pytest.raises(InputError, match=r"^datalist\.json\['validation'\]: no studies"):
        MiniVolumeDataset([], source="datalist.json['validation']")


@pytest.mark.parametrize("window", [(100, 0), (100, -5), (100, float("nan")), (float("inf"), 700)])
def test_window_is_checked_when_the_dataset_is_built(tmp_path, window):
    with pytest.raises(ValueError, match="window must be a finite"):
        MiniVolumeDataset([_study(tmp_path, "a", 4, set())], window=window)
