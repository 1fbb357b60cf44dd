"""The teacher's ceiling: iExplain with an oracle classifier that attends exactly to the true emboli.

The teacher can only explain what its classifier has learned (Condrea et al. 2025, 3.2), so its F1
mixes two things: the classifier's localisation and the teacher's own steps. On a synthetic cohort,
whose true embolus masks are known, :func:`teacher_ceiling` separates them. It swaps the classifier for
:class:`EmbolusOracle` and keeps every other step of the teacher as configured: Integrated Gradients,
hysteresis, masking and the three stop conditions of Algorithm 1, the Gaussian slice vote, and the size
and distance filters. It scores against the reference (box) masks, as the teacher's evaluation does.
The F1 it reaches is the most those steps allow on the cohort, with no classifier error at all.

The oracle, for a windowed 7-slice mini-volume ``x``:

- finds the study window it shows: largest cosine similarity with the study's clean windows. This is
  invariant to the IG path's scaling ``alpha * x`` from the all-``fill`` reference, and robust to the
  clusters masked out of ``x``;
- takes the emboli on that window's centre slice (what a slice label means). For each one it sums ``x``
  over the embolus's voxels in the window. Embolus voxels are about 0.1-0.45 in the classifier's window,
  and masking with the Cutout fill 0 removes them;
- returns ``max over those emboli of the sum - bias``, or ``-bias`` when the centre slice has no
  embolus. The max mirrors the classifier's global max pooling: the strongest finding decides, and
  masking it hands the decision to the next one, which is what Algorithm 1 is built for.

An embolus voxel's attribution is then its value ``x``: the gradient is 1 along the whole IG path.
Every other voxel gets 0. The hysteresis high threshold is chosen on the validation split from a few
candidates (pooled filtered F1), as ``custom.teacher.calibration`` does for the real classifier.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from custom.explain.aggregation import window_slice_indices
from custom.explain.filtering import filter_clusters
from custom.explain.teacher import WINDOW_DEPTH
from custom.io.datalist import entry_uid
from custom.io.errors import InputError
from custom.io.nifti import read_volume
from custom.metrics.cluster_matching import ClusterCounts, match_clusters
from custom.teacher.evaluation import masks_after_rounds
from custom.teacher.factory import TeacherFactory
from custom.teacher.studies import load_studies, read_reference_mask, read_windowed_image

__all__ = ["DEFAULT_HIGH_THRESHOLDS", "EmbolusOracle", "OracleStudy", "load_oracle_studies", "teacher_ceiling"]

#: candidate high thresholds, in attribution units (windowed CT values of embolus voxels: about 0.1-0.45)
DEFAULT_HIGH_THRESHOLDS = (0.05, 0.1, 0.2)


class EmbolusOracle(nn.Module):
    """A slice classifier that attends exactly to the true emboli of one study (see the module docstring).

    Args:
        bias: the logit without evidence. An embolus makes its window positive when the sum of its
            windowed values exceeds ``bias``.
    """

    def __init__(self, bias: float = 1.0) -> None:
        super().__init__()
        self.bias = float(bias)
        self._unit_windows: torch.Tensor | None = None

    def set_study(self, volume: np.ndarray, labels: np.ndarray) -> None:
        """The study to classify.

        Args:
            volume: the windowed study ``(Z, Y, X)`` the teacher explains.
            labels: its true embolus labels on the same grid (0 background, ``k`` embolus ``k``).
        """
        if volume.shape != labels.shape:
            raise ValueError(f"volume {volume.shape} and embolus labels {labels.shape} differ")
        indices = window_slice_indices(volume.shape[0], WINDOW_DEPTH)
        windows = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[indices].flatten(1)
        self._unit_windows = windows / windows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._labels = torch.from_numpy(labels.astype(np.int16, copy=False))[indices]  # (Z, 7, Y, X), small
        centre = self._labels[:, WINDOW_DEPTH // 2]
        self._centre_emboli = [[int(v) for v in torch.unique(c) if v > 0] for c in centre]

    def window_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """Index of the study window each ``(B, 7, H, W)`` input shows (cosine similarity, scale-invariant)."""
        if self._unit_windows is None:
            raise RuntimeError("EmbolusOracle: call set_study first")
        flat = inputs.detach().float().flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (unit @ self._unit_windows.T).argmax(dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 7, H, W)`` windowed mini-volumes -> ``(B, 1)`` logits."""
        logits = []
        for item, window in zip(inputs, self.window_of(inputs).tolist()):
            evidence = [item[self._labels[window] == label].sum() for label in self._centre_emboli[window]]
            best = torch.stack(evidence).max() if evidence else item.sum() * 0.0  # keeps the graph
            logits.append(best - self.bias)
        return torch.stack(logits).reshape(-1, 1)


@dataclass
class OracleStudy:
    """One study for :func:`teacher_ceiling`: its windowed image, reference mask and true embolus labels."""

    uid: str
    volume: np.ndarray
    reference: np.ndarray
    labels: np.ndarray


def load_oracle_studies(
    datalist: str | os.PathLike,
    split: str,
    masks_dir: str | os.PathLike,
    window: Sequence[float] = (100.0, 700.0),
    max_studies: int | None = None,
) -> list[OracleStudy]:
    """The studies of a split that have a reference mask, with the true masks of a synthetic cohort.

    Args:
        datalist: the prepared cohort's ``datalist.json``.
        split: ``"validation"`` or ``"test"``.
        masks_dir: the synthetic cohort's true masks (``<uid>.nii.gz``, labels per embolus).
        window: the classifier's ``(level, width)`` HU window.
        max_studies: at most this many (``None``: all).

    Raises:
        InputError: a true mask is missing, not on the study grid, or disagrees with the slice labels.
    """
    entries = [e for e in load_studies(datalist, split) if e.get("label")][: max_studies or None]
    studies = []
    for entry in entries:
        uid = entry_uid(entry)
        volume, _ = read_windowed_image(entry, window)
        path = os.path.join(os.fspath(masks_dir), f"{uid}.nii.gz")
        if not os.path.isfile(path):
            raise InputError(f"{path}: no true mask for study {uid} (the teacher's ceiling needs a synthetic cohort)")
        labels, _ = read_volume(path)
        if labels.shape != volume.shape:
            raise InputError(f"{path}: true mask of shape {labels.shape}, the study is {volume.shape}")
        positive = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1)).tolist()
        expected = [z for z, label in enumerate(entry.get("slice_labels", [])) if label]
        if entry.get("slice_labels") is not None and positive != expected:
            raise InputError(f"{path}: embolus slices {positive} are not the study's positive slices {expected}")
        studies.append(OracleStudy(uid, volume, read_reference_mask(entry, volume.shape), labels))  # kept in the file's dtype
    return studies


def _run(oracle: EmbolusOracle, factory: TeacherFactory, studies: Sequence[OracleStudy], high: float) -> dict[str, Any]:
    """The teacher with the oracle over ``studies`` at one high threshold: pooled counts per round and filter."""
    max_rounds = int(factory.teacher_settings.get("max_rounds", 10))
    kinds = ("filtered", "unfiltered", "strict", "size_filter_only", "distance_filter_only")
    counts = {kind: [ClusterCounts() for _ in range(max_rounds)] for kind in kinds}
    rounds_used: list[int] = []
    for study in studies:
        oracle.set_study(study.volume, study.labels)
        explanation = factory(study.volume.shape[1], study.volume.shape[2], high_threshold=high)(study.volume, study_id=study.uid)
        rounds_used += [int(r) for r in explanation.window_rounds if r > 0]
        per_round = masks_after_rounds(
            explanation.round_map, max_rounds, explanation.min_cluster_voxels, explanation.max_center_distance_px
        )
        study_counts: dict[str, ClusterCounts] = {}
        for r, (f, u) in enumerate(per_round):
            if r == 0 or u is not per_round[r - 1][1]:  # rounds past the study's last repeat its masks
                study_counts = {
                    "filtered": match_clusters(f, study.reference),
                    "unfiltered": match_clusters(u, study.reference),
                    "strict": match_clusters(f, study.reference, strict=True),
                    "size_filter_only": match_clusters(filter_clusters(u, explanation.min_cluster_voxels, float("inf"))[0], study.reference),
                    "distance_filter_only": match_clusters(filter_clusters(u, 0, explanation.max_center_distance_px)[0], study.reference),
                }
            for kind in kinds:
                counts[kind][r] = counts[kind][r] + study_counts[kind]
    n = len(studies)
    return {
        "high_threshold": high,
        "per_round": [{"round": r + 1, **{kind: counts[kind][r].as_dict(n) for kind in kinds}} for r in range(max_rounds)],
        "rounds_histogram": np.bincount(np.asarray(rounds_used, dtype=int), minlength=max_rounds + 1)[1:].tolist(),
        "n_studies": n,
    }


def _f1(counts: Mapping[str, Any]) -> float:
    value = counts.get("f1")
    return 0.0 if value is None or not np.isfinite(value) else float(value)


def teacher_ceiling(
    validation: Sequence[OracleStudy],
    test: Sequence[OracleStudy],
    high_thresholds: Sequence[float] = DEFAULT_HIGH_THRESHOLDS,
    bias: float = 1.0,
    **teacher_settings: Any,
) -> dict[str, Any]:
    """The teacher with :class:`EmbolusOracle`: high threshold chosen on ``validation``, figures on ``test``.

    Args:
        validation: studies to choose the high threshold on (pooled filtered F1 after the last round).
        test: studies to report.
        high_thresholds: candidate hysteresis high thresholds (the low one is half).
        bias: the oracle's logit without evidence.
        teacher_settings: ``custom.teacher.TeacherFactory`` arguments (the teacher bundle's settings:
            ``neighbourhood``, ``min_cluster_voxels``, ``n_steps``, ``references``, ``mask_threshold``, ...).
            The oracle's probability threshold is 0.5; it runs in float32, contiguous.

    Returns:
        ``{"high_threshold", "bias", "validation": [{"high_threshold", "f1"}], "test": {"per_round": [{"round",
        "filtered", "unfiltered", "strict", "size_filter_only", "distance_filter_only"}], "rounds_histogram",
        "n_studies"}, "iteration1", "best", "filtered", "unfiltered", "strict", "size_filter_only",
        "distance_filter_only"}`` (cluster counts and rates). ``best`` is the round with the highest filtered
        test F1 (the earliest on ties), as the teacher's Table 2 reports it; the five masks after it are at
        that round (its Table 3).
    """
    if not validation or not test:
        raise InputError(f"the teacher's ceiling needs validation and test studies with masks, got {len(validation)} and {len(test)}")
    if not high_thresholds or any(not h > 0 for h in high_thresholds):
        raise ValueError(f"high_thresholds must be positive numbers, got {list(high_thresholds)}")
    settings = {
        **teacher_settings, "clf_threshold": 0.5, "autocast_dtype": None, "channels_last": False, "fold_batchnorm": False,
        "compile": False,
    }
    oracle = EmbolusOracle(bias)
    factory = TeacherFactory(oracle, None, **settings)
    candidates = [_run(oracle, factory, validation, float(h)) for h in sorted(high_thresholds)]
    chosen = max(candidates, key=lambda c: (_f1(c["per_round"][-1]["filtered"]), -c["high_threshold"]))
    result = _run(oracle, factory, test, chosen["high_threshold"])
    rounds = result["per_round"]
    best = max(rounds, key=lambda r: (_f1(r["filtered"]), -r["round"]))
    return {
        "high_threshold": chosen["high_threshold"],
        "bias": float(bias),
        "validation": [{"high_threshold": c["high_threshold"], "f1": c["per_round"][-1]["filtered"]["f1"]} for c in candidates],
        "test": result,
        "iteration1": rounds[0]["filtered"],
        "best": {"round": best["round"], **best["filtered"]},
        **{kind: best[kind] for kind in ("filtered", "unfiltered", "strict", "size_filter_only", "distance_filter_only")},
    }
