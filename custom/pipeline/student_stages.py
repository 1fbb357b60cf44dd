"""Student stages of the pipeline (bundle ``dynunet_student``): weakly supervised training on the
teacher's pseudo-labels, then fine-tuning and random-init baselines on the annotated subset, each
inferred and scored on the test split (paper Tables 4-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custom.pipeline.datalists import annotated_datalist, student_datalist
from custom.pipeline.stages import Stage, python_command

if TYPE_CHECKING:
    from custom.pipeline.run import PipelineRun

__all__ = ["MODELS", "student_results", "student_stages"]

# model in the report -> (profile key, checkpoint folder under the student bundle root, datalist, output folder)
MODELS = {
    "student": ("student", "models", "student.json", "output"),
    "finetuned": ("finetune", "models/finetune", "annotated.json", "output_finetuned"),
    "random_init": ("random_init", "models/random_init", "annotated.json", "output_random_init"),
}


TRAINING_CONFIGS = ("train.json", "finetune.json", "random_init.json")
#: The bundle's uncalibrated threshold (``default_threshold`` of its configs); the FROC candidates are
#: cut there whatever the calibrated operating point, so the curves of calibrated and uncalibrated runs compare.
DEFAULT_THRESHOLD = 0.5


def _calibration_summary(path: Path) -> str:
    calibration = json.loads(path.read_text())
    f1 = calibration.get("validation_f1")
    f1 = "n/a" if f1 is None else f"{f1:.3f}"
    if not calibration.get("calibrated"):
        return f"threshold kept at {calibration['threshold']:g}: no candidate matched a validation PE"
    return f"threshold {calibration['threshold']:g} (validation F1 {f1}, {calibration['n_studies']} studies)"


def _score_summary(path: Path) -> str:
    cluster = json.loads(path.read_text())["cluster"]
    return "test: sensitivity {sensitivity:.3f} PPV {ppv:.3f} F1 {f1:.3f}".format(
        **{k: float("nan") if cluster[k] is None else cluster[k] for k in ("sensitivity", "ppv", "f1")})


def student_stages(run: PipelineRun) -> list[Stage]:
    """Datalists, then train / infer / score for the student, the fine-tuned and the random-init models.

    All three live in one student bundle root (``W/student``): the fine-tuned and random-init runs get
    their own ``ckpt_dir`` (``models/finetune``, ``models/random_init``) and ``output_dir`` from these
    stages (the bundle's ``finetune`` and ``random_init`` configs do not set them), and fine-tuning
    starts from ``models/model.pt``, the weakly supervised student.

    With the profile's ``calibrate_student_threshold`` (default true) each model's probability threshold
    is calibrated on the validation split after training (the bundle's ``calibrate.json``, outputs in
    ``val_<output>``); its inference reads ``threshold.json`` beside the weights and its score uses it.
    """
    from custom.pipeline.run import REPO, bundle_command

    datalist_path = run.prepared / "datalist.json"
    root = run.path("student")

    def make_datalists() -> None:
        datalist = json.loads(datalist_path.read_text())
        student_datalist(datalist, run.prepared, run.path("teacher", "output", "pseudo"), run.datalists / "student.json")
        annotated_datalist(datalist, run.prepared, run.datalists / "annotated.json")

    calibrate = bool(run.profile.get("calibrate_student_threshold", True))
    stages = [Stage("student_datalists", [run.datalists / "student.json", run.datalists / "annotated.json"], function=make_datalists)]
    for name, (key, ckpt, datalist, output) in MODELS.items():
        settings = run.profile[key]
        ckpt_dir, output_dir, metrics = root / ckpt, root / output, root / "eval" / f"{name}_test_metrics.json"
        common = {"bundle_root": str(root), "dataset_dir": str(run.prepared), "datalist": str(run.datalists / datalist)}
        train = dict(common, **settings["overrides"])
        if name != "student":
            train["annotated_fraction"] = float(run.profile["annotated_fraction"])
            train["ckpt_dir"] = str(ckpt_dir)
        train["output_dir"] = str(_train_log_dir(root, name))
        if name == "finetuned":
            train["pretrained_checkpoint"] = str(root / "models" / "model.pt")
        multi = ["multi_gpu_train.json"] if run.nproc > 1 else []
        infer_multi = ["multi_gpu_inference.json"] if run.nproc > 1 else []
        # inference builds the same network: the profile's non-training overrides (e.g. demo.json) and its sizes
        infer_configs = ["inference.json"] + [c for c in settings["configs"] if c not in TRAINING_CONFIGS]
        infer_sizes = {k: v for k, v in settings["overrides"].items() if k in ("patch_size", "network_filters", "sw_overlap")}
        calibration = ckpt_dir / "threshold.json"
        score_threshold = ["--calibration", calibration, "--froc_threshold", DEFAULT_THRESHOLD] if calibrate else []
        stages.append(
            Stage(f"{name}_train", [ckpt_dir / "model.pt"], bundle_command("dynunet_student", list(settings["configs"]) + multi, "training", run.nproc, **train)))
        if calibrate:
            stages.append(Stage(
                f"{name}_calibrate", [calibration],
                bundle_command("dynunet_student", infer_configs + infer_multi + ["calibrate.json"], None, run.nproc, **common, **infer_sizes,
                               ckpt_dir=str(ckpt_dir), output_dir=str(root / f"val_{output}"), default_threshold=DEFAULT_THRESHOLD),
                summary=lambda path=calibration: _calibration_summary(path)))
        stages += [
            # sharded over ranks (multi_gpu_inference.json) when the profile sets nproc_per_node > 1
            Stage(f"{name}_infer", [output_dir], bundle_command("dynunet_student", infer_configs + infer_multi, None, run.nproc, **common, **infer_sizes, datalist_key="test",
                                                                ckpt_dir=str(ckpt_dir), output_dir=str(output_dir))),
            Stage(f"{name}_score", [metrics],
                  python_command(REPO / "scripts" / "score.py", "--pred_dir", output_dir, "--reference_dir", run.prepared / "labels", "--out", metrics,
                                 *score_threshold),
                  summary=lambda path=metrics: _score_summary(path)),
        ]
    return stages


def _train_log_dir(root: Path, name: str) -> Path:
    """The training run's ``output_dir`` (TensorBoard, ``train_minutes.json``) of model ``name`` under the student bundle root."""
    return root / "logs" if name == "student" else root / "logs" / name


def _training_minutes(path: Path) -> float | None:
    """``minutes`` of the bundle's ``train_minutes.json`` (summed over resumed runs), or ``None`` when unreadable."""
    try:
        minutes = json.loads(path.read_text())["minutes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(minutes) if isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and minutes >= 0 else None


def _metrics(report: dict[str, Any], calibration: Path) -> dict[str, Any]:
    cluster = report["cluster"]
    froc = report.get("froc", {})
    calibrated = json.loads(calibration.read_text()) if calibration.is_file() else None
    return {
        **{k: cluster.get(k) for k in ("sensitivity", "ppv", "f1", "tp", "fp", "fn", "fp_per_study")},
        "threshold": report.get("settings", {}).get("threshold"),
        "calibration": None if calibrated is None else {k: calibrated.get(k) for k in ("threshold", "calibrated", "validation_f1", "n_studies")},
        "strict": {k: report["strict"].get(k) for k in ("sensitivity", "ppv", "f1")},
        "froc": {"fp_per_study": froc.get("curve", {}).get("fp_per_study", []), "sensitivity": froc.get("curve", {}).get("sensitivity", []),
                 "average_sensitivity": froc.get("average_sensitivity")},
        "n_studies": len(report.get("per_study", {})),
    }


def student_results(run: PipelineRun) -> dict[str, Any]:
    """Tables 4-5 rows: the teacher's filtered pseudo-labels and each trained model, on the test split."""
    from custom.pipeline.teacher_stages import teacher_results

    rows: dict[str, Any] = {}
    teacher = teacher_results(run)
    if teacher and "1" in teacher["runs"]:
        run_1 = teacher["runs"]["1"]
        rows["teacher"] = dict(run_1.get("filtered", {}))
        n_studies = run_1.get("n_studies")
        if n_studies:  # the same columns as the students' rows
            rows["teacher"]["n_studies"] = n_studies
            if rows["teacher"].get("fp") is not None:
                rows["teacher"]["fp_per_study"] = rows["teacher"]["fp"] / n_studies
        if run_1.get("froc"):
            rows["teacher"]["froc"] = run_1["froc"]
        if run_1.get("strict"):
            rows["teacher"]["strict"] = run_1["strict"]
    stages = json.loads((run.work / "stages.json").read_text()) if (run.work / "stages.json").exists() else {}
    root = run.path("student")
    for name, (_, ckpt, _, _) in MODELS.items():
        path = run.path("student", "eval", f"{name}_test_metrics.json")
        if path.exists():
            rows[name] = _metrics(json.loads(path.read_text()), run.path("student", ckpt, "threshold.json"))
            # the bundle's own record sums the attempts of a resumed training; the stage's seconds are its last attempt's
            minutes = _training_minutes(_train_log_dir(root, name) / "train_minutes.json")
            train = stages.get(f"{name}_train", {})
            if minutes is not None:
                rows[name]["train_minutes"] = minutes
            elif train.get("status") == "done":
                rows[name]["train_minutes"] = train["seconds"] / 60.0
    return rows
