"""Negative patches centred on intrapulmonary structures (custom.transforms.hard_negatives)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from custom.transforms import IntrapulmonaryNegativesd, intrapulmonary_structures, mix_indices

REPO = Path(__file__).resolve().parents[1]


def chest_slice(size: int = 40) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An axial slice: air, a chest wall of soft tissue, two lungs split by a mediastinum, a vessel and a fat
    blob inside the right lung, and a vessel touching the chest wall (not enclosed by lung)."""
    image = np.full((size, size), -1000.0, dtype=np.float32)
    parts = {name: np.zeros((size, size), dtype=bool) for name in ("wall", "mediastinum", "vessel", "fat", "wall_vessel")}
    parts["wall"][4:36, 4:36] = True
    image[parts["wall"]] = 40.0
    image[7:33, 7:18] = -850.0   # right lung
    image[7:33, 22:33] = -850.0  # left lung
    parts["mediastinum"][7:33, 18:22] = True
    parts["vessel"][14:17, 11:14] = True
    image[parts["vessel"]] = 300.0
    parts["fat"][24:26, 11:13] = True
    image[parts["fat"]] = -150.0
    parts["wall_vessel"][20:23, 30:33] = True  # touches the wall at column 33
    image[parts["wall_vessel"]] = 300.0
    parts["wall"] &= image == 40.0  # the chest wall proper, without what lies inside it
    parts["wall"] &= ~parts["mediastinum"]
    return image, parts


def test_only_structures_enclosed_by_lung_are_kept():
    image, parts = chest_slice()
    structures = intrapulmonary_structures(image)
    assert structures[parts["vessel"]].all()
    assert structures.sum() == parts["vessel"].sum()  # not the wall, the mediastinum, the fat or the wall's vessel
    assert not structures[parts["mediastinum"] | parts["wall"] | parts["fat"] | parts["wall_vessel"]].any()


def test_slices_follow_the_axis():
    image, parts = chest_slice()
    volume = np.stack([image, np.full_like(image, -1000.0), image], axis=-1)  # (X, Y, Z): slice axis last
    structures = intrapulmonary_structures(volume, axis=-1)
    assert structures.shape == volume.shape
    assert np.array_equal(structures[..., 0], parts["vessel"]) and not structures[..., 1].any()
    first_axis = intrapulmonary_structures(np.moveaxis(volume, -1, 0), axis=0)
    assert np.array_equal(np.moveaxis(first_axis, 0, -1), structures)


def test_non_finite_volume_is_refused():
    image, _ = chest_slice()
    image[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        intrapulmonary_structures(image)


def test_mix_indices_gives_the_requested_share_of_draws():
    background, extra = np.arange(1000), np.array([5, 7, 11])
    mixed = mix_indices(background, extra, 0.75)
    assert np.isin(mixed[:1000], background).all()
    share = np.isin(mixed, extra).sum() - 3  # the three extra indices are also background
    assert share / mixed.size == pytest.approx(0.75, abs=0.002)
    assert np.bincount(mixed[1000:]).max() - np.bincount(mixed[1000:])[[5, 7, 11]].min() <= 1  # tiled evenly
    assert np.array_equal(mix_indices(background, extra, 0.0), background)
    assert np.array_equal(mix_indices(background, np.array([], dtype=int), 0.5), background)
    with pytest.raises(ValueError, match="fraction"):
        mix_indices(background, extra, 1.0)


def test_transform_mixes_structures_skips_labels_and_drops_the_hu_copy():
    image, parts = chest_slice()
    hu = torch.as_tensor(np.stack([image] * 4, axis=-1))[None]  # (1, X, Y, Z)
    label = torch.zeros_like(hu)
    label[0, 14, 11, :] = 1  # one vessel voxel per slice is an embolus
    background = torch.arange(hu[0].numel())
    out = IntrapulmonaryNegativesd("label_bg_indices", fraction=0.5)(
        {"image_hu": hu, "label": label, "label_bg_indices": background})
    assert "image_hu" not in out
    mixed = out["label_bg_indices"]
    assert isinstance(mixed, torch.Tensor) and torch.equal(mixed[: background.numel()], background)
    extra = np.unique(mixed[background.numel():].numpy())
    expected = np.flatnonzero((np.stack([parts["vessel"]] * 4, axis=-1) & (label[0].numpy() == 0)).ravel())
    assert np.array_equal(extra, expected)
    assert mixed.numel() - background.numel() == background.numel()  # fraction 0.5: as many again


def test_transform_errors_name_the_problem():
    with pytest.raises(KeyError, match="image_hu"):
        IntrapulmonaryNegativesd("label_bg_indices")({"label_bg_indices": np.arange(3)})
    with pytest.raises(ValueError, match="one channel"):
        IntrapulmonaryNegativesd("label_bg_indices")({"image_hu": np.zeros((2, 4, 4, 4)), "label_bg_indices": np.arange(3)})
    with pytest.raises(ValueError, match="fraction"):
        IntrapulmonaryNegativesd("label_bg_indices", fraction=-0.1)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_student_recipes", REPO / "benchmarks" / "bench_student_recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_student_recipes", module)
    spec.loader.exec_module(module)
    return module


def test_benchmark_candidate_centres_negative_patches_on_structures(tmp_path):
    """The benchmark's ``..._lungneg`` overrides, resolved with the student bundle's configs, centre about
    three of four negative patches on the intrapulmonary vessel (against a few percent without them)."""
    image, parts = chest_slice()
    volume = np.stack([image] * 40, axis=-1)  # (X, Y, Z) = 40 x 40 x 40
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(volume.shape, dtype=np.uint8), affine), tmp_path / "label.nii.gz")
    overrides = _bench_module().CANDIDATES["dicece_prior_lr10_pos3_nomixup_lungneg"]
    configs = REPO / "bundles" / "dynunet_student" / "configs"
    shares = {}
    for name, extra in (("default", {}), ("lungneg", overrides)):
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "demo.json")])
        parser.update({"patch_size": [16, 16, 8], **extra})
        transforms = Compose(parser.get_parsed_content("train#deterministic_transforms"))
        data = transforms({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})
        assert "image_hu" not in data
        indices = np.asarray(data["label_bg_indices"])
        rng = np.random.default_rng(0)
        draws = indices[rng.integers(0, indices.size, 2000)]
        vessel = np.stack([parts["vessel"]] * 40, axis=-1).ravel()
        shares[name] = vessel[draws].mean()
    assert shares["default"] < 0.05
    assert shares["lungneg"] == pytest.approx(0.75, abs=0.05)


def test_negative_patch_sites_on_a_small_phantom(tmp_path):
    """benchmarks/negative_patch_sites.py: the intrapulmonary set is far more often at a vessel or mimic than
    the default negatives, and it reaches the phantom's mimics."""
    import dataclasses
    import json

    from custom.synth import PhantomConfig

    config = PhantomConfig(shape=(24, 64, 64), positive_rate=1.0)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "cohort.json").write_text(json.dumps(
        {"seed": 1, "config": settings, "studies": [{"index": 0, "study_uid": "1.2.3"}]}))
    spec = importlib.util.spec_from_file_location("negative_patch_sites", REPO / "benchmarks" / "negative_patch_sites.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(work_dir=str(tmp_path), n_studies=1)
    default, structures = result["sets"]["default"], result["sets"]["intrapulmonary"]
    assert 0 < structures["share_of_volume"] < default["share_of_volume"]
    assert structures["share_at_vessel_or_mimic"] > 3 * default["share_at_vessel_or_mimic"]
    reached = result["reached_by_intrapulmonary"]
    assert structures["share_at_vessel_or_mimic"] == 1.0  # this small phantom: every structure voxel is at a vessel
    assert reached["lymph_node"] == {"reached": 0, "total": 2} and reached["embolus"] == {"reached": 1, "total": 2}
