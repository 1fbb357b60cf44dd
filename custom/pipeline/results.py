"""Collect every number of a pipeline run into ``work_dir/results.json`` (the report's only input).

Nothing here trains or explains: it reads what the stages wrote (bundle metrics, teacher and
student evaluations, stage records), computes the cohort card and the two baselines (HU threshold for
the segmenters, the slice's level alone for the classifier), picks
the overlay slices of the Fig. 2 analog and checks the issue's targets.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from custom.io.atomic import write_json_atomic
from custom.io.nifti import read_volume

if TYPE_CHECKING:
    from custom.pipeline.run import PipelineRun

__all__ = ["collect_results", "cohort_card", "false_detection_sites", "hu_threshold_baseline", "slice_level_baseline"]

# HU range of a filling defect (issue 2: 20-70 HU); the baseline thresholds the whole volume with it.
EMBOLUS_HU_RANGE = (20.0, 70.0)


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def cohort_card(run: PipelineRun) -> dict[str, Any]:
    """Studies, splits, positives, emboli by kind and size, HU of emboli/arteries/veins, confounders."""
    datalist = json.loads((run.prepared / "datalist.json").read_text())
    entries = [e for k in ("training", "validation", "test") for e in datalist.get(k, [])]
    labels = [lab for e in entries for lab in e.get("slice_labels", [])]
    card: dict[str, Any] = {
        "n_studies": len(entries),
        "splits": {k: len(datalist.get(k, [])) for k in ("training", "validation", "test")},
        "positive_studies": sum(int(e.get("pe_present", 0)) for e in entries),
        "positive_slice_fraction": float(np.mean(labels)) if labels else None,
        "difficulty": "default (realistic)" if run.synthetic else "real data",
    }
    cohort = _load(run.cohort / "cohort.json") if run.synthetic else None
    if cohort:
        from custom.synth.summary import summarize_cohort

        summary = summarize_cohort(cohort)
        hu = np.array([e["mean_hu"] for s in cohort["studies"] for e in s["emboli"]], dtype=float)
        artery = [s["artery_hu"] for s in cohort["studies"]]
        vein = [s["vein_hu"] for s in cohort["studies"]]
        voxels = summary["embolus_voxels"]
        card.update({
            "emboli_by_kind": {kind: v["count"] for kind, v in summary["emboli_per_kind"].items()},
            "embolus_voxels": {"p25": voxels.get("q25"), "median": voxels.get("median"), "p75": voxels.get("q75"), "max": voxels.get("max")},
            "embolus_hu": {"median": float(np.median(hu)), "p5": float(np.percentile(hu, 5)), "p95": float(np.percentile(hu, 95))} if hu.size else {},
            "artery_hu": {"min": float(min(artery)), "max": float(max(artery))},
            "vein_hu": {"min": float(min(vein)), "max": float(max(vein))},
            "confounders": summary["confounders"],
            "embolus_relative_z_histogram": summary["embolus_relative_z_histogram"],
        })
    return card


def hu_threshold_baseline(run: PipelineRun) -> dict[str, Any]:
    """Plain HU thresholding (every voxel in the embolus HU range) scored like the models, on the test split."""
    from custom.metrics import ClusterCounts, cluster_overlaps, count_matches

    datalist = json.loads((run.prepared / "datalist.json").read_text())
    total, strict = ClusterCounts(0, 0, 0), ClusterCounts(0, 0, 0)
    n = 0
    for entry in datalist.get("test", []):
        if not entry.get("label"):
            continue
        hu, _ = read_volume(run.prepared / entry["image"])
        reference, _ = read_volume(run.prepared / entry["label"])
        prediction = (hu >= EMBOLUS_HU_RANGE[0]) & (hu <= EMBOLUS_HU_RANGE[1])
        overlaps = cluster_overlaps(prediction, reference > 0)
        total = total + count_matches(overlaps)
        strict = strict + count_matches(overlaps, strict=True)
        n += 1
    return {**total.as_dict(n), "strict": strict.as_dict(n), "n_studies": n,
            "rule": f"{EMBOLUS_HU_RANGE[0]:g} <= HU <= {EMBOLUS_HU_RANGE[1]:g}"}


def slice_level_baseline(run: PipelineRun) -> dict[str, Any]:
    """The classifier's baseline (:func:`custom.metrics.slice_level_auc`): the test slice AUC of the slice's level
    alone, learned from the training split's slice labels in the prepared datalist."""
    from custom.metrics.slice_level import DEFAULT_LEVEL_BINS, slice_level_auc

    datalist = json.loads((run.prepared / "datalist.json").read_text())
    labels = {split: [entry.get("slice_labels") or [] for entry in datalist.get(split, [])] for split in ("training", "test")}
    return {"slice_auc": slice_level_auc(labels["training"], labels["test"]), "n_bins": DEFAULT_LEVEL_BINS,
            "rule": f"positive rate of the training slices at the same relative level ({DEFAULT_LEVEL_BINS} bins)"}


def false_detection_sites(run: PipelineRun) -> dict[str, Any]:
    """Where the teacher's and the students' test detections lie (:mod:`custom.synth.sites`; synthetic cohorts only).

    Returns:
        The analysis of :func:`custom.synth.sites.analyse_predictions` on the test split, or ``{"reason": ...}``
        when it cannot run (real data, no predictions, or a cohort the generator no longer reproduces).
    """
    from custom.pipeline.student_stages import MODELS

    if not run.synthetic:
        return {"reason": "needs the synthetic cohort's records of where the mimics are"}
    cohort = _load(run.cohort / "cohort.json")
    if not cohort:
        return {"reason": f"{run.cohort / 'cohort.json'} not found"}
    folders = {"teacher": run.path("teacher", "output", "pseudo")}
    folders.update({name: run.path("student", output) for name, (_, _, _, output) in MODELS.items()})
    folders = {name: folder for name, folder in folders.items() if folder.is_dir() and any(folder.glob("*.nii.gz"))}
    from custom.synth.sites import analyse_predictions

    try:
        datalist = json.loads((run.prepared / "datalist.json").read_text())
        uids = [entry["study_uid"] for entry in datalist.get("test", []) if entry.get("label")]
        if not folders or not uids:
            return {"reason": "no test predictions with reference masks"}
        return analyse_predictions(folders, run.prepared / "labels", cohort, uids)
    except (OSError, KeyError, TypeError, ValueError) as error:  # InputError is a ValueError
        return {"reason": f"{type(error).__name__}: {error}"}


def _classifier(run: PipelineRun) -> dict[str, Any]:
    root = run.path("classifier")
    out: dict[str, Any] = {}
    metrics_csv = root / "eval" / "metrics.csv"
    if metrics_csv.exists():
        with metrics_csv.open(newline="") as handle:
            rows = {k: _finite(v) for k, v in csv.reader(handle)}
        out.update({k: rows.get(k) for k in ("slice_auc", "slice_f1", "study_auc", "within_level_auc")})
    threshold = _load(root / "models" / "threshold.json")
    if threshold:
        out["threshold"] = threshold["threshold"]
        out["best_validation_auc"] = threshold.get("slice_auc")
    game = _load(root / "eval" / "pointing_game.json")
    if game:
        out["pointing_hit_rate"] = game["hit_rate"]
        out["pointing_slices"] = game["total"]
    history = _load(root / "logs" / "validation_history.json")
    if history:
        out["curve"] = [{"epoch": h["epoch"], "minutes": h["minutes"], "val_auc": _finite(h["slice_auc"])} for h in history]
        out["train_minutes"] = history[-1]["minutes"]
    return out


def _targets(results: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    def get(*keys: str) -> float | None:
        value: Any = results
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return _finite(value)

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def target(name: str, value: float | None, goal: str, ok: bool | None, note: str = "") -> dict[str, Any]:
        return {"name": name, "value": value, "target": goal, "met": ok, "note": note}

    def student_target(name: str, models: Sequence[str], value: float | None, goal: str, ok: bool | None) -> dict[str, Any]:
        """A target read on the paper's intersection rule, with the strict (IoU > 0.5) F1 beside it.

        The intersection rule matches a detection and an embolus when they share one voxel, so a
        network that predicts a few huge blobs scores a high cluster F1 untrained (2 iterations: F1
        0.812, strict F1 0; student README). A met target whose model has strict F1 0 is flagged
        ``caveat``: met on the paper's rule, not evidence that the model segments emboli.
        """
        stricts = {m: get("students", m, "strict", "f1") for m in models}
        note = "; ".join(f"strict F1 {m.replace('_', ' ')} {fmt(v)}" for m, v in stricts.items())
        out = target(name, value, goal, ok, note)
        if ok and models and stricts[models[0]] == 0.0 and (value or 0.0) > 0.0:
            out["caveat"] = "strict F1 0: met on the intersection rule only"
        return out

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    def beats(a: float | None, b: float | None, strict: bool = True) -> bool | None:
        return None if a is None or b is None else (a > b if strict else a >= b)

    teacher = (results.get("teacher") or {}).get("runs", {}).get("1", {})
    ceiling = get("teacher", "ceiling", "filtered", "f1")
    ceiling_note = "" if ceiling is None else f"the same teacher with an oracle classifier: {ceiling:.3f}"
    level, within = get("baselines", "slice_level", "slice_auc"), get("classifier", "within_level_auc")
    level_note = "; ".join(([] if level is None else [f"the slice's level alone: {level:.3f}"])
                           + ([] if within is None else [f"the classifier within levels: {within:.3f}"]))
    out = [
        target("classifier slice AUC", get("classifier", "slice_auc"), ">= 0.90", at_least(get("classifier", "slice_auc"), 0.90), level_note),
        target("pointing-game hit rate", get("classifier", "pointing_hit_rate"), ">= 0.6", at_least(get("classifier", "pointing_hit_rate"), 0.6)),
        target("teacher filtered F1", _finite((teacher.get("filtered") or {}).get("f1")), ">= 0.50",
               at_least(_finite((teacher.get("filtered") or {}).get("f1")), 0.50), ceiling_note),
        student_target("student F1 >= teacher F1", ["student"], get("students", "student", "f1"),
                       f">= {fmt(get('students', 'teacher', 'f1'))} (teacher)",
                       beats(get("students", "student", "f1"), get("students", "teacher", "f1"), strict=False)),
        target("iterative beats a single pass", _finite((teacher.get("best") or {}).get("f1")), f"> {fmt(_finite((teacher.get('iteration1') or {}).get('f1')))} (iteration 1)",
               beats(_finite((teacher.get("best") or {}).get("f1")), _finite((teacher.get("iteration1") or {}).get("f1")))),
        target("filtered beats unfiltered", _finite((teacher.get("filtered") or {}).get("f1")), f"> {fmt(_finite((teacher.get('unfiltered') or {}).get('f1')))} (unfiltered)",
               beats(_finite((teacher.get("filtered") or {}).get("f1")), _finite((teacher.get("unfiltered") or {}).get("f1")))),
    ]
    if profile == "full":
        out += [
            student_target("student F1 (full)", ["student"], get("students", "student", "f1"), ">= 0.70",
                           at_least(get("students", "student", "f1"), 0.70)),
            student_target("fine-tuned beats random init", ["finetuned", "random_init"], get("students", "finetuned", "f1"),
                           f"> {fmt(get('students', 'random_init', 'f1'))} (random init)",
                           beats(get("students", "finetuned", "f1"), get("students", "random_init", "f1"))),
        ]
    return out


def collect_results(run: PipelineRun) -> dict[str, Any]:
    """Gather the run's numbers, write ``results.json`` and return them."""
    from custom.pipeline.student_stages import student_results
    from custom.pipeline.teacher_stages import overlay_assets, teacher_results

    stages = _load(run.work / "stages.json") or {}
    results: dict[str, Any] = {
        "profile": run.profile_name,
        "work_dir": str(run.work),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": "synthetic" if run.synthetic else "rspect",
        "command": " ".join(["python", "scripts/pipeline.py", *sys.argv[1:]]) if sys.argv[0].endswith("pipeline.py") else "",
        "cohort": cohort_card(run),
        "classifier": _classifier(run),
        "teacher": teacher_results(run),
        "students": student_results(run),
        "baselines": {"hu_threshold": hu_threshold_baseline(run), "slice_level": slice_level_baseline(run)},
        "detection_sites": false_detection_sites(run),
        "stages": list(stages.values()),
    }
    overlays = overlay_assets(run)
    if overlays:
        results["overlays"] = overlays
    results["targets"] = _targets(results, run.profile_name)
    write_json_atomic(run.work / "results.json", results)
    return results
