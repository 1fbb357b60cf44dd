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

# model name in the report -> (profile key, folder in the work dir, datalist)
MODELS = {"student": ("student", "student", "student.json"), "finetuned": ("finetune", "finetuned", "annotated.json"),
          "random_init": ("random_init", "random_init", "annotated.json")}


def _score_summary(path: Path) -> str:
    cluster = json.loads(path.read_text())["cluster"]
    return "test: sensitivity {sensitivity:.3f} PPV {ppv:.3f} F1 {f1:.3f}".format(
        **{k: float("nan") if cluster[k] is None else cluster[k] for k in ("sensitivity", "ppv", "f1")})


def student_stages(run: PipelineRun) -> list[Stage]:
    """Datalists, then train / infer / score for the student, the fine-tuned and the random-init models."""
    from custom.pipeline.run import REPO, bundle_command

    datalist_path = run.prepared / "datalist.json"

    def make_datalists() -> None:
        datalist = json.loads(datalist_path.read_text())
        student_datalist(datalist, run.prepared, run.path("teacher", "output", "pseudo"), run.datalists / "student.json")
        annotated_datalist(datalist, run.prepared, float(run.profile["annotated_fraction"]), run.datalists / "annotated.json")

    stages = [Stage("student_datalists", [run.datalists / "student.json", run.datalists / "annotated.json"], function=make_datalists)]
    for name, (key, folder, datalist) in MODELS.items():
        settings = run.profile[key]
        root = run.path(folder)
        common = {"bundle_root": str(root), "dataset_dir": str(run.prepared), "datalist": str(run.datalists / datalist)}
        train = dict(common, **settings["overrides"])
        if name == "finetuned":
            train["pretrained_checkpoint"] = str(run.path("student", "models", "model.pt"))
        configs = list(settings["configs"])
        multi = ["multi_gpu_train.json"] if run.nproc > 1 else []
        stages += [
            Stage(f"{name}_train", [root / "models" / "model.pt"], bundle_command("dynunet_student", configs + multi, "training", run.nproc, **train)),
            Stage(f"{name}_infer", [root / "output"],
                  bundle_command("dynunet_student", ["inference.json"], None, 1, **common, datalist_key="test", output_dir=str(root / "output"))),
            Stage(f"{name}_score", [root / "eval" / "test_metrics.json"],
                  python_command(REPO / "scripts" / "score.py", "--pred_dir", root / "output", "--reference_dir", run.prepared / "labels",
                                 "--out", root / "eval" / "test_metrics.json"),
                  summary=lambda path=root / "eval" / "test_metrics.json": _score_summary(path)),
        ]
    return stages


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    cluster = report["cluster"]
    froc = report.get("froc", {})
    return {
        **{k: cluster.get(k) for k in ("sensitivity", "ppv", "f1", "tp", "fp", "fn", "fp_per_study")},
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
        rows["teacher"] = dict(teacher["runs"]["1"].get("filtered", {}))
    for name, (_, folder, _) in MODELS.items():
        path = run.path(folder, "eval", "test_metrics.json")
        if path.exists():
            rows[name] = _metrics(json.loads(path.read_text()))
            history = run.path(folder, "logs", "train_minutes.json")
            if history.exists():
                rows[name]["train_minutes"] = json.loads(history.read_text()).get("minutes")
    return rows
