"""Detections that touch no contrast-filled blood (custom.transforms.contrast_adjacency) and where the filter is wired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.metrics.cluster_matching import label_clusters
from custom.metrics.scoring import score_directories
from custom.transforms import ContrastAdjacencyFilterd, contrast_shares, remove_unenhanced_clusters

REPO = Path(__file__).resolve().parents[1]
TISSUE, CONTRAST = 40.0, 300.0


def study() -> tuple[np.ndarray, np.ndarray, dict[str, tuple]]:
    """A 9x12x12 HU image in grey tissue and a probability map with three detections:

    - ``defect``: one voxel whose 26 neighbours are contrast in the 9 voxels of the slice above (share 9/26);
    - ``node``: a 1x2x2 block in grey tissue (share 0), with a 0.3 halo below the threshold;
    - ``corner``: the volume's corner voxel, its 7 neighbours inside the volume, 1 of them contrast (share 1/7).
    """
    image = np.full((9, 12, 12), TISSUE, dtype=np.float32)
    prob = np.zeros_like(image)
    defect, node, corner = (4, 3, 3), (slice(4, 5), slice(7, 9), slice(7, 9)), (0, 0, 0)
    image[3, 2:5, 2:5] = CONTRAST
    prob[defect] = 0.9
    prob[3:6, 6:10, 6:10] = 0.3
    prob[node] = 0.8
    prob[corner] = 0.7
    image[1, 1, 1] = CONTRAST
    return image, prob, {"defect": defect, "node": node, "corner": corner}


def test_shares_count_the_shell_voxels_at_or_above_the_contrast_level() -> None:
    image, prob, _ = study()
    labels, count = label_clusters(prob >= 0.5)
    shares = contrast_shares(labels, count, image, contrast_level=200.0)
    assert count == 3  # raster order: corner, defect, node
    np.testing.assert_allclose(shares, [1 / 7, 9 / 26, 0.0])
    np.testing.assert_allclose(contrast_shares(labels, count, image, contrast_level=CONTRAST + 1), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="differ in shape"):
        contrast_shares(labels, count, image[:-1], 200.0)


@pytest.mark.parametrize("min_share, kept", [(0.1, {"defect", "corner"}), (0.2, {"defect"}), (0.5, set())])
def test_removed_detections_get_probability_zero_and_nothing_else_changes(min_share, kept) -> None:
    image, prob, where = study()
    filtered, shares = remove_unenhanced_clusters(prob, image, 0.5, 200.0, min_share)
    assert shares.shape == (3,)
    for name, index in where.items():
        assert (filtered[index] == (prob[index] if name in kept else 0)).all(), name
    changed = filtered != prob
    assert not changed[prob < 0.5].any()  # the halo under the threshold stays
    assert prob[where["defect"]] == 0.9  # the input is not modified


def test_share_zero_is_off_and_bad_arguments_are_refused() -> None:
    image, prob, _ = study()
    filtered, _ = remove_unenhanced_clusters(prob, image, 0.5, 200.0, 0.0)
    assert filtered is prob
    with pytest.raises(ValueError, match="min_share"):
        remove_unenhanced_clusters(prob, image, 0.5, 200.0, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        remove_unenhanced_clusters(prob, image[:, :-1], 0.5, 200.0, 0.1)


def test_the_transform_works_on_a_windowed_image_and_two_channel_softmax() -> None:
    image, prob, where = study()
    low, high = -100.0, 300.0  # the bundle's window: centre 100, width 400
    windowed = np.clip((image - low) / (high - low), 0.0, 1.0)
    to_xyz = (lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)))[None])  # noqa: E731
    pred = torch.cat([1.0 - to_xyz(prob), to_xyz(prob)])
    data = {"pred": MetaTensor(pred), "image": MetaTensor(to_xyz(windowed))}
    out = ContrastAdjacencyFilterd("pred", threshold=0.5, contrast_hu=200.0, min_share=0.2, window=(100, 400))(data)
    assert isinstance(out["pred"], MetaTensor) and out["pred"].shape == pred.shape
    expected, _ = remove_unenhanced_clusters(prob, image, 0.5, 200.0, 0.2)
    np.testing.assert_array_equal(out["pred"][1].numpy().transpose(2, 1, 0), expected)
    removed = to_xyz(expected)[0] != pred[1]
    assert removed.any() and (out["pred"][0][removed] == 1.0).all()
    assert torch.equal(out["pred"][0][~removed], pred[0][~removed])
    # off: the data come back as they were
    assert ContrastAdjacencyFilterd("pred", min_share=0.0, window=(100, 400))(data)["pred"] is data["pred"]


def test_the_transform_refuses_a_level_outside_the_window_and_a_wrong_grid() -> None:
    with pytest.raises(ValueError, match="inside the window"):
        ContrastAdjacencyFilterd("pred", contrast_hu=350.0, min_share=0.1, window=(100, 400))
    ContrastAdjacencyFilterd("pred", contrast_hu=350.0, min_share=0.0, window=(100, 400))  # off: any window will do
    with pytest.raises(ValueError, match="min_share"):
        ContrastAdjacencyFilterd("pred", min_share=-0.1)
    transform = ContrastAdjacencyFilterd("pred", min_share=0.1)
    with pytest.raises(ValueError, match="'pred' must be"):
        transform({"pred": torch.zeros(3, 4, 4, 4), "image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="'pred' must be"):
        transform({"pred": torch.zeros(1, 4, 4, 5), "image": torch.zeros(1, 4, 4, 4)})


def test_scoring_applies_the_filter_to_saved_outputs(tmp_path) -> None:
    image, prob, where = study()
    ref = np.zeros(image.shape, dtype=np.uint8)
    ref[where["defect"]] = 1
    affine = np.eye(4)
    for folder, name, volume in (("pred", "s1_prob", prob), ("ref", "s1", ref), ("images", "s1", image)):
        (tmp_path / folder).mkdir(exist_ok=True)
        write_volume(tmp_path / folder / f"{name}.nii.gz", volume, affine)
    plain = score_directories(tmp_path / "pred", tmp_path / "ref")
    assert (plain["cluster"]["tp"], plain["cluster"]["fp"]) == (1, 2) and plain["settings"]["contrast_filter"] is None
    filtered = score_directories(tmp_path / "pred", tmp_path / "ref", image_dir=tmp_path / "images", contrast_min_share=0.2)
    assert (filtered["cluster"]["tp"], filtered["cluster"]["fp"], filtered["cluster"]["fn"]) == (1, 0, 0)
    assert filtered["settings"]["contrast_filter"]["min_share"] == 0.2
    with pytest.raises(ValueError, match="needs image_dir"):
        score_directories(tmp_path / "pred", tmp_path / "ref", contrast_min_share=0.2)
    write_volume(tmp_path / "images" / "s1.nii.gz", image[:-1], affine)
    with pytest.raises(InputError, match="s1.nii.gz: image shape"):
        score_directories(tmp_path / "pred", tmp_path / "ref", image_dir=tmp_path / "images", contrast_min_share=0.2)


@pytest.mark.parametrize("config, path", [("inference.json", "postprocessing"), ("train.json", "validate#postprocessing")])
def test_the_student_configs_wire_the_filter_off_by_default(tmp_path, config, path) -> None:
    configs = REPO / "bundles" / "dynunet_student" / "configs"
    for share in (0.0, 0.05):
        override = tmp_path / f"share{share}.json"
        override.write_text(json.dumps({"contrast_min_share": share, "bundle_root": str(tmp_path)}))
        parser = ConfigParser()
        parser.read_config([str(configs / config), str(override)])
        transforms = parser.get_parsed_content(path).transforms
        filters = [t for t in transforms if isinstance(t, ContrastAdjacencyFilterd)]
        assert len(filters) == 1 and filters[0].min_share == share
        assert filters[0].contrast_level == pytest.approx((200 + 100) / 400)  # 200 HU in the window [-100, 300]
        assert type(transforms[transforms.index(filters[0]) - 1]).__name__ in ("Activationsd", "Lambdad")


def test_the_benchmark_calibrates_on_validation_and_scores_test(tmp_path) -> None:
    """``benchmarks/bench_contrast_filter.py``: where only the filter removes the false detection (it is more
    confident than the embolus), the filter's operating point wins on validation and on test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_contrast_filter", REPO / "benchmarks" / "bench_contrast_filter.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    image, prob, where = study()
    prob[where["node"]] = 0.99
    prob[where["corner"]] = 0.0
    ref = np.zeros(image.shape, dtype=np.uint8)
    ref[where["defect"]] = 1
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    for folder, name, volume in (("labels", "s1", ref), ("images", "s1", image)):
        write_volume(prepared / folder / f"{name}.nii.gz", volume, np.eye(4))
    for folder in ("val_output", "output"):
        write_volume(run / folder / "s1_prob.nii.gz", prob, np.eye(4))
    result = bench.calibrate(run, prepared, thresholds=(0.5, 0.95), shares=(0.0, 0.2))
    test = result["test"]
    assert (test["as trained"]["threshold"], test["as trained"]["share"], test["as trained"]["fp"]) == (0.5, 0.0, 1)
    assert (test["threshold"]["threshold"], test["threshold"]["f1"]) == (0.5, pytest.approx(2 / 3))  # 0.95 loses the embolus
    assert (test["threshold + contrast"]["share"], test["threshold + contrast"]["f1"]) == (0.2, 1.0)
    assert len(result["validation"]) == 4
    with pytest.raises(FileNotFoundError, match="val_output"):
        bench.calibrate(tmp_path / "empty", prepared)
