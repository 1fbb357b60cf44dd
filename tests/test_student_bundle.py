"""The dynunet_student bundle end to end through the ``monai.bundle`` CLI, on a tiny generated cohort.

The bundle's configs are copied to a temporary bundle folder and run from another working
directory without ``--bundle_root``: models, logs, outputs and evaluation files must land in that
bundle folder. The network is shrunk by overrides (64x64x32 patches, 4-8 filters); the paper-scale
values are checked statically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from custom.io.nifti import read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "dynunet_student" / "configs"
TINY = {
    "patch_size": "[64,64,32]",
    "network_filters": "[4,8,8,8,8,8]",
    "iterations_per_epoch": "2",
    "warmup_iterations": "1",
    "batch_size": "2",
    "num_workers": "0",
    "cache_rate": "1.0",
    "val_cache_rate": "1.0",
    "log_every_iterations": "1",
    "checkpoint_interval": "1",
}
AFFINE = np.array([[-0.9, 0.0, 0.0, 12.0], [0.0, -0.9, 0.0, 30.0], [0.0, 0.0, 2.5, -80.0], [0.0, 0.0, 0.0, 1.0]])


def _write_tiny_cohort(root: Path) -> None:
    """Six (20, 40, 40) studies: a bright vessel, emboli (darker plugs) in the even ones; a datalist."""
    rng = np.random.default_rng(0)
    entries = []
    z, y, x = np.mgrid[:20, :40, :40]
    vessel = (y - 20) ** 2 + (x - 14) ** 2 < 12
    for i in range(6):
        uid = f"1.2.826.0.1.3680043.{i}"
        image = rng.normal(-800, 30, (20, 40, 40))
        image[((y - 20) ** 2 + (x - 20) ** 2) < 18**2] = rng.normal(40, 20, 1)
        image[vessel] = 350
        mask = np.zeros((20, 40, 40), np.uint8)
        if i % 2 == 0:
            mask[vessel & (np.abs(z - 6 - i) < 3)] = 1
            image[mask > 0] = 50
        write_volume(root / "images" / f"{uid}.nii.gz", image.astype(np.int16), AFFINE)
        write_volume(root / "labels" / f"{uid}.nii.gz", mask, AFFINE)
        write_volume(root / "pseudo" / f"{uid}.nii.gz", mask, AFFINE)
        entries.append({"image": f"images/{uid}.nii.gz", "label": f"labels/{uid}.nii.gz", "study_uid": uid, "series_uid": f"{uid}.1",
                        "n_slices": 20, "slice_labels": mask.any(axis=(1, 2)).astype(int).tolist(), "pe_present": int(mask.any())})
    datalist = {"training": entries[:2], "validation": entries[2:4], "test": entries[4:], "meta": {}}
    (root / "datalist.json").write_text(json.dumps(datalist))


def _cli(*args: str, cwd: Path, overrides: dict[str, str] | None = None, launcher: tuple[str, ...] = ("-m",)) -> str:
    command = [sys.executable, *launcher, "monai.bundle", *args]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")  # a crash at exit prints every thread's Python stack
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def _configs(bundle: Path, *names: str) -> str:
    return str([str(bundle / "configs" / n) for n in names])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A copy of the bundle, a cohort, and a working directory elsewhere; the bundle trained 2 iterations."""
    root = tmp_path_factory.mktemp("student")
    bundle = root / "dynunet_student"
    shutil.copytree(CONFIGS, bundle / "configs")
    data = root / "data"
    _write_tiny_cohort(data)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    overrides = {**TINY, "dataset_dir": str(data), "pseudo_label_dir": str(data / "pseudo"), "num_iterations": "2"}
    output = _cli("run", "training", "--config_file", str(bundle / "configs" / "train.json"), cwd=elsewhere, overrides=overrides)
    return {"root": root, "bundle": bundle, "data": data, "elsewhere": elsewhere, "train_output": output}


def test_training_cli_writes_into_the_bundle_and_resumes(workspace) -> None:
    bundle, data = workspace["bundle"], workspace["data"]
    assert "val_cluster_f1" in workspace["train_output"]
    assert workspace["train_output"].count("-- train_loss:") == 2
    assert (bundle / "models" / "model.pt").is_file()
    checkpoint = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "trainer"}
    assert checkpoint["trainer"]["iteration"] == 2
    assert any((bundle / "logs").glob("events.out.tfevents.*"))
    assert json.loads((bundle / "logs" / "train_minutes.json").read_text())["iterations"] == 2
    assert not (workspace["elsewhere"] / "models").exists()

    # default run id, two more iterations: goes on from the checkpoint (iteration 2 -> 4)
    overrides = {**TINY, "dataset_dir": str(data), "pseudo_label_dir": str(data / "pseudo"), "num_iterations": "4"}
    output = _cli("run", "--config_file", str(bundle / "configs" / "train.json"), cwd=workspace["elsewhere"], overrides=overrides)
    assert output.count("-- train_loss:") == 2  # iterations 3 and 4 only (a restart would log 4)
    resumed = torch.load(bundle / "models" / "checkpoint.pt", weights_only=False)
    assert resumed["trainer"]["iteration"] == 4
    # the schedule is the resumed run's (4 iterations), not the checkpoint's (2): its last rate is the final one
    assert (resumed["lr_scheduler"]["total"], resumed["lr_scheduler"]["last_epoch"]) == (4, 4)
    assert resumed["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-7)
    assert json.loads((bundle / "logs" / "train_minutes.json").read_text())["iterations"] == 4


def test_inference_cli_writes_three_outputs_per_study(workspace) -> None:
    bundle, data = workspace["bundle"], workspace["data"]
    overrides = {"patch_size": TINY["patch_size"], "network_filters": TINY["network_filters"], "num_workers": "0", "dataset_dir": str(data)}
    _cli("run", "--config_file", str(bundle / "configs" / "inference.json"), cwd=workspace["elsewhere"], overrides=overrides)
    test_uids = [e["study_uid"] for e in json.loads((data / "datalist.json").read_text())["test"]]
    outputs = bundle / "output"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(f"{u}_{k}" for u in test_uids for k in ("prob.nii.gz", "mask.nii.gz", "clusters.json"))
    for uid in test_uids:
        image, image_affine = read_volume(data / "images" / f"{uid}.nii.gz")
        prob, prob_affine = read_volume(outputs / f"{uid}_prob.nii.gz")
        mask, mask_affine = read_volume(outputs / f"{uid}_mask.nii.gz")
        assert prob.shape == mask.shape == image.shape
        assert np.allclose(prob_affine, image_affine) and np.allclose(mask_affine, image_affine)
        assert prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0
        assert np.array_equal(mask, (prob >= 0.5).astype(np.uint8))
        findings = json.loads((outputs / f"{uid}_clusters.json").read_text())
        assert findings["study_uid"] == uid and findings["n_clusters"] == len(findings["clusters"])
        assert sum(c["voxels"] for c in findings["clusters"]) == int(mask.sum())


def test_evaluate_cli_reports_cluster_strict_and_froc(workspace) -> None:
    bundle, data = workspace["bundle"], workspace["data"]
    overrides = {"patch_size": TINY["patch_size"], "network_filters": TINY["network_filters"], "num_workers": "0", "dataset_dir": str(data)}
    output = _cli("run", "--config_file", _configs(bundle, "train.json", "evaluate.json"), cwd=workspace["elsewhere"], overrides=overrides)
    assert "test_cluster_f1" in output and "test_froc" in output
    report = json.loads((bundle / "eval" / "metrics.json").read_text())
    test_uids = [e["study_uid"] for e in json.loads((data / "datalist.json").read_text())["test"]]
    assert sorted(report["per_study"]) == sorted(test_uids) and report["n_studies"] == 2
    for section in ("cluster", "strict"):
        assert set(report[section]) == {"tp", "fp", "fn", "sensitivity", "ppv", "f1", "fp_per_study"}
        assert report[section]["tp"] + report[section]["fn"] == 1  # one embolus in the test split
    assert set(report["metrics"]) >= {"test_cluster_f1", "test_cluster_sensitivity", "test_cluster_ppv", "test_strict_f1", "test_froc"}
    froc = json.loads((bundle / "eval" / "froc.json").read_text())
    assert froc["n_studies"] == 2 and froc["n_references"] == 1
    assert (bundle / "eval" / "test_cluster_f1_raw.csv").is_file() and (bundle / "eval" / "metrics.csv").is_file()


def test_finetune_cli_starts_from_the_weak_model(workspace) -> None:
    bundle, data, root = workspace["bundle"], workspace["data"], workspace["root"]
    overrides = {**TINY, "dataset_dir": str(data), "num_iterations": "2", "bundle_root": str(root / "finetuned"),
                 "pretrained_checkpoint": str(bundle / "models" / "model.pt")}
    output = _cli("run", "training", "--config_file", _configs(bundle, "train.json", "finetune.json"), cwd=workspace["elsewhere"],
                  overrides=overrides)
    assert "val_cluster_f1" in output
    assert (root / "finetuned" / "models" / "model.pt").is_file()


def test_calibrate_cli_then_inference_and_evaluate_use_the_threshold(workspace, tmp_path) -> None:
    """``calibrate.json`` infers the validation studies and writes ``models/threshold.json``, which
    inference and evaluate then read (both keep ``default_threshold`` without the file)."""
    bundle, data = workspace["bundle"], workspace["data"]
    sizes = {"patch_size": TINY["patch_size"], "network_filters": TINY["network_filters"], "num_workers": "0", "dataset_dir": str(data)}
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    shutil.copy(bundle / "models" / "model.pt", ckpt / "model.pt")
    _cli("run", "--config_file", _configs(bundle, "inference.json", "calibrate.json"), cwd=workspace["elsewhere"],
         overrides={**sizes, "ckpt_dir": str(ckpt)})
    validation = json.loads((data / "datalist.json").read_text())["validation"]
    assert sorted(p.name for p in (bundle / "val_output").glob("*_prob.nii.gz")) == sorted(f"{e['study_uid']}_prob.nii.gz" for e in validation)
    calibration = json.loads((ckpt / "threshold.json").read_text())
    assert calibration["n_studies"] == 2 and calibration["n_references"] == 1  # one embolus in the validation split
    assert [r["threshold"] for r in calibration["candidates"]] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert 0.0 < calibration["threshold"] < 1.0

    (ckpt / "threshold.json").write_text(json.dumps({"threshold": 0.05}))  # a low threshold shows in the masks
    out = tmp_path / "out"
    _cli("run", "--config_file", _configs(bundle, "inference.json"), cwd=workspace["elsewhere"],
         overrides={**sizes, "ckpt_dir": str(ckpt), "output_dir": str(out)})
    for prob_path in out.glob("*_prob.nii.gz"):
        prob, _ = read_volume(prob_path)
        mask, _ = read_volume(Path(str(prob_path).replace("_prob", "_mask")))
        assert np.array_equal(mask, (prob >= 0.05).astype(np.uint8))
    evaluate = _parsed("train.json", "evaluate.json")
    evaluate["ckpt_dir"] = str(ckpt)
    assert evaluate.get_parsed_content("threshold") == 0.05
    assert evaluate.get_parsed_content("validate#additional_metrics#test_froc#threshold") == 0.5  # FROC: uncalibrated cut
    evaluate["ckpt_dir"] = str(tmp_path / "nothing")
    assert evaluate.get_parsed_content("threshold") == 0.5


@pytest.mark.slow
def test_calibrate_with_two_gloo_processes(workspace, tmp_path) -> None:
    """Under torchrun the validation studies are sharded; rank 0 calibrates once every rank has written."""
    bundle, data = workspace["bundle"], workspace["data"]
    overrides = {"patch_size": TINY["patch_size"], "network_filters": TINY["network_filters"], "num_workers": "0",
                 "dataset_dir": str(data), "output_dir": str(tmp_path / "val"), "calibration_path": str(tmp_path / "threshold.json")}
    output = _cli("run", "--config_file", _configs(bundle, "inference.json", "multi_gpu_inference.json", "calibrate.json"),
                  cwd=workspace["elsewhere"], overrides=overrides, launcher=("-m", "torch.distributed.run", "--nproc_per_node=2", "-m"))
    assert len(list((tmp_path / "val").glob("*_prob.nii.gz"))) == 2
    # both ranks resolved autocast_dtype "auto" together in initialize, to rank 0's choice
    agreed = re.findall(r"autocast dtype (\w+), rank 0's choice for all 2 ranks \(rank (\d)\)", output)
    assert sorted(rank for _, rank in agreed) == ["0", "1"] and len({dtype for dtype, _ in agreed}) == 1, output[-3000:]
    assert json.loads((tmp_path / "threshold.json").read_text())["n_studies"] == 2


def _workflow(files: list[str], workflow_type: str, **overrides) -> ConfigWorkflow:
    tiny = {k: json.loads(v) for k, v in TINY.items()}
    return ConfigWorkflow(config_file=[str(CONFIGS / f) for f in files], workflow_type=workflow_type, logging_file=False,
                          **{**tiny, **overrides})


class _ScriptedF1:
    """A key metric whose value at the evaluation after training epoch ``e`` is ``scores[e]``."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def attach(self, engine, name: str) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, self.scores[e.state.epoch]))


def test_resumed_training_keeps_the_better_model_of_before_the_interruption(workspace, tmp_path) -> None:
    """Epochs 1 and 2 score 0.9 and 0.3, the resumed epochs 3 and 4 score 0.5 and 0.6: models/model.pt stays epoch 1's."""
    data, scores = workspace["data"], {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.6}

    def train(num_iterations: int) -> None:
        workflow = _workflow(["train.json"], "train", bundle_root=str(tmp_path), dataset_dir=str(data), pseudo_label_dir=str(data / "pseudo"),
                             iterations_per_epoch=1, num_iterations=num_iterations, **{"validate#key_metric": {"val_cluster_f1": _ScriptedF1(scores)}})
        workflow.initialize()
        workflow.run()
        workflow.finalize()

    train(2)
    best = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    train(4)  # resumes from iteration 2 with a longer schedule
    kept = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(kept[name], value) for name, value in best.items())


@pytest.mark.parametrize("extra", [[], ["demo.json"], ["finetune.json"], ["random_init.json"]], ids=["train", "demo", "finetune", "random_init"])
def test_train_properties(workspace, extra: list[str]) -> None:
    root, data = workspace["root"], workspace["data"]
    overrides = {"bundle_root": str(root / f"props_{'_'.join(extra) or 'train'}"), "dataset_dir": str(data),
                 "pseudo_label_dir": str(data / "pseudo")}
    if extra == ["finetune.json"]:
        overrides["pretrained_checkpoint"] = str(workspace["bundle"] / "models" / "model.pt")
    if extra == ["demo.json"]:
        overrides = {**overrides, "patch_size": [64, 64, 32], "network_filters": [4, 8, 8, 8, 8, 8]}
    workflow = _workflow(["train.json", *extra], "train", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []


def test_inference_properties(workspace) -> None:
    workflow = _workflow(["inference.json"], "infer", bundle_root=str(workspace["bundle"]), dataset_dir=str(workspace["data"]))
    workflow.initialize()
    assert workflow.check_properties() == []


def test_finetune_refuses_without_pretrained_weights(workspace) -> None:
    data = workspace["data"]
    workflow = _workflow(["train.json", "finetune.json"], "train", bundle_root=str(workspace["root"] / "no_weights"), dataset_dir=str(data))
    with pytest.raises(RuntimeError) as error:
        workflow.initialize()
    assert "pretrained_checkpoint: not given" in repr(error.value.__cause__) + str(error.value)


def test_training_datalist_without_labels_is_a_clear_error(workspace) -> None:
    data = workspace["data"]
    datalist = json.loads((data / "datalist.json").read_text())
    for entry in datalist["training"]:
        entry.pop("label")
    path = workspace["root"] / "weak_datalist.json"
    path.write_text(json.dumps(datalist))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(workspace["root"]), "dataset_dir": str(data), "datalist": str(path)})
    with pytest.raises(RuntimeError) as error:
        parser.get_parsed_content("train#data")
    assert "has no 'label'" in str(error.value.__cause__)


def test_paper_settings() -> None:
    """Section 3.3 and the Table 5 text, as the default configs state them."""
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    train.update({"bundle_root": "/b"})
    assert train["patch_size"] == [128, 128, 64] and train["batch_size"] == 32
    assert train.get_parsed_content("train#deterministic_transforms#1#a_min") == -100
    assert train.get_parsed_content("train#deterministic_transforms#1#a_max") == 300
    assert train["num_iterations"] == 50000 and train.get_parsed_content("total_iterations") == 50000
    assert train["learning_rate"] == 1e-4 and train["final_learning_rate"] == 1e-7
    assert train["loss"]["_target_"] == "GeneralizedDiceLoss" and train["optimizer"]["_target_"] == "torch.optim.AdamW"
    crop = train["train#random_transforms#0"]
    assert crop["_target_"] == "RandCropByPosNegLabeld" and crop["pos"] == crop["neg"] == 1
    for parser, inferer_id in ((train, "validate#inferer#inferer"), (_parsed("inference.json"), "inferer#inferer")):
        inferer = parser[inferer_id]
        step = [int(r * (1 - parser.get_parsed_content(f"{inferer_id}#overlap"))) for r in parser["patch_size"]]
        assert step == [64, 64, 32] and inferer["mode"] == "gaussian" and inferer["sigma_scale"] == 0.25
    finetune, random_init = _parsed("train.json", "finetune.json"), _parsed("train.json", "random_init.json")
    assert (finetune["num_iterations"], finetune["learning_rate"], finetune["warmup_iterations"]) == (10000, 1e-5, 200)
    assert finetune["pretrained_required"] is True
    assert (random_init["num_iterations"], random_init["learning_rate"], random_init["warmup_iterations"]) == (25000, 1e-4, 500)
    assert random_init["pretrained_required"] is False
    assert finetune["train#data"] == random_init["train#data"]  # the same annotated studies


def _parsed(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    return parser


def test_learning_rate_warmup_and_linear_decay() -> None:
    parser = _parsed("train.json")
    parser.update({"bundle_root": "/b", "device": "$torch.device('cpu')", "network_filters": [2, 2, 2, 2, 2, 2],
                   "num_iterations": 100, "iterations_per_epoch": 50, "warmup_iterations": 10})
    optimizer = parser.get_parsed_content("optimizer")
    scheduler = parser.get_parsed_content("lr_scheduler")
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-5)  # 1e-4 / 10 warmup iterations
    assert rates[10] == pytest.approx(1e-4)  # peak at the end of the warmup
    assert all(a <= b + 1e-15 for a, b in zip(rates[:10], rates[1:11]))
    assert all(a >= b - 1e-15 for a, b in zip(rates[10:], rates[11:]))
    assert rates[55] == pytest.approx(1e-4 - (1e-4 - 1e-7) * 45 / 90)  # linear between the peak and the end
    assert rates[100] == pytest.approx(1e-7)


@pytest.mark.slow
def test_verify_net_in_out_at_paper_size(tmp_path) -> None:
    output = _cli("verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"), "--config_file",
                  str(CONFIGS / "train.json"), cwd=tmp_path)
    assert "data shape of network is verified with no error" in output


@pytest.mark.slow
def test_multi_gpu_config_with_two_gloo_processes(workspace) -> None:
    bundle, data, root = workspace["bundle"], workspace["data"], workspace["root"]
    overrides = {**TINY, "dataset_dir": str(data), "pseudo_label_dir": str(data / "pseudo"), "num_iterations": "2",
                 "bundle_root": str(root / "ddp")}
    output = _cli("run", "training", "--config_file", _configs(bundle, "train.json", "multi_gpu_train.json"), cwd=workspace["elsewhere"],
                  overrides=overrides, launcher=("-m", "torch.distributed.run", "--nproc_per_node=2", "-m"))
    assert "val_cluster_f1" in output
    state = torch.load(root / "ddp" / "models" / "checkpoint.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in state["model"])  # saved unwrapped: loads without DDP
    best = torch.load(root / "ddp" / "models" / "model.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in best)


def test_positive_patches_do_not_centre_the_embolus(tmp_path) -> None:
    """Positive patches hold an embolus voxel anywhere in the patch, not at its centre.

    ``RandCropByPosNegLabeld`` centres each positive patch on a foreground voxel. A student trained on
    such patches learned the position instead of the embolus: at inference every cluster it found sat
    at a sliding-window centre (session 10, README "Does the demo recipe learn at all?"). The configs
    crop ``sampling_size`` (patch + 2 x margin) around the voxel, then a random ``patch_size`` part of it,
    so the voxel lies anywhere in the central 3/4 of the patch.
    """
    shape = (192, 192, 96)  # the synthetic cohort's grid
    image, label = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    label[90:93, 100:103, 45:47] = 1.0  # one small embolus
    image[label > 0] = 40.0
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(image, np.eye(4)), data / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), data / "lab.nii.gz")
    parser = _parsed("train.json", "demo.json")
    parser.update({"bundle_root": str(tmp_path), "samples_per_study": 1, "train#random_transforms#0#neg": 0})
    patch = parser.get_parsed_content("patch_size")
    assert parser.get_parsed_content("sampling_size") == [s + 2 * (s // 2 - s // 8) for s in patch]
    transform = parser.get_parsed_content("train#preprocessing", instantiate=True)
    transform.set_random_state(seed=0)
    offsets, empty = [], 0
    for _ in range(60):
        sample = transform({"image": str(data / "img.nii.gz"), "label": str(data / "lab.nii.gz")})[0]
        assert sample["image"].shape[1:] == tuple(patch)
        foreground = sample["label"][1].numpy() > 0
        if not foreground.any():  # the affine can rotate an embolus near the edge out of the patch
            empty += 1
            continue
        centre = np.argwhere(foreground).mean(axis=0)
        offsets.append(centre - (np.asarray(patch) - 1) / 2)
    assert empty <= 6
    spread = np.std(offsets, axis=0) / np.asarray(patch)
    # uniform over the central 3/4 of the patch gives a std of 0.22 of its size; centred crops give ~0.015
    assert (spread > 0.15).all(), spread


@pytest.mark.parametrize("overrides, message", [
    ({"warmup_iterations": 100}, r"warmup_iterations \(100\) must be fewer than the run's 100 iterations"),
    ({"warmup_iterations": 0}, r"warmup_iterations must be an integer >= 1, got 0"),
    ({"learning_rate": 0.0}, r"learning_rate must be a finite number > 0, got 0.0"),
    ({"final_learning_rate": 1e-3}, r"final_learning_rate \(0.001\) must not exceed learning_rate \(0.0001\)"),
])
def test_schedule_settings_are_checked_with_their_names(overrides, message) -> None:
    """A warmup as long as the run had silently ended it before the peak rate; a zero warmup had been a ZeroDivisionError."""
    parser = _parsed("train.json")
    parser.update({"bundle_root": "/b", "device": "$torch.device('cpu')", "network_filters": [2, 2, 2, 2, 2, 2],
                   "num_iterations": 100, "iterations_per_epoch": 50, "warmup_iterations": 10, **overrides})
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the component it instantiates
        parser.get_parsed_content("lr_scheduler")
    assert isinstance(raised.value.__cause__, ValueError)
    assert re.search(message, str(raised.value.__cause__)), str(raised.value.__cause__)


@pytest.mark.parametrize("window", [[100, -400], [100, 0], [100], "100,400", [100, float("nan")]])
def test_hu_window_is_checked_before_it_inverts_or_unscales_the_image(window) -> None:
    from custom.transforms import hu_window_bounds

    assert hu_window_bounds([100, 400]) == (-100.0, 300.0)
    with pytest.raises(ValueError, match="window"):
        hu_window_bounds(window)
    for config in ("train.json", "inference.json"):
        parser = _parsed(config)
        parser.update({"bundle_root": "/b", "window": window})
        with pytest.raises((RuntimeError, ValueError)) as raised:  # MONAI may wrap the expression's error
            parser.get_parsed_content("preprocessing" if config == "inference.json" else "train#deterministic_transforms")
        assert "window" in str(raised.value) + str(raised.value.__cause__)


@pytest.mark.parametrize("batch_size, samples, expected", [(32, 2, 16), (4, 2, 2), (3, 1, 3), (5, 2, None), (1, 2, None), (0, 1, None)])
def test_training_batch_size_must_be_whole_studies(batch_size, samples, expected) -> None:
    """``batch_size`` counts patches; it had been rounded silently to whole studies (5 patches at 2 per study gave 4)."""
    parser = _parsed("train.json")
    parser.update({"bundle_root": "/b", "batch_size": batch_size, "samples_per_study": samples})
    if expected is not None:
        assert parser.get_parsed_content("train#dataloader#batch_size") == expected
        return
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the expression it evaluates
        parser.get_parsed_content("train#dataloader#batch_size")
    assert isinstance(raised.value.__cause__, ValueError)
    assert re.search(r"batch_size .*must be (a multiple of samples_per_study|an integer >= 1)", str(raised.value.__cause__))


def test_calibration_redoes_the_validation_maps_of_retrained_weights(tmp_path) -> None:
    """The reproducer of the stale-output bug: after a retrain, calibrate.json must not reuse the old model's maps."""
    from monai.data import MetaTensor

    from custom.student import SaveStudentOutputsd

    ckpt, out, data = tmp_path / "models", tmp_path / "val_output", tmp_path / "data"
    ckpt.mkdir()
    (data / "images").mkdir(parents=True)
    entry = {"image": "images/1.2.3.nii.gz", "label": "images/1.2.3.nii.gz", "study_uid": "1.2.3"}
    (data / "datalist.json").write_text(json.dumps({"training": [], "validation": [entry], "test": []}))

    def pending() -> tuple[int, dict]:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "calibrate.json")])
        parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(data)})
        settings = parser.get_parsed_content("output_settings")
        return len(parser.get_parsed_content("dataset#data")), settings

    (ckpt / "model.pt").write_bytes(b"weights of run 1")
    count, settings = pending()
    assert count == 1 and settings["threshold"] == 0.5 and len(settings["weights_sha256"]) == 64
    image = torch.zeros((1, 4, 4, 4))
    item = {"image": MetaTensor(image, meta={"filename_or_obj": "1.2.3.nii.gz"}), "pred": image.clone(), "study_uid": "1.2.3"}
    SaveStudentOutputsd(keys="pred", output_dir=out, settings=settings)(item)
    assert pending()[0] == 0  # done with these weights
    (ckpt / "model.pt").write_bytes(b"weights of run 2")  # retrained
    assert pending()[0] == 1
