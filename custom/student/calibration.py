"""The student's probability threshold, calibrated on the validation split (issue 6).

The paper calibrates the teacher's high threshold "on the evaluation set" (Condrea et al. 2025, 3.2)
and says nothing about the student's; a DynUNet trained with a Dice loss on a rare class is not
calibrated, so its 0.5 is an arbitrary operating point. Session 13 measured five students: a threshold
chosen on the validation split raised the test F1 of all five (mean 0.115 -> 0.143, student README).

The calibration reads the probability maps the inference wrote for the validation studies, scores
every candidate threshold with per-PE cluster matching (:mod:`custom.metrics.cluster_matching`,
pooled over studies, as the evaluation does) and keeps the best. The candidates do not go below the
default: a lower threshold merges detections into blobs that the intersection rule rewards
(:data:`DEFAULT_CANDIDATES`). Ties go to the candidate nearest the
uncalibrated default, then to the lower one. When no candidate matches any embolus (F1 0 everywhere)
the default is kept and the file says so (``"calibrated": false``).

The result is written atomically to ``<ckpt_dir>/threshold.json`` beside the weights (the classifier
keeps its slice threshold the same way); :func:`read_threshold` reads it back, and the bundle's
``inference.json`` / ``evaluate.json`` and the deploy app use it when it exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from custom.io.errors import InputError
from custom.io.hashing import sha256_of
from custom.metrics.cluster_matching import ClusterCounts, cluster_overlaps, count_matches, real_number
from custom.metrics.scoring import StudyFiles, read_pair, write_report
from custom.student.outputs import entry_uid, student_output_paths

__all__ = [
    "DEFAULT_CANDIDATES",
    "THRESHOLD_FILE",
    "calibrate_student_threshold",
    "calibrate_threshold",
    "load_calibration",
    "read_threshold",
]

#: Candidate thresholds, none below the default. Raising a threshold only shrinks and removes
#: detections; lowering it merges them, and the intersection rule rewards a merged blob: in the session-14
#: ``make full`` run the random-init student's validation F1 was 0.017 at 0.5 and 0.372 at 0.3, where
#: its detection covered 99.7 % of each study (test: sensitivity 1.0, F1 0.254). The optima measured on
#: five students in session 13 lay at 0.7-0.9.
DEFAULT_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: File name of the calibration, beside the weights.
THRESHOLD_FILE = "threshold.json"
#: The weights a calibration belongs to, in the same folder.
WEIGHTS_FILE = "model.pt"


def _check_candidates(candidates: Sequence[float], default: float) -> list[float]:
    values = sorted({float(c) for c in candidates})
    if not values:
        raise ValueError("give at least one candidate threshold")
    for value in [*values, float(default)]:
        if not 0.0 < value < 1.0:
            raise ValueError(f"thresholds must lie in (0, 1), got {value}")
    return values


def calibrate_threshold(
    studies: Sequence[StudyFiles], candidates: Sequence[float] = DEFAULT_CANDIDATES, default: float = 0.5
) -> dict[str, Any]:
    """Choose the threshold with the best pooled cluster-matching F1 on the given studies.

    Args:
        studies: validation studies, each a probability map (``<uid>_prob.nii.gz``) and its reference mask
            on the same grid.
        candidates: thresholds to try, each in (0, 1). Candidates below ``default`` let detections merge
            into blobs that the intersection rule rewards (see :data:`DEFAULT_CANDIDATES`).
        default: the uncalibrated threshold; kept when no candidate matches an embolus, and preferred on ties.

    Returns:
        ``{"threshold", "calibrated", "default", "validation_f1", "n_studies", "n_references",
        "candidates": [{"threshold", "tp", "fp", "fn", "sensitivity", "ppv", "f1", "detection_voxels",
        "largest_detection_voxels"}, ...]}`` (voxels: the sum over studies and the largest single detection).

    Raises:
        InputError: no study, an unreadable file, a map on another grid than its reference, NaN.
    """
    values = _check_candidates(candidates, default)
    if not studies:
        raise InputError("no validation study with a reference mask: the student's threshold cannot be calibrated")
    totals = {t: ClusterCounts() for t in values}
    voxels = {t: 0 for t in values}
    largest = {t: 0 for t in values}
    for files in studies:
        prob, ref = read_pair(files)
        for t in values:
            overlaps = cluster_overlaps(prob, ref, t)
            totals[t] = totals[t] + count_matches(overlaps)
            voxels[t] += int(overlaps.pred_index.size)
            if overlaps.n_pred:
                largest[t] = max(largest[t], int(np.bincount(overlaps.pred_labels).max()))
    rows = [{"threshold": t, **totals[t].as_dict(), "detection_voxels": voxels[t], "largest_detection_voxels": largest[t]}
            for t in values]
    best = max(rows, key=lambda r: (np.nan_to_num(r["f1"]), -abs(r["threshold"] - default), -r["threshold"]))
    calibrated = bool(np.nan_to_num(best["f1"]) > 0.0)
    return {
        "threshold": best["threshold"] if calibrated else float(default),
        "calibrated": calibrated,
        "default": float(default),
        "metric": "per-PE cluster-matching F1 pooled over the validation studies",
        "validation_f1": best["f1"] if calibrated else next((r["f1"] for r in rows if r["threshold"] == default), None),
        "n_studies": len(studies),
        "n_references": int(best["tp"] + best["fn"]),
        "candidates": rows,
    }


def calibrate_student_threshold(
    entries: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    default: float = 0.5,
    label_key: str = "label",
    uid_key: str = "study_uid",
    image_key: str = "image",
) -> dict[str, Any] | None:
    """Calibrate on the inference outputs of datalist entries and write the result (the bundle's ``calibrate``).

    Under ``torch.distributed`` (``multi_gpu_inference.json``) every rank waits for the others' outputs,
    rank 0 calibrates and writes, and the others wait for it.

    Args:
        entries: the validation entries (``load_decathlon_datalist`` output); those without ``label_key`` are skipped.
        output_dir: where the inference wrote ``<uid>_prob.nii.gz`` for each entry.
        out_path: the calibration JSON (normally ``<ckpt_dir>/threshold.json``), written atomically.
        candidates: thresholds to try.
        default: the uncalibrated threshold.
        label_key: entry key of the reference mask path.
        uid_key: entry key of the StudyInstanceUID (else the image file name).
        image_key: entry key of the image path.

    Returns:
        The calibration (see :func:`calibrate_threshold`) on the writing rank, ``None`` on the others. It
        also records ``output_dir`` and the SHA-256 of ``model.pt`` beside ``out_path`` when there is one.

    Raises:
        InputError: an entry's probability map is missing (names it), or see :func:`calibrate_threshold`.
    """
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()
    result = None
    if not distributed or dist.get_rank() == 0:
        studies = []
        for entry in entries:
            if not entry.get(label_key):
                continue
            uid = entry_uid(entry, uid_key, image_key)
            prob = student_output_paths(output_dir, uid)["prob"]
            if not prob.is_file():
                raise InputError(f"{prob}: no probability map for validation study {uid}; run the inference on it first")
            studies.append(StudyFiles(uid, prob, Path(entry[label_key])))
        result = calibrate_threshold(studies, candidates, default)
        result["output_dir"] = str(output_dir)
        weights = Path(out_path).parent / WEIGHTS_FILE
        if weights.is_file():  # read_threshold refuses the calibration once these weights change
            result["weights_sha256"] = sha256_of(weights)
        write_report(out_path, result)  # atomic; NaN rates as null
    if distributed:
        dist.barrier()
    return result


def load_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """A calibration file written by :func:`calibrate_student_threshold`, checked.

    Raises:
        InputError: the file is missing, not JSON, or holds no threshold in (0, 1) (a JSON number: a string,
            a boolean or null is refused).
    """
    path = Path(path)
    try:
        calibration = json.loads(path.read_text())
        value = calibration["threshold"]
    except FileNotFoundError:
        raise InputError(f"{path}: no student threshold calibration (run the bundle's calibrate config)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a student threshold calibration ({error!r})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: threshold {value!r} is not a number")
    threshold = float(value)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"{path}: threshold {threshold} is not in (0, 1)")
    calibration["threshold"] = threshold
    return calibration


def read_threshold(ckpt_dir: str | os.PathLike, default: float = 0.5) -> float:
    """The calibrated threshold in ``<ckpt_dir>/threshold.json``, or ``default`` when there is none.

    Args:
        ckpt_dir: the folder of the weights.
        default: the threshold of an uncalibrated model, in (0, 1) (a numeric string is converted).

    Returns:
        The threshold, in (0, 1).

    Raises:
        ValueError: ``default`` is not a number in (0, 1) (checked whether or not the file exists).
        InputError: the file exists but is not a valid calibration (:func:`load_calibration`), or it was
            calibrated for other weights than the ``model.pt`` now in ``ckpt_dir`` (retrained since).
    """
    default = real_number(default, "default threshold")
    if not 0.0 < default < 1.0:
        raise ValueError(f"default threshold must lie in (0, 1), got {default:g}")
    path = Path(ckpt_dir) / THRESHOLD_FILE
    if not path.is_file():
        return default
    calibration = load_calibration(path)
    weights = Path(ckpt_dir) / WEIGHTS_FILE
    if calibration.get("weights_sha256") and weights.is_file() and sha256_of(weights) != calibration["weights_sha256"]:
        raise InputError(f"{path}: calibrated for other weights than {weights} (retrained since?); "
                         "calibrate again (configs/calibrate.json) or delete the file")
    return calibration["threshold"]
