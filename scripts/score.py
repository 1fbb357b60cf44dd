"""Score predictions against reference masks: per-PE cluster matching, strict variant, FROC.

Usage::

    python scripts/score.py --pred_dir P --reference_dir R --out metrics.json [--threshold 0.5]
        [--kind auto|prob|plain|mask] [--froc_threshold T] [--iou_threshold 0.5] [--reduction max|mean]

Pairs ``P/<uid>{_prob,,_mask}.nii.gz`` with ``R/<uid>.nii.gz``, writes the report (see
``custom.metrics.scoring``) to ``--out`` atomically and prints a table.
"""

from __future__ import annotations

import fire

from custom.metrics.scoring import format_table, score_directories, write_report


def main(
    pred_dir: str,
    reference_dir: str,
    out: str,
    threshold: float = 0.5,
    kind: str = "auto",
    froc_threshold: float | None = None,
    iou_threshold: float = 0.5,
    reduction: str = "max",
) -> None:
    """Score ``pred_dir`` against ``reference_dir`` and write ``out`` (JSON); see ``custom.metrics.scoring``."""
    report = score_directories(pred_dir, reference_dir, threshold, kind, froc_threshold, iou_threshold, reduction)
    write_report(out, report)
    print(format_table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire(main)
