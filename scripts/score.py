"""Score predictions against reference masks: per-PE cluster matching, strict variant, FROC.

Usage::

    python scripts/score.py --pred_dir P --reference_dir R --out metrics.json [--threshold 0.5]
        [--kind auto|prob|plain|mask] [--froc_threshold T] [--iou_threshold 0.5] [--reduction max|mean]
        [--image_dir I --contrast_min_share S [--contrast_hu 200]] [--calibration models/threshold.json]

Pairs ``P/<uid>{_prob,,_mask}.nii.gz`` with ``R/<uid>.nii.gz``, writes the report (see
``custom.metrics.scoring``) to ``--out`` atomically and prints a table. With ``--image_dir`` (the studies'
HU images ``I/<uid>.nii.gz``) and ``--contrast_min_share S > 0``, detections whose shell is less than a
share ``S`` contrast-filled are removed first (``custom.transforms.contrast_adjacency``). With
``--calibration`` (a student's ``threshold.json``, ``custom.student.calibration``) its calibrated threshold
replaces ``--threshold``.

Thresholds lie in (0, 1] (``--iou_threshold`` in [0, 1), ``--contrast_min_share`` in [0, 1]); a bad option
value or bad input (a missing folder, an unreadable file, NaN or infinite voxels, another grid) exits with
status 2 and the message on stderr.
"""

from __future__ import annotations

import sys

import fire

from custom.io.errors import InputError
from custom.metrics.scoring import check_settings, format_table, score_directories, write_report
from custom.student.calibration import load_calibration


def main(
    pred_dir: str,
    reference_dir: str,
    out: str,
    threshold: float = 0.5,
    kind: str = "auto",
    froc_threshold: float | None = None,
    iou_threshold: float = 0.5,
    reduction: str = "max",
    image_dir: str | None = None,
    contrast_hu: float = 200.0,
    contrast_min_share: float = 0.0,
    calibration: str | None = None,
) -> None:
    """Score ``pred_dir`` against ``reference_dir`` and write ``out`` (JSON); exit 2 on a bad option or bad input."""
    try:  # option values first, before any file is read (fire passes e.g. ``--threshold abc`` as a string)
        check_settings(threshold, froc_threshold, iou_threshold, contrast_hu, contrast_min_share, image_dir)
    except ValueError as err:
        print(f"error: bad option: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        if calibration:
            threshold = load_calibration(calibration)["threshold"]
        report = score_directories(pred_dir, reference_dir, threshold, kind, froc_threshold, iou_threshold, reduction,
                                   image_dir=image_dir, contrast_hu=contrast_hu, contrast_min_share=contrast_min_share)
        write_report(out, report)
    except InputError as err:  # the message names the file and the problem
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire(main)
