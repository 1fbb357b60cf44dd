"""Prepare an RSPECT-layout cohort: NIfTI images, box masks, slice labels, MONAI datalist.

Usage:
    python scripts/prepare.py --rspect_dir D --out_dir O [--boxes_csv F] [--labels_csv F]
        [--split '[0.6,0.2,0.2]'] [--seed 0] [--workers 2] [--box_columns '{"x": "X"}' | mapping.json]

Resumable (finished studies are skipped; a study whose CSV rows or files -- paths, sizes,
modification times -- changed is redone), parallel over processes. CSV rows are matched to a study
folder by the StudyInstanceUID of its DICOM files (the folder name only as a fallback).

Exit status:
    0  every study was prepared.
    1  some studies failed (bad DICOM, bad label rows, boxes on another series or SOP, ...): each
       is listed at the end, after every other study was prepared.
    2  a cohort-level problem, before any study: no study folders; a CSV missing or without a
       required column; a bad box CSV row (non-numeric, partly empty, non-finite or non-positive
       box, empty StudyInstanceUID/SOPInstanceUID) -- one bad box row stops the whole cohort,
       whereas a bad label row fails only its study; a label CSV that labels none of the studies
       (e.g. a header only); an invalid --split, --seed (integer >= 0) or --workers (integer
       >= 1). Also after the studies when a label CSV is used but the training split is empty.
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
    """Run :func:`custom.io.prepare.prepare_cohort` and report; exit 1 when any study failed, 2 for a cohort problem.

    Cohort-level problems (exit 2, before any study is prepared): no study folders; a CSV missing or without a
    required column; a bad box CSV row (one bad box row stops the whole cohort, a bad label row
    fails only its study); a label CSV that labels none of the studies; an invalid split, seed
    (integer >= 0) or workers (integer >= 1); after the studies, an empty training split.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare_cohort(rspect_dir, out_dir, boxes_csv, labels_csv, split, seed, workers, box_columns)
    except InputError as err:  # the cohort as a whole is unusable (see the docstring): exit 2
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
