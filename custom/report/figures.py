"""The report's figures as PNG bytes (matplotlib, Agg canvas, no pyplot state): analogs of Figs. 2 and 4.

- :func:`classifier_curve_png`: the classifier's validation slice AUC against training minutes.
- :func:`refinement_png`: Fig. 4 of Condrea et al. 2025, sensitivity/PPV/F1 against iteration (left) and
  the histogram of iterations used (right).
- :func:`overlay_grid_png`: Fig. 2, per row a study slice, the reference, the first iteration and the final
  mask, HU window 100/700, masks as translucent fills with contours.
- :func:`froc_png`: FROC curves of the teacher and the students.

Each takes sections of ``results.json`` (or the overlays file) and returns ``None`` when there is nothing
to draw.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from custom.io.errors import InputError
from custom.report.results import NotRun, ResultsValueError, number, numbers, records, section

__all__ = [
    "HU_WINDOW",
    "MASK_COLOURS",
    "MAX_OVERLAY_ROWS",
    "OverlayExample",
    "classifier_curve_png",
    "froc_png",
    "overlay_grid_png",
    "read_overlays",
    "refinement_png",
]

#: Display window (centre, width) in HU of the overlay slices.
HU_WINDOW = (100.0, 700.0)
#: Colour of each mask in the overlays.
MASK_COLOURS = {"reference": "#2ca02c", "first": "#ff7f0e", "final": "#d62728"}
#: At most this many overlay rows are drawn (the first ones of the file).
MAX_OVERLAY_ROWS = 8

_DPI = 110
_BODY_HU = -500.0
_METRIC_COLOURS = {"sensitivity": "#1f77b4", "ppv": "#ff7f0e", "f1": "#2ca02c"}
_METRIC_LABELS = {"sensitivity": "sensitivity", "ppv": "PPV", "f1": "F1"}
_RUN_STYLES = ("-", "--", ":", "-.")


def _png(figure: Figure) -> bytes:
    """Render a figure to PNG bytes on an Agg canvas."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- classifier
def classifier_curve_png(classifier: Mapping[str, Any]) -> bytes | None:
    """Validation slice AUC of the classifier against training time.

    Args:
        classifier: ``results["classifier"]`` with ``curve: [{"epoch", "minutes", "val_auc"}]``.

    Returns:
        PNG bytes, or ``None`` when no curve was recorded.
    """
    points = records(classifier, "curve", "classifier")
    rows = [(number(p, "epoch", f"classifier.curve[{i}]"), number(p, "minutes", f"classifier.curve[{i}]"),
             number(p, "val_auc", f"classifier.curve[{i}]")) for i, p in enumerate(points)]
    rows = [r for r in rows if r[2] is not None]
    if not rows:
        return None
    use_minutes = all(r[1] is not None for r in rows)
    x = [r[1] if use_minutes else r[0] for r in rows]
    auc = [r[2] for r in rows]
    figure = Figure(figsize=(5.5, 3.2))
    ax = figure.add_subplot()
    ax.plot(x, auc, marker="o", color="#1f77b4")
    if len(rows) <= 20 and use_minutes:
        for (epoch, _, _), xi, yi in zip(rows, x, auc):
            if epoch is not None:
                ax.annotate(f"{epoch:.0f}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center",
                            fontsize=7)
    ax.margins(y=0.12)
    ax.set_xlabel("training time (min)" if use_minutes else "epoch")
    ax.set_ylabel("validation slice AUC")
    title = "Classifier: validation AUC during training" + (" (labels: epoch)" if use_minutes else "")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return _png(figure)


# ---------------------------------------------------------------------------------------- Fig. 4
def _round_curves(run: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    points = records(run, "per_round", where)
    keys = ("round", "sensitivity", "ppv", "f1")
    table = [[number(p, k, f"{where}.per_round[{i}]") for k in keys] for i, p in enumerate(points)]
    table = sorted((r for r in table if r[0] is not None), key=lambda r: r[0])
    values = np.array([[np.nan if v is None else v for v in r] for r in table], dtype=float).reshape(-1, 4)
    return dict(zip(keys, values.T))


def _histogram(run: Mapping[str, Any], where: str) -> tuple[dict[int, float], str]:
    hist = section(run, "rounds_histogram", where)
    if isinstance(hist, NotRun):
        return {}, ""
    unit = str(hist.get("unit") or run.get("rounds_unit") or run.get("unit") or "count")
    bins = {}
    for key in hist:
        if key == "unit":
            continue
        if not str(key).isdigit():
            raise ResultsValueError(f"{where}.rounds_histogram has key {key!r}, expected a number of iterations")
        bins[int(key)] = number(hist, key, f"{where}.rounds_histogram") or 0.0
    return bins, unit


def refinement_png(teacher: Mapping[str, Any]) -> bytes | None:
    """Fig. 4 analog: teacher metrics against iteration, and the histogram of iterations used.

    Args:
        teacher: ``results["teacher"]``, runs keyed by number of IG references, each with ``per_round``
            and ``rounds_histogram``.

    Returns:
        PNG bytes, or ``None`` when no run has either.
    """
    runs = section(teacher, "runs", "teacher")
    if isinstance(runs, NotRun):
        return None
    curves, histograms = {}, {}
    for refs in sorted(runs, key=lambda k: (len(str(k)), str(k))):
        run = section(runs, refs, "teacher.runs")
        if isinstance(run, NotRun):
            continue
        curve = _round_curves(run, f"teacher.runs.{refs}")
        if curve["round"].size:
            curves[refs] = curve
        bins, unit = _histogram(run, f"teacher.runs.{refs}")
        if bins:
            histograms[refs] = (bins, unit)
    if not curves and not histograms:
        return None
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    for style, (refs, curve) in zip(_RUN_STYLES, curves.items()):
        for metric, colour in _METRIC_COLOURS.items():
            left.plot(curve["round"], curve[metric], linestyle=style, marker="o", markersize=3, color=colour,
                      label=f"{_METRIC_LABELS[metric]}, {refs} ref.")
    left.set_xlabel("iteration")
    left.set_ylabel("rate")
    left.set_ylim(0, 1.02)
    left.set_title("Filtered teacher masks after each iteration", fontsize=10)
    left.grid(alpha=0.3)
    if curves:
        left.legend(fontsize=7, ncol=max(1, len(curves)), loc="lower right")
        left.xaxis.get_major_locator().set_params(integer=True)
    else:
        left.text(0.5, 0.5, "no per-iteration metrics recorded", ha="center", va="center", transform=left.transAxes)
    width = 0.8 / max(1, len(histograms))
    units = set()
    for i, (refs, (bins, unit)) in enumerate(histograms.items()):
        keys = sorted(bins)
        right.bar(np.array(keys) + (i - (len(histograms) - 1) / 2) * width, [bins[k] for k in keys], width=width,
                  label=f"{refs} ref.", color=("#9467bd", "#8c564b", "#e377c2", "#7f7f7f")[i % 4])
        units.add(unit)
    right.set_xlabel("iterations used")
    right.set_ylabel(" / ".join(sorted(units)) if units else "count")
    right.set_title("Iterations used before the classifier turned negative", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    if histograms:
        right.legend(fontsize=8)
        right.xaxis.get_major_locator().set_params(integer=True)
    else:
        right.text(0.5, 0.5, "no histogram recorded", ha="center", va="center", transform=right.transAxes)
    return _png(figure)


# ---------------------------------------------------------------------------------------- FROC
def froc_png(curves: Sequence[tuple[str, str, Mapping[str, Any]]]) -> bytes | None:
    """FROC curves: per-PE sensitivity against false positives per study.

    Args:
        curves: ``(legend label, key in results.json, froc)`` per curve, where ``froc`` is
            ``{"fp_per_study": [...], "sensitivity": [...], "average_sensitivity": f}``.

    Returns:
        PNG bytes, or ``None`` when no curve has points.
    """
    figure = Figure(figsize=(8.2, 3.8))
    ax = figure.add_subplot()
    drawn = 0
    for label, where, froc in curves:
        fp = numbers(froc, "fp_per_study", where)
        sens = numbers(froc, "sensitivity", where)
        if len(fp) != len(sens):
            raise ResultsValueError(f"{where}: {len(fp)} fp_per_study values but {len(sens)} sensitivities")
        points = sorted((f, s) for f, s in zip(fp, sens) if f is not None and s is not None and f > 0)
        if not points:
            continue
        average = number(froc, "average_sensitivity", where)
        suffix = f" (avg. {average:.3f})" if average is not None else ""
        ax.plot(*zip(*points), marker="o" if len(points) <= 30 else None, markersize=3, label=label + suffix)
        drawn += 1
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("false positives per study")
    ax.set_ylabel("per-PE sensitivity")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title("FROC", fontsize=10)
    return _png(figure)


# ---------------------------------------------------------------------------------------- Fig. 2
@dataclass(frozen=True)
class OverlayExample:
    """One row of the overlay grid: a slice in HU and three masks of the same shape ``(H, W)``."""

    image: np.ndarray
    reference: np.ndarray
    first: np.ndarray
    final: np.ndarray
    title: str = ""


def read_overlays(path: str | os.PathLike) -> list[OverlayExample]:
    """Read the saved overlay examples: ``image_k``, ``reference_k``, ``first_k``, ``final_k``, ``title_k``.

    Args:
        path: the ``.npz`` file.

    Returns:
        The examples in order of ``k``.

    Raises:
        InputError: the file cannot be read, an array is missing, or shapes differ.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the overlays ({err})") from err
    indices = sorted(int(name.split("_", 1)[1]) for name in arrays if name.startswith("image_") and name[6:].isdigit())
    if not indices:
        raise InputError(f"{path}: no image_<k> arrays")
    examples = []
    for k in indices:
        missing = [f"{n}_{k}" for n in ("reference", "first", "final") if f"{n}_{k}" not in arrays]
        if missing:
            raise InputError(f"{path}: missing {', '.join(missing)}")
        image = np.asarray(arrays[f"image_{k}"], dtype=np.float32)
        masks = [np.asarray(arrays[f"{n}_{k}"]) for n in ("reference", "first", "final")]
        if image.ndim != 2 or any(m.shape != image.shape for m in masks):
            shapes = [image.shape] + [m.shape for m in masks]
            raise InputError(f"{path}: example {k} needs 2D arrays of one shape, got {shapes}")
        title = str(arrays[f"title_{k}"]) if f"title_{k}" in arrays else ""
        examples.append(OverlayExample(image, *(m > 0 for m in masks), title=title))
    return examples


def _crop_box(example: OverlayExample, margin: int = 4) -> tuple[slice, slice]:
    """A square window around the body (HU > -500) and every mask, so that the panels lose the empty air."""
    height, width = example.image.shape
    keep = (example.image > _BODY_HU) | example.reference | example.first | example.final
    if not keep.any():
        return slice(0, height), slice(0, width)
    rows, cols = np.nonzero(keep)
    side = max(np.ptp(rows), np.ptp(cols)) + 1 + 2 * margin
    box = []
    for low, high, size in ((rows.min(), rows.max(), height), (cols.min(), cols.max(), width)):
        extent = int(min(side, size))
        start = int(np.clip((low + high + 1 - extent) // 2, 0, size - extent))
        box.append(slice(start, start + extent))
    return box[0], box[1]


def _draw_mask(ax: Any, mask: np.ndarray, colour: str, fill: bool = True, linestyle: str = "-") -> None:
    if not mask.any():
        return
    if fill:
        ax.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([colour]), alpha=0.45, interpolation="nearest")
    ax.contour(mask.astype(np.uint8), levels=[0.5], colors=[colour], linewidths=1.3, linestyles=linestyle)


def overlay_grid_png(examples: Sequence[OverlayExample]) -> bytes | None:
    """Fig. 2 analog: study slice, reference, first iteration and final mask, one example per row.

    The slice is shown in the HU window :data:`HU_WINDOW` (centre 100, width 700), cropped to the body and masks;
    the reference is green, the first iteration orange, the final mask red, and the reference contour is
    repeated dashed over the teacher's masks.

    Args:
        examples: rows to draw (at most :data:`MAX_OVERLAY_ROWS`).

    Returns:
        PNG bytes, or ``None`` without examples.
    """
    examples = list(examples)[:MAX_OVERLAY_ROWS]
    if not examples:
        return None
    centre, width = HU_WINDOW
    columns = (("A) study slice", None), ("B) reference", "reference"), ("C) first iteration", "first"),
               ("D) final iteration", "final"))
    figure = Figure(figsize=(11.2, 2.9 * len(examples) + 0.3))
    axes = np.asarray(figure.subplots(len(examples), 4, squeeze=False))
    for row, example in enumerate(examples):
        rows, cols = _crop_box(example)
        for col, (heading, mask_name) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(example.image[rows, cols], cmap="gray", vmin=centre - width / 2, vmax=centre + width / 2,
                      interpolation="nearest")
            if mask_name is not None:
                mask = getattr(example, mask_name)[rows, cols]
                _draw_mask(ax, mask, MASK_COLOURS[mask_name])
                if mask_name != "reference":
                    _draw_mask(ax, example.reference[rows, cols], MASK_COLOURS["reference"], fill=False, linestyle="--")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(heading, fontsize=10)
        axes[row, 0].set_ylabel(example.title, fontsize=8)
    figure.subplots_adjust(wspace=0.03, hspace=0.08)
    return _png(figure)
