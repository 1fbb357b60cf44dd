"""Does removing detections that touch no contrast beat a calibrated probability threshold? (issue 6)

The student's false detections lie mostly on mimics and in unopacified tissue (student README, "What the
false detections lie on"). :mod:`custom.transforms.contrast_adjacency` removes detections whose shell
is less than a share ``S`` contrast-filled (at or above ``contrast_hu``). The fair baseline is the
cheaper knob every user has: the probability threshold ``T`` (the bundle's 0.5 is not calibrated).

For every run folder given (a ``bench_student_recipes.py`` candidate folder with ``val_output/`` and
``output/``: the student's probability maps of the validation and test studies), three operating
points are chosen **on the validation split** and scored **on the test split**:

- ``as trained``: ``T = 0.5``, no filter;
- ``threshold``: the ``T`` of the grid with the best validation F1, no filter;
- ``threshold + contrast``: the ``(T, S)`` of the grid with the best validation F1.

Ties go to the lower threshold and the weaker filter. The last lines print the mean test F1 of each
operating point over the runs and the filter's mean gain over the calibrated threshold.

Usage::

    python benchmarks/bench_contrast_filter.py --work_dir work/full --runs "work/bench_student_s12_full4800/dicece_prior_lr10_pos3_nomixup,..."

The validation outputs are not written by ``bench_student_recipes.py``; make them with the student's
inference on ``--datalist_key validation --output_dir <run>/val_output`` (the student README gives the command).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import numpy as np

from custom.metrics.scoring import score_directories

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SHARES = (0.0, 0.02, 0.05, 0.1, 0.2)


def _score(pred_dir: Path, prepared: Path, threshold: float, share: float, contrast_hu: float) -> dict[str, Any]:
    report = score_directories(pred_dir, prepared / "labels", threshold=threshold, image_dir=prepared / "images",
                               contrast_hu=contrast_hu, contrast_min_share=share)
    cluster = report["cluster"]
    return {"threshold": threshold, "share": share, "tp": cluster["tp"], "fp": cluster["fp"], "fn": cluster["fn"],
            "f1": cluster["f1"], "strict_f1": report["strict"]["f1"], "froc": report["froc"]["average_sensitivity"]}


def calibrate(
    run: Path, prepared: Path, thresholds: Sequence[float] = THRESHOLDS, shares: Sequence[float] = SHARES,
    contrast_hu: float = 200.0,
) -> dict[str, Any]:
    """The three operating points of one run, chosen on ``run/val_output`` and scored on ``run/output``.

    Returns:
        ``{"run", "validation": [grid rows], "test": {name: row}}`` with rows from :func:`_score`.
    """
    for folder in ("val_output", "output"):
        if not (run / folder).is_dir():
            raise FileNotFoundError(f"{run / folder}: no student outputs (see this script's docstring)")
    grid = [_score(run / "val_output", prepared, t, s, contrast_hu) for t in thresholds for s in shares]

    def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return max(rows, key=lambda r: (np.nan_to_num(r["f1"]), -r["threshold"], -r["share"]))

    chosen = {
        "as trained": {"threshold": 0.5, "share": 0.0},
        "threshold": best([r for r in grid if r["share"] == 0.0]),
        "threshold + contrast": best(grid),
    }
    test = {name: _score(run / "output", prepared, row["threshold"], row["share"], contrast_hu) for name, row in chosen.items()}
    for name, row in test.items():
        row["validation_f1"] = next((r["f1"] for r in grid if (r["threshold"], r["share"]) == (row["threshold"], row["share"])), None)
    return {"run": str(run), "validation": grid, "test": test}


def main(work_dir: str = "work/full", runs: str | tuple = "", contrast_hu: float = 200.0, results: str | None = None) -> None:
    """Print, per run and operating point, the validation F1 it was chosen by and its test figures.

    Args:
        work_dir: the pipeline run whose ``prepared/`` images and labels the outputs belong to.
        runs: comma-separated run folders (each with ``val_output/`` and ``output/``).
        contrast_hu: CT value of contrast-filled blood.
        results: JSON-lines file to append one row per run to (optional).
    """
    folders = [Path(r) for r in (runs.split(",") if isinstance(runs, str) else runs) if r]
    if not folders:
        raise ValueError("give at least one run folder with --runs")
    prepared = Path(work_dir) / "prepared"
    print(f"{'run':<60} {'operating point':<21} {'T':>5} {'S':>5} {'val F1':>7} {'TP':>4} {'FP':>4} {'FN':>4} "
          f"{'test F1':>7} {'strict':>7} {'FROC':>6}")
    rows = []
    for run in folders:
        row = calibrate(run, prepared, contrast_hu=contrast_hu)
        rows.append(row)
        if results:
            with open(results, "a") as f:
                f.write(json.dumps(row) + "\n")
        for name, t in row["test"].items():
            print(f"{str(run)[-60:]:<60} {name:<21} {t['threshold']:5.2f} {t['share']:5.2f} {t['validation_f1']:7.3f} "
                  f"{t['tp']:4d} {t['fp']:4d} {t['fn']:4d} {t['f1']:7.3f} {t['strict_f1']:7.3f} {t['froc']:6.3f}", flush=True)
    means = {name: float(np.mean([r["test"][name]["f1"] for r in rows])) for name in rows[0]["test"]}
    for name, value in means.items():
        print(f"mean test F1 over {len(rows)} runs, {name}: {value:.3f}")
    print(f"contrast filter gain over the calibrated threshold (mean test F1): {means['threshold + contrast'] - means['threshold']:+.3f}")


if __name__ == "__main__":
    fire.Fire(main)
