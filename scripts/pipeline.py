"""The whole iExplain pipeline in one command (issue 11).

    python scripts/pipeline.py --work_dir work/demo --profile demo
    python scripts/pipeline.py --work_dir work/full --profile full
    python scripts/pipeline.py --work_dir work/rspect --profile paper --rspect_dir /data/rspect --boxes_csv /data/boxes.csv

Stages (each skipped when its outputs exist, so an interrupted run resumes): synthesize (unless an
RSPECT folder is given) -> prepare -> classifier (train, evaluate, pointing game) -> teacher
(calibrate, pseudo-labels with 1 and 5 references, evaluate) -> student (train, infer, score) ->
fine-tune and random-init baselines -> results -> report (``W/report.md``, ``W/report.html``).
``--stages a,b`` runs only the named stages. The profile is checked first: a file that is not JSON,
a missing key or a bad value (``custom.pipeline.run.validate_profile``) exits 1 before any stage runs,
with a message naming the profile file and the key.
"""

from __future__ import annotations

import sys

import fire

from custom.pipeline.run import run_pipeline
from custom.pipeline.stages import PipelineError


def main(
    work_dir: str = "work/demo",
    profile: str = "demo",
    rspect_dir: str | None = None,
    boxes_csv: str | None = None,
    labels_csv: str | None = None,
    stages: str | None = None,
) -> None:
    """Run the pipeline; exit 1 with the failing stage's name and log tail (or the profile's problem) on failure."""
    selected = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else (list(stages) if stages else None)
    try:
        run_pipeline(work_dir, profile, rspect_dir, boxes_csv, labels_csv, selected)
    except PipelineError as error:
        print(f"pipeline failed: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
