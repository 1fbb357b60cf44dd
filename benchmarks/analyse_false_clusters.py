"""What do a model's false detections lie on? (issues 5 and 6; a synthetic-cohort diagnostic)

Regenerates each scored study of a pipeline run from its cohort record and attributes every detection to a
site: one of the phantom's embolus mimics, the lumen, lung, tissue, or outside the body
(:mod:`custom.synth.sites` has the rule). Prints one markdown row per prediction folder, after a row with
each site's share of the volume (the chance level), and the number of mimics and emboli touched.

    python benchmarks/analyse_false_clusters.py --work_dir work/full \
        --pred_dirs "student/output,teacher/output/pseudo" [--split test]

The pipeline report carries the same table for its teacher and students on the test split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.synth.sites import MIMIC_KINDS, SITES, analyse_predictions  # noqa: E402


def format_row(name: str, model: dict[str, Any]) -> str:
    """One table row: false detections per site, then mimics and emboli touched."""
    false = model["false_detections"]
    total = sum(false.values())
    cells = [f"{false[site]} ({false[site] / total:.0%})" if total else "0" for site in SITES]
    touched = [f"{model['mimics_touched'][k]['touched']}/{model['mimics_touched'][k]['total']}" for k in MIMIC_KINDS]
    e = model["emboli_touched"]
    return f"| {name} | {total} | " + " | ".join(cells) + " | " + " | ".join(touched) + f" | {e['touched']}/{e['total']} |"


def main(
    work_dir: str = "work/full",
    pred_dirs: str | tuple[str, ...] = "student/output",
    split: str | None = "test",
    threshold: float = 0.5,
    min_share: float = 0.2,
    results: str | None = None,
) -> None:
    """Print the table for each prediction folder (relative to ``work_dir``, or absolute) of a pipeline run.

    Args:
        work_dir: a pipeline run (``cohort/cohort.json``, ``prepared/labels``, ``prepared/datalist.json``).
        pred_dirs: comma-separated prediction folders.
        split: only the studies of this split of ``prepared/datalist.json``; ``None`` for every scored study.
        threshold: detection threshold (the metric's 0.5).
        min_share: smallest share of a detection's voxels that makes a region its site.
        results: optional JSON-lines file the result (see :func:`custom.synth.sites.analyse_predictions`) is appended to.
    """
    work = Path(work_dir)
    cohort_path = work / "cohort" / "cohort.json"
    if not cohort_path.is_file():
        raise FileNotFoundError(f"{cohort_path}: no cohort record (run the pipeline first)")
    cohort = json.loads(cohort_path.read_text())
    uids = None
    if split:
        datalist = json.loads((work / "prepared" / "datalist.json").read_text())
        if split not in datalist:
            raise ValueError(f"{work / 'prepared' / 'datalist.json'}: no split {split!r}")
        uids = [entry["study_uid"] for entry in datalist[split]]
    names = [d for d in (pred_dirs.split(",") if isinstance(pred_dirs, str) else pred_dirs) if d]
    result = analyse_predictions({name: work / name for name in names}, work / "prepared" / "labels", cohort, uids, threshold, min_share)
    print(f"| predictions | false | {' | '.join(SITES)} | {' | '.join(k + ' touched' for k in MIMIC_KINDS)} | emboli touched |")
    print("|" + " --- |" * (len(SITES) + len(MIMIC_KINDS) + 3))
    share = result["volume_share"]
    print(f"| share of the volume ({result['n_studies']} studies) | | " + " | ".join(f"{share[site]:.2%}" for site in SITES) + " |" + " |" * (len(MIMIC_KINDS) + 1))
    for name in names:
        print(format_row(name, result["models"][name]), flush=True)
    if results:
        with open(results, "a") as f:
            f.write(json.dumps({"work_dir": str(work), "split": split, **result}) + "\n")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
