"""The whole iExplain pipeline in one call: cohort -> prepare -> classifier -> teacher -> student -> report.

Each stage runs through its bundle (``python -m monai.bundle run ...``) or a project script as a
subprocess (:mod:`custom.pipeline.stages`), with its outputs in ``work_dir``; a stage whose outputs
exist is skipped, so an interrupted run resumes. The profile (``custom/pipeline/profiles/*.json``)
chooses the cohort size and each bundle's override configs. Numbers of the run go to
``work_dir/results.json`` (:mod:`custom.pipeline.results`) and the report renders them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from custom.io.atomic import write_json_atomic
from custom.pipeline.datalists import weak_datalist
from custom.pipeline.stages import PipelineError, Stage, StageRecord, python_command, run_stage

__all__ = ["REPO", "PipelineRun", "ProfileError", "bundle_command", "cli_value", "load_profile", "run_pipeline", "unknown_override_keys", "validate_profile"]

REPO = Path(__file__).resolve().parents[2]
PROFILES = Path(__file__).resolve().parent / "profiles"

SPLITS = ("training", "validation", "test")
#: profile section -> the bundle whose configs it names
BUNDLE_SECTIONS = {"classifier": "classifier", "teacher": "iexplain_teacher", "student": "dynunet_student",
                   "finetune": "dynunet_student", "random_init": "dynunet_student"}
#: bundle overrides checked when a profile sets them: key -> (kind, lowest, highest, lowest excluded, highest excluded)
_OVERRIDE_RULES: dict[str, dict[str, tuple[str, float, float, bool, bool]]] = {
    "classifier": {"epochs": ("int", 1, math.inf, False, False), "epoch_length": ("int", 1, math.inf, False, False),
                   "batch_size": ("int", 1, math.inf, False, False), "val_batch_size": ("int", 1, math.inf, False, False),
                   "warmup_iterations": ("int", 1, math.inf, False, False), "lr": ("number", 0, math.inf, True, True)},
    "teacher": {"n_steps": ("int", 2, math.inf, False, False), "calibration_max_studies": ("int", 1, math.inf, False, False)},
    "student": {"num_iterations": ("int", 1, math.inf, False, False), "iterations_per_epoch": ("int", 1, math.inf, False, False),
                "batch_size": ("int", 1, math.inf, False, False), "warmup_iterations": ("int", 1, math.inf, False, False),
                "learning_rate": ("number", 0, math.inf, True, True), "sw_overlap": ("number", 0, 1, False, True)},
}


class ProfileError(PipelineError, ValueError):
    """A pipeline profile that cannot be run; the message names the profile file and the key."""


def load_profile(profile: str, synthetic: bool = True) -> dict[str, Any]:
    """A profile by name (``demo``, ``full``, ``paper``) or by path to a JSON file, checked (:func:`validate_profile`).

    Raises:
        PipelineError: no such profile.
        ProfileError: the file is not valid JSON or holds a missing or bad value.
    """
    path = Path(profile) if profile.endswith(".json") else PROFILES / f"{profile}.json"
    if not path.is_file():
        names = sorted(p.stem for p in PROFILES.glob("*.json"))
        raise PipelineError(f"unknown profile {profile!r}: expected one of {names} or a JSON file")
    try:
        loaded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProfileError(f"{path}: cannot read the profile ({type(error).__name__}: {error})") from error
    validate_profile(loaded, path, synthetic)
    return loaded


def validate_profile(profile: Any, source: str | os.PathLike = "profile", synthetic: bool = True) -> None:
    """Refuse a profile with a missing key or a bad value before any stage runs.

    Checks the keys the stages read (see ``custom/pipeline/profiles``): ``cohort`` (``seed``; with
    ``synthetic`` also ``n_studies``, ``shape``, ``positive_rate``), ``split``, ``annotated_fraction``,
    ``workers``, ``nproc_per_node``, ``pointing_game``, ``teacher_ceiling``, and each bundle section's
    ``configs`` (files of that bundle) and ``overrides`` (the counts, sizes and rates it sets; MONAI
    expressions, strings starting with ``$`` or ``@``, are left to the bundle).

    Raises:
        ProfileError: the first problem, as ``"<source>: <key>: <problem>"``.
    """
    check = _ProfileCheck(os.fspath(source))
    root = check.mapping(profile, None)
    cohort = check.mapping(root, "cohort")
    check.integer(cohort, "seed", "cohort", 0)
    check.integer(cohort, "n_studies", "cohort", 1, required=synthetic)
    check.number(cohort, "positive_rate", "cohort", 0.0, 1.0, required=synthetic)
    check.shape(cohort, "shape", "cohort", required=synthetic)
    split = check.value(root, "split")
    values = split if isinstance(split, list) else None
    if (values is None or len(values) != 3 or not all(_is_number(v) and math.isfinite(v) and v >= 0 for v in values)
            or abs(sum(values) - 1.0) > 1e-6):
        check.fail("split", f"must be three non-negative fractions (training, validation, test) summing to 1, got {split!r}")
    check.number(root, "annotated_fraction", None, 0.0, 1.0, low_open=True)
    check.integer(root, "workers", None, 1, required=False)
    nproc = root.get("nproc_per_node", 1)
    if nproc != "auto" and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        check.fail("nproc_per_node", f"must be \"auto\" or an integer >= 1, got {nproc!r}")
    if not isinstance(root.get("calibrate_student_threshold", True), bool):
        check.fail("calibrate_student_threshold", f"must be true or false, got {root['calibrate_student_threshold']!r}")
    ceiling = root.get("teacher_ceiling")
    if isinstance(ceiling, dict):
        thresholds = ceiling.get("high_thresholds", [])
        if not isinstance(thresholds, list) or not all(_is_number(h) and 0 < h < math.inf for h in thresholds):
            check.fail("teacher_ceiling.high_thresholds", f"must be a list of positive numbers, got {thresholds!r}")
    elif ceiling is not None and not isinstance(ceiling, bool):
        check.fail("teacher_ceiling", f"must be true, false or {{\"high_thresholds\": [...]}}, got {ceiling!r}")
    game = check.mapping(root, "pointing_game")
    check.integer(game, "slices_per_study", "pointing_game", 1)
    check.integer(game, "n_steps", "pointing_game", 2)
    for section, bundle in BUNDLE_SECTIONS.items():
        settings = check.mapping(root, section)
        configs = check.value(settings, "configs", section)
        if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
            check.fail(f"{section}.configs", f"must be a non-empty list of config file names, got {configs!r}")
        missing = [c for c in configs if not (REPO / "bundles" / bundle / "configs" / c).is_file()]
        if missing:
            check.fail(f"{section}.configs", f"{missing} not found in {REPO / 'bundles' / bundle / 'configs'}")
        overrides = check.mapping(settings, "overrides", section)
        _check_override_keys(check, overrides, [REPO / "bundles" / bundle / "configs" / c for c in configs], f"{section}.overrides")
        rules = _OVERRIDE_RULES["student" if bundle == "dynunet_student" else section]
        where = f"{section}.overrides"
        for key, (kind, low, high, low_open, high_open) in rules.items():
            if _is_expression(overrides.get(key)):
                continue
            if kind == "int":
                check.integer(overrides, key, where, int(low), required=False)
            else:
                check.number(overrides, key, where, low, high, low_open, high_open, required=False)
        if bundle == "dynunet_student" and not _is_expression(overrides.get("patch_size")):
            check.shape(overrides, "patch_size", where, required=False)
    teacher = root["teacher"]
    keys = teacher["overrides"].get("data_list_key")
    if keys is not None and not _is_expression(keys):
        keys_list = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys_list, list) or not keys_list or not all(k in SPLITS for k in keys_list):
            check.fail("teacher.overrides.data_list_key", f"must name splits among {list(SPLITS)}, got {keys!r}")
    five = teacher.get("five_references_split", "test")
    if five is not None and five not in SPLITS:
        check.fail("teacher.five_references_split", f"must be null or one of {list(SPLITS)}, got {five!r}")


def _check_override_keys(check: "_ProfileCheck", overrides: dict, config_files: list[Path], where: str) -> None:
    """Each override of a profile section must name a key of the section's configs (:func:`unknown_override_keys`)."""
    for key in unknown_override_keys(overrides, config_files):
        check.fail(f"{where}.{key}", f"no such key in {[f.name for f in config_files]} (a misspelt setting would change nothing)")


def unknown_override_keys(overrides: Sequence[str], config_files: Sequence[str | Path]) -> list[str]:
    """The override ids that name neither a key of the merged configs nor a new entry of one of their mappings.

    ``monai.bundle run`` adds an unknown key silently, so a profile setting the classifier's rate as
    ``learning_rate`` (the student's name; the classifier's is ``lr``) would change nothing. A nested id
    (``cutout#max_holes``) may add a key to an existing mapping (a component's keyword argument).

    Args:
        overrides: override ids (``lr``, ``train#dataloader#num_workers``).
        config_files: the config files the run merges, in order.

    Returns:
        The unknown ids, in the given order.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    unknown = []
    for key in overrides:
        if key in parser:
            continue
        parts = ReferenceResolver.split_id(key, last=True)  # "#" and "::" both separate
        parent = parts[0] if len(parts) == 2 else ""
        if parent and parent in parser and isinstance(parser[parent], dict):
            continue
        unknown.append(key)
    return unknown


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _is_expression(value: Any) -> bool:
    """A MONAI config expression or reference (``$...``, ``@...``), left to the bundle to evaluate."""
    return isinstance(value, str) and value.startswith(("$", "@"))


class _ProfileCheck:
    """Typed look-ups in a profile that raise :class:`ProfileError` naming the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> None:
        raise ProfileError(f"{self.source}: {key}: {problem}")

    @staticmethod
    def _name(where: str | None, key: str | None) -> str:
        return ".".join(k for k in (where, key) if k) or "profile"

    def value(self, parent: Mapping[str, Any], key: str, where: str | None = None) -> Any:
        if key not in parent:
            self.fail(self._name(where, key), "missing")
        return parent[key]

    def mapping(self, parent: Any, key: str | None, where: str | None = None) -> dict[str, Any]:
        value = parent if key is None else self.value(parent, key, where)
        if not isinstance(value, dict):
            self.fail(self._name(where, key), f"must be a JSON object, got {type(value).__name__}")
        return value

    def integer(self, parent: Mapping[str, Any], key: str, where: str | None, minimum: int, required: bool = True) -> None:
        if key not in parent and not required:
            return
        value = self.value(parent, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(self._name(where, key), f"must be an integer >= {minimum}, got {value!r}")

    def number(
        self, parent: Mapping[str, Any], key: str, where: str | None, low: float, high: float,
        low_open: bool = False, high_open: bool = False, required: bool = True,
    ) -> None:
        if key not in parent and not required:
            return
        value = self.value(parent, key, where)
        above = _is_number(value) and (value > low if low_open else value >= low)
        below = _is_number(value) and (value < high if high_open else value <= high)
        if not (above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            self.fail(self._name(where, key), f"must be a number in {interval}, got {value!r}")

    def shape(self, parent: Mapping[str, Any], key: str, where: str | None, required: bool = True) -> None:
        """Three positive sizes ``Z,Y,X``: a ``"96,192,192"`` string or a list."""
        if key not in parent and not required:
            return
        value = self.value(parent, key, where)
        parts = value.split(",") if isinstance(value, str) else value
        try:
            sizes = [int(p) if isinstance(p, str) else p for p in parts] if isinstance(parts, list) else None
        except ValueError:
            sizes = None
        if sizes is None or len(sizes) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            self.fail(self._name(where, key), f"must be three positive sizes (Z, Y, X), got {value!r}")


def cli_value(value: Any) -> str:
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
        command += [f"--{key}", cli_value(value)]
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
        if (rspect_dir is None) != (boxes_csv is None):
            raise PipelineError("give both --rspect_dir and --boxes_csv, or neither (then the synthetic cohort is made)")
        self.synthetic = rspect_dir is None
        self.profile = load_profile(profile, self.synthetic)
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
                   "--split", cli_value(p["split"]), "--seed", p["cohort"]["seed"], "--workers", workers]
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
        evaluate_configs = [*train_configs, "evaluate.json"]
        game = self.profile["pointing_game"]
        return [
            Stage("classifier_train", [root / "models" / "model.pt", root / "models" / "threshold.json"],
                  bundle_command("classifier", train_configs + (["multi_gpu_train.json"] if self.nproc > 1 else []), "training", self.nproc, **common),
                  summary=lambda: self._classifier_summary(root)),
            Stage("classifier_evaluate", [root / "eval" / "metrics.csv"], bundle_command("classifier", evaluate_configs, None, 1, **common),
                  summary=lambda: "test " + self._read_csv_metrics(root / "eval" / "metrics.csv")),
            Stage("pointing_game", [root / "eval" / "pointing_game.json"],
                  python_command(REPO / "scripts" / "pointing_game.py", "--bundle_root", root, "--datalist", self.prepared / "datalist.json",
                                 "--dataset_dir", self.prepared, "--config_files", cli_value(train_configs),
                                 "--overrides", cli_value(c["overrides"]),
                                 "--slices_per_study", game["slices_per_study"], "--n_steps", game["n_steps"],
                                 "--out", root / "eval" / "pointing_game.json"),
                  summary=lambda: self._pointing_game_summary(root / "eval" / "pointing_game.json")),
        ]

    @staticmethod
    def _pointing_game_summary(path: Path) -> str:
        game = json.loads(path.read_text())
        rate = "n/a" if game.get("hit_rate") is None else f"{game['hit_rate']:.2f}"
        skipped = game.get("skipped_no_mask", 0)
        return f"hit rate {rate} on {game['total']} positive test slices" + (
            f" ({skipped} positive studies without a reference mask skipped)" if skipped else "")

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
