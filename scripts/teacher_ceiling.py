"""The teacher's ceiling on a synthetic cohort: the iExplain teacher with an oracle classifier (``custom.teacher.oracle``).

Usage::

    python scripts/teacher_ceiling.py --datalist work/full/prepared/datalist.json \\
        --masks_dir work/full/cohort/masks --out work/full/teacher/ceiling.json \\
        [--configs "['inference.json','demo.json']"] [--overrides "{'mask_threshold': 0.25}"] \\
        [--high_thresholds "[0.05,0.1,0.2]"] [--max_studies N]

The teacher's settings come from the ``iexplain_teacher`` bundle configs (merged in order, then
``--overrides``): everything but the classifier. The high threshold is chosen on the validation split and the
figures are for the test split, against the reference masks. Writes ``--out`` atomically and prints a table.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire

from custom.io.atomic import write_json_atomic
from custom.io.records import json_ready
from custom.teacher.oracle import DEFAULT_HIGH_THRESHOLDS, load_oracle_studies, teacher_ceiling

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "iexplain_teacher" / "configs"
#: ``TeacherFactory`` arguments of the bundle's ``teacher`` component that the ceiling does not take from
#: the config: the oracle replaces the classifier and its threshold, and ``teacher_ceiling`` fixes the
#: high threshold (calibrated on the oracle) and the precision settings
NOT_FROM_CONFIG = frozenset({"_target_", "classifier", "high_threshold", "clf_threshold", "autocast_dtype", "channels_last", "compile", "fold_batchnorm"})


def teacher_settings(configs: Sequence[str], overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[float]]:
    """``TeacherFactory`` arguments and the HU window from the teacher bundle's configs plus overrides.

    The arguments are those of the config's ``teacher`` component (the wiring the bundle itself runs),
    each resolved on its own, so the classifier is never built; ``NOT_FROM_CONFIG`` and MONAI's special keys
    (``_target_``, ``_requires_``, ``_disabled_``, ...) are left out.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) if not Path(name).is_absolute() else name for name in configs])
    parser.update(dict(overrides or {}))
    arguments = [name for name in parser.get("teacher", {}) if not name.startswith("_") and name not in NOT_FROM_CONFIG]
    settings = {name: parser.get_parsed_content(f"teacher#{name}") for name in arguments}
    return settings, [float(w) for w in parser.get_parsed_content("window")]


def main(
    datalist: str,
    masks_dir: str,
    out: str,
    configs: Sequence[str] = ("inference.json", "demo.json"),
    overrides: Mapping[str, Any] | None = None,
    high_thresholds: Sequence[float] = DEFAULT_HIGH_THRESHOLDS,
    bias: float = 1.0,
    max_studies: int | None = None,
) -> None:
    """Compute the teacher's ceiling and write ``out`` (JSON); see ``custom.teacher.oracle``."""
    if isinstance(configs, str):
        configs = [configs]
    settings, window = teacher_settings(configs, overrides)
    start = time.perf_counter()
    validation = load_oracle_studies(datalist, "validation", masks_dir, window, max_studies)
    test = load_oracle_studies(datalist, "test", masks_dir, window, max_studies)
    thresholds = [float(h) for h in ([high_thresholds] if isinstance(high_thresholds, (int, float)) else high_thresholds)]
    result = teacher_ceiling(validation, test, thresholds, bias, **settings)
    result.update({"settings": settings, "window": window, "configs": list(configs), "seconds": round(time.perf_counter() - start, 1)})
    write_json_atomic(out, json_ready(result))
    test_counts = result["test"]
    total = result["filtered"]["tp"] + result["filtered"]["fn"]
    print(f"teacher with an oracle classifier: {len(validation)} validation / {len(test)} test studies, "
          f"high threshold {result['high_threshold']:g} (validation F1 {[round(c['f1'] or 0, 3) for c in result['validation']]})")
    print("| masks | TP / FP / FN | F1 |\n| --- | --- | ---: |")
    rows = [("unfiltered, iteration 1", test_counts["per_round"][0]["unfiltered"]),
            (f"unfiltered, best iteration ({result['best']['round']})", result["unfiltered"]),
            ("size filter only", result["size_filter_only"]),
            ("distance filter only", result["distance_filter_only"]),
            ("filtered, iteration 1", result["iteration1"]),
            (f"filtered, best iteration ({result['best']['round']})", result["best"]),
            ("filtered, strict (IoU > 0.5)", result["strict"])]
    for name, counts in rows:
        print(f"| {name} | {counts['tp']} / {counts['fp']} / {counts['fn']} | {counts['f1'] or 0:.3f} |")
    print(f"{total} test PEs; windows by rounds used: {test_counts['rounds_histogram']}; {result['seconds']} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    fire.Fire(main)
