"""Write a synthetic CTPA cohort in the RSPECT layout (see docs/conventions.md).

Example::

    python scripts/synthesize.py --out_dir C --n_studies 8 --seed 0
    python scripts/synthesize.py --out_dir C --n_studies 8 --seed 0 --shape 300,512,512 --workers 2
"""

from __future__ import annotations

import json
import sys
import time

import fire

from custom.io.errors import InputError
from custom.synth.phantom import PhantomConfig
from custom.synth.summary import summarize_cohort
from custom.synth.writer import write_cohort


def _parse_shape(shape) -> tuple[int, int, int]:
    """Accept ``"96,192,192"`` or the tuple fire makes of it."""
    values = shape.split(",") if isinstance(shape, str) else list(shape)
    try:
        parsed = tuple(int(v) for v in values)
    except (TypeError, ValueError) as error:
        raise InputError(f"--shape {shape!r}: expected Z,Y,X integers") from error
    if len(parsed) != 3:
        raise InputError(f"--shape {shape!r}: expected three sizes Z,Y,X")
    return parsed


def main(
    out_dir: str,
    n_studies: int = 8,
    seed: int = 0,
    shape="96,192,192",
    positive_rate: float = 0.5,
    workers: int = 1,
    uid_style: str = "dicom",
) -> None:
    """Generate (or resume) a cohort and print its statistics as JSON.

    Args:
        out_dir: cohort folder.
        n_studies: number of studies.
        seed: cohort seed (study i depends only on seed, i and the settings).
        shape: ``Z,Y,X`` of every study; spacing scales so the chest fits.
        positive_rate: fraction of studies with emboli (expected).
        workers: parallel processes.
        uid_style: ``dicom`` (valid 2.25 UIDs) or ``hex12`` (Kaggle-like pseudo-UIDs).
    """
    start = time.perf_counter()
    try:
        config = PhantomConfig(shape=_parse_shape(shape), positive_rate=float(positive_rate))
        out = write_cohort(out_dir, int(n_studies), int(seed), config, workers=int(workers), uid_style=uid_style)
    except InputError as error:
        print(f"synthesize: {error}", file=sys.stderr)
        sys.exit(2)
    stats = summarize_cohort(json.loads((out / "cohort.json").read_text()))
    stats["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    fire.Fire(main)
