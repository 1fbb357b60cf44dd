"""The pipeline report (issue 11, item 3): ``W/report.md`` and a self-contained ``W/report.html``.

:func:`write_report` renders the numbers of one run, ``W/results.json``, as analogs of the tables and
figures of Condrea et al. 2025: a targets table, a cohort card, Table 1 (slice classifier and pointing
game, with the validation AUC curve), Table 2 (iterative refinement), Table 3 (cluster filtering),
Tables 4-5 (teacher, student, fine-tuned, random init, strict IoU > 0.5 matching, HU-threshold baseline),
where the false detections lie (synthetic cohorts),
Fig. 4 (metrics against iteration, iterations used), Fig. 2 (overlays), FROC curves, and wall time and
peak memory per stage. The markdown links its figures as ``W/figures/<name>.png``; the HTML embeds them.

``results.json`` (every key optional; rates are fractions, ``null`` is "not computed")::

    {"profile", "work_dir", "created", "source", "command",
     "cohort": {"n_studies", "splits": {...}, "positive_studies", "positive_slice_fraction", "emboli_by_kind": {...},
                "embolus_voxels": {"p25", "median", "p75", "max"}, "embolus_hu": {"median", "p5", "p95"},
                "artery_hu": {"min", "max"}, "vein_hu": {"min", "max"}, "confounders": {...}, "difficulty"},
     "classifier": {"slice_auc", "slice_f1", "threshold", "study_auc", "within_level_auc", "pointing_hit_rate", "pointing_slices",
                    "train_minutes", "curve": [{"epoch", "minutes", "val_auc"}], "recipe": {...}},
     "teacher": {"runs": {"1": run, "5": run}, "high_threshold", "froc": froc},
         run = {"per_round": [{"round", "sensitivity", "ppv", "f1"}], "iteration1": rates, "best": {"round", ...rates},
                "filtered": rates, "unfiltered": rates, "strict": rates, "rounds_histogram": {"0": n, "1": n, ..., "unit"},
                "seconds_per_study"}
     "students": {"teacher" | "student" | "finetuned" | "random_init": metrics},
     "baselines": {"hu_threshold": metrics, "slice_level": {"slice_auc", "n_bins", "rule"}},
     "detection_sites": {"sites": [...], "volume_share": {site: fraction}, "n_studies",
                         "models": {model: {"false_detections": {site: n}, "true_detections": {site: n},
                                            "mimics_touched": {kind: {"touched", "total"}}, "emboli_touched": {...}}}},
         metrics = {"sensitivity", "ppv", "f1", "tp", "fp", "fn", "fp_per_study", "strict": rates, "froc": froc,
                    "n_studies", "train_minutes"}
         froc = {"fp_per_study": [...], "sensitivity": [...], "average_sensitivity"}
     "stages": [{"name", "seconds", "peak_memory_mb", "status", "summary"}],
     "targets": [{"name", "value", "target", "met", "note", "caveat" (optional: why a met target is not evidence)}],
     "overlays": "report_assets/overlays.npz"}

A section that is missing, ``null``, a string, or ``{"reason": "..."}`` is shown as "not run in this
profile" with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from custom.io.atomic import atomic_path
from custom.io.errors import InputError
from custom.report.document import Report, build_report
from custom.report.html import render_html
from custom.report.markdown import FIGURE_DIR, render_markdown
from custom.report.results import ResultsValueError, load_results

__all__ = ["build_report", "render_html", "render_markdown", "write_report"]


#: Permissions of the report files: readable by everyone whatever the umask (the report is meant to be shared).
FILE_MODE = 0o644


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, world-readable."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(FILE_MODE)


def _write(report: Report, work_dir: Path) -> tuple[Path, Path]:
    for figure in report.figures:
        _write_bytes(work_dir / FIGURE_DIR / f"{figure.name}.png", figure.png)
    markdown, html = work_dir / "report.md", work_dir / "report.html"
    _write_bytes(markdown, render_markdown(report).encode("utf-8"))
    _write_bytes(html, render_html(report).encode("utf-8"))
    return markdown, html


def write_report(work_dir: str | os.PathLike, results: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Render the report of a pipeline run into its work folder.

    Args:
        work_dir: the run's folder ``W``.
        results: the run's numbers; read from ``W/results.json`` when ``None``.

    Returns:
        The paths of ``W/report.md`` (figures in ``W/figures/*.png``) and the self-contained ``W/report.html``.

    Raises:
        InputError: ``results.json`` is missing or malformed, or a value has the wrong type (the message
            names the file and the key).
    """
    work_dir = Path(work_dir)
    source = work_dir / "results.json"
    if results is None:
        results = load_results(source)
    elif not isinstance(results, Mapping):
        raise InputError(f"results of {work_dir}: expected a mapping, got {type(results).__name__}")
    try:
        report = build_report(results, work_dir)
    except ResultsValueError as err:
        raise InputError(f"{source}: {err}") from err
    return _write(report, work_dir)
