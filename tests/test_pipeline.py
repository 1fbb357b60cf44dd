"""End to end: the pipeline at a tiny size through every stage (issue 11 item 6).

Checks that weak supervision holds (the classifier and the teacher run while the training studies'
box masks are moved away, so they cannot read them), that every stage ran and resumes, and that the
report's tables carry this run's numbers.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _pipeline(work: Path, stages: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "pipeline.py"), "--work_dir", str(work), "--profile", "tiny"]
    if stages:
        command += ["--stages", stages]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _stage_names() -> list[str]:
    from custom.pipeline.run import PipelineRun

    return [s.name for s in PipelineRun("/tmp/unused", "tiny").stages()]


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    work = tmp_path / "w"
    names = _stage_names()
    weak_stages = [n for n in names if n.startswith(("classifier", "pointing", "teacher"))]
    first = names[: names.index(weak_stages[0])]
    _pipeline(work, ",".join(first))

    # box masks of the training split go away while the classifier and the teacher run
    datalist = json.loads((work / "prepared" / "datalist.json").read_text())
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    moved = []
    for entry in datalist["training"]:
        if entry.get("label"):
            source = work / "prepared" / entry["label"]
            shutil.move(source, hidden / source.name)
            moved.append(source)
    assert moved, "the tiny cohort has no annotated training study"
    _pipeline(work, ",".join(weak_stages))
    for source in moved:
        shutil.move(hidden / source.name, source)
    weak = json.loads((work / "datalists" / "weak.json").read_text())
    assert all("label" not in e for e in weak["training"])

    proc = _pipeline(work)
    log = proc.stdout + proc.stderr
    # finished stages were skipped, the rest ran
    assert "[synthesize] skipped" in log and "[teacher_infer] skipped" in log

    results = json.loads((work / "results.json").read_text())
    stages = {s["name"]: s for s in results["stages"]}
    assert set(names) - {"results", "report"} <= set(stages)
    assert all(s["status"] == "done" for s in stages.values())
    assert results["cohort"]["n_studies"] == 8
    for model in ("student", "finetuned", "random_init"):
        assert (work / "student" / "eval" / f"{model}_test_metrics.json").is_file()
    assert {"student", "finetuned", "random_init"} <= set(results["students"])
    assert "1" in results["teacher"]["runs"] and "5" in results["teacher"]["runs"]
    teacher_row, student_row = results["students"]["teacher"], results["students"]["student"]
    assert teacher_row["n_studies"] == student_row["n_studies"] == len(datalist["test"])  # Tables 4-5: same columns
    assert teacher_row["fp_per_study"] == pytest.approx(teacher_row["fp"] / teacher_row["n_studies"])
    # every row of the strict table, the teacher's and the HU threshold's included: a strict match is a match
    for row in (teacher_row, student_row, results["baselines"]["hu_threshold"]):
        assert set(row["strict"]) >= {"sensitivity", "ppv", "f1"}
        if row["sensitivity"] is not None:
            assert row["strict"]["sensitivity"] <= row["sensitivity"]
    # each model's threshold was calibrated on the validation split and scored with it
    for model, ckpt in (("student", "models"), ("finetuned", "models/finetune"), ("random_init", "models/random_init")):
        calibration = json.loads((work / "student" / ckpt / "threshold.json").read_text())
        assert calibration["n_studies"] == len([e for e in datalist["validation"] if e.get("label")])
        row = results["students"][model]
        assert row["threshold"] == calibration["threshold"] == row["calibration"]["threshold"]
        assert (work / "student" / f"val_{'output' if model == 'student' else 'output_' + model}").is_dir()
    # where the test detections lie: every model, on the test studies with a reference
    sites = results["detection_sites"]
    assert set(sites["models"]) == {"teacher", "student", "finetuned", "random_init"}
    assert sites["n_studies"] == len([e for e in datalist["test"] if e.get("label")])
    assert sum(sites["volume_share"].values()) == pytest.approx(1.0)

    # the teacher's ceiling: the same teacher with an oracle classifier, on the true masks of the test split
    ceiling = results["teacher"]["ceiling"]
    assert ceiling["n_studies"] == len([e for e in datalist["test"] if e.get("label")])
    assert ceiling["best"]["round"] >= 1 and ceiling["filtered"]["f1"] is not None
    assert ceiling["size_filter_only"]["sensitivity"] >= ceiling["filtered"]["sensitivity"]

    report = (work / "report.md").read_text()
    html = (work / "report.html").read_text()
    assert "The teacher's ceiling: an oracle classifier" in report and f"{ceiling['filtered']['f1']:.3f}" in report
    teacher_target = next(t for t in results["targets"] if t["name"] == "teacher filtered F1")
    assert teacher_target["note"] == f"the same teacher with an oracle classifier: {ceiling['filtered']['f1']:.3f}"
    # numbers of this run appear in the report
    auc = results["classifier"]["slice_auc"]
    assert auc is not None and f"{auc:.3f}" in report and f"{auc:.3f}" in html
    level = results["baselines"]["slice_level"]["slice_auc"]
    assert level is not None and f"{level:.3f}" in report
    auc_target = next(t for t in results["targets"] if t["name"] == "classifier slice AUC")
    within = results["classifier"]["within_level_auc"]
    assert auc_target["note"] == f"the slice's level alone: {level:.3f}" + ("" if within is None else f"; the classifier within levels: {within:.3f}")
    f1 = results["students"]["student"]["f1"]
    assert f"{f1:.3f}" in report
    assert "data:image/png;base64," in html
