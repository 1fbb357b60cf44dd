"""Per-PE cluster matching (Pu et al. 2023, as used by the iExplain paper, Sec. "Evaluation metrics").

Objects (issue 3, item 1):

- a *PE* is a 3D connected component (26-connectivity) of the nonzero voxels of the reference mask
  (for RSPECT-augmented data: the union of the filled per-slice boxes);
- a *detection* is a 3D connected component (26-connectivity) of the binarised prediction.

Matching rule (the paper: "a detection and PE matched when they intersect, with matched pairs counted as
true positives and unmatched annotations or detections as false negatives or false positives"):

- ``tp``: PEs overlapped by at least one detection (shared voxel);
- ``fn``: PEs overlapped by no detection;
- ``fp``: detections that overlap no PE.

So one detection spanning two PEs gives two TPs and no FP; two detections on one PE give one TP and no FP
(the second detection is neither a TP nor an FP); an empty prediction gives ``tp = fp = 0`` and ``fn`` = the
number of PEs; an empty reference makes every detection an FP.

Rates (``ClusterCounts``), with 0/0 reported as NaN ("undefined", never silently 0 or 1):

- sensitivity ``= tp / (tp + fn)``: NaN when there is no PE (empty reference);
- PPV ``= tp / (tp + fp)``: NaN when nothing is matched and nothing is false (no TP, no FP);
- F1 ``= 2 tp / (2 tp + fp + fn)``: the harmonic mean of sensitivity and PPV whenever both are defined and
  positive; 0 when ``tp = 0`` and there is an FP or an FN; NaN only when ``tp = fp = fn = 0`` (no PE and no
  detection). Pooled (micro) rates sum the counts over studies first, so NaN there means the whole set
  had no PE (sensitivity) or no detection at all (PPV).

Strict variant (Xu et al., cited by the paper as "a stricter version ... requiring an IOU of over 50%"): a
detection is first *boxified per slice like the reference*: on every slice (along ``slice_axis``) that the
detection touches, its voxels are replaced by the filled axis-aligned bounding rectangle of its voxels on
that slice (one rectangle per detection per slice, whatever the number of 2D pieces). A (detection, PE)
pair then matches only when the 3D IoU between the boxified detection and the PE's voxels is above
``iou_threshold`` (strictly greater, default 0.5); tp / fn / fp follow from these pairs by the rule above.
Detections are *identified* on the unboxified prediction, so boxification never merges two detections.

Speed: masks are sparse, so labelling and matching run inside the bounding box of the nonzero voxels
(``scipy.ndimage.label`` on the crop; labels equal those of a full-volume labelling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_numpy
from scipy import ndimage

__all__ = [
    "CONNECTIVITY_26",
    "DETAIL_COLUMNS",
    "ClusterCounts",
    "ClusterMatchingMetric",
    "ClusterOverlaps",
    "cluster_overlaps",
    "count_matches",
    "label_clusters",
    "match_clusters",
]

#: 26-connectivity in 3D.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)

#: Columns of one per-study row of :class:`ClusterMatchingMetric` (its buffer and its handler's details).
DETAIL_COLUMNS = ("tp", "fp", "fn", "sensitivity", "ppv", "f1")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


@dataclass(frozen=True)
class ClusterCounts:
    """Cluster-matching counts of one study or, summed with ``+``, of a set of studies.

    Attributes:
        tp: reference PEs overlapped by at least one detection.
        fp: detections that overlap no reference PE.
        fn: reference PEs overlapped by no detection.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def sensitivity(self) -> float:
        """``tp / (tp + fn)``; NaN when there is no reference PE."""
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def ppv(self) -> float:
        """``tp / (tp + fp)``; NaN when there is neither a TP nor an FP."""
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)`` (harmonic mean of sensitivity and PPV); NaN when all counts are 0."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def __add__(self, other: ClusterCounts) -> ClusterCounts:
        return ClusterCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self, n_studies: int = 1) -> dict[str, float]:
        """The counts, the rates and ``fp_per_study = fp / n_studies``.

        Args:
            n_studies: how many studies were summed into these counts.

        Returns:
            ``{"tp", "fp", "fn", "sensitivity", "ppv", "f1", "fp_per_study"}``; counts as ints, rates as floats
            (NaN when undefined, see the module docstring).
        """
        return {
            "tp": int(self.tp),
            "fp": int(self.fp),
            "fn": int(self.fn),
            "sensitivity": self.sensitivity,
            "ppv": self.ppv,
            "f1": self.f1,
            "fp_per_study": _ratio(self.fp, n_studies),
        }


def _check_3d(*arrays: np.ndarray) -> None:
    shape = arrays[0].shape
    for array in arrays:
        if array.ndim != 3:
            raise ValueError(f"expected 3D masks, got shape {array.shape}")
        if array.shape != shape:
            raise ValueError(f"prediction and reference differ in shape: {shape} vs {array.shape}")


def _bounding_box(*masks: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every nonzero voxel of all ``masks`` (same shape), or None if all are empty."""
    box: list[slice] = []
    for axis in range(masks[0].ndim):
        other_axes = tuple(a for a in range(masks[0].ndim) if a != axis)
        profile = np.zeros(masks[0].shape[axis], dtype=bool)
        for mask in masks:
            profile |= mask.any(axis=other_axes)
        hits = np.flatnonzero(profile)
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _label_crop(mask_crop: np.ndarray) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask_crop, structure=CONNECTIVITY_26)
    return labels.astype(np.int32, copy=False), int(count)


def label_clusters(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3D connected components (26-connectivity) of the nonzero voxels of ``mask``.

    Labelling runs inside the bounding box of the nonzero voxels only; the result equals
    ``scipy.ndimage.label(mask != 0, structure=np.ones((3, 3, 3)))`` (same numbering: raster order of the
    first voxel of each component).

    Args:
        mask: a 3D array; every nonzero voxel is foreground.

    Returns:
        ``(labels, count)``: an int32 array of ``mask.shape`` (0 background, ``1..count`` components) and the
        number of components.
    """
    mask = np.asarray(mask)
    _check_3d(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    foreground = mask != 0
    box = _bounding_box(foreground)
    if box is None:
        return labels, 0
    labels[box], count = _label_crop(foreground[box])
    return labels, count


@dataclass(frozen=True)
class ClusterOverlaps:
    """Detections and PEs of one study, labelled on a shared crop, and which of them touch.

    Attributes:
        pred_labels: detection labels (``1..n_pred``) inside ``crop``.
        ref_labels: PE labels (``1..n_ref``) inside ``crop``.
        n_pred: number of detections.
        n_ref: number of reference PEs.
        crop: the box of the full volume that the label arrays cover (the union bounding box of both masks).
        pairs: ``(k, 2)`` int array of distinct ``(detection label, PE label)`` pairs sharing at least one voxel.
    """

    pred_labels: np.ndarray
    ref_labels: np.ndarray
    n_pred: int
    n_ref: int
    crop: tuple[slice, ...]
    pairs: np.ndarray


def cluster_overlaps(pred_mask: np.ndarray, ref_mask: np.ndarray) -> ClusterOverlaps:
    """Label detections and PEs (26-connectivity) and find every (detection, PE) pair that shares a voxel.

    Args:
        pred_mask: binarised prediction, 3D; nonzero voxels are foreground.
        ref_mask: reference mask of the same shape; nonzero voxels are foreground.

    Returns:
        The :class:`ClusterOverlaps` of the study.
    """
    pred = np.asarray(pred_mask) != 0
    ref = np.asarray(ref_mask) != 0
    _check_3d(pred, ref)
    box = _bounding_box(pred, ref)
    if box is None:
        empty = np.zeros((0,) * pred.ndim, dtype=np.int32)
        return ClusterOverlaps(empty, empty, 0, 0, tuple(slice(0, 0) for _ in range(pred.ndim)), np.zeros((0, 2), np.int64))
    pred_labels, n_pred = _label_crop(pred[box])
    ref_labels, n_ref = _label_crop(ref[box])
    both = (pred_labels > 0) & (ref_labels > 0)
    codes = np.unique(pred_labels[both].astype(np.int64) * (n_ref + 1) + ref_labels[both])
    pairs = np.stack([codes // (n_ref + 1), codes % (n_ref + 1)], axis=1)
    return ClusterOverlaps(pred_labels, ref_labels, n_pred, n_ref, box, pairs)


def _boxify_per_slice(detection: np.ndarray, slice_axis: int) -> np.ndarray:
    """Replace the voxels of a 3D boolean ``detection`` on each slice by their filled bounding rectangle."""
    stack = np.moveaxis(detection, slice_axis, 0)
    rows = stack.any(axis=2)  # (slices, rows)
    cols = stack.any(axis=1)  # (slices, cols)
    present = rows.any(axis=1)
    first_row, last_row = rows.argmax(axis=1), rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    first_col, last_col = cols.argmax(axis=1), cols.shape[1] - 1 - cols[:, ::-1].argmax(axis=1)
    row_index, col_index = np.arange(rows.shape[1]), np.arange(cols.shape[1])
    in_rows = (row_index >= first_row[:, None]) & (row_index <= last_row[:, None]) & present[:, None]
    in_cols = (col_index >= first_col[:, None]) & (col_index <= last_col[:, None])
    boxes = in_rows[:, :, None] & in_cols[:, None, :]
    return np.moveaxis(boxes, 0, slice_axis)


def _strict_pairs(overlaps: ClusterOverlaps, iou_threshold: float, slice_axis: int) -> np.ndarray:
    """``(detection, PE)`` pairs whose 3D IoU (detection boxified per slice) is above ``iou_threshold``."""
    if overlaps.n_pred == 0 or overlaps.n_ref == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ref_sizes = np.bincount(overlaps.ref_labels.ravel(), minlength=overlaps.n_ref + 1)
    pairs = []
    for label, box in enumerate(ndimage.find_objects(overlaps.pred_labels), start=1):
        if box is None:
            continue
        boxified = _boxify_per_slice(overlaps.pred_labels[box] == label, slice_axis)
        intersection = np.bincount(overlaps.ref_labels[box][boxified], minlength=overlaps.n_ref + 1)
        intersection[0] = 0
        touched = np.flatnonzero(intersection)
        iou = intersection[touched] / (int(boxified.sum()) + ref_sizes[touched] - intersection[touched])
        pairs.extend((label, int(pe)) for pe in touched[iou > iou_threshold])
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def count_matches(
    overlaps: ClusterOverlaps, strict: bool = False, iou_threshold: float = 0.5, slice_axis: int = 0
) -> ClusterCounts:
    """TP / FP / FN of one study from its :class:`ClusterOverlaps`.

    Args:
        overlaps: the study's labelled detections and PEs (:func:`cluster_overlaps`).
        strict: use the strict rule (IoU of the per-slice boxified detection above ``iou_threshold``) instead
            of "shares a voxel".
        iou_threshold: strict rule only: a pair matches when its IoU is strictly above this.
        slice_axis: strict rule only: the axis along which the detection is boxified slice by slice
            (0 for the project's ``(Z, Y, X)`` arrays; 2 for MONAI's ``(X, Y, Z)`` spatial layout).

    Returns:
        The study's :class:`ClusterCounts`.
    """
    pairs = _strict_pairs(overlaps, iou_threshold, slice_axis % 3) if strict else overlaps.pairs
    matched_pes = np.unique(pairs[:, 1]).size
    matched_detections = np.unique(pairs[:, 0]).size
    return ClusterCounts(tp=matched_pes, fp=overlaps.n_pred - matched_detections, fn=overlaps.n_ref - matched_pes)


def match_clusters(
    pred_mask: np.ndarray,
    ref_mask: np.ndarray,
    strict: bool = False,
    iou_threshold: float = 0.5,
    slice_axis: int = 0,
) -> ClusterCounts:
    """Cluster-match a binarised prediction against a reference mask (see the module docstring for the rules).

    Args:
        pred_mask: binarised prediction, 3D; nonzero voxels are detections.
        ref_mask: reference mask of the same shape; nonzero voxels are PEs.
        strict: the strict variant: IoU of the per-slice boxified detection above ``iou_threshold``.
        iou_threshold: strict variant only (default 0.5, "an IOU of over 50%").
        slice_axis: strict variant only: the slice axis of the arrays (0 for ``(Z, Y, X)``).

    Returns:
        :class:`ClusterCounts` with ``tp`` (PEs matched), ``fp`` (detections matching none), ``fn``.
    """
    return count_matches(cluster_overlaps(pred_mask, ref_mask), strict, iou_threshold, slice_axis)


def _foreground(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """The foreground channel of a ``(B, C, *spatial)`` tensor: channel 0 if ``C == 1``, channel 1 if ``C == 2``."""
    if tensor.ndim != 5:
        raise ValueError(f"{name} must be (B, C, X, Y, Z), got shape {tuple(tensor.shape)}")
    if tensor.shape[1] not in (1, 2):
        raise ValueError(f"{name} must have 1 channel (foreground) or 2 (background, foreground), got {tensor.shape[1]}")
    return tensor[:, tensor.shape[1] - 1]


class ClusterMatchingMetric(CumulativeIterationMetric):
    """Per-PE cluster matching as a MONAI cumulative metric (sums the counts over studies: micro pooling).

    Each call adds one row per study to the buffer, with the columns :data:`DETAIL_COLUMNS`
    (``tp, fp, fn, sensitivity, ppv, f1`` of that study); :meth:`aggregate` sums the counts over all rows
    (gathered across ranks in distributed runs) and derives the pooled rates.

    Args:
        threshold: a voxel is a detection voxel when ``y_pred >= threshold`` (as ``monai.transforms.AsDiscrete``),
            so probabilities and binary masks both work.
        strict: use the strict variant (IoU of the boxified detection above ``iou_threshold``).
        iou_threshold: strict variant only.
        slice_axis: strict variant only: the slice axis among the spatial dims; default ``-1`` (``Z`` of MONAI's
            ``(X, Y, Z)`` layout).

    Inputs of ``__call__(y_pred, y)``: batch-first ``(B, C, X, Y, Z)`` tensors or lists of channel-first
    ``(C, X, Y, Z)`` tensors, ``C`` 1 (foreground) or 2 (background, foreground); ``y`` is foreground where nonzero.
    """

    def __init__(self, threshold: float = 0.5, strict: bool = False, iou_threshold: float = 0.5, slice_axis: int = -1) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.strict = bool(strict)
        self.iou_threshold = float(iou_threshold)
        self.slice_axis = int(slice_axis)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("ClusterMatchingMetric needs the reference y.")
        pred = convert_to_numpy(_foreground(y_pred, "y_pred") >= self.threshold)
        ref = convert_to_numpy(_foreground(y, "y") != 0)
        if pred.shape != ref.shape:
            raise ValueError(f"y_pred and y differ in shape: {tuple(y_pred.shape)} vs {tuple(y.shape)}")
        rows = []
        for pred_study, ref_study in zip(pred, ref):
            counts = match_clusters(pred_study, ref_study, self.strict, self.iou_threshold, self.slice_axis)
            rows.append([counts.tp, counts.fp, counts.fn, counts.sensitivity, counts.ppv, counts.f1])
        return torch.tensor(rows, dtype=torch.float64, device=y_pred.device)

    def _rows(self) -> torch.Tensor:
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor):
            raise ValueError("ClusterMatchingMetric has no study to aggregate; call it on predictions first.")
        return buffer.reshape(-1, len(DETAIL_COLUMNS)).cpu()

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """Pooled (micro) counts and rates over every study seen since the last ``reset``, across ranks.

        Returns:
            ``{"tp", "fp", "fn", "sensitivity", "ppv", "f1", "fp_per_study"}``.
        """
        rows = self._rows()
        tp, fp, fn = (int(v) for v in rows[:, :3].sum(dim=0).round().tolist())
        return ClusterCounts(tp, fp, fn).as_dict(n_studies=rows.shape[0])

    def per_study(self) -> list[dict[str, float]]:
        """One dict per study (in the order seen, rank by rank) with the keys :data:`DETAIL_COLUMNS`."""
        return [
            {**dict(zip(DETAIL_COLUMNS, row)), "tp": int(row[0]), "fp": int(row[1]), "fn": int(row[2])}
            for row in self._rows().tolist()
        ]
