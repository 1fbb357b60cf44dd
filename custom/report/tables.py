"""The report's tables, built from ``results.json`` sections: analogs of Tables 1-5 of Condrea et al. 2025.

Every number in a table comes from the run's results; missing parts read "not run" and undefined numbers
``n/a``. The only other numbers are the paper's own figures on real RSPECT data (:data:`PAPER`), always in
columns headed ``paper (real data)``. Rates are fractions in ``[0, 1]`` shown with three decimals (the
paper's percentages with one decimal are the same precision), as in the issue's targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from custom.report.results import NotRun, ResultsValueError, number, section

__all__ = [
    "CAVEAT_STATUS",
    "MODELS",
    "PAPER",
    "PAPER_COLUMN",
    "Table",
    "ceiling_table",
    "classifier_table",
    "cohort_table",
    "detection_sites_tables",
    "filtering_table",
    "format_count",
    "format_rate",
    "format_value",
    "localization_table",
    "recipe_table",
    "refinement_table",
    "stages_table",
    "strict_matching_table",
    "targets_table",
]

#: Heading prefix of every column that quotes the paper rather than this run.
PAPER_COLUMN = "paper (real data)"

#: The paper's figures on RSPECT (fractions): Table 1 (slice classifier), Tables 2-3 (teacher, by number of
#: IG references: sensitivity, PPV, F1 and the best iteration), Tables 4-5 (F1 of each model).
PAPER: dict[str, Any] = {
    "slice_auc": 0.971,
    "slice_f1": 0.751,
    "iteration1": {"1": (0.508, 0.688, 0.584), "5": (0.483, 0.745, 0.586)},
    "best": {"1": (0.635, 0.642, 0.638), "5": (0.584, 0.716, 0.644)},
    "best_round": {"1": 10, "5": 6},
    "unfiltered": {"1": (0.651, 0.451, 0.533), "5": (0.593, 0.490, 0.536)},
    "filtered": {"1": (0.635, 0.642, 0.639), "5": (0.584, 0.716, 0.644)},
    "f1": {"teacher": 0.644, "student": 0.716, "finetuned": 0.755, "random_init": 0.710},
}

#: Rows of Tables 4-5: (section, key, label). The HU-threshold baseline comes from ``baselines``.
MODELS: tuple[tuple[str, str, str], ...] = (
    ("students", "teacher", "iExplain teacher (pseudo-labels)"),
    ("students", "student", "DynUNet student (pseudo-labels)"),
    ("students", "finetuned", "student fine-tuned on annotated subset"),
    ("students", "random_init", "random init on annotated subset"),
    ("baselines", "hu_threshold", "HU threshold (baseline)"),
)

_NA = "n/a"
_NOT_RUN = "not run"
_REFERENCES = ("1", "5")


@dataclass
class Table:
    """A titled table of pre-formatted cells.

    Args:
        title: heading shown above the table.
        columns: column headings.
        rows: cells, one list per row, as strings.
        caption: what the table shows (one or two sentences).
        align: one letter per column, ``l`` or ``r`` (default: first column left, others right).
        row_classes: optional style class per row (``"met"``, ``"missed"``, ``"not-run"``), used by the HTML.
    """

    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    align: str = ""
    row_classes: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.align = self.align or "l" + "r" * (len(self.columns) - 1)
        if len(self.align) != len(self.columns) or any(len(row) != len(self.columns) for row in self.rows):
            raise ValueError(f"table {self.title!r}: every row and the alignment need {len(self.columns)} cells")

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured markdown (pipes in cells escaped)."""
        rule = ["---:" if a == "r" else ":---" for a in self.align]
        lines = [_markdown_row(self.columns), _markdown_row(rule, escape=False)]
        lines += [_markdown_row(row) for row in self.rows]
        return "\n".join(lines)


def _markdown_row(cells: Sequence[str], escape: bool = True) -> str:
    if escape:
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------------------------- formatting
def format_rate(value: float | None) -> str:
    """A rate in ``[0, 1]`` with three decimals, or ``n/a``."""
    return _NA if value is None else f"{value:.3f}"


def format_count(value: float | None) -> str:
    """A count (or a rounded quantity such as HU or voxels), or ``n/a``."""
    return _NA if value is None else f"{value:.0f}"


def format_value(value: float | None) -> str:
    """A number of unknown unit: integers as such, small values with three decimals, large with fewer."""
    if value is None:
        return _NA
    if float(value).is_integer() and abs(value) >= 1:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _fixed(value: float | None, digits: int) -> str:
    return _NA if value is None else f"{value:.{digits}f}"


def _rates(metrics: Mapping[str, Any] | NotRun, where: str) -> list[str]:
    """Sensitivity, PPV and F1 of a metrics mapping, or three "not run" cells."""
    if isinstance(metrics, NotRun):
        return [_NOT_RUN] * 3
    return [format_rate(number(metrics, key, where)) for key in ("sensitivity", "ppv", "f1")]


def _paper_rates(rates: Sequence[float] | None) -> list[str]:
    return ["—"] * 3 if rates is None else [format_rate(r) for r in rates]


def _counts(counts: Any, where: str) -> str:
    """``{"a": 3, "b": 1}`` as ``"a 3, b 1 (total 4)"``."""
    if counts is None:
        return _NA
    if not isinstance(counts, Mapping):
        raise ResultsValueError(f"{where} is {counts!r}, expected an object of counts")
    values = {str(k): number(counts, k, where) for k in counts}
    if not values:
        return "none"
    total = sum(v for v in values.values() if v is not None)
    return ", ".join(f"{k} {format_count(v)}" for k, v in values.items()) + f" (total {format_count(total)})"


def _runs(teacher: Mapping[str, Any] | NotRun) -> dict[str, dict[str, Any] | NotRun]:
    """Teacher runs keyed by number of IG references, always including 1 and 5 (not run when absent)."""
    if isinstance(teacher, NotRun):
        return {refs: teacher for refs in _REFERENCES}
    runs = section(teacher, "runs", "teacher")
    keys = set(_REFERENCES) | (set() if isinstance(runs, NotRun) else set(runs))
    if any(not str(k).isdigit() for k in keys):
        raise ResultsValueError(f"teacher.runs has keys {sorted(keys)}, expected numbers of IG references")
    out: dict[str, dict[str, Any] | NotRun] = {}
    for refs in sorted(keys, key=int):
        out[refs] = runs if isinstance(runs, NotRun) else section(runs, refs, "teacher.runs")
    return out


# ---------------------------------------------------------------------------------------------- tables
CAVEAT_STATUS = "met on the rule only"
"""Status of a target met on the paper's intersection rule by a model whose strict (IoU > 0.5) F1 is 0."""


def targets_table(targets: Any) -> Table:
    """The issue's targets with this run's values: met, MISSED, not measured, or met on the rule only.

    Args:
        targets: ``results["targets"]``, a list of ``{"name", "value", "target", "met", "note"}``, each
            with an optional ``"caveat"``: why a met target is not evidence (see ``custom.pipeline.results``).

    Returns:
        One row per target.
    """
    if not isinstance(targets, Sequence) or isinstance(targets, (str, bytes)):
        raise ResultsValueError(f"targets is {type(targets).__name__}, expected a list")
    rows, classes = [], []
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise ResultsValueError(f"targets[{i}] is {target!r}, expected an object")
        met = target.get("met")
        status, style = {True: ("met", "met"), False: ("MISSED", "missed")}.get(met, ("not measured", "not-run"))
        note = str(target.get("note") or "")
        if met is True and target.get("caveat"):
            status, style = CAVEAT_STATUS, "not-run"
            note = "; ".join(filter(None, [str(target["caveat"]), note]))
        rows.append([
            str(target.get("name", f"target {i + 1}")),
            format_value(number(target, "value", f"targets[{i}]")),
            str(target.get("target", "")),
            status,
            note,
        ])
        classes.append(style)
    return Table("Targets", ["Target", "Value (this run)", "Required", "Status", "Note"], rows,
                 caption="The issue's targets with the values this run measured on its test studies.",
                 align="lrlll", row_classes=classes)


def cohort_table(cohort: Mapping[str, Any], source: str | None = None) -> Table:
    """The cohort card: studies, positives, emboli by kind and size, HU of emboli and vessels, confounders.

    Args:
        cohort: ``results["cohort"]``.
        source: ``results["source"]`` (``synthetic`` or ``rspect``).

    Returns:
        A two-column table of properties.
    """
    w = "cohort"
    rows: list[list[str]] = []
    if source:
        rows.append(["Source", source])
    rows.append(["Studies", format_count(number(cohort, "n_studies", w))])
    splits = cohort.get("splits")
    if splits is not None:
        if not isinstance(splits, Mapping):
            raise ResultsValueError(f"cohort.splits is {splits!r}, expected an object")
        rows.append(["Splits", ", ".join(f"{k} {format_count(number(splits, k, 'cohort.splits'))}" for k in splits)])
    n_studies, positives = number(cohort, "n_studies", w), number(cohort, "positive_studies", w)
    share = ""
    if positives is not None and n_studies:
        share = f" of {format_count(n_studies)} ({format_rate(positives / n_studies)})"
    rows.append(["Positive studies", format_count(positives) + share])
    rows.append(["Positive slice fraction", format_rate(number(cohort, "positive_slice_fraction", w))])
    rows.append(["Emboli by kind", _counts(cohort.get("emboli_by_kind"), "cohort.emboli_by_kind")])
    size = section(cohort, "embolus_voxels", w)
    if not isinstance(size, NotRun):
        q = {k: format_count(number(size, k, "cohort.embolus_voxels")) for k in ("p25", "median", "p75", "max")}
        rows.append(["Embolus size (voxels)", f"median {q['median']} (IQR {q['p25']}–{q['p75']}), max {q['max']}"])
    hu = section(cohort, "embolus_hu", w)
    if not isinstance(hu, NotRun):
        q = {k: format_count(number(hu, k, "cohort.embolus_hu")) for k in ("median", "p5", "p95")}
        rows.append(["Embolus HU", f"median {q['median']} (5th–95th percentile {q['p5']} to {q['p95']})"])
    for key, label in (("artery_hu", "Artery HU (contrast)"), ("vein_hu", "Vein HU")):
        hu = section(cohort, key, w)
        if not isinstance(hu, NotRun):
            rows.append([label, f"{format_count(number(hu, 'min', f'cohort.{key}'))} to "
                                f"{format_count(number(hu, 'max', f'cohort.{key}'))}"])
    rows.append(["Confounders (instances)", _counts(cohort.get("confounders"), "cohort.confounders")])
    if cohort.get("difficulty") is not None:
        rows.append(["Difficulty", str(cohort["difficulty"])])
    return Table("Cohort", ["Property", "Value"], rows, align="ll",
                 caption="The studies this run used: size, positive rate, emboli by kind and size, "
                         "contrast of emboli and vessels, and the confounders present.")


def classifier_table(classifier: Mapping[str, Any], slice_level: Mapping[str, Any] | None = None) -> Table:
    """Table 1 analog: slice AUC and F1, study AUC and the pointing-game hit rate of the slice classifier.

    Args:
        classifier: ``results["classifier"]``.
        slice_level: ``results["baselines"]["slice_level"]``, the slice AUC of the slice's level alone (a row
            under the classifier's own AUC when given).

    Returns:
        Rows of metrics, with the paper's Table 1 values beside ours.
    """
    w = "classifier"
    threshold = number(classifier, "threshold", w)
    slices = number(classifier, "pointing_slices", w)
    rows = [
        ["Slice AUC", format_rate(number(classifier, "slice_auc", w)), format_rate(PAPER["slice_auc"])],
        *([["Slice AUC of the slice's level alone (baseline, no pixels)",
            format_rate(number(slice_level, "slice_auc", "baselines.slice_level")), "—"]] if slice_level else []),
        *([["Slice AUC within levels (beyond the level; 0.5: nothing)", format_rate(number(classifier, "within_level_auc", w)), "—"]]
          if number(classifier, "within_level_auc", w) is not None else []),
        [f"Slice F1 (threshold {format_rate(threshold)})", format_rate(number(classifier, "slice_f1", w)),
         format_rate(PAPER["slice_f1"])],
        ["Study AUC", format_rate(number(classifier, "study_auc", w)), "—"],
        ["Best validation slice AUC (model selection)", format_rate(number(classifier, "best_validation_auc", w)),
         "—"],
        [f"Pointing-game hit rate ({format_count(slices)} positive slices)",
         format_rate(number(classifier, "pointing_hit_rate", w)), "—"],
        ["Training time (min)", _fixed(number(classifier, "train_minutes", w), 1), "—"],
    ]
    return Table("Table 1 analog: slice classifier", ["Metric", "This run", PAPER_COLUMN], rows,
                 caption="Slice-level AUC and F1 on the test studies; the pointing game counts positive slices whose "
                         "top Integrated-Gradients pixel lies on or within 3 px of an embolus. The level baseline scores "
                         "each test slice with the positive rate of the training slices at the same relative level; the "
                         "AUC within levels counts only pairs of slices at the same level (equal bins of each study's length).")


def recipe_table(recipe: Mapping[str, Any]) -> Table:
    """The classifier recipe of this profile (its config overrides), one key per row."""
    rows = [[str(k), v if isinstance(v, str) else json.dumps(v)] for k, v in recipe.items()]
    return Table("Classifier recipe", ["Config key", "Value"], rows, align="ll",
                 caption="Bundle config overrides of this profile's classifier training.")


def refinement_table(teacher: Mapping[str, Any] | NotRun) -> Table:
    """Table 2 analog: the teacher's sensitivity, PPV and F1 at iteration 1 and at its best iteration.

    Args:
        teacher: ``results["teacher"]`` (or ``NotRun``); runs keyed by number of IG references.

    Returns:
        Two rows per number of references, with the paper's Table 2 beside ours.
    """
    rows, classes = [], []
    for refs, run in _runs(teacher).items():
        w = f"teacher.runs.{refs}"
        first = run if isinstance(run, NotRun) else section(run, "iteration1", w)
        best = run if isinstance(run, NotRun) else section(run, "best", w)
        best_round = format_count(number(best, "round", f"{w}.best"))
        paper_round = PAPER["best_round"].get(refs)
        rows.append([refs, "1", *_rates(first, f"{w}.iteration1"), "1" if refs in _REFERENCES else "—",
                     *_paper_rates(PAPER["iteration1"].get(refs))])
        rows.append([refs, _NOT_RUN if isinstance(best, NotRun) else f"{best_round}, best", *_rates(best, f"{w}.best"),
                     f"{paper_round}, best" if paper_round else "—", *_paper_rates(PAPER["best"].get(refs))])
        classes += ["not-run" if isinstance(first, NotRun) else None, "not-run" if isinstance(best, NotRun) else None]
    columns = ["IG references", "Iteration", "Sensitivity", "PPV", "F1"]
    columns += [f"{PAPER_COLUMN} {c}" for c in ("iteration", "sensitivity", "PPV", "F1")]
    return Table("Table 2 analog: iterative refinement", columns, rows, row_classes=classes,
                 caption="Filtered teacher masks after the first iteration and at the iteration with the best F1: "
                         "masking found clusters and re-explaining adds emboli (sensitivity) at some cost in PPV.")


def filtering_table(teacher: Mapping[str, Any] | NotRun) -> Table:
    """Table 3 analog: the teacher's masks before and after the size and location filter of its clusters.

    Args:
        teacher: ``results["teacher"]`` (or ``NotRun``).

    Returns:
        Unfiltered and filtered rows per number of references, with the paper's Table 3 beside ours.
    """
    rows, classes = [], []
    for refs, run in _runs(teacher).items():
        for key, label in (("unfiltered", "no"), ("filtered", "yes")):
            metrics = run if isinstance(run, NotRun) else section(run, key, f"teacher.runs.{refs}")
            rows.append([refs, label, *_rates(metrics, f"teacher.runs.{refs}.{key}"),
                         *_paper_rates(PAPER[key].get(refs))])
            classes.append("not-run" if isinstance(metrics, NotRun) else None)
    columns = ["IG references", "Filtered", "Sensitivity", "PPV", "F1",
               f"{PAPER_COLUMN} sensitivity", f"{PAPER_COLUMN} PPV", f"{PAPER_COLUMN} F1"]
    return Table("Table 3 analog: cluster filtering", columns, rows, row_classes=classes,
                 caption="The teacher runs at a high-sensitivity operating point; removing small clusters and "
                         "clusters far from the image centre trades a little sensitivity for PPV.")


def ceiling_table(teacher: Mapping[str, Any]) -> Table:
    """The teacher's ceiling: this run's teacher beside the same teacher with an oracle classifier.

    Args:
        teacher: ``results["teacher"]`` with its ``ceiling`` section (``custom.teacher.oracle``).

    Returns:
        One row per mask (iterations, filters, strict matching), sensitivity / PPV / F1 of both.
    """
    ceiling = section(teacher, "ceiling", "teacher")
    run = _runs(teacher)["1"]
    w = "teacher.ceiling"
    rows = []
    for key, real_key, label in (
        ("unfiltered_iteration1", None, "unfiltered, iteration 1"),
        ("unfiltered", "unfiltered", "unfiltered, best iteration"),
        ("size_filter_only", None, "size filter only"),
        ("distance_filter_only", None, "distance filter only"),
        ("iteration1", "iteration1", "filtered, iteration 1"),
        ("best", "best", "filtered, best iteration"),
        ("strict", "strict", "filtered, strict (IoU > 0.5)"),
    ):
        oracle = ceiling if isinstance(ceiling, NotRun) else section(ceiling, key, w)
        real = run if isinstance(run, NotRun) or real_key is None else section(run, real_key, "teacher.runs.1")
        name = label
        if key == "best" and not isinstance(oracle, NotRun):
            name = f"{label} ({format_count(number(oracle, 'round', f'{w}.best'))})"
        rows.append([name, format_rate(None) if real_key is None else _rates(real, "teacher.runs.1")[2], *_rates(oracle, f"{w}.{key}")])
    columns = ["Masks (test split)", "F1, this run's classifier", "Sensitivity, oracle", "PPV, oracle", "F1, oracle"]
    return Table("The teacher's ceiling: an oracle classifier", columns, rows,
                 caption="The same teacher (IG, hysteresis, Algorithm 1, slice vote, filters) with its classifier swapped "
                         "for an oracle that attends exactly to the true emboli (custom.teacher.oracle): the most its own "
                         "steps allow on this cohort. Synthetic cohorts only.")


def _model_rows(
    students: Mapping[str, Any] | NotRun, baselines: Mapping[str, Any] | NotRun
) -> Iterator[tuple[str, dict[str, Any] | NotRun, str, str]]:
    """(label, metrics or NotRun, where, model key) per row of Tables 4-5."""
    parents = {"students": students, "baselines": baselines}
    for parent_key, key, label in MODELS:
        parent = parents[parent_key]
        metrics = parent if isinstance(parent, NotRun) else section(parent, key, parent_key)
        yield label, metrics, f"{parent_key}.{key}", key


def localization_table(students: Mapping[str, Any] | NotRun, baselines: Mapping[str, Any] | NotRun) -> Table:
    """Tables 4-5 analog: per-PE cluster matching of the teacher, the student, fine-tuned, random init, HU threshold.

    Args:
        students: ``results["students"]`` (or ``NotRun``).
        baselines: ``results["baselines"]`` (or ``NotRun``).

    Returns:
        One row per model: studies, probability threshold (calibrated on the validation split when the
        run calibrated it), sensitivity, PPV, F1, TP/FP/FN, FP per study, FROC average sensitivity,
        training minutes, and the paper's F1.
    """
    rows, classes = [], []
    for label, metrics, w, key in _model_rows(students, baselines):
        paper = PAPER["f1"].get(key)
        if not isinstance(metrics, NotRun) and metrics.get("rule"):
            label = f"{label}: {metrics['rule']}"
        if isinstance(metrics, NotRun):
            cells = [_NOT_RUN] * 11
        else:
            froc = section(metrics, "froc", w)
            cells = [format_count(number(metrics, "n_studies", w)), _fixed(number(metrics, "threshold", w), 2), *_rates(metrics, w),
                     *(format_count(number(metrics, k, w)) for k in ("tp", "fp", "fn")),
                     _fixed(number(metrics, "fp_per_study", w), 2),
                     format_rate(number(froc, "average_sensitivity", f"{w}.froc")),
                     _fixed(number(metrics, "train_minutes", w), 1)]
        rows.append([label, *cells, "—" if paper is None else format_rate(paper)])
        classes.append("not-run" if isinstance(metrics, NotRun) else None)
    columns = ["Model", "Test studies", "Threshold", "Sensitivity", "PPV", "F1", "TP", "FP", "FN", "FP/study",
               "FROC avg. sensitivity", "Training (min)", f"{PAPER_COLUMN} F1"]
    return Table("Tables 4-5 analog: PE localization", columns, rows, row_classes=classes,
                 caption="Per-PE cluster matching on the test studies (a detection and an embolus match when they "
                         "intersect). Fine-tuned and random init train on the annotated subset only. Threshold: the "
                         "probability threshold of the detections, chosen on the validation split when calibrated.")


def strict_matching_table(students: Mapping[str, Any] | NotRun, baselines: Mapping[str, Any] | NotRun) -> Table:
    """The strict variant of Tables 4-5: a detection matches an embolus only at IoU > 0.5.

    Args:
        students: ``results["students"]`` (or ``NotRun``).
        baselines: ``results["baselines"]`` (or ``NotRun``).

    Returns:
        Strict sensitivity, PPV and F1 per model.
    """
    rows, classes = [], []
    for label, metrics, w, _ in _model_rows(students, baselines):
        strict = metrics if isinstance(metrics, NotRun) else section(metrics, "strict", w)
        rows.append([label, *_rates(strict, f"{w}.strict")])
        classes.append("not-run" if isinstance(strict, NotRun) else None)
    return Table("Strict matching (IoU > 0.5)", ["Model", "Sensitivity", "PPV", "F1"], rows, row_classes=classes,
                 caption="The stricter criterion of Xu et al.: a detection counts only where its IoU with the "
                         "embolus exceeds 0.5.")


#: Headings of the sites of ``detection_sites`` (custom.synth.sites.SITES), in its order.
SITE_LABELS = {
    "unopacified_vein": "unopacified vein", "lymph_node": "lymph node", "flow_artifact": "flow artefact",
    "near_embolus": "next to an embolus", "artery": "artery lumen", "vein": "vein lumen", "lung": "lung",
    "tissue": "other tissue", "outside": "outside the body",
}


def _site_names(sites: Mapping[str, Any]) -> list[str]:
    names = sites.get("sites")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ResultsValueError(f"detection_sites.sites is {names!r}, expected a list of names")
    return names


def detection_sites_tables(sites: Mapping[str, Any]) -> list[Table]:
    """Where each model's false detections lie, against the share of the volume, and the mimics it touches.

    Args:
        sites: ``results["detection_sites"]`` (:func:`custom.synth.sites.analyse_predictions`).

    Returns:
        Two tables: false detections per site (count and share; first row each site's share of the
        volume), and the mimics and emboli touched per model.
    """
    names = _site_names(sites)
    share = section(sites, "volume_share", "detection_sites")
    models = section(sites, "models", "detection_sites")
    labels = {key: label for _, key, label in MODELS}
    n = format_count(number(sites, "n_studies", "detection_sites"))
    min_share = number(sites, "min_share", "detection_sites")
    rows = [[f"share of the volume ({n} test studies)", "", *(_percent(number(share, k, "detection_sites.volume_share")) for k in names)]]
    classes: list[str | None] = [None]
    entries = {} if isinstance(models, NotRun) else {key: section(models, key, "detection_sites.models") for key in models}
    kinds: list[str] = []
    for key, model in entries.items():
        mimics = NotRun() if isinstance(model, NotRun) else section(model, "mimics_touched", f"detection_sites.models.{key}")
        kinds += [k for k in ({} if isinstance(mimics, NotRun) else mimics) if k not in kinds]
    touched_rows, touched_classes = [], []
    for key, model in entries.items():
        label, w = labels.get(key, key), f"detection_sites.models.{key}"
        if isinstance(model, NotRun):
            rows.append([label, _NOT_RUN, *([_NOT_RUN] * len(names))])
            touched_rows.append([label, *([_NOT_RUN] * (len(kinds) + 1))])
            classes.append("not-run")
            touched_classes.append("not-run")
            continue
        false = section(model, "false_detections", w)
        counts = {k: number(false, k, f"{w}.false_detections") or 0.0 for k in names}
        total = sum(counts.values())
        rows.append([label, format_count(total),
                     *(f"{format_count(counts[k])} ({_percent(counts[k] / total)})" if total else "0" for k in names)])
        classes.append(None)
        mimics = section(model, "mimics_touched", w)
        cells = []
        for kind in kinds + ["emboli"]:
            part = section(model, "emboli_touched", w) if kind == "emboli" else (
                mimics if isinstance(mimics, NotRun) else section(mimics, kind, f"{w}.mimics_touched"))
            hit, all_ = number(part, "touched", w), number(part, "total", w)
            cells.append(_NA if hit is None or all_ is None else
                         f"{format_count(hit)} of {format_count(all_)}" + (f" ({_percent(hit / all_)})" if all_ else ""))
        touched_rows.append([label, *cells])
        touched_classes.append(None)
    rule = "a fifth" if min_share is None else _percent(min_share)
    where = Table("Where the false detections lie", ["Model", "False detections", *(SITE_LABELS.get(k, k) for k in names)], rows,
                  row_classes=classes,
                  caption=f"Each false detection (it touches no reference box) goes to the first site, in column order, "
                          f"that holds at least {rule} of its voxels; mimics are the phantom's own (grown by one voxel). "
                          "The first row is each site's share of the test studies' volume, a rough baseline: a detection "
                          "far more often on a site than its share of the volume is drawn to it.")
    touched = Table("Mimics and emboli touched", ["Model", *(f"{SITE_LABELS.get(k, k)}s" for k in kinds), "emboli"], touched_rows,
                    row_classes=touched_classes,
                    caption="How many of the phantom's mimics and emboli any detection touches: a model that touches "
                            "lymph nodes as often as emboli has not learned to tell them apart.")
    return [where, touched]


def _percent(value: float | None) -> str:
    """A fraction as a percentage: two significant digits below 10 %, none above, ``< 0.01 %`` for tiny ones."""
    if value is None:
        return _NA
    if value == 0:
        return "0 %"
    if value < 1e-4:
        return "< 0.01 %"
    return f"{100.0 * value:.2g} %" if value < 0.1 else f"{100.0 * value:.0f} %"


def stages_table(stages: Any) -> Table:
    """Wall time and peak memory of every pipeline stage.

    Args:
        stages: ``results["stages"]``, a list of ``{"name", "seconds", "peak_memory_mb", "status", "summary"}``.

    Returns:
        One row per stage and a total row (the sum of the seconds shown).
    """
    if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
        raise ResultsValueError(f"stages is {type(stages).__name__}, expected a list")
    rows, classes, total = [], [], 0.0
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping):
            raise ResultsValueError(f"stages[{i}] is {stage!r}, expected an object")
        seconds = number(stage, "seconds", f"stages[{i}]")
        status = str(stage.get("status", ""))
        total += seconds or 0.0
        rows.append([str(stage.get("name", f"stage {i + 1}")), status, _fixed(seconds, 1),
                     format_count(number(stage, "peak_memory_mb", f"stages[{i}]")), str(stage.get("summary") or "")])
        classes.append("missed" if status == "failed" else None)
    rows.append(["total", "", _fixed(total, 1), "", f"{total / 60:.1f} min"])
    classes.append(None)
    return Table("Wall time and peak memory per stage", ["Stage", "Status", "Seconds", "Peak memory (MB)", "Summary"],
                 rows, align="llrrl", row_classes=classes,
                 caption="Wall-clock seconds and peak resident memory of each stage, as the pipeline recorded them.")
