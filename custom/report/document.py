"""The report as a format-neutral document: ordered sections of paragraphs, tables and figures.

:func:`build_report` turns ``results.json`` (and the overlays file it names) into a :class:`Report`;
:mod:`custom.report.markdown` and :mod:`custom.report.html` render the same document, so both files
show the same numbers. Section order follows the issue: targets, cohort card, Table 1 analog with the
classifier curve, Tables 2 and 3 (teacher), Tables 4-5 (students, strict matching, HU threshold),
Fig. 4, Fig. 2, FROC, wall time and memory per stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from custom.report.figures import (
    MASK_COLOURS,
    MAX_OVERLAY_ROWS,
    classifier_curve_png,
    froc_png,
    overlay_grid_png,
    read_overlays,
    refinement_png,
)
from custom.report.results import NotRun, number, section
from custom.report.tables import (
    CAVEAT_STATUS,
    MODELS,
    PAPER_COLUMN,
    Table,
    ceiling_table,
    classifier_table,
    cohort_table,
    detection_sites_tables,
    filtering_table,
    format_count,
    format_rate,
    format_value,
    localization_table,
    recipe_table,
    refinement_table,
    stages_table,
    strict_matching_table,
    targets_table,
)

__all__ = ["Block", "FigureBlock", "Paragraph", "Report", "Section", "build_report"]


@dataclass(frozen=True)
class Paragraph:
    """A sentence or two.

    ``kind``: ``"text"``, ``"caption"``, ``"note"`` (a part that did not run) or ``"alert"`` (missed targets).
    """

    text: str
    kind: str = "text"


@dataclass(frozen=True)
class FigureBlock:
    """A PNG figure. ``name`` is its file stem under ``figures/`` in the markdown report."""

    name: str
    png: bytes
    title: str
    caption: str


Block = Union[Paragraph, Table, FigureBlock]


@dataclass
class Section:
    """A titled part of the report."""

    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    """The whole report: a title, header fields (label, value) and sections."""

    title: str
    fields: list[tuple[str, str]]
    sections: list[Section]

    @property
    def figures(self) -> list[FigureBlock]:
        """Every figure, in order."""
        return [b for s in self.sections for b in s.blocks if isinstance(b, FigureBlock)]


def _not_run(part: NotRun, what: str = "") -> Paragraph:
    """The note shown for a part that did not run, e.g. ``"Students: not run in this profile: <reason>"``."""
    text = f"{what} {part.text}" if what else part.text
    return Paragraph(text[0].upper() + text[1:], "note")


# ------------------------------------------------------------------------------------------ sections
def _targets(results: Mapping[str, Any]) -> Section:
    out = Section("Targets")
    if results.get("targets") is None or isinstance(results["targets"], str):
        out.blocks.append(_not_run(NotRun(results.get("targets") or "no targets were evaluated")))
        return out
    table = targets_table(results["targets"])
    statuses = [row[3] for row in table.rows]
    missed = [row for row in table.rows if row[3] == "MISSED"]
    unmeasured = [row[0] for row in table.rows if row[3] == "not measured"]
    caveats = [row[0] for row in table.rows if row[3] == CAVEAT_STATUS]
    summary = f"{statuses.count('met')} of {len(statuses)} targets met."
    if caveats:
        summary += (f" {len(caveats)} more met on the paper's intersection rule only, with strict (IoU > 0.5) F1 0: "
                    + "; ".join(caveats) + " (an untrained network that predicts a few huge blobs can meet them).")
    if missed:
        summary += " Missed: " + "; ".join(f"{r[0]} ({r[1]}, required {r[2]})" for r in missed) + "."
    if unmeasured:
        summary += " Not measured: " + "; ".join(unmeasured) + "."
    out.blocks += [Paragraph(summary, "alert" if missed else "text"), table]
    return out


def _cohort(results: Mapping[str, Any]) -> Section:
    out = Section("Cohort")
    cohort = section(results, "cohort")
    if isinstance(cohort, NotRun):
        out.blocks.append(_not_run(cohort))
    else:
        out.blocks.append(cohort_table(cohort, results.get("source")))
    return out


def _classifier(results: Mapping[str, Any]) -> Section:
    out = Section("Stage 1: slice classifier (Table 1 analog)")
    classifier = section(results, "classifier")
    if isinstance(classifier, NotRun):
        out.blocks.append(_not_run(classifier))
        return out
    baselines = results.get("baselines")
    slice_level = baselines.get("slice_level") if isinstance(baselines, Mapping) else None
    out.blocks.append(classifier_table(classifier, slice_level if isinstance(slice_level, Mapping) else None))
    png = classifier_curve_png(classifier)
    if png is None:
        out.blocks.append(Paragraph("No validation curve was recorded in this run.", "note"))
    else:
        out.blocks.append(FigureBlock("classifier_curve", png, "Classifier validation AUC against training time",
                                      "Slice AUC on the validation studies after each epoch, against wall-clock "
                                      "minutes of training in this run."))
    recipe = section(classifier, "recipe", "classifier")
    if not isinstance(recipe, NotRun):
        out.blocks.append(recipe_table(recipe))
    return out


def _numeric_order(key: str) -> tuple[int, str]:
    """Sort key of numeric strings: ``"5"`` before ``"10"``."""
    return len(str(key)), str(key)


def _teacher_settings(teacher: Mapping[str, Any]) -> Paragraph | None:
    parts = []
    high = number(teacher, "high_threshold", "teacher")
    if high is not None:
        parts.append(f"hysteresis high threshold {format_value(high)}")
    runs = section(teacher, "runs", "teacher")
    if not isinstance(runs, NotRun):
        for refs in sorted(runs, key=_numeric_order):
            run = section(runs, refs, "teacher.runs")
            seconds = number(run, "seconds_per_study", f"teacher.runs.{refs}")
            if seconds is not None:
                parts.append(f"{refs} reference{'s' if refs != '1' else ''}: {seconds:.1f} s per study")
    return Paragraph("Teacher settings and cost in this run: " + "; ".join(parts) + ".") if parts else None


def _teacher(results: Mapping[str, Any]) -> list[Section]:
    table2 = Section("Stage 2: iExplain teacher, iterative refinement (Table 2 analog)")
    table3 = Section("Stage 2: iExplain teacher, cluster filtering (Table 3 analog)")
    teacher = section(results, "teacher")
    if isinstance(teacher, NotRun):
        table2.blocks.append(_not_run(teacher))
        table3.blocks.append(_not_run(teacher))
        return [table2, table3]
    table2.blocks.append(refinement_table(teacher))
    runs = section(teacher, "runs", "teacher")
    references = {"1", "5"} | (set() if isinstance(runs, NotRun) else set(runs))
    for refs in sorted(references, key=_numeric_order):
        run = runs if isinstance(runs, NotRun) else section(runs, refs, "teacher.runs")
        if isinstance(run, NotRun) and run.reason:
            table2.blocks.append(_not_run(run, f"The teacher with {refs} IG reference{'s' if refs != '1' else ''}:"))
    settings = _teacher_settings(teacher)
    if settings is not None:
        table2.blocks.append(settings)
    table3.blocks.append(filtering_table(teacher))
    ceiling = Section("Stage 2: the teacher's ceiling with an oracle classifier")
    oracle = section(teacher, "ceiling", "teacher")
    if isinstance(oracle, NotRun):
        ceiling.blocks.append(_not_run(oracle))
    else:
        ceiling.blocks.append(ceiling_table(teacher))
        ceiling.blocks.append(Paragraph(
            f"Oracle: hysteresis high threshold {format_value(number(oracle, 'high_threshold', 'teacher.ceiling'))} "
            f"(chosen on the validation split), windows by Algorithm 1 rounds used: "
            f"{oracle.get('rounds_histogram')}, {format_count(number(oracle, 'n_studies', 'teacher.ceiling'))} test studies."))
    return [table2, table3, ceiling]


def _students(results: Mapping[str, Any]) -> Section:
    out = Section("Stage 3: students and baselines (Tables 4-5 analog)")
    students, baselines = section(results, "students"), section(results, "baselines")
    if isinstance(students, NotRun) and isinstance(baselines, NotRun):
        out.blocks.append(_not_run(students))
        return out
    if isinstance(students, NotRun):
        out.blocks.append(_not_run(students, "Students:"))
    out.blocks += [localization_table(students, baselines), strict_matching_table(students, baselines)]
    return out


def _detection_sites(results: Mapping[str, Any]) -> Section:
    out = Section("Where the false detections lie (synthetic cohort)")
    sites = section(results, "detection_sites")
    if isinstance(sites, NotRun):
        out.blocks.append(_not_run(sites))
    else:
        out.blocks += detection_sites_tables(sites)
    return out


def _refinement_figure(results: Mapping[str, Any]) -> Section:
    out = Section("Fig. 4 analog: refinement iterations")
    teacher = section(results, "teacher")
    png = None if isinstance(teacher, NotRun) else refinement_png(teacher)
    if png is None:
        out.blocks.append(_not_run(teacher if isinstance(teacher, NotRun) else NotRun("no per-iteration metrics")))
    else:
        out.blocks.append(FigureBlock(
            "refinement", png, "Teacher metrics against iteration and iterations used",
            "Left: sensitivity, PPV and F1 of the filtered teacher masks after each iteration (solid: 1 IG "
            "reference, dashed: 5). Right: how many iterations the teacher used before the classifier turned "
            "negative or a stopping rule applied."))
    return out


def _overlay_path(results: Mapping[str, Any], work_dir: Path) -> Path | NotRun:
    name = results.get("overlays")
    if name is None:
        return NotRun("no overlay examples were saved")
    path = Path(name) if Path(name).is_absolute() else work_dir / name
    return path if path.is_file() else NotRun(f"{path} not found")


def _overlay_figure(results: Mapping[str, Any], work_dir: Path) -> Section:
    out = Section("Fig. 2 analog: iterative refinement examples")
    path = _overlay_path(results, work_dir)
    if isinstance(path, NotRun):
        out.blocks.append(_not_run(path))
        return out
    examples = read_overlays(path)
    shown = min(len(examples), MAX_OVERLAY_ROWS)
    more = f" (the first {shown} of {len(examples)} saved)" if len(examples) > shown else ""
    out.blocks.append(FigureBlock(
        "overlays", overlay_grid_png(examples), "Study slice, reference, first and final iteration",
        f"Test slices{more}, HU window 100/700, cropped to the body: A) the slice, B) the reference mask "
        f"({_colour_name(MASK_COLOURS['reference'])}), C) the teacher after its first iteration "
        f"({_colour_name(MASK_COLOURS['first'])}), D) after its final iteration "
        f"({_colour_name(MASK_COLOURS['final'])}); the dashed outline in C and D is the reference."))
    return out


def _colour_name(colour: str) -> str:
    return {"#2ca02c": "green", "#ff7f0e": "orange", "#d62728": "red"}.get(colour, colour)


def _froc_curves(results: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, key, froc) of every FROC in the results: the teacher stage's, then each model's."""
    curves: list[tuple[str, str, dict[str, Any]]] = []
    teacher = section(results, "teacher")
    if not isinstance(teacher, NotRun):
        froc = section(teacher, "froc", "teacher")
        if not isinstance(froc, NotRun):
            curves.append(("teacher heatmaps (stage 2)", "teacher.froc", froc))
    parents = {"students": section(results, "students"), "baselines": section(results, "baselines")}
    for parent_key, key, label in MODELS:
        parent = parents[parent_key]
        metrics = parent if isinstance(parent, NotRun) else section(parent, key, parent_key)
        froc = metrics if isinstance(metrics, NotRun) else section(metrics, "froc", f"{parent_key}.{key}")
        if not isinstance(froc, NotRun):
            curves.append((label, f"{parent_key}.{key}.froc", froc))
    return curves


def _froc(results: Mapping[str, Any]) -> Section:
    out = Section("FROC")
    curves = _froc_curves(results)
    png = froc_png(curves) if curves else None
    if png is None:
        out.blocks.append(_not_run(NotRun("no FROC curve was computed")))
        return out
    averages = [f"{label} {format_rate(number(froc, 'average_sensitivity', where))}" for label, where, froc in curves]
    out.blocks.append(FigureBlock(
        "froc", png, "FROC of the teacher and the students",
        "Per-PE sensitivity against false positives per study on the test studies, sweeping the detection "
        "confidence; average sensitivity over 0.125-8 FP/study: " + "; ".join(averages) + "."))
    return out


def _stages(results: Mapping[str, Any]) -> Section:
    out = Section("Wall time and peak memory")
    if results.get("stages") is None:
        out.blocks.append(_not_run(NotRun("no stage records")))
        return out
    table = stages_table(results["stages"])
    failed = [f"{row[0]} ({row[4]})" if row[4] else row[0] for row in table.rows if row[1] == "failed"]
    if failed:
        out.blocks.append(Paragraph("Failed stages: " + "; ".join(failed) + ".", "alert"))
    out.blocks.append(table)
    return out


# ------------------------------------------------------------------------------------------ report
def build_report(results: Mapping[str, Any], work_dir: str | os.PathLike) -> Report:
    """Assemble the report of one pipeline run.

    Args:
        results: the content of ``W/results.json`` (schema in :mod:`custom.report`).
        work_dir: the run's folder, against which ``results["overlays"]`` is resolved.

    Returns:
        The report, ready for :func:`custom.report.markdown.render_markdown` and
        :func:`custom.report.html.render_html`.

    Raises:
        InputError: a value has the wrong type or the overlays file is malformed.
    """
    work_dir = Path(work_dir)
    fields = [(label, str(results[key])) for key, label in
              (("profile", "Profile"), ("source", "Cohort"), ("command", "Command"), ("created", "Created"),
               ("work_dir", "Work directory")) if results.get(key) not in (None, "")]
    intro = Section("", [Paragraph(
        "Every number in this report was computed in this run (read from results.json). Columns headed "
        f"\"{PAPER_COLUMN}\" quote Condrea et al. 2025 (iExplain) on RSPECT for comparison; they are not "
        "results of this run.")])
    sections = [intro, _targets(results), _cohort(results), _classifier(results), *_teacher(results),
                _students(results), _detection_sites(results), _refinement_figure(results), _overlay_figure(results, work_dir), _froc(results),
                _stages(results)]
    profile = results.get("profile")
    return Report(f"iExplain pipeline report{f': {profile} profile' if profile else ''}", fields, sections)
