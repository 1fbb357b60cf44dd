"""Evaluation of the teacher's pseudo-labels against reference masks (Condrea et al. 2025, 4.2).

From one output folder per IG reference setting (``custom.teacher.outputs``; paper: 1 and 5
references) and the reference masks of the evaluated split (datalist ``label``: the prepared,
filled RSPECT-augmented boxes), with per-PE cluster matching (``custom.metrics.match_clusters``,
pooled over studies):

- **per round** (Fig. 4 left): sensitivity, PPV and F1 of the mask after ``r`` rounds,
  ``0 < round_map <= r``, for ``r = 1 .. max_rounds``, filtered (the size and location filters
  re-applied to that mask, as ``StudyExplanation.mask_after_round``) and unfiltered. A study whose
  windows all stopped before round ``r`` contributes its final mask;
- **rounds histogram** (Fig. 4 right): Algorithm 1 rounds run per positive window (1..10; the
  refinement iterations the paper counts are rounds - 1) and per study (the most rounds of any of
  its windows; 0 when the classifier called no window positive);
- **Table 2**: iteration 1 against the best iteration (the round of best filtered F1);
- **Table 3**: unfiltered against filtered, at the best iteration (the paper's Table 3 filtered rows
  equal its Table 2 best rows) and after all rounds, with the strict (IoU > 0.5) counts of the filtered
  mask at the best iteration (``strict_filtered``: the teacher's row of the strict Tables 4-5);
- **FROC** of the soft heatmap: candidates are the clusters of ``heatmap >= froc_threshold`` with
  their maximum heatmap value as confidence (``custom.metrics.froc``); with the default 0.5, the
  teacher's own mask threshold, the curve ends at the unfiltered operating point of all rounds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from custom.explain.filtering import filter_clusters
from custom.io.atomic import write_json_atomic
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.records import json_ready
from custom.metrics import (
    FP_RATES,
    ClusterCounts,
    average_sensitivity,
    cluster_overlaps,
    count_matches,
    froc_from_scores,
    match_clusters,
    score_detections,
    sensitivity_at,
)
from custom.teacher.outputs import HEATMAPS, ROUND_MAPS, TeacherOutputs
from custom.teacher.studies import read_reference_mask

__all__ = ["evaluate_outputs", "evaluate_teacher", "masks_after_rounds"]

logger = logging.getLogger(__name__)


def masks_after_rounds(
    round_map: np.ndarray, max_rounds: int, min_cluster_voxels: int, max_center_distance_px: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(filtered, unfiltered)`` uint8 masks after ``r = 1 .. max_rounds`` rounds of a study's round map.

    Rounds past the last one in the map repeat the final masks (computed once).
    """
    last = int(round_map.max(initial=0))
    masks: list[tuple[np.ndarray, np.ndarray]] = []
    for round_index in range(1, max_rounds + 1):
        if round_index > max(last, 1):
            masks.append(masks[-1])
            continue
        unfiltered = ((round_map > 0) & (round_map <= round_index)).astype(np.uint8)
        filtered = filter_clusters(unfiltered, min_cluster_voxels, max_center_distance_px)[0]
        masks.append((filtered, unfiltered))
    return masks


def evaluate_outputs(
    output_dir: str | os.PathLike,
    studies: Sequence[Mapping[str, Any]],
    max_rounds: int | None = None,
    froc_threshold: float = 0.5,
    label_key: str = "label",
) -> dict[str, Any]:
    """Evaluate one teacher output folder on the studies that have a reference mask.

    Args:
        output_dir: the teacher's output folder.
        studies: datalist entries (absolute paths) of the evaluated split; entries without
            ``label_key`` are left out (no reference).
        max_rounds: rounds axis of the per-round table (default: the largest ``max_rounds`` setting
            of the evaluated studies).
        froc_threshold: heatmap threshold of the FROC candidates.
        label_key: datalist key of the reference mask.

    Returns:
        ``{"output_dir", "n_studies", "missing", "per_round", "table2", "table3", "rounds_histogram",
        "froc", "per_study"}`` (see the module docstring); rates are NaN where undefined.

    Raises:
        InputError: no labelled study has teacher outputs, or a file is unreadable or off-grid.
    """
    outputs = TeacherOutputs(output_dir)
    labelled = [entry for entry in studies if entry.get(label_key)]
    evaluated = [entry for entry in labelled if outputs.is_done(entry_uid(entry))]
    missing = [entry_uid(entry) for entry in labelled if not outputs.is_done(entry_uid(entry))]
    if not evaluated:
        raise InputError(f"{output_dir}: no teacher output for any of the {len(labelled)} studies with a reference mask")
    if missing:
        logger.warning("%s: %d of %d labelled studies have no teacher output: %s", output_dir, len(missing), len(labelled), missing[:10])
    summaries = {entry_uid(entry): outputs.read_summary(entry_uid(entry)) for entry in evaluated}
    if max_rounds is None:
        max_rounds = max(int(s.get("settings", {}).get("max_rounds", s["rounds_run"])) for s in summaries.values())
    max_rounds = max(1, int(max_rounds))
    filtered_counts = [ClusterCounts() for _ in range(max_rounds)]
    unfiltered_counts = [ClusterCounts() for _ in range(max_rounds)]
    strict_counts = [ClusterCounts() for _ in range(max_rounds)]
    window_histogram = np.zeros(max_rounds + 1, dtype=np.int64)
    study_histogram = np.zeros(max_rounds + 1, dtype=np.int64)
    froc_scores, per_study = [], {}
    for entry in evaluated:
        uid = entry_uid(entry)
        summary = summaries[uid]
        round_map = outputs.read_volume(ROUND_MAPS, uid)
        reference = read_reference_mask(entry, round_map.shape, label_key)
        heatmap = outputs.read_volume(HEATMAPS, uid)
        if heatmap.shape != round_map.shape:
            raise InputError(f"{outputs.path(HEATMAPS, uid)}: heatmap of shape {heatmap.shape}, round map {round_map.shape}")
        settings = summary["settings"]
        masks = masks_after_rounds(round_map, max_rounds, int(settings["min_cluster_voxels"]), float(settings["max_center_distance_px"]))
        for r, (filtered, unfiltered) in enumerate(masks):
            overlaps = cluster_overlaps(filtered, reference)
            filtered_counts[r] = filtered_counts[r] + count_matches(overlaps)
            strict_counts[r] = strict_counts[r] + count_matches(overlaps, strict=True)
            unfiltered_counts[r] = unfiltered_counts[r] + match_clusters(unfiltered, reference)
        final = match_clusters(masks[-1][0], reference)
        window_rounds = np.asarray(summary["window_rounds"], dtype=np.int64)
        window_histogram += np.bincount(np.clip(window_rounds[window_rounds > 0], 0, max_rounds), minlength=max_rounds + 1)
        study_histogram[min(int(summary["rounds_run"]), max_rounds)] += 1
        froc_scores.append(score_detections(heatmap, reference, froc_threshold))
        per_study[uid] = {"rounds_run": int(summary["rounds_run"]), "tp": final.tp, "fp": final.fp, "fn": final.fn}
    n = len(evaluated)
    per_round = [
        {"round": r + 1, "filtered": filtered_counts[r].as_dict(n), "unfiltered": unfiltered_counts[r].as_dict(n)}
        for r in range(max_rounds)
    ]
    f1s = np.asarray([c.f1 for c in filtered_counts], dtype=np.float64)
    best = int(np.nanargmax(f1s)) if np.isfinite(f1s).any() else max_rounds - 1  # ties: the earliest round
    froc = froc_from_scores(froc_scores)
    return {
        "output_dir": os.fspath(output_dir),
        "n_studies": n,
        "missing": missing,
        "per_round": per_round,
        "table2": {
            "iteration_1": {"round": 1, **filtered_counts[0].as_dict(n)},
            "best": {"round": best + 1, **filtered_counts[best].as_dict(n)},
        },
        "table3": {
            "best_round": {
                "round": best + 1,
                "unfiltered": unfiltered_counts[best].as_dict(n),
                "filtered": filtered_counts[best].as_dict(n),
                "strict_filtered": strict_counts[best].as_dict(n),
            },
            "all_rounds": {"unfiltered": unfiltered_counts[-1].as_dict(n), "filtered": filtered_counts[-1].as_dict(n)},
        },
        "rounds_histogram": {
            "windows": {str(r): int(window_histogram[r]) for r in range(1, max_rounds + 1)},
            "studies": {str(r): int(study_histogram[r]) for r in range(max_rounds + 1)},
        },
        "froc": {
            "threshold": froc_threshold,
            "average_sensitivity": average_sensitivity(froc),
            "fp_rates": list(FP_RATES),
            "sensitivity_at": sensitivity_at(froc).tolist(),
            "n_references": froc.n_references,
            "curve": {"fp_per_study": froc.fp_per_study.tolist(), "sensitivity": froc.sensitivity.tolist(), "thresholds": froc.thresholds.tolist()},
        },
        "per_study": per_study,
    }


def evaluate_teacher(
    output_dirs: Mapping[str, str | os.PathLike] | str | os.PathLike,
    studies: Sequence[Mapping[str, Any]],
    metrics_file: str | os.PathLike | None = None,
    max_rounds: int | None = None,
    froc_threshold: float = 0.5,
    label_key: str = "label",
) -> dict[str, Any]:
    """Evaluate the teacher for each reference setting that was run and write ``teacher_metrics.json``.

    Args:
        output_dirs: ``{references: output folder}``, e.g. ``{"1": "output", "5": "output_5ref"}``
            (paper Tables 2-3 compare 1 and 5 references); folders without outputs are skipped. A
            single folder is evaluated as ``{"1": folder}``.
        studies: datalist entries of the evaluated split (paper: figures on the test split).
        metrics_file: where to write the result atomically (``None``: not written).
        max_rounds: see :func:`evaluate_outputs`.
        froc_threshold: see :func:`evaluate_outputs`.
        label_key: datalist key of the reference mask.

    Returns:
        ``{"settings": {references: evaluate_outputs(...)}, "table2": [rows], "table3": [rows]}``, rows
        with ``references``, ``iteration`` / ``filtered``, ``round``, ``sensitivity``, ``ppv``, ``f1``.

    Raises:
        InputError: none of the folders has teacher outputs.
    """
    if not isinstance(output_dirs, Mapping):
        output_dirs = {"1": output_dirs}
    settings, table2, table3 = {}, [], []
    for name, folder in output_dirs.items():
        if not TeacherOutputs(folder).done_studies():
            logger.info("teacher evaluation: no outputs in %s (references %s), skipped", folder, name)
            continue
        result = evaluate_outputs(folder, studies, max_rounds, froc_threshold, label_key)
        settings[str(name)] = result
        rows = result["table2"]
        table2.append({"references": str(name), "iteration": "1", **rows["iteration_1"]})
        table2.append({"references": str(name), "iteration": "best", **rows["best"]})
        best = result["table3"]["best_round"]
        for filtered in (False, True):
            table3.append({"references": str(name), "filtered": filtered, "round": best["round"], **best["filtered" if filtered else "unfiltered"]})
        logger.info(
            "teacher evaluation (%s references, %d studies): iteration 1 f1 %.3f, best iteration %d f1 %.3f, unfiltered f1 %.3f",
            name, result["n_studies"], rows["iteration_1"]["f1"], rows["best"]["round"], rows["best"]["f1"], best["unfiltered"]["f1"],
        )
    if not settings:
        raise InputError(f"teacher evaluation: none of {dict(output_dirs)} holds teacher outputs; run inference first")
    metrics = {"settings": settings, "table2": table2, "table3": table3}
    if metrics_file is not None:
        write_json_atomic(metrics_file, json_ready(metrics))
    return metrics
