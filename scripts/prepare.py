"""Prepare an RSPECT-layout cohort: NIfTI images, box masks, slice labels, MONAI datalist.

Usage:
    python scripts/prepare.py --rspect_dir D --out_dir O [--boxes_csv F] [--labels_csv F]
        [--split '[0.6,0.2,0.2]'] [--seed 0] [--workers 2] [--box_columns '{"x": "X"}' | mapping.json]

Resumable (finished studies are skipped), parallel over processes; a failing study is listed at
the end and makes the exit status 1, after every other study was prepared. A cohort-level problem
(no study folders, a CSV without a required column) exits with status 2 before any study.
"""

from __future__ import annotations

import logging
import sys

import fire

from custom.io.errors import InputError
from custom.io.prepare import prepare_cohort


def main(
    rspect_dir: str,
    out_dir: str,
    boxes_csv: str | None = None,
    labels_csv: str | None = None,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    workers: int = 2,
    box_columns: dict | str | None = None,
) -> None:
    """Run :func:`custom.io.prepare.prepare_cohort` and report; exit 1 when any study failed."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare_cohort(rspect_dir, out_dir, boxes_csv, labels_csv, split, seed, workers, box_columns)
    except InputError as err:  # the cohort as a whole is unusable (no studies, a CSV without its columns)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for note in report.notes:
        print(f"note: {note}")
    print(
        f"prepared {len(report.prepared)}, skipped (already done) {len(report.skipped)}, failed {len(report.failures)} "
        f"of {report.n_studies} studies -> {report.datalist_path}"
    )
    if report.failures:
        print(f"{len(report.failures)} studies failed (also in {report.out_dir / 'failures.json'}):", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure['study']}: {failure['error']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
