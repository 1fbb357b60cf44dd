"""The iExplain teacher bundle: cohort runner, calibration, evaluation, and the configs through the MONAI bundle CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from custom.data.minivolume import extract_minivolume, window_hu
from custom.explain.grid_scaling import scale_paper_settings
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.nifti import read_volume, write_volume
from custom.networks import SliceClassifier
from custom.teacher import (
    TeacherFactory,
    calibrate_high_threshold,
    choose_candidate,
    evaluate_outputs,
    evaluate_teacher,
    load_classifier,
    load_studies,
    read_classifier_threshold,
    read_high_threshold,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "iexplain_teacher"
AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
# settings of a 48 x 48 grid: the paper's 512 px values would scale to a 5 x 1 x 1 neighbourhood
TINY = [
    "--model_name", "tf_efficientnetv2_b0", "--feature_stage", "1", "--scale_to_grid", "False",
    "--neighbourhood", "[3,5,5]", "--min_voxels", "4", "--min_cluster_voxels", "8", "--max_center_distance_px", "20",
    "--n_steps", "8", "--n_noise", "0", "--max_rounds", "3", "--max_batch", "64", "--windows_per_batch", "4",
]
SPLITS = {"training": ["s0", "s1", "s2", "s3", "bad"], "validation": ["s4", "s5", "s6"], "test": ["s7", "s8"]}


def _run(args, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _cli(configs: Path, *names: str) -> list[str]:
    files = [str(configs / f"{name}.json") for name in names]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A copy of the bundle, a prepared cohort of 12 x 48 x 48 studies (one unreadable) and a tiny trained classifier.

    Positive studies (even index) hold a bright 6 x 6 blob on slices 4-7 and its box as reference mask.
    """
    root = tmp_path_factory.mktemp("teacher")
    bundle = root / "iexplain_teacher"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    data = root / "data"
    rng = np.random.default_rng(0)
    entries, minivolumes, targets = {}, [], []
    for i in range(9):
        uid = f"s{i}"
        volume = rng.normal(40, 30, (12, 48, 48)).astype(np.float32)
        mask = np.zeros(volume.shape, np.uint8)
        labels = np.zeros(12, int)
        if i % 2 == 0:
            y, x = (int(v) for v in rng.integers(14, 28, 2))
            volume[4:8, y : y + 6, x : x + 6] = 400
            mask[4:8, y : y + 6, x : x + 6] = 1
            labels[4:8] = 1
        write_volume(data / "images" / f"{uid}.nii.gz", volume.astype(np.int16), AFFINE)
        write_volume(data / "labels" / f"{uid}.nii.gz", mask, AFFINE)
        entries[uid] = {"image": f"images/{uid}.nii.gz", "label": f"labels/{uid}.nii.gz", "study_uid": uid,
                        "n_slices": 12, "slice_labels": labels.tolist(), "pe_present": int(labels.any())}
        windowed = window_hu(volume, 100, 700)
        minivolumes += [extract_minivolume(windowed, k) for k in range(12)]
        targets += labels.tolist()
    (data / "images" / "bad.nii.gz").write_bytes(b"not a nifti file")
    entries["bad"] = {"image": "images/bad.nii.gz", "study_uid": "bad", "n_slices": 12, "slice_labels": [0] * 12, "pe_present": 0}
    datalist = {split: [entries[uid] for uid in uids] for split, uids in SPLITS.items()}
    (data / "datalist.json").write_text(json.dumps(datalist))
    # a few dozen balanced steps teach the shallow classifier the blob (one thread: the CPU is shared)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = SliceClassifier("tf_efficientnetv2_b0", feature_stage=1)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    x_all, y_all = torch.from_numpy(np.stack(minivolumes)), torch.tensor(targets, dtype=torch.float32)
    positive, negative = torch.nonzero(y_all == 1).flatten(), torch.nonzero(y_all == 0).flatten()
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = torch.cat([positive[torch.randint(len(positive), (8,), generator=generator)],
                           negative[torch.randint(len(negative), (8,), generator=generator)]])
        loss = nn.functional.binary_cross_entropy_with_logits(network(x_all[batch]), y_all[batch, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()
    with torch.no_grad():
        probabilities = torch.sigmoid(network(x_all)).flatten()
    torch.set_num_threads(threads)
    assert probabilities[y_all == 1].min() > 0.5, "the fixture classifier did not learn the blob"
    classifier_dir = root / "classifier"
    (classifier_dir / "models").mkdir(parents=True)
    torch.save(network.state_dict(), classifier_dir / "models" / "model.pt")
    (classifier_dir / "models" / "threshold.json").write_text(json.dumps({"threshold": 0.5, "slice_auc": 1.0}))
    return {"root": root, "bundle": bundle, "data": data, "classifier_dir": classifier_dir}


# ---------------------------------------------------------------- units


def test_choose_candidate_best_f1_ties_to_the_lowest_and_undefined_never_wins():
    rows = [{"high": 0.1, "f1": float("nan")}, {"high": 0.2, "f1": 0.5}, {"high": 0.4, "f1": 0.7},
            {"high": 0.8, "f1": 0.7}, {"high": 1.6, "f1": None}]
    assert choose_candidate(rows)["high"] == 0.4
    with pytest.raises(InputError, match="no candidate has a defined F1"):
        choose_candidate([{"high": 0.1, "f1": float("nan")}])


class BlobDetector(nn.Module):
    """PE logit of the centre slice from the brightest 5 x 5 box above 0.7 of slices k-1..k+1."""

    def __init__(self) -> None:
        super().__init__()
        self.box = nn.Conv2d(7, 1, 5, padding=2, bias=False)
        weight = torch.zeros(1, 7, 5, 5)
        weight[0, 2], weight[0, 3], weight[0, 4] = 0.5 / 25, 1.0 / 25, 0.5 / 25
        self.box.weight.data = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 * (torch.amax(self.box(torch.relu(x - 0.7)), dim=(-2, -1)) - 0.1)


def _blob_study(folder: Path, uid: str, blobs: list[tuple[slice, slice, slice]], reference: list[int]) -> dict:
    """A 10 x 32 x 32 study at 100 HU with 400 HU blobs; the reference mask holds the blobs listed in ``reference``."""
    hu = np.full((10, 32, 32), 100.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    for i, blob in enumerate(blobs):
        hu[blob] = 400.0
        if i in reference:
            mask[blob] = 1
    write_volume(folder / f"{uid}_image.nii.gz", hu, AFFINE)
    write_volume(folder / f"{uid}_label.nii.gz", mask, AFFINE)
    return {"image": str(folder / f"{uid}_image.nii.gz"), "label": str(folder / f"{uid}_label.nii.gz"), "study_uid": uid}


def test_calibration_picks_the_candidate_of_best_f1_and_writes_it(tmp_path):
    studies = [
        _blob_study(tmp_path, "a", [np.s_[3:7, 8:13, 8:13], np.s_[3:7, 18:23, 18:23]], reference=[0, 1]),
        _blob_study(tmp_path, "b", [np.s_[2:6, 12:17, 10:15]], reference=[0]),
        {"image": str(tmp_path / "a_image.nii.gz"), "study_uid": "unlabelled"},  # no reference: not used
    ]
    factory = TeacherFactory(BlobDetector(), None, neighbourhood=(3, 5, 5), min_voxels=10, min_cluster_voxels=20,
                             max_center_distance_px=20.0, scale_to_grid=False, n_steps=8, max_rounds=4)
    result = calibrate_high_threshold(factory, studies, tmp_path / "models" / "calibration.json", factors=(64.0, 0.5, 0.25))
    written = json.loads((tmp_path / "models" / "calibration.json").read_text())
    assert written["high_threshold"] == pytest.approx(result["high_threshold"]) and written["studies"] == ["a", "b"]
    candidates = written["candidates"]
    assert [c["factor"] for c in candidates] == [0.25, 0.5, 64.0]
    assert [c["high"] for c in candidates] == pytest.approx([written["scale"] * f for f in (0.25, 0.5, 64.0)])
    # the scale is the blobs' top attribution: a quarter of it finds the three blobs, half of it only
    # grows one blob past Algorithm 1's voxel condition, 64 x finds nothing
    assert [(c["tp"], c["fp"], c["fn"]) for c in candidates] == [(3, 0, 0), (1, 0, 2), (0, 0, 3)]
    assert [c["f1"] for c in candidates] == [1.0, 0.5, 0.0]
    assert written["high_threshold"] == pytest.approx(candidates[0]["high"])
    assert written["low_threshold"] == pytest.approx(written["high_threshold"] / 2)
    assert written["ig_settings"] == {"references": ["fill"], "n_steps": 8, "method": "gausslegendre", "n_noise": 0, "noise_level": 0.15}
    # reading it back checks that the run's IG settings are those it was calibrated with
    path = tmp_path / "models" / "calibration.json"
    assert read_high_threshold(path, None, written["ig_settings"]) == written["high_threshold"]
    with pytest.raises(InputError, match="other IG settings"):
        read_high_threshold(path, None, {**written["ig_settings"], "references": ["fill", "blur"]})
    assert read_high_threshold(tmp_path / "absent.json", 0.25) == 0.25
    with pytest.raises(InputError, match="absent.json: no calibration"):
        read_high_threshold(tmp_path / "absent.json")
    with pytest.raises(InputError, match="none of the 1 studies has a reference mask"):
        calibrate_high_threshold(factory, studies[2:])


def test_evaluation_strict_counts_need_iou_above_one_half(tmp_path):
    """A 16-voxel detection inside a 300-voxel PE matches by the cluster rule, not by the strict one."""
    shape = (8, 40, 40)
    reference, round_map = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    reference[3:6, 15:25, 15:25] = 1
    round_map[4, 18:22, 18:22] = 1
    out = tmp_path / "out"
    write_volume(tmp_path / "s_label.nii.gz", reference, AFFINE)
    write_volume(out / "round_maps" / "s.nii.gz", round_map, AFFINE)
    write_volume(out / "heatmaps" / "s.nii.gz", round_map.astype(np.float32), AFFINE)
    (out / "clusters").mkdir(parents=True)
    (out / "clusters" / "s.json").write_text(json.dumps({"study_uid": "s", "rounds_run": 1, "window_rounds": [1] * 8, "settings": {
        "min_cluster_voxels": 10, "max_center_distance_px": 15.0, "max_rounds": 1}}))
    result = evaluate_outputs(out, [{"image": str(tmp_path / "s.nii.gz"), "label": str(tmp_path / "s_label.nii.gz"), "study_uid": "s"}])
    best = result["table3"]["best_round"]
    assert (best["filtered"]["tp"], best["filtered"]["fp"], best["filtered"]["fn"]) == (1, 0, 0)
    assert (best["strict_filtered"]["tp"], best["strict_filtered"]["fp"], best["strict_filtered"]["fn"]) == (0, 1, 1)


def test_evaluation_per_round_tables_histograms_and_froc_on_hand_built_round_maps(tmp_path):
    shape = (16, 40, 40)  # image centre (19.5, 19.5); filters: 10 voxels, 15 px
    reference, round_map, heatmap = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
    pe_a, pe_b, pe_c = np.s_[2:5, 12:17, 12:17], np.s_[8:11, 22:27, 22:27], np.s_[12:15, 14:18, 24:28]
    false_big, false_small, false_far = np.s_[6:8, 14:19, 30:35], np.s_[14:15, 30:31, 10:12], np.s_[0:2, 0:4, 0:4]
    for pe in (pe_a, pe_b, pe_c):
        reference[pe] = 1
    for region, found_in, confidence in ((pe_a, 1, 0.9), (pe_b, 2, 0.7), (false_big, 3, 0.6), (false_small, 1, 0.55), (false_far, 2, 0.95)):
        round_map[region], heatmap[region] = found_in, confidence
    out = tmp_path / "out"
    studies = []
    for uid, ref, rounds, heat, window_rounds in (
        ("positive", reference, round_map, heatmap, [0, 0, 1, 3, 3, 2] + [0] * 10),
        ("negative", np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), np.zeros(shape, np.float32), [0] * 16),
    ):
        write_volume(tmp_path / f"{uid}_label.nii.gz", ref, AFFINE)
        write_volume(out / "round_maps" / f"{uid}.nii.gz", rounds, AFFINE)
        write_volume(out / "heatmaps" / f"{uid}.nii.gz", heat, AFFINE)
        summary = {"study_uid": uid, "rounds_run": max(window_rounds), "window_rounds": window_rounds,
                   "settings": {"min_cluster_voxels": 10, "max_center_distance_px": 15.0, "max_rounds": 3}}
        (out / "clusters").mkdir(parents=True, exist_ok=True)
        (out / "clusters" / f"{uid}.json").write_text(json.dumps(summary))
        studies.append({"image": str(tmp_path / f"{uid}.nii.gz"), "label": str(tmp_path / f"{uid}_label.nii.gz"), "study_uid": uid})
    studies.append({"image": str(tmp_path / "unrun.nii.gz"), "label": str(tmp_path / "positive_label.nii.gz"), "study_uid": "unrun"})
    result = evaluate_outputs(out, studies)
    assert result["n_studies"] == 2 and result["missing"] == ["unrun"]
    counts = [(r["filtered"]["tp"], r["filtered"]["fp"], r["filtered"]["fn"]) for r in result["per_round"]]
    assert counts == [(1, 0, 2), (2, 0, 1), (2, 1, 1)]  # A; A, B; A, B and the large false cluster
    unfiltered = [(r["unfiltered"]["tp"], r["unfiltered"]["fp"], r["unfiltered"]["fn"]) for r in result["per_round"]]
    assert unfiltered == [(1, 1, 2), (2, 2, 1), (2, 3, 1)]  # plus the small and the off-centre false clusters
    assert [r["filtered"]["f1"] for r in result["per_round"]] == pytest.approx([0.5, 0.8, 4 / 6])
    assert result["per_round"][0]["filtered"]["sensitivity"] == pytest.approx(1 / 3) and result["per_round"][0]["filtered"]["ppv"] == 1.0
    assert result["table2"]["iteration_1"]["f1"] == pytest.approx(0.5)
    assert result["table2"]["best"]["round"] == 2 and result["table2"]["best"]["f1"] == pytest.approx(0.8)
    assert result["table3"]["best_round"]["unfiltered"]["f1"] == pytest.approx(4 / 7)
    assert result["table3"]["all_rounds"]["unfiltered"]["f1"] == pytest.approx(0.5)
    # the detections of A and B are the PEs themselves, so they also match strictly (IoU 1)
    assert result["table3"]["best_round"]["strict_filtered"]["f1"] == pytest.approx(0.8)
    assert result["rounds_histogram"] == {"windows": {"1": 1, "2": 1, "3": 2}, "studies": {"0": 1, "1": 0, "2": 0, "3": 1}}
    assert result["per_study"]["positive"] == {"rounds_run": 3, "tp": 2, "fp": 1, "fn": 1}
    curve = result["froc"]["curve"]  # confidences: far FP 0.95, A 0.9, B 0.7, big FP 0.6, small FP 0.55; 2 studies
    assert curve["fp_per_study"] == pytest.approx([0.5, 0.5, 0.5, 1.0, 1.5])
    assert curve["sensitivity"] == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result["froc"]["n_references"] == 3
    metrics = evaluate_teacher({"1": out, "5": tmp_path / "never_run"}, studies, tmp_path / "eval" / "teacher_metrics.json")
    written = json.loads((tmp_path / "eval" / "teacher_metrics.json").read_text())
    assert set(written["settings"]) == {"1"} and [r["iteration"] for r in written["table2"]] == ["1", "best"]
    assert [(r["filtered"], r["round"]) for r in written["table3"]] == [(False, 2), (True, 2)]
    assert written["table3"][1]["f1"] == pytest.approx(metrics["table2"][1]["f1"])
    with pytest.raises(InputError, match="none of .* holds teacher outputs"):
        evaluate_teacher({"5": tmp_path / "never_run"}, studies)


def test_factory_scales_the_paper_settings_to_the_grid():
    factory = TeacherFactory(BlobDetector(), 0.2, n_steps=4, references=("fill", "blur"))
    teacher = factory(192, 160)
    grid = scale_paper_settings(192, 160)
    assert teacher.neighbourhood == grid.neighbourhood and teacher.min_voxels == grid.min_voxels
    assert teacher.min_cluster_voxels == grid.min_cluster_voxels
    assert teacher.max_center_distance_px == pytest.approx(grid.max_center_distance_px)
    assert teacher.explainer.blur_sigma_px == pytest.approx(grid.blur_sigma_px)
    assert teacher.high_threshold == 0.2 and teacher.low_threshold is None  # hysteresis uses high / 2
    assert factory(512, 512).neighbourhood == (5, 15, 15) and factory(512, 512).min_cluster_voxels == 100
    assert factory(64, 64, high_threshold=0.5).high_threshold == 0.5
    assert factory.ig_settings["references"] == ["fill", "blur"] and factory.ig_settings["n_steps"] == 4
    with pytest.raises(ValueError, match="no high threshold"):
        TeacherFactory(BlobDetector(), None)(32, 32)
    with pytest.raises(ValueError, match="low_threshold"):
        TeacherFactory(BlobDetector(), 0.2, low_threshold=0.05)


def test_datalist_and_classifier_inputs_are_checked(cohort, tmp_path):
    datalist = cohort["data"] / "datalist.json"
    studies = load_studies(datalist, ["validation", "test", "validation"])
    assert [entry_uid(s) for s in studies] == ["s4", "s5", "s6", "s7", "s8"]
    assert studies[0]["split"] == "validation" and os.path.isabs(studies[0]["image"]) and os.path.isfile(studies[0]["label"])
    with pytest.raises(InputError, match="no split \\['finetune'\\]"):
        load_studies(datalist, "finetune")
    # without a study_uid the image file names the study, as the student names it (teacher 0.1.3: ".mha" dropped too);
    # a name without an image extension (a DICOM folder named by its UID) is kept whole, not cut at its last dot
    assert [entry_uid({"image": f"/x/1.2.3{ext}"}) for ext in (".nii.gz", ".nii", ".mha", "", "/")] == ["1.2.3"] * 5
    weights = cohort["classifier_dir"] / "models" / "model.pt"
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": torch.load(weights)}, wrapped)
    network = load_classifier(SliceClassifier("tf_efficientnetv2_b0", feature_stage=1), wrapped, "cpu")
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    with pytest.raises(InputError, match="do not fit the configured classifier"):
        load_classifier(SliceClassifier("tf_efficientnetv2_b0", feature_stage=2), weights)
    with pytest.raises(InputError, match="classifier weights not found"):
        load_classifier(SliceClassifier("tf_efficientnetv2_b0", feature_stage=1), tmp_path / "none.pt")
    assert read_classifier_threshold(cohort["classifier_dir"] / "models" / "threshold.json") == 0.5
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold": 1.5}))
    with pytest.raises(InputError, match="threshold.json: the classifier threshold must be a probability"):
        read_classifier_threshold(tmp_path / "threshold.json")


def test_metadata_follows_the_schema_and_default_paths_resolve_from_the_bundle():
    import jsonschema
    from monai.bundle import ConfigWorkflow

    schema = json.loads((REPO / "bundles" / "metadata_schema.json").read_text())
    jsonschema.validate(json.loads((BUNDLE / "configs" / "metadata.json").read_text()), schema)
    configs = [str(BUNDLE / "configs" / name) for name in ("inference.json", "five_references.json")]
    workflow = ConfigWorkflow(config_file=configs, workflow_type="infer")
    workflow.initialize()
    assert workflow.bundle_root == str(BUNDLE)  # resolved (and cached) from the config files' location
    parsed = workflow.parser.get_parsed_content
    assert os.path.normpath(parsed("classifier_weights")) == str(REPO / "bundles" / "classifier" / "models" / "model.pt")
    assert parsed("output_dir") == str(BUNDLE / "output_5ref") and parsed("calibration_file") == str(BUNDLE / "models" / "calibration_5ref.json")
    assert parsed("references") == ["fill", "max_distance", "blur", "uniform", "gaussian"]
    assert parsed("window") == [100, 700] and parsed("neighbourhood") == [5, 15, 15] and parsed("n_steps") == 50


# ---------------------------------------------------------------- the bundle CLI


@pytest.mark.slow
def test_calibrate_infer_resume_evaluate_through_cli(cohort, tmp_path):
    configs, bundle = cohort["bundle"] / "configs", cohort["bundle"]
    common = [*TINY, "--dataset_dir", str(cohort["data"]), "--classifier_dir", str(cohort["classifier_dir"])]
    # from an unrelated working directory, without --bundle_root: outputs land in the bundle copy
    log = _run(_cli(configs, "inference", "calibrate") + common, cwd=tmp_path)
    calibration = json.loads((bundle / "models" / "calibration.json").read_text())
    assert {"high_threshold", "candidates", "scale"} <= set(calibration) and len(calibration["candidates"]) == 5
    assert all({"high", "sensitivity", "ppv", "f1"} <= set(c) for c in calibration["candidates"])
    assert calibration["studies"] == ["s4", "s5", "s6"] and "calibration: high threshold" in log

    log = _run(_cli(configs, "inference") + common, cwd=tmp_path)
    out = bundle / "output"
    good = [f"s{i}" for i in range(9)]
    for uid in good:
        image, affine = read_volume(cohort["data"] / "images" / f"{uid}.nii.gz")
        round_map, round_affine = read_volume(out / "round_maps" / f"{uid}.nii.gz")
        pseudo, pseudo_affine = read_volume(out / "pseudo" / f"{uid}.nii.gz")
        heatmap, _ = read_volume(out / "heatmaps" / f"{uid}.nii.gz")
        unfiltered, _ = read_volume(out / "pseudo_unfiltered" / f"{uid}.nii.gz")
        assert round_map.shape == pseudo.shape == heatmap.shape == image.shape
        np.testing.assert_allclose(round_affine, affine) and np.testing.assert_allclose(pseudo_affine, affine)
        assert round_map.dtype == np.uint8 and pseudo.dtype == np.uint8 and heatmap.dtype == np.float32
        np.testing.assert_array_equal(unfiltered, (round_map > 0).astype(np.uint8))
        assert not (pseudo & ~unfiltered).any() and 0.0 <= heatmap.min() and heatmap.max() <= 1.0
        record = json.loads((out / "clusters" / f"{uid}.json").read_text())
        assert record["study_uid"] == uid and record["shape"] == [12, 48, 48] and record["seconds"] >= 0
        assert len(record["window_rounds"]) == 12 and record["rounds_run"] == max(record["window_rounds"]) <= 3
        assert record["settings"]["high_threshold"] == pytest.approx(calibration["high_threshold"])
    positive = [json.loads((out / "clusters" / f"s{i}.json").read_text()) for i in (0, 2, 4, 6, 8)]
    assert all(r["rounds_run"] >= 1 and r["clusters"] for r in positive)
    assert all({"round", "voxels", "confidence", "kept"} <= set(c) for r in positive for c in r["clusters"])
    failures = json.loads((out / "failures.json").read_text())
    assert [f["study_uid"] for f in failures] == ["bad"] and "bad.nii.gz: cannot read the image" in failures[0]["error"]
    index = json.loads((out / "index.json").read_text())
    assert index["done"] == good and index["failed"] == ["bad"] and len(index["studies"]) == 10
    assert "study bad failed" in log

    # resume: an interrupted run (s3's JSON, written last, is missing) redoes s3 only
    mtimes = {uid: (out / "clusters" / f"{uid}.json").stat().st_mtime_ns for uid in good}
    (out / "clusters" / "s3.json").unlink()
    log = _run(_cli(configs, "inference") + common, cwd=tmp_path)
    assert "study s3 done" in log and all(f"study {uid} skipped" in log for uid in good if uid != "s3")
    assert all((out / "clusters" / f"{uid}.json").stat().st_mtime_ns == mtimes[uid] for uid in good if uid != "s3")
    index = json.loads((out / "index.json").read_text())
    statuses = {r["study_uid"]: r["status"] for r in index["studies"]}
    assert statuses["s3"] == "done" and statuses["s0"] == "skipped" and statuses["bad"] == "failed" and index["done"] == good

    _run(_cli(configs, "inference", "evaluate") + common + ["--evaluation_key", "['validation', 'test']"], cwd=tmp_path)
    metrics = json.loads((bundle / "eval" / "teacher_metrics.json").read_text())
    assert set(metrics) == {"settings", "table2", "table3"} and set(metrics["settings"]) == {"1"}
    result = metrics["settings"]["1"]
    assert result["n_studies"] == 5 and [r["round"] for r in result["per_round"]] == [1, 2, 3]
    assert {"per_round", "table2", "table3", "rounds_histogram", "froc", "per_study"} <= set(result)
    assert sum(result["rounds_histogram"]["studies"].values()) == 5
    assert result["table2"]["best"]["f1"] >= result["table2"]["iteration_1"]["f1"]
    assert math.isfinite(result["froc"]["average_sensitivity"])


@pytest.mark.slow
def test_multi_gpu_inference_shards_studies_with_gloo(cohort, tmp_path):
    """Two CPU ranks with five IG references: each study is run once, by one rank, and both ranks work."""
    configs = cohort["bundle"] / "configs"
    out = tmp_path / "output_5ref"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    files = str([str(configs / f"{name}.json") for name in ("inference", "five_references", "multi_gpu_inference")])
    log = _run(torchrun + ["--config_file", files, *TINY, "--dataset_dir", str(cohort["data"]), "--classifier_dir",
                           str(cohort["classifier_dir"]), "--output_dir_5ref", str(out), "--high_threshold", "0.02",
                           "--data_list_key", "['validation', 'test']"], cwd=tmp_path)
    index = json.loads((out / "index.json").read_text())
    uids = [r["study_uid"] for r in index["studies"]]
    assert uids == ["s4", "s5", "s6", "s7", "s8"] and index["done"] == uids and index["world_size"] == 2
    assert {r["rank"] for r in index["studies"]} == {0, 1} and all(r["status"] == "done" for r in index["studies"])
    assert all(log.count(f"study {uid} done") == 1 for uid in uids)
    # the ranks measured the "auto" precision of the grid together and took rank 0's choice
    precisions = {(r["autocast_dtype"], r["channels_last"]) for r in (json.loads((out / "clusters" / f"{uid}.json").read_text()) for uid in uids)}
    assert len(precisions) == 1, precisions
    record = json.loads((out / "clusters" / "s4.json").read_text())
    assert record["settings"]["references"] == ["fill", "max_distance", "blur", "uniform", "gaussian"]
    metrics = evaluate_teacher({"5": out}, load_studies(cohort["data"] / "datalist.json", "test"))
    assert [row["references"] for row in metrics["table2"]] == ["5", "5"]
