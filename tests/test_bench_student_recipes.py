"""The student recipe benchmark (issue 6): its candidates are valid overrides of the bundle's configs,
and it reads the validation curve the bundle logs."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandCropByPosNegLabeld

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "dynunet_student" / "configs"


CANDIDATE_NAMES = ["gdl", "gdl_pos3", "gdl_focal", "dicece", "gdl_nomixup", "gdl_prior", "gdl_prior_nomixup", "dicece_prior", "dicece_prior_pos3_lr3", "gdlfocal_prior_pos3_lr3", "gdl_prior_lr10", "dicece_prior_lr10", "dicece_prior_lr10_pos3_nomixup", "dicece_prior_lr10_pos3_nomixup_lungneg"]


def _benchmark(name: str):
    """a script of ``benchmarks/`` (not a package) as a module"""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _benchmark("bench_student_recipes")


def test_validation_curve_reads_the_stats_handler_lines(bench) -> None:
    log = (
        "2026-11-23 11:25:08,557 - INFO - Epoch[1] Metrics -- val_cluster_f1: 0.0213 val_cluster_ppv: 0.0110 val_cluster_sensitivity: 0.3636 \n"
        "Iteration: [99/100] loss=0.143\n"
        "2026-11-23 11:26:08,557 - INFO - Epoch[2] Metrics -- val_cluster_f1: 0.5000 val_cluster_ppv: 0.4000 val_cluster_sensitivity: 0.6667 \n"
        "2026-11-23 11:27:08,557 - INFO - Epoch[3] Metrics -- val_cluster_f1: 0.0000 val_cluster_ppv: nan \n"
    )
    curve = bench.validation_curve(log)
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert curve[0]["val_cluster_f1"] == pytest.approx(0.0213)
    assert curve[1] == {"epoch": 2, "val_cluster_f1": 0.5, "val_cluster_ppv": 0.4, "val_cluster_sensitivity": 0.6667}
    assert curve[2]["val_cluster_f1"] == 0.0 and curve[2]["val_cluster_ppv"] != curve[2]["val_cluster_ppv"]  # nan


def test_every_candidate_is_checked(bench) -> None:
    assert sorted(CANDIDATE_NAMES) == sorted(bench.CANDIDATES)


@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_each_candidate_is_a_valid_override_of_the_bundle(bench, name) -> None:
    """the override paths exist in the configs and what they set is what the trainer gets"""
    overrides = bench.CANDIDATES[name]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json"), str(CONFIGS / "random_init.json")])
    for key in overrides:
        assert key in parser, f"{name}: {key} is not a key of the student's configs"
    parser.update(overrides)
    loss = parser.get_parsed_content("loss", instantiate=True)
    logits = torch.randn(2, 2, 8, 8, 4, requires_grad=True)
    target = torch.zeros(2, 2, 8, 8, 4)
    target[:, 0] = 1.0
    target[0, :, 2:4, 2:4, 1:3] = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0
    crop = parser.get_parsed_content("train#random_transforms#0", instantiate=True)
    assert isinstance(crop, RandCropByPosNegLabeld)
    if "train#random_transforms#0#pos" in overrides:
        assert crop.cropper.pos_ratio == pytest.approx(overrides["train#random_transforms#0#pos"] / (overrides["train#random_transforms#0#pos"] + 1))


def test_unknown_candidates_and_labels_are_refused(bench, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown candidates"):
        bench.main(work_dir=str(tmp_path), candidates="gdl,nope", out_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="labels must be"):
        bench.main(work_dir=str(tmp_path), labels="boxes", out_dir=str(tmp_path / "out"))


def test_a_missing_pipeline_run_is_named(bench, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="annotated.json"):
        bench.main(work_dir=str(tmp_path), candidates="gdl", out_dir=str(tmp_path / "out"))


def _write(path, array) -> None:
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def test_embolus_voxel_auc_ranks_embolus_voxels_against_the_rest(bench, tmp_path) -> None:
    import numpy as np

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    reference = np.zeros((8, 8, 4), np.uint8)
    reference[2:4, 2:4, 1] = 1
    _write(ref / "s1.nii.gz", reference)
    prob = np.random.default_rng(0).uniform(0.0, 0.4, reference.shape).astype(np.float32)
    prob[reference > 0] = 0.9
    _write(pred / "s1_prob.nii.gz", prob)
    assert bench.embolus_voxel_auc(pred, ref) == 1.0
    _write(pred / "s1_prob.nii.gz", 1.0 - prob)
    assert bench.embolus_voxel_auc(pred, ref) == 0.0
    _write(pred / "s1_prob.nii.gz", np.full(reference.shape, 0.3, np.float32))
    assert bench.embolus_voxel_auc(pred, ref) == 0.5
    _write(pred / "s1_prob.nii.gz", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="s1_prob.nii.gz: shape"):
        bench.embolus_voxel_auc(pred, ref)


def test_window_centres_follow_monai_sliding_window(bench) -> None:
    """The windows of ``sliding_window_inference`` on a demo study: 64x64x32 at overlap 0.25 on 192x192x96."""
    x, y, z = bench.window_centres((192, 192, 96), (64, 64, 32), 0.25)
    assert list(x) == list(y) == [31.5, 79.5, 127.5, 159.5]  # step 48, the last window ends at the border
    assert list(z) == [15.5, 39.5, 63.5, 79.5]
    assert [list(c) for c in bench.window_centres((64, 40, 10), (64, 64, 32), 0.5)] == [[31.5], [31.5], [15.5]]


def test_window_centre_fraction_flags_a_student_that_learned_the_position(bench, tmp_path) -> None:
    def study(name, centroids_zyx):
        clusters = [{"centroid_zyx": list(c), "voxels": 20} for c in centroids_zyx]
        (tmp_path / f"{name}_clusters.json").write_text(json.dumps({"shape_zyx": [96, 192, 192], "clusters": clusters}))

    assert bench.window_centre_fraction(tmp_path, (64, 64, 32), 0.25) is None  # no clusters
    study("a", [(16, 80, 127), (40.2, 160, 31)])  # at window centres (within 2 voxels on every axis)
    study("b", [(16, 80, 110), (50, 100, 100)])  # off-centre on one axis / on all
    assert bench.window_centre_fraction(tmp_path, (64, 64, 32), 0.25) == pytest.approx(0.5)
    assert bench.window_centre_fraction(tmp_path, (64, 64, 32), 0.25, tolerance=20) == pytest.approx(0.75)


def test_intensity_baseline_scores_the_ct_values_in_the_window(bench, tmp_path) -> None:
    import numpy as np

    pred, ref, images = tmp_path / "pred", tmp_path / "ref", tmp_path / "images"
    for d in (pred, ref, images):
        d.mkdir()
    reference = np.zeros((8, 8, 4), np.uint8)
    reference[2:4, 2:4, 1] = 1
    _write(ref / "s1.nii.gz", reference)
    _write(pred / "s1_prob.nii.gz", np.zeros(reference.shape, np.float32))
    image = np.full(reference.shape, -800.0, np.float32)  # lung
    image[reference > 0] = 40.0  # embolus
    image[0, 0, 0] = 350.0  # contrast: above the embolus
    _write(images / "s1.nii.gz", image)
    n_neg = reference.size - int(reference.sum())
    assert bench.intensity_voxel_auc(pred, ref, images) == pytest.approx((n_neg - 1) / n_neg)
    # a window that clips both to its floor: ties
    assert bench.intensity_voxel_auc(pred, ref, images, window=(-1000.0, 100.0)) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def overfit():
    return _benchmark("bench_student_overfit")


def test_overfit_check_names_what_is_missing(overfit, tmp_path) -> None:
    with pytest.raises(ValueError, match="loss must be one of"):
        overfit.main(work_dir=str(tmp_path), loss="focal")
    with pytest.raises(FileNotFoundError, match="annotated.json"):
        overfit.main(work_dir=str(tmp_path))
