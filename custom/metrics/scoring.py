"""Score a folder of predictions against a folder of reference masks (issue 3, item 6; ``scripts/score.py``).

Files are paired by the StudyInstanceUID in their names: the reference of study ``<uid>`` is
``<reference_dir>/<uid>.nii.gz``; its prediction is ``<pred_dir>/<uid>_prob.nii.gz``, ``<uid>.nii.gz`` or
``<uid>_mask.nii.gz`` (``kind="auto"`` takes the first that exists, in that order, so a probability map is
preferred and gives a meaningful FROC; ``kind="prob"|"plain"|"mask"`` asks for one form only). Predictions
whose study has no reference (e.g. positive studies without boxes, which get no label) are listed and not
scored; references without a prediction are ignored (the reference folder may hold every split).

Every study is read once; its clusters are labelled once and give the cluster counts, the strict counts and
its FROC scores. The report::

    {"cluster": {"tp", "fp", "fn", "sensitivity", "ppv", "f1", "fp_per_study"},   # pooled over studies (micro)
     "strict": {...same keys...},
     "froc": {"detection_threshold", "reduction", "fp_rates", "sensitivity_at_fp_rates", "average_sensitivity",
              "n_studies", "n_references", "curve": {"fp_per_study", "sensitivity", "thresholds"}},
     "per_study": {uid: {"prediction": file name, "cluster": {...}, "strict": {...}}},
     "settings": {"threshold", "iou_threshold", "kind", "pred_dir", "reference_dir",
                  "predictions_without_reference", "contrast_filter"}}

(the four keys of issue 3 plus ``settings``, which records how the numbers were made.)

Undefined rates (0/0, see :mod:`custom.metrics.cluster_matching`) are NaN in memory and ``null`` in the JSON.

With ``image_dir`` and ``contrast_min_share > 0`` each prediction first goes through
:func:`custom.transforms.contrast_adjacency.remove_unenhanced_clusters` with the study's image
``<image_dir>/<uid>.nii.gz`` (in HU), so a filter can be measured on saved outputs without running the
network again; ``settings["contrast_filter"]`` records it (``None`` when off).

Settings are checked before any file is read (:func:`check_settings`): ``threshold`` and ``froc_threshold``
in (0, 1] (``>= 0`` would make every voxel a detection; 1 keeps voxels equal to 1, e.g. binary masks),
``iou_threshold`` in [0, 1) (a strict pair needs IoU strictly above it), ``contrast_min_share`` in [0, 1],
all finite numbers (numeric strings are converted). Predictions, references and the contrast filter's images
must be finite: a NaN or infinite voxel is an :class:`~custom.io.errors.InputError` naming the file and the
number of such voxels (a NaN reference voxel would otherwise count as embolus, an infinite prediction
voxel as a detection).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.io.atomic import write_json_atomic
from custom.io.errors import InputError
from custom.io.nifti import check_finite, read_checked_volume, read_volume
from custom.io.records import json_ready
from custom.metrics.cluster_matching import (
    ClusterCounts,
    check_iou_threshold,
    check_probability_threshold,
    cluster_overlaps,
    count_matches,
    real_number,
)
from custom.metrics.froc import (
    FP_RATES,
    DetectionScores,
    average_sensitivity,
    froc_from_scores,
    score_detections,
    sensitivity_at,
)
from custom.transforms.contrast_adjacency import remove_unenhanced_clusters

__all__ = [
    "PREDICTION_SUFFIXES",
    "StudyFiles",
    "StudyScore",
    "check_settings",
    "format_table",
    "pair_studies",
    "read_pair",
    "score_directories",
    "score_study",
    "write_report",
]

#: File-name suffix (before ``.nii.gz``) of each prediction form, in ``kind="auto"`` preference order.
PREDICTION_SUFFIXES = {"prob": "_prob", "plain": "", "mask": "_mask"}
_NIFTI = ".nii.gz"
#: Affines that differ by less than this (mm) are the same grid (NIfTI stores them as float32).
_AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class StudyFiles:
    """A study's prediction and reference files."""

    uid: str
    prediction: Path
    reference: Path


@dataclass(frozen=True)
class StudyScore:
    """What one study contributes to the report."""

    cluster: ClusterCounts
    strict: ClusterCounts
    froc: DetectionScores


def _study_uid(name: str) -> tuple[str, str] | None:
    """``(uid, kind)`` of a prediction file name, or None if it is not a NIfTI prediction."""
    if not name.endswith(_NIFTI):
        return None
    stem = name[: -len(_NIFTI)]
    for kind, suffix in PREDICTION_SUFFIXES.items():
        if suffix and stem.endswith(suffix):
            return stem[: -len(suffix)], kind
    return stem, "plain"


def pair_studies(
    pred_dir: str | os.PathLike, reference_dir: str | os.PathLike, kind: str = "auto"
) -> tuple[list[StudyFiles], list[str]]:
    """Pair prediction and reference files by StudyInstanceUID.

    Args:
        pred_dir: folder of ``<uid>_prob.nii.gz`` / ``<uid>.nii.gz`` / ``<uid>_mask.nii.gz``.
        reference_dir: folder of ``<uid>.nii.gz`` reference masks.
        kind: ``"auto"`` (first of prob, plain, mask that exists) or one of :data:`PREDICTION_SUFFIXES`.

    Returns:
        ``(pairs sorted by uid, uids of predictions without a reference)``.

    Raises:
        InputError: a folder is missing, or no prediction of the requested kind has a reference.
    """
    if kind != "auto" and kind not in PREDICTION_SUFFIXES:
        raise ValueError(f"kind must be 'auto' or one of {sorted(PREDICTION_SUFFIXES)}, got {kind!r}")
    pred_dir, reference_dir = Path(pred_dir), Path(reference_dir)
    for folder in (pred_dir, reference_dir):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
    found: dict[str, dict[str, Path]] = {}
    for path in pred_dir.iterdir():
        parsed = _study_uid(path.name)
        if parsed is not None and path.is_file():
            found.setdefault(parsed[0], {})[parsed[1]] = path
    kinds = list(PREDICTION_SUFFIXES) if kind == "auto" else [kind]
    pairs, without_reference = [], []
    for uid in sorted(found):
        prediction = next((found[uid][k] for k in kinds if k in found[uid]), None)
        if prediction is None:
            continue
        reference = reference_dir / f"{uid}{_NIFTI}"
        if reference.is_file():
            pairs.append(StudyFiles(uid, prediction, reference))
        else:
            without_reference.append(uid)
    if not pairs:
        raise InputError(f"{pred_dir}: no {kind} prediction has a reference <uid>{_NIFTI} in {reference_dir}")
    return pairs, without_reference


def score_study(
    prob: np.ndarray,
    ref_mask: np.ndarray,
    threshold: float = 0.5,
    froc_threshold: float | None = None,
    iou_threshold: float = 0.5,
    reduction: str = "max",
    slice_axis: int = 0,
) -> StudyScore:
    """Cluster counts, strict counts and FROC scores of one study.

    Args:
        prob: 3D probability map or binary mask (detection voxels: ``prob >= threshold``).
        ref_mask: reference mask on the same grid (nonzero = PE).
        threshold: binarisation threshold of the cluster and strict counts.
        froc_threshold: binarisation threshold of the FROC candidates (default: ``threshold``).
        iou_threshold: IoU above which a strict pair matches.
        reduction: detection confidence for the FROC, ``"max"`` or ``"mean"``.
        slice_axis: slice axis of the arrays (0 for the project's ``(Z, Y, X)``).

    Returns:
        The :class:`StudyScore`.
    """
    overlaps = cluster_overlaps(prob, ref_mask, threshold)
    cluster = count_matches(overlaps)
    strict = count_matches(overlaps, strict=True, iou_threshold=iou_threshold, slice_axis=slice_axis)
    if froc_threshold is None or froc_threshold == threshold:
        froc = score_detections(prob, ref_mask, threshold, reduction, overlaps=overlaps)
    else:
        froc = score_detections(prob, ref_mask, froc_threshold, reduction)
    return StudyScore(cluster, strict, froc)




def read_pair(files: StudyFiles) -> tuple[np.ndarray, np.ndarray]:
    """A study's prediction and reference arrays, ``(Z, Y, X)``.

    Raises:
        InputError: an unreadable file, a prediction on another grid than its reference (names both), a NaN
            or infinite voxel in either file (names it and counts them).
    """
    try:
        prob, pred_affine = read_volume(files.prediction)
        ref, ref_affine = read_volume(files.reference)
    except (OSError, ValueError) as error:
        raise InputError(f"study {files.uid}: cannot read {files.prediction} or {files.reference}: {error}") from error
    if prob.shape != ref.shape or not np.allclose(pred_affine, ref_affine, rtol=0.0, atol=_AFFINE_ATOL):
        raise InputError(
            f"{files.prediction}: grid differs from its reference {files.reference} "
            f"(shape (Z, Y, X) {prob.shape} vs {ref.shape}; "
            f"affine {pred_affine.round(4).tolist()} vs {ref_affine.round(4).tolist()})"
        )
    check_finite(prob, files.prediction, "prediction")
    check_finite(ref, files.reference, "reference mask")
    return prob, ref


def _read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The contrast filter's HU image of a study, checked for its shape and for NaN / infinite voxels."""
    image, _ = read_checked_volume(path, "image of the contrast filter")
    if image.shape != shape:
        raise InputError(f"{path}: image shape (Z, Y, X) {image.shape} differs from its prediction's {shape}")
    return image


def check_settings(
    threshold: Any = 0.5,
    froc_threshold: Any = None,
    iou_threshold: Any = 0.5,
    contrast_hu: Any = 200.0,
    contrast_min_share: Any = 0.0,
    image_dir: str | os.PathLike | None = None,
) -> dict[str, float | None]:
    """The numeric settings of :func:`score_directories` as floats, checked (see the module docstring for ranges).

    ``image_dir`` is only checked for presence: the contrast filter (``contrast_min_share > 0``) needs it.

    Returns:
        ``{"threshold", "froc_threshold" (None stays None), "iou_threshold", "contrast_hu", "contrast_min_share"}``.

    Raises:
        ValueError: a setting is not a finite number or numeric string, or lies outside its range (names it);
            the contrast filter is on without ``image_dir``.
    """
    share = real_number(contrast_min_share, "contrast_min_share")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"contrast_min_share must lie in [0, 1] (0: no contrast filter), got {share:g}")
    if share and image_dir is None:
        raise ValueError("the contrast filter (contrast_min_share > 0) needs image_dir, the studies' HU images")
    return {
        "threshold": check_probability_threshold(threshold, "threshold"),
        "froc_threshold": None if froc_threshold is None else check_probability_threshold(froc_threshold, "froc_threshold"),
        "iou_threshold": check_iou_threshold(iou_threshold, "iou_threshold"),
        "contrast_hu": real_number(contrast_hu, "contrast_hu"),
        "contrast_min_share": share,
    }


def score_directories(
    pred_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    threshold: float = 0.5,
    kind: str = "auto",
    froc_threshold: float | None = None,
    iou_threshold: float = 0.5,
    reduction: str = "max",
    fp_rates: tuple[float, ...] = FP_RATES,
    image_dir: str | os.PathLike | None = None,
    contrast_hu: float = 200.0,
    contrast_min_share: float = 0.0,
) -> dict[str, Any]:
    """Score every paired study (see the module docstring for pairing and the report layout).

    Args:
        pred_dir: prediction folder.
        reference_dir: reference folder.
        threshold: detection voxels are ``prediction >= threshold``; in (0, 1].
        kind: which prediction file to use (:func:`pair_studies`).
        froc_threshold: binarisation threshold of the FROC candidates (default: ``threshold``, so the curve
            ends at the cluster operating point; lower it for a longer curve); in (0, 1].
        iou_threshold: strict variant; in [0, 1).
        reduction: FROC detection confidence, ``"max"`` or ``"mean"``.
        fp_rates: FP-per-study rates of the FROC average sensitivity.
        image_dir: folder of the studies' images ``<uid>.nii.gz`` in HU; needed when ``contrast_min_share > 0``.
        contrast_hu: CT value of contrast-filled blood (the contrast filter).
        contrast_min_share: remove detections (at ``threshold``) whose shell is less than this share
            contrast-filled before scoring, in [0, 1]; ``0`` scores the predictions as they are.

    Returns:
        The report dict (NaN for undefined rates).

    Raises:
        ValueError: a numeric setting is not a number in its range (:func:`check_settings`), or the contrast
            filter is on without ``image_dir``.
        InputError: unreadable file, prediction on another grid than its reference (names both), a NaN or
            infinite voxel in a prediction, reference or image, a missing image when the contrast filter is on.
    """
    checked = check_settings(threshold, froc_threshold, iou_threshold, contrast_hu, contrast_min_share, image_dir)
    threshold, froc_threshold, iou_threshold = checked["threshold"], checked["froc_threshold"], checked["iou_threshold"]
    contrast_hu, contrast_min_share = checked["contrast_hu"], checked["contrast_min_share"]
    pairs, without_reference = pair_studies(pred_dir, reference_dir, kind)
    per_study: dict[str, Any] = {}
    cluster, strict, froc_scores = ClusterCounts(), ClusterCounts(), []
    for files in pairs:
        prob, ref = read_pair(files)
        if contrast_min_share:
            image = _read_image(Path(image_dir) / f"{files.uid}{_NIFTI}", prob.shape)
            prob, _ = remove_unenhanced_clusters(prob, image, threshold, contrast_hu, contrast_min_share)
        score = score_study(prob, ref, threshold, froc_threshold, iou_threshold, reduction)
        cluster, strict = cluster + score.cluster, strict + score.strict
        froc_scores.append(score.froc)
        per_study[files.uid] = {
            "prediction": files.prediction.name,
            "cluster": score.cluster.as_dict(),
            "strict": score.strict.as_dict(),
        }
    curve = froc_from_scores(froc_scores)
    return {
        "cluster": cluster.as_dict(n_studies=len(pairs)),
        "strict": strict.as_dict(n_studies=len(pairs)),
        "froc": {
            "detection_threshold": float(threshold if froc_threshold is None else froc_threshold),
            "reduction": reduction,
            "fp_rates": [float(r) for r in fp_rates],
            "sensitivity_at_fp_rates": sensitivity_at(curve, fp_rates).tolist(),
            "average_sensitivity": average_sensitivity(curve, fp_rates),
            "n_studies": curve.n_studies,
            "n_references": curve.n_references,
            "curve": {
                "fp_per_study": curve.fp_per_study.tolist(),
                "sensitivity": curve.sensitivity.tolist(),
                "thresholds": curve.thresholds.tolist(),
            },
        },
        "per_study": per_study,
        "settings": {
            "threshold": float(threshold),
            "iou_threshold": float(iou_threshold),
            "kind": kind,
            "pred_dir": str(pred_dir),
            "reference_dir": str(reference_dir),
            "predictions_without_reference": without_reference,
            "contrast_filter": {"image_dir": str(image_dir), "contrast_hu": float(contrast_hu), "min_share": float(contrast_min_share)}
            if contrast_min_share else None,
        },
    }


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the report as JSON atomically, undefined (NaN) rates as ``null``."""
    write_json_atomic(path, json_ready(report))


def _cell(value: float) -> str:
    return "   -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table of the report: one line per study, the pooled lines, the FROC summary."""
    header = (
        f"{'study':<40} {'TP':>4} {'FP':>4} {'FN':>4} {'sens':>6} {'PPV':>6} {'F1':>6}"
        f" | {'sTP':>4} {'sFP':>4} {'sFN':>4} {'sF1':>6}"
    )

    def line(name: str, c: dict[str, Any], s: dict[str, Any]) -> str:
        return (
            f"{name[-40:]:<40} {c['tp']:>4} {c['fp']:>4} {c['fn']:>4}"
            f" {_cell(c['sensitivity'])} {_cell(c['ppv'])} {_cell(c['f1'])}"
            f" | {s['tp']:>4} {s['fp']:>4} {s['fn']:>4} {_cell(s['f1'])}"
        )

    lines = [header, "-" * len(header)]
    lines += [line(uid, row["cluster"], row["strict"]) for uid, row in report["per_study"].items()]
    pooled = line(f"pooled ({len(report['per_study'])} studies)", report["cluster"], report["strict"])
    lines += ["-" * len(header), pooled]
    lines.append(
        f"FP/study: cluster {_cell(report['cluster']['fp_per_study'])},"
        f" strict {_cell(report['strict']['fp_per_study'])}"
    )
    froc = report["froc"]
    at = ", ".join(f"{r:g}: {_cell(s).strip()}" for r, s in zip(froc["fp_rates"], froc["sensitivity_at_fp_rates"]))
    lines.append(
        f"FROC (candidates >= {froc['detection_threshold']:g}, {froc['reduction']} confidence)"
        f" sensitivity at FP/study {at}"
    )
    lines.append(f"FROC average sensitivity {_cell(froc['average_sensitivity']).strip()}")
    unscored = report["settings"]["predictions_without_reference"]
    if unscored:
        lines.append(f"not scored (no reference): {len(unscored)} predictions, e.g. {unscored[0]}")
    return "\n".join(lines)
