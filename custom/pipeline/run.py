"""The whole iExplain pipeline in one call: cohort -> prepare -> classifier -> teacher -> student -> report.

Each stage runs through its bundle (``python -m monai.bundle run ...``) or a project script as a
subprocess (:mod:`custom.pipeline.stages`), with its outputs in ``work_dir``; a stage whose outputs
exist is skipped, so an interrupted run resumes. The profile (``custom/pipeline/profiles/*.json``)
chooses the cohort size and each bundle's override configs. Numbers of the run go to
``work_dir/results.json`` (:mod:`custom.pipeline.results`) and the report renders them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from custom.io.atomic import write_json_atomic
from custom.pipeline.datalists import annotated_datalist, student_datalist, weak_datalist
from custom.pipeline.stages import PipelineError, Stage, StageRecord, python_command, run_stage

__all__ = ["REPO", "PipelineRun", "load_profile", "run_pipeline"]

REPO = Path(__file__).resolve().parents[2]
PROFILES = Path(__file__).resolve().parent / "profiles"


def load_profile(profile: str) -> dict[str, Any]:
    """A profile by name (``demo``, ``full``, ``paper``) or by path to a JSON file."""
    path = Path(profile) if profile.endswith(".json") else PROFILES / f"{profile}.json"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.json"))
        raise PipelineError(f"unknown profile {profile!r}: expected one of {names} or a JSON file")
    return json.loads(path.read_text())


def _cli_value(value: Any) -> str:
    """A value as fire parses it back (Python literals: ``None``, ``True``, ``[1, 2]``)."""
    return value if isinstance(value, str) else repr(value)


def bundle_command(
    bundle: str, configs: Sequence[str], run_id: str | None = None, nproc: int = 1, **overrides: Any
) -> list[str]:
    """``python -m monai.bundle run [run_id] --config_file [...] --key value ...`` (under torchrun when ``nproc > 1``)."""
    files = [str(REPO / "bundles" / bundle / "configs" / c) for c in configs]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    command = python_command(*launcher, "-m", "monai.bundle", "run", *([run_id] if run_id else []), "--config_file", str(files))
    for key, value in overrides.items():
        command += [f"--{key}", _cli_value(value)]
    return command


class PipelineRun:
    """The stages of one pipeline run in ``work_dir`` with a profile.

    Args:
        work_dir: folder of every output of the run.
        profile: profile name or JSON path.
        rspect_dir: an RSPECT-layout cohort to use instead of the synthetic one.
        boxes_csv: its RSPECT-augmented box CSV (needed for evaluation).
        labels_csv: its label CSV (default ``rspect_dir/train.csv``).
    """

    def __init__(
        self,
        work_dir: str | os.PathLike,
        profile: str = "demo",
        rspect_dir: str | None = None,
        boxes_csv: str | None = None,
        labels_csv: str | None = None,
    ) -> None:
        self.work = Path(work_dir).resolve()
        self.profile_name = profile
        self.profile = load_profile(profile)
        if (rspect_dir is None) != (boxes_csv is None):
            raise PipelineError("give both --rspect_dir and --boxes_csv, or neither (then the synthetic cohort is made)")
        self.synthetic = rspect_dir is None
        self.cohort = Path(rspect_dir).resolve() if rspect_dir else self.work / "cohort"
        self.boxes_csv = Path(boxes_csv).resolve() if boxes_csv else self.cohort / "boxes.csv"
        self.labels_csv = Path(labels_csv).resolve() if labels_csv else None
        self.prepared = self.work / "prepared"
        self.datalists = self.work / "datalists"
        self.records: list[StageRecord] = []
        nproc = self.profile.get("nproc_per_node", 1)
        if nproc == "auto":
            import torch

            nproc = max(1, torch.cuda.device_count())
        self.nproc = int(nproc)

    # ----------------------------------------------------------------------------------- paths
    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    # ---------------------------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        """Every stage in order."""
        p, work, workers = self.profile, self.work, str(self.profile.get("workers", 2))
        stages: list[Stage] = []
        if self.synthetic:
            cohort = p["cohort"]
            stages.append(Stage(
                "synthesize", [self.cohort / "cohort.json", self.cohort / "boxes.csv"],
                python_command(REPO / "scripts" / "synthesize.py", "--out_dir", self.cohort, "--n_studies", cohort["n_studies"],
                               "--seed", cohort["seed"], "--shape", cohort["shape"], "--positive_rate", cohort["positive_rate"],
                               "--workers", workers),
                summary=lambda: f"{len(list((self.cohort / 'train').glob('*')))} studies in {self.cohort}",
            ))
        prepare = ["--rspect_dir", self.cohort, "--out_dir", self.prepared, "--boxes_csv", self.boxes_csv,
                   "--split", _cli_value(p["split"]), "--seed", p["cohort"]["seed"], "--workers", workers]
        if self.labels_csv:
            prepare += ["--labels_csv", self.labels_csv]
        stages.append(Stage("prepare", [self.prepared / "datalist.json"], python_command(REPO / "scripts" / "prepare.py", *prepare),
                            summary=self._prepare_summary))
        stages.append(Stage("datalists", [self.datalists / "weak.json"], function=self._weak_datalist))
        stages += self._classifier_stages()
        stages += self._teacher_stages()
        stages += self._student_stages()
        stages.append(Stage("results", [], function=self._collect_results))
        stages.append(Stage("report", [], function=self._report))
        return stages

    def _prepare_summary(self) -> str:
        datalist = json.loads((self.prepared / "datalist.json").read_text())
        return ", ".join(f"{k} {len(datalist.get(k, []))}" for k in ("training", "validation", "test")) + " studies"

    def _weak_datalist(self) -> None:
        datalist = json.loads((self.prepared / "datalist.json").read_text())
        weak_datalist(datalist, self.prepared, self.datalists / "weak.json")

    def _classifier_stages(self) -> list[Stage]:
        c = self.profile["classifier"]
        root = self.path("classifier")
        common = {"bundle_root": str(root), "dataset_dir": str(self.prepared), "datalist": str(self.datalists / "weak.json"), **c["overrides"]}
        train_configs = list(c["configs"])
        evaluate_configs = [train_configs[0], *train_configs[1:], "evaluate.json"]
        game = self.profile["pointing_game"]
        return [
            Stage("classifier_train", [root / "models" / "model.pt", root / "models" / "threshold.json"],
                  bundle_command("classifier", train_configs + (["multi_gpu_train.json"] if self.nproc > 1 else []), "training", self.nproc, **common),
                  summary=lambda: self._classifier_summary(root)),
            Stage("classifier_evaluate", [root / "eval" / "metrics.csv"], bundle_command("classifier", evaluate_configs, None, 1, **common),
                  summary=lambda: "test " + self._read_csv_metrics(root / "eval" / "metrics.csv")),
            Stage("pointing_game", [root / "eval" / "pointing_game.json"],
                  python_command(REPO / "scripts" / "pointing_game.py", "--bundle_root", root, "--datalist", self.prepared / "datalist.json",
                                 "--dataset_dir", self.prepared, "--config_files", _cli_value(train_configs),
                                 "--overrides", _cli_value(c["overrides"]),
                                 "--slices_per_study", game["slices_per_study"], "--n_steps", game["n_steps"],
                                 "--out", root / "eval" / "pointing_game.json"),
                  summary=lambda: "hit rate {hit_rate:.2f} on {total} positive test slices".format(
                      **json.loads((root / "eval" / "pointing_game.json").read_text()))),
        ]

    @staticmethod
    def _read_csv_metrics(path: Path) -> str:
        rows = dict(line.split(",", 1) for line in path.read_text().splitlines() if "," in line)
        return " ".join(f"{k} {float(rows[k]):.3f}" for k in ("slice_auc", "slice_f1", "study_auc") if k in rows)

    @staticmethod
    def _classifier_summary(root: Path) -> str:
        threshold = json.loads((root / "models" / "threshold.json").read_text())
        return f"best validation slice AUC {threshold['slice_auc']:.3f} (epoch {threshold['epoch']}), threshold {threshold['threshold']:.3f}"

    def _teacher_stages(self) -> list[Stage]:
        from custom.pipeline.teacher_stages import teacher_stages

        return teacher_stages(self)

    def _student_stages(self) -> list[Stage]:
        from custom.pipeline.student_stages import student_stages

        return student_stages(self)

    def _collect_results(self) -> None:
        from custom.pipeline.results import collect_results

        collect_results(self)

    def _report(self) -> None:
        from custom.report import write_report

        write_report(self.work)

    # ------------------------------------------------------------------------------------- run
    def run(self, stages: Sequence[str] | None = None) -> list[StageRecord]:
        """Run the stages (all, or those named) in order, skipping finished ones."""
        self.work.mkdir(parents=True, exist_ok=True)
        selected = [s for s in self.stages() if stages is None or s.name in stages]
        history_path = self.work / "stages.json"
        history = json.loads(history_path.read_text()) if history_path.exists() else {}
        progress = tqdm(selected, desc=f"iExplain {self.profile_name}", unit="stage", dynamic_ncols=True)
        for stage in progress:
            progress.set_postfix_str(stage.name)
            record = run_stage(stage, self.work / "logs", REPO)
            if record.status == "done" or stage.name not in history:
                history[stage.name] = record.to_dict()
            self.records.append(record)
            write_json_atomic(history_path, history)
            seconds = f"{record.seconds:6.1f} s" if record.status == "done" else "skipped"
            memory = f", peak {record.peak_memory_mb:.0f} MB" if record.peak_memory_mb else ""
            tqdm.write(f"[{stage.name}] {seconds}{memory}  {record.summary}")
        return self.records


def run_pipeline(
    work_dir: str | os.PathLike,
    profile: str = "demo",
    rspect_dir: str | None = None,
    boxes_csv: str | None = None,
    labels_csv: str | None = None,
    stages: Sequence[str] | None = None,
) -> Path:
    """Run the pipeline and return the path of ``report.md``."""
    start = time.perf_counter()
    run = PipelineRun(work_dir, profile, rspect_dir, boxes_csv, labels_csv)
    run.run(stages)
    tqdm.write(f"pipeline finished in {(time.perf_counter() - start) / 60:.1f} min; report: {run.work / 'report.md'}")
    return run.work / "report.md"
