"""Side-by-side comparison of demo-scale student recipes (issue 6): which one learns in CPU minutes?

Every candidate is the student bundle's own ``train.json`` + ``demo.json`` (+ ``random_init.json``
when it trains on reference masks) with a few overrides, run through ``python -m monai.bundle`` on
the studies of a finished pipeline run (``make demo`` writes ``work/demo``). For each candidate it
records the validation cluster F1 after every epoch (the bundle's key metric, from its log) and, on
the test split, the cluster-matching sensitivity / PPV / F1, the strict (IoU > 0.5) F1, the FROC
average sensitivity, the embolus voxel AUC (threshold-free: has it learned anything?) and the share of
predicted clusters at sliding-window centres (has it learned the patch position instead?) of the best
checkpoint, inferred and scored with the bundle's inference config
and ``scripts/score.py``, i.e. exactly as the pipeline does.

``--labels reference`` trains on the human (here: true) masks of every training study: an upper
bound that separates the student's recipe from the quality of the teacher's pseudo-labels.
``--labels pseudo`` trains on the teacher's pseudo-labels, as the pipeline's student does.

    python benchmarks/bench_student_recipes.py --work_dir work/demo --labels reference \
        --candidates gdl,dicece --out_dir work/bench_student
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from collections.abc import Iterable, Iterator, Sequence

import fire
import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser
from monai.data.utils import dense_patch_slices

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.pipeline.run import bundle_command  # noqa: E402
from custom.pipeline.stages import python_command  # noqa: E402


def _intrapulmonary_negatives(fraction: float) -> dict[str, Any]:
    """Overrides of ``train.json``'s deterministic transforms that centre ``fraction`` of the negative
    patches on intrapulmonary structures (:class:`custom.transforms.IntrapulmonaryNegativesd`): the HU image
    is copied before the window (which clips the lung), padded like the image, and read after ``FgBgToIndicesd``."""
    config = json.loads((REPO / "bundles" / "dynunet_student" / "configs" / "train.json").read_text())
    transforms = []
    for transform in config["train"]["deterministic_transforms"]:
        target = transform["_target_"]
        if target == "SpatialPadd":
            transform = dict(transform, keys=list(transform["keys"]) + ["image_hu"])
        if target == "ScaleIntensityRanged":
            transforms.append({"_target_": "CopyItemsd", "keys": "image", "times": 1, "names": "image_hu"})
        transforms.append(transform)
        if target == "FgBgToIndicesd":
            transforms.append({"_target_": "custom.transforms.IntrapulmonaryNegativesd", "keys": "label_bg_indices",
                               "hu_key": "image_hu", "label_key": "label", "fraction": fraction})
    return {"train#deterministic_transforms": transforms}


_GDL_FOCAL = {"_target_": "GeneralizedDiceFocalLoss", "include_background": True, "softmax": True, "batch": True}
_DICECE = {"_target_": "DiceCELoss", "include_background": False, "to_onehot_y": False, "softmax": True, "batch": True}

#: candidate name -> overrides of the student bundle's configs (on top of ``demo.json``)
CANDIDATES: dict[str, dict[str, Any]] = {
    # the paper's loss (Generalized Dice, background included, batch statistics): the bundle default
    "gdl": {},
    # the paper's loss with three embolus-holding patches for each random one
    "gdl_pos3": {"train#random_transforms#0#pos": 3},
    # Generalized Dice plus a focal term: a per-voxel gradient while the Dice term is still flat
    "gdl_focal": {"loss": _GDL_FOCAL},
    # the paper's loss without Mixup (a mixed patch dilutes a 30-voxel embolus to a fraction of a label)
    "gdl_nomixup": {"train#prepare_batch": "$monai.engines.default_prepare_batch"},
    # Dice (foreground only, batch statistics) plus cross-entropy
    "dicece": {"loss": _DICECE},
    # the paper's loss from an output layer that starts at 1 % foreground everywhere (custom.networks.output_prior)
    "gdl_prior": {"foreground_prior": 0.01},
    "gdl_prior_nomixup": {"foreground_prior": 0.01, "train#prepare_batch": "$monai.engines.default_prepare_batch"},
    "dicece_prior": {"foreground_prior": 0.01, "loss": _DICECE},
    # aimed at the 1:5000 imbalance: three embolus-holding patches per random one, a 3x learning rate,
    # and either Dice + cross-entropy or the paper's Generalized Dice + a focal term (Lin et al. 2017
    # pair the focal loss with the prior initialisation)
    "dicece_prior_pos3_lr3": {"foreground_prior": 0.01, "loss": _DICECE, "train#random_transforms#0#pos": 3, "learning_rate": 3e-3},
    "gdlfocal_prior_pos3_lr3": {"foreground_prior": 0.01, "loss": _GDL_FOCAL, "train#random_transforms#0#pos": 3, "learning_rate": 3e-3},
    # instance norm (affine=False) fixes the scale of the features the 1x1 output layer reads, so the
    # logits' range grows only as fast as AdamW moves those few weights (about lr per step): a 10x
    # learning rate with the prior (benchmarks/bench_student_overfit.py: on 8 fixed training patches
    # this fits in 200 steps where lr 1e-3 without the prior does not)
    "gdl_prior_lr10": {"foreground_prior": 0.01, "learning_rate": 1e-2},
    "dicece_prior_lr10": {"foreground_prior": 0.01, "loss": _DICECE, "learning_rate": 1e-2},
    # the same with every batch closer to the overfitting check: three embolus patches per random one, no Mixup
    "dicece_prior_lr10_pos3_nomixup": {"foreground_prior": 0.01, "loss": _DICECE, "learning_rate": 1e-2,
                                       "train#random_transforms#0#pos": 3, "train#prepare_batch": "$monai.engines.default_prepare_batch"},
    # the same with three of four negative patches centred on intrapulmonary structures (vessels, nodes,
    # mimics) instead of anywhere in the body: session 11 found most false detections on veins and mimics
    "dicece_prior_lr10_pos3_nomixup_lungneg": {"foreground_prior": 0.01, "loss": _DICECE, "learning_rate": 1e-2,
                                               "train#random_transforms#0#pos": 3,
                                               "train#prepare_batch": "$monai.engines.default_prepare_batch",
                                               **_intrapulmonary_negatives(0.75)},
}

#: the student configs every candidate is inferred with (the demo's windows)
INFERENCE_CONFIGS = ("inference.json", "demo.json")

_METRICS = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")


def validation_curve(log_text: str) -> list[dict[str, float]]:
    """The ``Epoch[n] Metrics -- name: value ...`` lines of a MONAI ``StatsHandler`` log, in order.

    Returns:
        One ``{"epoch": n, <metric>: value, ...}`` per validation run.
    """
    curve = []
    for match in _METRICS.finditer(log_text):
        row: dict[str, float] = {"epoch": int(match.group(1))}
        name = None
        for item in match.group(2).split():
            if item.endswith(":"):
                name = item[:-1]
            elif name is not None:
                try:
                    row[name] = float(item)
                except ValueError:
                    pass
                name = None
        curve.append(row)
    return curve


def voxel_auc(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """ROC AUC of voxel scores, reference-embolus voxels against all others, pooled over ``(score, reference)``
    pairs; 0.5 is chance, ties count one half; NaN without embolus voxels.

    Ranks by ``np.searchsorted`` rather than ``custom.handlers.roc_auc`` (``monai.metrics.compute_roc_auc``),
    whose Python loop over every value is too slow for the 35 million voxels of ten test studies.
    """
    positives, negatives = [], []
    for score, reference in pairs:
        positives.append(score[reference])
        negatives.append(score[~reference])
    pos, neg = np.concatenate(positives or [np.zeros(0)]), np.sort(np.concatenate(negatives or [np.zeros(0)]))
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (pos.size * neg.size))


def _studies(pred_dir: str | Path, reference_dir: str | Path) -> Iterator[tuple[str, Path, np.ndarray]]:
    for prob_path in sorted(Path(pred_dir).glob("*_prob.nii.gz")):
        uid = prob_path.name[: -len("_prob.nii.gz")]
        yield uid, prob_path, np.asarray(nib.load(Path(reference_dir) / f"{uid}.nii.gz").dataobj) > 0


def embolus_voxel_auc(pred_dir: str | Path, reference_dir: str | Path) -> float:
    """Threshold-free check of what a student has learned: :func:`voxel_auc` of its probabilities
    (``pred_dir/<uid>_prob.nii.gz`` against ``reference_dir/<uid>.nii.gz``). Compare it with
    :func:`intensity_voxel_auc`: emboli lie in bright arteries, so even the windowed CT scores well
    against a volume that is mostly lung and air."""
    def pairs():
        for _, prob_path, reference in _studies(pred_dir, reference_dir):
            prob = np.asarray(nib.load(prob_path).dataobj, dtype=np.float32)
            if prob.shape != reference.shape:
                raise ValueError(f"{prob_path}: shape {prob.shape} differs from its reference's {reference.shape}")
            yield prob, reference
    return voxel_auc(pairs())


def intensity_voxel_auc(pred_dir: str | Path, reference_dir: str | Path, image_dir: str | Path,
                        window: tuple[float, float] = (100.0, 400.0)) -> float:
    """The no-learning baseline of :func:`embolus_voxel_auc`: the same studies scored by their own
    CT values in the student's HU window (``image_dir/<uid>.nii.gz``)."""
    low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
    def pairs():
        for uid, _, reference in _studies(pred_dir, reference_dir):
            image = np.asarray(nib.load(Path(image_dir) / f"{uid}.nii.gz").dataobj, dtype=np.float32)
            yield np.clip(image, low, high), reference
    return voxel_auc(pairs())


def window_centres(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[np.ndarray]:
    """Per axis, the centres of the windows MONAI's ``sliding_window_inference`` places on ``shape``
    (``patch_size`` and ``overlap`` as in the inference config; the last window ends at the border)."""
    shape = [max(int(s), int(p)) for s, p in zip(shape, patch_size)]  # the inferer pads a smaller study
    interval = [p if p == s else max(1, int(p * (1 - overlap))) for s, p in zip(shape, patch_size)]
    slices = dense_patch_slices(shape, [int(p) for p in patch_size], interval)
    return [np.unique([(w[axis].start + w[axis].stop - 1) / 2 for w in slices]) for axis in range(len(shape))]


def window_centre_fraction(pred_dir: str | Path, patch_size_xyz: Sequence[int], overlap: float,
                           tolerance: float = 2.0) -> float | None:
    """Share of a student's predicted clusters (``pred_dir/*_clusters.json``) whose centroid lies within
    ``tolerance`` voxels of a sliding-window centre on every axis; ``None`` without clusters.

    A student that has learned where a training patch puts its embolus instead of what an embolus
    looks like predicts at the windows' centres (near 1); clusters placed independently of the
    windows give about the product over axes of ``windows x (2 x tolerance + 1) / size`` (under 0.01
    for the demo's 64x64x32 windows at overlap 0.25 on 192x192x96 studies).
    """
    hits = total = 0
    for path in sorted(Path(pred_dir).glob("*_clusters.json")):
        study = json.loads(path.read_text())
        centres_zyx = window_centres(study["shape_zyx"][::-1], patch_size_xyz, overlap)[::-1]
        for cluster in study["clusters"]:
            total += 1
            hits += all(np.abs(c - float(x)).min() <= tolerance for c, x in zip(centres_zyx, cluster["centroid_zyx"]))
    return hits / total if total else None


def _run(command: list[str], log: Path) -> float:
    """Run ``command`` with its output in ``log``; return its wall seconds; raise with the log's tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if code:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(command[:6])} ... failed with exit code {code}; end of {log}:\n{tail}")
    return time.perf_counter() - start


def run_candidate(
    name: str, overrides: dict[str, Any], work_dir: Path, labels: str, out_dir: Path, iterations: int, epochs: int,
    learning_rate: float,
) -> dict[str, Any]:
    """Train, infer and score one candidate; return its result row."""
    prepared = work_dir / "prepared"
    root = out_dir / name
    root.mkdir(parents=True, exist_ok=True)
    configs = ["train.json", "demo.json"] + (["random_init.json"] if labels == "reference" else [])
    datalist = work_dir / "datalists" / ("annotated.json" if labels == "reference" else "student.json")
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist}: run the pipeline first (make demo) so that its datalists exist")
    common = {"bundle_root": str(root), "dataset_dir": str(prepared), "datalist": str(datalist)}
    train = dict(common, ckpt_dir=str(root / "models"), output_dir=str(root / "logs"), num_iterations=iterations,
                 iterations_per_epoch=max(1, iterations // epochs), warmup_iterations=max(1, iterations // 10),
                 learning_rate=learning_rate)
    train.update(overrides)  # a candidate may set its own learning rate
    if labels == "reference":
        train["annotated_fraction"] = 1.0
    train_s = _run(bundle_command("dynunet_student", configs, "training", **train), root / "train.log")
    curve = validation_curve((root / "train.log").read_text())
    infer_s = _run(bundle_command("dynunet_student", list(INFERENCE_CONFIGS), None, **common, datalist_key="test",
                                  ckpt_dir=str(root / "models"), output_dir=str(root / "output"), overwrite=True),
                   root / "infer.log")
    metrics = root / "test_metrics.json"
    _run(python_command(REPO / "scripts" / "score.py", "--pred_dir", root / "output", "--reference_dir", prepared / "labels",
                        "--out", metrics), root / "score.log")
    report = json.loads(metrics.read_text())
    cluster, strict, froc = report["cluster"], report["strict"], report.get("froc", {})
    return {
        "candidate": name, "labels": labels, "overrides": overrides, "iterations": iterations,
        "train_minutes": train_s / 60.0, "infer_minutes": infer_s / 60.0,
        "validation_f1": [row.get("val_cluster_f1") for row in curve],
        "test": {k: cluster.get(k) for k in ("sensitivity", "ppv", "f1", "tp", "fp", "fn", "fp_per_study")},
        "test_strict_f1": strict.get("f1"),
        "test_froc_average_sensitivity": froc.get("average_sensitivity"),
        "test_embolus_voxel_auc": embolus_voxel_auc(root / "output", prepared / "labels"),
        "test_clusters_at_window_centres": window_centre_fraction(root / "output", *_inference_windows()),
    }


def _inference_windows() -> tuple[list[int], float]:
    """``patch_size`` and ``sw_overlap`` of the candidates' inference (:data:`INFERENCE_CONFIGS`)."""
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "dynunet_student" / "configs" / n) for n in INFERENCE_CONFIGS])
    return list(parser["patch_size"]), float(parser["sw_overlap"])


def main(
    work_dir: str = "work/demo",
    labels: str = "reference",
    candidates: str | tuple = "gdl,gdl_pos3,gdl_focal,dicece",
    out_dir: str = "work/bench_student",
    iterations: int = 240,
    epochs: int = 4,
    learning_rate: float = 1e-3,
    results: str | None = None,
) -> None:
    """Compare student recipes on a finished pipeline run's studies; print one row per candidate.

    Args:
        work_dir: a pipeline run folder (``prepared/`` and ``datalists/``).
        labels: ``reference`` (true masks of every training study) or ``pseudo`` (the teacher's).
        candidates: comma-separated names of :data:`CANDIDATES`.
        out_dir: where each candidate's checkpoints, outputs and logs go.
        iterations: training iterations per candidate (the demo: 240).
        epochs: validation runs per candidate (evenly spaced).
        learning_rate: peak learning rate (the demo: 1e-3).
        results: JSON-lines file the rows are appended to (default ``out_dir/results.jsonl``).
    """
    if labels not in ("reference", "pseudo"):
        raise ValueError(f"labels must be 'reference' or 'pseudo', got {labels!r}")
    names = [c for c in (candidates.split(",") if isinstance(candidates, str) else candidates) if c]
    unknown = [c for c in names if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; known: {sorted(CANDIDATES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = Path(results) if results else out / "results.jsonl"
    print(f"{'candidate':<12} {'labels':<9} {'train min':>9}  {'validation F1 by epoch':<30} {'test sens':>9} {'PPV':>6} "
          f"{'F1':>6} {'strict F1':>9} {'FROC':>6} {'voxel AUC':>9} {'CT values':>9} {'at centres':>10}")
    baseline = None  # the CT values' AUC: the same test studies for every candidate, so computed once
    for name in names:
        row = run_candidate(name, CANDIDATES[name], Path(work_dir), labels, out, iterations, epochs, learning_rate)
        if baseline is None:
            prepared = Path(work_dir) / "prepared"
            baseline = intensity_voxel_auc(out / name / "output", prepared / "labels", prepared / "images")
        row["test_intensity_voxel_auc"] = baseline
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        t = row["test"]
        val = ", ".join(f"{v:.3f}" for v in row["validation_f1"] if v is not None)
        print(f"{name:<12} {labels:<9} {row['train_minutes']:9.1f}  {val:<30} {t['sensitivity'] or 0:9.3f} {t['ppv'] or 0:6.3f} "
              f"{t['f1'] or 0:6.3f} {row['test_strict_f1'] or 0:9.3f} {row['test_froc_average_sensitivity'] or 0:6.3f} "
              f"{row['test_embolus_voxel_auc']:9.3f} {row['test_intensity_voxel_auc']:9.3f} "
              f"{_fraction(row['test_clusters_at_window_centres']):>10}", flush=True)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    fire.Fire(main)
