"""Calibration of the hysteresis high threshold on the validation split (Condrea et al. 2025, 3.2).

"The high threshold is optimized on the evaluation set, with the lower threshold set as half of it."
IG attributions have the units of the classifier's logit per voxel, so their scale depends on the
classifier and on the IG settings; the search therefore starts from the data:

1. **scale**: the ``quantile`` (default 0.999) of the IG attributions of the first round of the
   validation studies' positive windows (the windows Algorithm 1 explains first; at most
   ``max_windows_per_study`` of each study, the most confident ones). A 7 x 192 x 192 window has
   258k voxels and an embolus a few hundred, so the top 0.1 % is where emboli light up.
2. **candidates**: a small geometric grid ``scale x factors`` (default x 1/4, 1/2, 1, 2, 4).
3. **selection**: the whole teacher (all rounds, filters) runs on the validation studies that have a
   reference mask for each candidate; the candidate with the best pooled cluster-matching F1 of the
   filtered pseudo-labels (``custom.metrics.match_clusters``) wins; ties go to the lower threshold
   (the paper's high-sensitivity operating point).

The result is written atomically to ``models/calibration.json``; :func:`read_high_threshold` reads
it back and refuses a file calibrated with other IG settings (another attribution scale).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from custom.explain.aggregation import window_slice_indices
from custom.explain.iexplain import predict_probabilities
from custom.explain.teacher import WINDOW_DEPTH
from custom.io.atomic import write_json_atomic
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.records import json_ready
from custom.metrics import ClusterCounts, match_clusters
from custom.teacher.factory import IG_SETTING_KEYS, TeacherFactory
from custom.teacher.studies import read_reference_mask, read_windowed_image

__all__ = ["attribution_scale", "calibrate_high_threshold", "choose_candidate", "read_high_threshold"]

logger = logging.getLogger(__name__)


def attribution_scale(
    factory: TeacherFactory,
    volumes: Sequence[np.ndarray],
    quantile: float = 0.999,
    max_windows_per_study: int = 8,
) -> float:
    """The ``quantile`` of the first-round IG attributions of the positive windows of windowed studies.

    Args:
        factory: the teacher settings (classifier, its threshold, IG settings).
        volumes: ``(Z, H, W)`` windowed studies.
        quantile: the quantile of all attribution values (every voxel of every explained window).
        max_windows_per_study: explain at most this many positive windows per study, the most confident.

    Returns:
        The quantile (positive).

    Raises:
        InputError: no window is positive, or the attributions have no positive quantile.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    values = []
    for volume in volumes:
        teacher = factory(volume.shape[1], volume.shape[2], high_threshold=1.0)  # only its explainer is used
        study = torch.as_tensor(volume, dtype=torch.float32, device=teacher.device)
        sources = window_slice_indices(study.shape[0], WINDOW_DEPTH, teacher.device)
        probabilities = torch.cat(
            [
                predict_probabilities(teacher.classifier, study[sources[start : start + teacher.max_batch]], teacher.max_batch, teacher.autocast_dtype)
                for start in range(0, study.shape[0], teacher.max_batch)
            ]
        )
        positive = torch.nonzero(probabilities > teacher.clf_threshold).flatten()
        if positive.numel() > max_windows_per_study:
            positive = positive[torch.argsort(probabilities[positive], descending=True)[:max_windows_per_study]]
        for start in range(0, positive.numel(), teacher.windows_per_batch):
            windows = positive[start : start + teacher.windows_per_batch]
            values.append(teacher.explainer(study[sources[windows]]).flatten().cpu().numpy())
    if not values:
        raise InputError("calibration: the classifier calls no window of the calibration studies positive; nothing to explain")
    scale = float(np.quantile(np.concatenate(values), quantile))
    if not scale > 0:
        raise InputError(f"calibration: the {quantile} quantile of the IG attributions is {scale}, not positive")
    return scale


def choose_candidate(candidates: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The candidate with the best ``f1``; ties go to the first (the lowest threshold); NaN / None never wins.

    Raises:
        InputError: no candidate has a defined F1 (no reference PE and no detection anywhere).
    """
    best, best_f1 = None, -math.inf
    for candidate in candidates:
        f1 = candidate.get("f1")
        if f1 is None or not math.isfinite(f1):
            continue
        if f1 > best_f1:
            best, best_f1 = candidate, f1
    if best is None:
        raise InputError("calibration: no candidate has a defined F1 (the calibration studies have no reference PE and no detection)")
    return best


def _select_studies(studies: Sequence[Mapping[str, Any]], label_key: str, max_studies: int | None) -> list[Mapping[str, Any]]:
    labelled = [entry for entry in studies if entry.get(label_key)]
    if not labelled:
        raise InputError(f"calibration: none of the {len(studies)} studies has a reference mask ({label_key!r})")
    if max_studies is not None and len(labelled) > max_studies:
        # evenly spaced, so the subset keeps the split's mix of positive and negative studies
        picks = np.unique(np.linspace(0, len(labelled) - 1, max(1, int(max_studies))).round().astype(int))
        labelled = [labelled[i] for i in picks]
    return labelled


def calibrate_high_threshold(
    factory: TeacherFactory,
    studies: Sequence[Mapping[str, Any]],
    calibration_file: str | os.PathLike | None = None,
    window: Sequence[float] = (100.0, 700.0),
    factors: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    quantile: float = 0.999,
    max_studies: int | None = None,
    max_windows_per_study: int = 8,
    label_key: str = "label",
) -> dict[str, Any]:
    """Calibrate the hysteresis high threshold on validation studies (see the module docstring).

    Args:
        factory: the teacher settings; its own ``high_threshold`` is ignored.
        studies: validation datalist entries (absolute paths); those with ``label_key`` are used.
        calibration_file: where to write the result (``models/calibration.json``; ``None``: not written).
        window: ``(level, width)`` HU window of the classifier.
        factors: candidate thresholds are ``scale * factor``.
        quantile: attribution quantile that sets ``scale``.
        max_studies: use at most this many labelled studies, evenly spaced (``None``: all).
        max_windows_per_study: positive windows per study explained for ``scale``.
        label_key: datalist key of the reference mask.

    Returns:
        ``{"high_threshold", "low_threshold", "scale", "quantile", "candidates": [{"high", "low", "tp",
        "fp", "fn", "sensitivity", "ppv", "f1", "f1_unfiltered", "seconds"}], "studies", "ig_settings"}``.
    """
    if not factors or any(not f > 0 for f in factors):
        raise ValueError(f"factors must be positive numbers, got {factors}")
    chosen = _select_studies(studies, label_key, max_studies)
    volumes, references, uids = [], [], []
    for entry in chosen:
        volume, _ = read_windowed_image(entry, window)
        volumes.append(volume)
        references.append(read_reference_mask(entry, volume.shape, label_key))
        uids.append(entry_uid(entry))
    scale = attribution_scale(factory, volumes, quantile, max_windows_per_study)
    logger.info("calibration: attribution scale %.6g (quantile %g) over %d studies", scale, quantile, len(volumes))
    candidates = []
    for factor in sorted(float(f) for f in factors):
        high = scale * factor
        start = time.perf_counter()
        filtered, unfiltered = ClusterCounts(), ClusterCounts()
        for volume, reference, uid in zip(volumes, references, uids):
            explanation = factory(volume.shape[1], volume.shape[2], high_threshold=high)(volume, study_id=uid)
            filtered = filtered + match_clusters(explanation.mask_filtered, reference)
            unfiltered = unfiltered + match_clusters(explanation.mask_unfiltered, reference)
        row = {"high": high, "low": high / 2.0, "factor": factor, **filtered.as_dict(len(volumes)),
               "f1_unfiltered": unfiltered.f1, "seconds": round(time.perf_counter() - start, 3)}
        logger.info("calibration: high %.6g -> sensitivity %.3f ppv %.3f f1 %.3f", high, row["sensitivity"], row["ppv"], row["f1"])
        candidates.append(row)
    best = choose_candidate(candidates)
    result = {
        "high_threshold": best["high"],
        "low_threshold": best["high"] / 2.0,
        "scale": scale,
        "quantile": quantile,
        "candidates": candidates,
        "studies": uids,
        "ig_settings": factory.ig_settings,
    }
    if calibration_file is not None:
        write_json_atomic(calibration_file, json_ready(result))
        logger.info("calibration: high threshold %.6g (f1 %.3f) written to %s", best["high"], best["f1"], calibration_file)
    return result


def read_high_threshold(
    calibration_file: str | os.PathLike,
    fallback: float | None = None,
    ig_settings: Mapping[str, Any] | None = None,
) -> float:
    """The calibrated high threshold, or ``fallback`` when there is no calibration file.

    Args:
        calibration_file: ``models/calibration.json`` written by :func:`calibrate_high_threshold`.
        fallback: threshold to use without a calibration file (``None``: calibration is required).
        ig_settings: the run's settings that set the attribution scale (``TeacherFactory.ig_settings``
            keys); a file calibrated with other values is refused.

    Raises:
        InputError: no file and no fallback, an unreadable file, or other IG settings.
    """
    path = os.fspath(calibration_file)
    if not os.path.isfile(path):
        if fallback is None:
            raise InputError(f"{path}: no calibration; run the bundle's configs/calibrate.json first or set high_threshold")
        return float(fallback)
    try:
        with open(path) as handle:
            calibration = json.load(handle)
        threshold = float(calibration["high_threshold"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: cannot read the calibrated threshold ({type(error).__name__}: {error})") from error
    if ig_settings is not None:
        stored = calibration.get("ig_settings", {})
        wanted = json.loads(json.dumps({key: ig_settings[key] for key in IG_SETTING_KEYS if key in ig_settings}, default=list))
        differing = {key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value}
        if differing:
            raise InputError(
                f"{path}: calibrated with other IG settings (file, run): {differing}; calibrate with this run's settings or give another calibration_file"
            )
    if not threshold > 0:
        raise InputError(f"{path}: the calibrated high threshold must be positive, got {threshold}")
    return threshold
