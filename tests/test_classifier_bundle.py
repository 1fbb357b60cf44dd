"""The classifier bundle through the MONAI bundle CLI: train, resume, evaluate, infer, multi-GPU (gloo), checks."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from custom.handlers import best_f1_threshold
from custom.io.nifti import write_volume
from custom.networks import SliceClassifier

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "classifier"
TINY = ["--model_name", "tf_efficientnetv2_b0", "--feature_stage", "1", "--num_workers", "0", "--channels_last", "False"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A copy of the bundle (so models/ lands in tmp) and a tiny prepared cohort in its data/ folder."""
    root = tmp_path_factory.mktemp("classifier")
    bundle = root / "classifier"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    data = bundle / "data"
    rng = np.random.default_rng(0)
    entries = []
    for i in range(6):
        volume = rng.normal(40, 30, (12, 48, 48)).astype(np.int16)
        labels = np.zeros(12, dtype=int)
        if i % 2 == 0:
            labels[4:8] = 1
            volume[4:8, 20:24, 20:24] = 400
        uid = f"study{i}"
        write_volume(data / "images" / f"{uid}.nii.gz", volume, np.eye(4))
        entries.append({"image": f"images/{uid}.nii.gz", "study_uid": uid, "n_slices": 12,
                        "slice_labels": labels.tolist(), "pe_present": int(labels.any())})
    (data / "datalist.json").write_text(json.dumps({"training": entries[:4], "validation": entries[4:], "test": entries[4:]}))
    return bundle


def _run(args, cwd, env_extra=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", **(env_extra or {})}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_network_zero_initialised_head_and_shallow_receptive_field():
    torch.manual_seed(0)
    full = SliceClassifier("tf_efficientnetv2_b0")
    shallow = SliceClassifier("tf_efficientnetv2_b0", feature_stage=1)
    x = torch.randn(2, 7, 64, 64)
    assert full(x).shape == (2, 1) and shallow(x).shape == (2, 1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(full(x), torch.tensor([[0.0], [1.0]]))
    assert loss.item() == pytest.approx(np.log(2), abs=1e-6)
    # the shallow backbone's response at one position depends on a small window of the input only
    # (eval mode: batch-norm statistics of a training batch would couple all positions)
    shallow.eval()
    probe = torch.randn(1, 7, 64, 64, requires_grad=True)
    feature_map = shallow.backbone.forward_intermediates(probe, indices=(1,), intermediates_only=True)[-1]
    feature_map[0, :, 8, 8].sum().backward()
    rows = torch.nonzero(probe.grad.abs().sum((0, 1)).sum(1))
    assert 0 < rows.max() - rows.min() + 1 <= 24


def test_best_f1_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    scores, labels = rng.random(200), rng.random(200) < 0.2
    threshold, f1 = best_f1_threshold(scores, labels)
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = (predicted & labels).sum()
        best = max(best, 2 * tp / (predicted.sum() + labels.sum()))
    assert f1 == pytest.approx(best)
    predicted = scores >= threshold
    assert 2 * (predicted & labels).sum() / (predicted.sum() + labels.sum()) == pytest.approx(best)


@pytest.mark.parametrize("scores", [np.zeros(4), np.full(4, 1e-9), np.array([0.3, 0.2, 0.1, 0.05])])
def test_best_f1_threshold_including_every_slice_is_a_probability(scores):
    # all slices positive: the best cut keeps them all; the threshold lies between the lowest score and 0
    # (it had been the lowest score - 1e-6, negative for saturated scores, which the teacher refuses)
    threshold, f1 = best_f1_threshold(scores, np.ones(4, dtype=bool))
    assert f1 == 1.0 and threshold == pytest.approx(scores.min() / 2)
    assert (0.0 < threshold < scores.min()) if scores.min() > 0 else threshold == 0.0


def test_workflow_properties_are_complete(tiny_bundle):
    from monai.bundle import ConfigWorkflow

    configs = tiny_bundle / "configs"
    overrides = {"model_name": "tf_efficientnetv2_b0", "feature_stage": 1, "num_workers": 0}
    train = ConfigWorkflow(config_file=str(configs / "train.json"), workflow_type="train", **overrides)
    train.initialize()
    assert not train.check_properties()
    assert train.bundle_root == str(tiny_bundle)  # resolved from the config files' location
    infer = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer", **overrides)
    infer.initialize()
    assert not infer.check_properties()


def test_train_resume_evaluate_infer_through_cli(tiny_bundle, tmp_path):
    configs = tiny_bundle / "configs"
    # from an unrelated working directory, without --bundle_root: outputs land in the bundle
    train = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(configs / "train.json"),
             *TINY, "--epoch_length", "2", "--warmup_iterations", "1", "--batch_size", "4", "--val_batch_size", "8"]
    _run(train + ["--epochs", "1"], cwd=tmp_path)
    models = tiny_bundle / "models"
    assert (models / "model.pt").is_file() and torch.load(models / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 2
    threshold = json.loads((models / "threshold.json").read_text())
    assert 0.0 <= threshold["threshold"] <= 1.0 and "slice_auc" in threshold
    # resume: a second run with more epochs continues from epoch 1
    proc = _run(train + ["--epochs", "2"], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Restored all variables from" in log and "checkpoint.pt" in log
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    assert torch.load(models / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 4
    assert not list(models.glob("checkpoint_epoch=*.pt")) and not list(models.glob(".*.part*"))
    history = json.loads((tiny_bundle / "logs" / "validation_history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]  # the resumed run continues the curve of epoch 1
    assert history[1]["minutes"] >= history[0]["minutes"]

    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
          str([str(configs / "train.json"), str(configs / "evaluate.json")]), *TINY, "--val_batch_size", "8"], cwd=tmp_path)
    metrics = dict(csv.reader((tiny_bundle / "eval" / "metrics.csv").open()))
    assert {"val_auc", "slice_auc", "slice_f1", "study_auc", "within_level_auc"} <= set(metrics)

    _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs / "inference.json"), *TINY], cwd=tmp_path)
    probabilities = json.loads((tiny_bundle / "output" / "slice_probabilities.json").read_text())
    assert sorted(probabilities) == ["study4", "study5"] and all(len(p) == 12 for p in probabilities.values())


class _ScriptedAUC:
    """A key metric whose value at the evaluation after training epoch ``e`` is ``scores[e]``."""

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def attach(self, engine, name: str) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.__setitem__(name, self.scores[e.state.epoch]))


def _train_in_process(bundle: Path, epochs: int, scores: dict[int, float]) -> None:
    from monai.bundle import ConfigWorkflow

    overrides = {"model_name": "tf_efficientnetv2_b0", "feature_stage": 1, "num_workers": 0, "channels_last": False,
                 "epoch_length": 2, "warmup_iterations": 1, "batch_size": 4, "val_batch_size": 8, "epochs": epochs,
                 "validate#key_metric": {"val_auc": _ScriptedAUC(scores)}}
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train", **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_resumed_training_keeps_the_better_model_and_threshold_of_before_the_interruption(tiny_bundle, tmp_path):
    """Epoch 1 scores 0.9, the resumed epochs 2 and 3 score 0.5 and 0.6: model.pt and threshold.json stay epoch 1's."""
    bundle = tmp_path / "classifier"
    shutil.copytree(tiny_bundle / "configs", bundle / "configs")
    shutil.copytree(tiny_bundle / "data", bundle / "data")
    scores = {1: 0.9, 2: 0.5, 3: 0.6}
    _train_in_process(bundle, 1, scores)
    models = bundle / "models"
    best = torch.load(models / "model.pt", weights_only=True)
    _train_in_process(bundle, 3, scores)  # resumes from epoch 1 with a longer schedule
    assert json.loads((models / "threshold.json").read_text())["epoch"] == 1
    kept = torch.load(models / "model.pt", weights_only=True)
    assert all(torch.equal(kept[name], value) for name, value in best.items())


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint(tiny_bundle, tmp_path):
    """A crash while the checkpoint of epoch 2 is written: the rerun resumes from epoch 1's checkpoint."""
    bundle = tmp_path / "classifier"
    shutil.copytree(tiny_bundle / "configs", bundle / "configs")
    shutil.copytree(tiny_bundle / "data", bundle / "data")
    (tmp_path / "crash.py").write_text(
        "import os, torch\n"
        "def crash_while_saving(epoch):\n"
        "    original = torch.save\n"
        "    def save(obj, f, *args, **kwargs):\n"
        "        if isinstance(obj, dict) and obj.get('trainer', {}).get('iteration') == 2 * epoch:\n"
        "            with open(f, 'wb') as out:\n"
        "                out.write(b'half a checkpoint')\n"
        "            os._exit(3)\n"
        "        return original(obj, f, *args, **kwargs)\n"
        "    torch.save = save\n")
    overlay = json.loads((bundle / "configs" / "train.json").read_text())
    overlay = {"imports": overlay["imports"] + ["$import crash"], "initialize": overlay["initialize"] + ["$crash.crash_while_saving(2)"]}
    (tmp_path / "crash.json").write_text(json.dumps(overlay))
    train = [sys.executable, "-m", "monai.bundle", "run", "training", *TINY, "--epoch_length", "2", "--warmup_iterations", "1",
             "--batch_size", "4", "--val_batch_size", "8", "--epochs", "3"]
    crashed = subprocess.run(train + ["--config_file", str([str(bundle / "configs" / "train.json"), str(tmp_path / "crash.json")])],
                             cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")},
                             capture_output=True, text=True, timeout=600)
    assert crashed.returncode == 3, crashed.stdout[-2000:] + crashed.stderr[-2000:]
    proc = _run(train + ["--config_file", str(bundle / "configs" / "train.json")], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Restored all variables from" in log and "Epoch[2] Complete" in log


@pytest.mark.slow
def test_multi_gpu_configs_on_cpu_with_gloo(tiny_bundle, tmp_path):
    configs = tiny_bundle / "configs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    out = tmp_path / "mgpu"
    common = [*TINY, "--bundle_root", str(out), "--dataset_dir", str(tiny_bundle / "data")]
    _run(torchrun + ["training", "--config_file", str([str(configs / "train.json"), str(configs / "multi_gpu_train.json")]),
                     *common, "--epochs", "1", "--epoch_length", "2", "--warmup_iterations", "1", "--batch_size", "2",
                     "--val_batch_size", "4"], cwd=tmp_path)
    assert (out / "models" / "model.pt").is_file()
    proc = _run(torchrun + ["--config_file", str([str(configs / f) for f in ("train.json", "evaluate.json", "multi_gpu_evaluate.json")]),
                            *common, "--val_batch_size", "4"], cwd=tmp_path)
    assert (out / "eval" / "metrics.csv").is_file()
    _assert_ranks_agreed_on_one_dtype(proc.stdout + proc.stderr)
    proc = _run(torchrun + ["--config_file", str([str(configs / "inference.json"), str(configs / "multi_gpu_inference.json")]), *common],
                cwd=tmp_path)
    _assert_ranks_agreed_on_one_dtype(proc.stdout + proc.stderr)
    probabilities = json.loads((out / "output" / "slice_probabilities.json").read_text())
    assert all(len(p) == 12 for p in probabilities.values()) and len(probabilities) == 2


def _assert_ranks_agreed_on_one_dtype(log: str) -> None:
    """Both ranks of a CPU torchrun resolved ``autocast_dtype: "auto"`` together in ``initialize``, to one dtype."""
    agreed = re.findall(r"autocast dtype (\w+), rank 0's choice for all 2 ranks \(rank (\d)\)", log)
    assert sorted(rank for _, rank in agreed) == ["0", "1"] and len({dtype for dtype, _ in agreed}) == 1, log[-3000:]


def test_verify_net_in_out(tiny_bundle, tmp_path):
    configs = tiny_bundle / "configs"
    _run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", str(configs / "metadata.json"),
          "--config_file", str(configs / "train.json"), "--network_def#model_name", "tf_efficientnetv2_b0",
          "--network_def#feature_stage", "2"], cwd=tmp_path)


def test_training_and_validation_datasets_require_labels_and_name_their_split(tiny_bundle, tmp_path):
    """train.json builds its datasets with ``require_labels`` and names the datalist split in errors."""
    from monai.bundle import ConfigParser

    from custom.io.errors import InputError

    datalist = json.loads((tiny_bundle / "data" / "datalist.json").read_text())
    unlabelled = dict(datalist["validation"][0])
    del unlabelled["slice_labels"]
    cases = {
        "training": ({**datalist, "training": datalist["training"] + [unlabelled]}, "no slice_labels"),
        "validation": ({**datalist, "validation": []}, "['validation']: no studies"),
    }
    for split, (content, message) in cases.items():
        path = tmp_path / f"{split}.json"
        path.write_text(json.dumps(content))
        parser = ConfigParser()
        parser.read_config(str(tiny_bundle / "configs" / "train.json"))
        parser.update({"datalist": str(path), "dataset_dir": str(tiny_bundle / "data")})
        key = "train#dataset" if split == "training" else "validate#dataset"
        with pytest.raises(RuntimeError) as raised:  # MONAI wraps the dataset's error when it instantiates it
            parser.get_parsed_content(key)
        cause = raised.value.__cause__
        assert isinstance(cause, InputError) and message in str(cause), repr(cause)


def _parsed_train_config(**overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": "/b", "device": "$torch.device('cpu')", "network_def": "$torch.nn.Linear(2, 1)",
                   "network": "@network_def", **overrides})
    return parser


def test_learning_rate_warmup_and_cosine_decay_to_final_lr():
    """train.json's schedule: MONAI's WarmupCosineSchedule from 0 to ``lr`` over the warmup, then down to ``final_lr``."""
    parser = _parsed_train_config(epochs=2, epoch_length=50, warmup_iterations=10, lr=1e-3)
    optimizer = parser.get_parsed_content("optimizer")
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert (scheduler.warmup_steps, scheduler.t_total, scheduler.end_lr) == (10, 100, 1e-7)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5e-4) and rates[10] == pytest.approx(1e-3)
    assert all(a >= b - 1e-15 for a, b in zip(rates[10:], rates[11:]))
    assert rates[55] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 45 / 90)))  # half way down the cosine
    assert rates[100] == pytest.approx(1e-7)


@pytest.mark.parametrize("overrides, message", [
    # MONAI's WarmupCosineSchedule had quietly cut a 500-iteration warmup to a 2-iteration run, which then
    # ended inside its warmup, never at the peak rate
    ({"epochs": 1, "epoch_length": 2}, r"warmup_iterations \(500\) must be fewer than the run's 2 iterations \(epochs \* epoch_length\)"),
    ({"warmup_iterations": 0}, r"warmup_iterations must be an integer >= 1, got 0"),
    ({"warmup_iterations": 2.5}, r"warmup_iterations must be an integer >= 1, got 2.5"),
    ({"lr": 0.0}, r"learning_rate must be a finite number > 0, got 0.0"),
    ({"lr": 1e-8}, r"final_learning_rate \(1e-07\) must not exceed learning_rate \(1e-08\)"),
])
def test_schedule_settings_are_checked_with_their_names(overrides, message):
    parser = _parsed_train_config(**overrides)
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the component it instantiates
        parser.get_parsed_content("lr_scheduler")
    assert isinstance(raised.value.__cause__, ValueError)
    assert re.search(message, str(raised.value.__cause__)), str(raised.value.__cause__)


def test_cutout_cuts_the_same_holes_through_all_slices_with_the_configured_fill():
    parser = _parsed_train_config(**{"cutout#prob": 1.0, "cutout#holes": 2, "cutout#max_holes": 2, "cutout_fill": -1.0})
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    cutout = next(t for t in transforms if type(t).__name__ == "RandCoarseDropoutd")
    cutout.set_random_state(0)
    image = cutout({"image": torch.ones(7, 192, 192)})["image"]
    holes = np.asarray(image) == -1.0
    assert holes.any() and (holes == holes[:1]).all()  # every slice of the mini-volume has the same holes
    assert 16 * 16 <= holes[0].sum() <= 2 * 128 * 128  # two holes of 16-128 px a side, which may overlap


@pytest.mark.parametrize("overrides, message", [
    # RandCoarseDropoutd had failed at the first training batch with numpy's bare "low >= high"
    ({"cutout#max_holes": 0}, r"cutout max_holes must be an integer >= 1, got 0"),
    ({"cutout#holes": 4, "cutout#max_holes": 2}, r"cutout max_holes \(2\) must be >= holes \(4\)"),
    ({"cutout#max_spatial_size": [8, 8]}, r"cutout max_spatial_size \[8, 8\] must be >= spatial_size \[16, 16\]"),
    ({"cutout#spatial_size": [0, 16]}, r"cutout spatial_size must be two integers >= 1"),
    ({"cutout#spatial_size": [16, 16, 16]}, r"cutout spatial_size must be two integers >= 1"),
    # and had clipped these silently (a negative probability turned Cutout off)
    ({"cutout#prob": 2.0}, r"cutout prob must be a number in \[0, 1\], got 2.0"),
    ({"cutout#prob": -0.5}, r"cutout prob must be a number in \[0, 1\], got -0.5"),
    ({"cutout_fill": float("nan")}, r"cutout fill_value must be a finite number, got nan"),
])
def test_cutout_settings_are_checked_when_the_config_is_parsed(overrides, message):
    parser = _parsed_train_config(**overrides)
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the component it instantiates
        parser.get_parsed_content("train#preprocessing")
    cause = raised.value.__cause__
    while isinstance(cause, RuntimeError) and cause.__cause__ is not None:  # the Compose wraps its member's error
        cause = cause.__cause__
    assert isinstance(cause, ValueError) and re.search(message, str(cause)), repr(cause)
