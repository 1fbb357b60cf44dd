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
A consequence worth knowing: a thin ring drawn around a PE touches none of its voxels (no match by the
cluster rule) but its boxified version can cover the PE with IoU above 0.5 (a strict match).

Speed: masks are sparse, so each volume is scanned once for its foreground voxels (a streaming pass through
a small reusable buffer), and labelling and matching then work on those voxels only: they are grouped by
occupied 8x8x8 blocks and each group is labelled by ``scipy.ndimage.label`` in its own small bounding box.
Labels equal those of a full-volume ``scipy.ndimage.label`` (``benchmarks/bench_score.py`` measures both).
"""

from __future__ import annotations

import math
import numbers
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
    "check_iou_threshold",
    "check_probability_threshold",
    "cluster_overlaps",
    "count_matches",
    "foreground_index",
    "label_clusters",
    "match_clusters",
    "real_number",
]

#: 26-connectivity in 3D.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)

#: Side (voxels) of the blocks that group the foreground before labelling (see ``_label_voxels``).
_BLOCK = 8
#: Voxels per chunk when scanning a volume for its foreground (a reusable 4 MiB boolean buffer).
_CHUNK_VOXELS = 1 << 22
#: Foreground size above which labelling switches from per-group crops to one dense slab.
_DENSE_VOXELS = 1 << 21

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


def real_number(value: Any, name: str) -> float:
    """``value`` as a finite float; a numeric string (``fire`` passes ``--threshold nan`` or ``abc`` as text) is converted.

    Raises:
        ValueError: ``value`` is a bool, not a number or numeric string, or NaN / infinite (names ``name``).
    """
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    elif isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    else:
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def check_probability_threshold(value: Any, name: str = "threshold") -> float:
    """A binarisation threshold (detection voxels: ``prediction >= threshold``) as a float in (0, 1].

    0 is refused because ``>= 0`` makes every voxel of a probability map a detection (one cluster covering the
    whole study); 1 is allowed, it keeps only voxels equal to 1 (e.g. a binary mask scored as it is).

    Raises:
        ValueError: not a finite number (:func:`real_number`) or outside (0, 1] (names ``name``).
    """
    number = real_number(value, name)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1] (detection voxels: prediction >= {name}), got {number:g}")
    return number


def check_iou_threshold(value: Any, name: str = "iou_threshold") -> float:
    """The strict variant's IoU threshold as a float in [0, 1).

    A pair matches when its IoU is strictly above the threshold, so 1 would never match (refused) and 0 matches
    every pair whose boxified detection shares a voxel with the PE (allowed).

    Raises:
        ValueError: not a finite number (:func:`real_number`) or outside [0, 1) (names ``name``).
    """
    number = real_number(value, name)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must lie in [0, 1) (a strict pair matches when IoU > {name}), got {number:g}")
    return number


def _check_3d(*arrays: np.ndarray) -> None:
    shape = arrays[0].shape
    for array in arrays:
        if array.ndim != 3:
            raise ValueError(f"expected 3D masks, got shape {array.shape}")
        if array.shape != shape:
            raise ValueError(f"prediction and reference differ in shape: {shape} vs {array.shape}")


def foreground_index(volume: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Sorted C-order flat indices of the foreground voxels of a 3D volume, in one streaming pass.

    Args:
        volume: a 3D array (any strides).
        threshold: foreground is ``volume >= threshold``; ``None``: foreground is ``volume != 0``.

    Returns:
        int64 flat indices into ``volume.shape`` (C order), ascending (raster order).
    """
    plane = int(np.prod(volume.shape[1:]))
    rows = max(1, _CHUNK_VOXELS // max(plane, 1))
    buffer = np.empty((rows,) + volume.shape[1:], dtype=bool)  # reused: no page faults, stays in cache
    parts = []
    for start in range(0, volume.shape[0], rows):
        chunk = volume[start : start + rows]
        hits = buffer[: chunk.shape[0]]
        if threshold is None:
            np.not_equal(chunk, 0, out=hits)
        else:
            np.greater_equal(chunk, threshold, out=hits)
        parts.append(np.flatnonzero(hits) + start * plane)
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)


def _label_voxels(index: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """26-connected components of the voxel set ``index`` (sorted flat indices), numbered in raster order.

    Voxels are grouped by the 26-connected components of their occupied ``_BLOCK``-sized blocks (two
    26-adjacent voxels lie in the same or in 26-adjacent blocks, so no component spans two groups); each group
    is labelled with ``scipy.ndimage.label`` inside its own tight bounding box. The cost follows the
    foreground, not the volume. Above ``_DENSE_VOXELS`` foreground voxels the slab of slices holding them is
    labelled densely instead (less memory than per-voxel coordinates).
    """
    if index.size == 0:
        return np.zeros(0, dtype=np.int32), 0
    if index.size > _DENSE_VOXELS:  # a dense foreground (e.g. an untrained model): label its slab densely
        plane = int(np.prod(shape[1:]))
        first_slice, last_slice = int(index[0]) // plane, int(index[-1]) // plane
        slab = np.zeros((last_slice - first_slice + 1,) + tuple(shape[1:]), dtype=bool)
        local = index - first_slice * plane
        slab.reshape(-1)[local] = True
        slab_labels, count = ndimage.label(slab, structure=CONNECTIVITY_26)
        return slab_labels.reshape(-1)[local].astype(np.int32), int(count)
    coords = np.stack(np.unravel_index(index, shape))  # (3, N)
    blocks = coords // _BLOCK
    occupied = np.zeros(tuple(int(b) + 1 for b in blocks.max(axis=1)), dtype=bool)
    occupied[tuple(blocks)] = True
    block_labels, _ = ndimage.label(occupied, structure=CONNECTIVITY_26)
    group = block_labels[tuple(blocks)]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    labels = np.zeros(index.size, dtype=np.int64)
    count = 0
    for members in np.split(order, bounds):
        local = coords[:, members]
        low = local.min(axis=1, keepdims=True)
        local = local - low
        crop = np.zeros(tuple(int(h) + 1 for h in local.max(axis=1)), dtype=bool)
        crop[tuple(local)] = True
        crop_labels, crop_count = ndimage.label(crop, structure=CONNECTIVITY_26)
        labels[members] = crop_labels[tuple(local)] + count
        count += int(crop_count)
    # renumber by first voxel in raster order, as a full-volume scipy.ndimage.label would
    provisional, first = np.unique(labels, return_index=True)
    renumber = np.zeros(count + 1, dtype=np.int32)
    renumber[provisional[np.argsort(first)]] = np.arange(1, count + 1, dtype=np.int32)
    return renumber[labels], count


def label_clusters(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3D connected components (26-connectivity) of the nonzero voxels of ``mask``.

    Only the foreground is labelled (see :func:`cluster_overlaps`), so sparse masks are fast; the result
    equals ``scipy.ndimage.label(mask != 0, structure=np.ones((3, 3, 3)))``, numbering included (raster order
    of each component's first voxel).

    Args:
        mask: a 3D array; every nonzero voxel is foreground.

    Returns:
        ``(labels, count)``: an int32 array of ``mask.shape`` (0 background, ``1..count`` components) and the
        number of components.
    """
    mask = np.asarray(mask)
    _check_3d(mask)
    index = foreground_index(mask)
    voxel_labels, count = _label_voxels(index, mask.shape)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels.reshape(-1)[index] = voxel_labels
    return labels, count


@dataclass(frozen=True)
class ClusterOverlaps:
    """Detections and PEs of one study as labelled voxel lists, and which of them touch.

    Attributes:
        shape: the volume shape.
        pred_index: sorted flat (C-order) indices of the detection voxels.
        pred_labels: detection label (``1..n_pred``, raster order) of each detection voxel.
        n_pred: number of detections.
        ref_index: sorted flat indices of the reference voxels.
        ref_labels: PE label (``1..n_ref``) of each reference voxel.
        n_ref: number of reference PEs.
        pairs: ``(k, 2)`` int64 array of distinct ``(detection label, PE label)`` pairs sharing a voxel.
    """

    shape: tuple[int, ...]
    pred_index: np.ndarray
    pred_labels: np.ndarray
    n_pred: int
    ref_index: np.ndarray
    ref_labels: np.ndarray
    n_ref: int
    pairs: np.ndarray


def cluster_overlaps(pred: np.ndarray, ref_mask: np.ndarray, threshold: float | None = None) -> ClusterOverlaps:
    """Label detections and PEs (26-connectivity) and find every (detection, PE) pair that shares a voxel.

    Works on the foreground voxels only: one streaming pass per volume finds them, and labelling and
    matching then cost in proportion to the foreground.

    Args:
        pred: 3D prediction: a binary mask (``threshold=None``: nonzero voxels are detection voxels) or a
            probability map (detection voxels: ``pred >= threshold``).
        ref_mask: reference mask of the same shape; nonzero voxels are PEs.
        threshold: see ``pred``.

    Returns:
        The :class:`ClusterOverlaps` of the study.
    """
    pred, ref_mask = np.asarray(pred), np.asarray(ref_mask)
    _check_3d(pred, ref_mask)
    pred_index = foreground_index(pred, threshold)
    ref_index = foreground_index(ref_mask)
    pred_labels, n_pred = _label_voxels(pred_index, pred.shape)
    ref_labels, n_ref = _label_voxels(ref_index, pred.shape)
    # shared voxels: look every reference voxel up among the (sorted) detection voxels
    position = np.minimum(np.searchsorted(pred_index, ref_index), max(pred_index.size - 1, 0))
    shared = pred_index[position] == ref_index if pred_index.size else np.zeros(ref_index.size, dtype=bool)
    codes = np.unique(pred_labels[position[shared]].astype(np.int64) * (n_ref + 1) + ref_labels[shared])
    pairs = np.stack([codes // (n_ref + 1), codes % (n_ref + 1)], axis=1)
    return ClusterOverlaps(tuple(pred.shape), pred_index, pred_labels, n_pred, ref_index, ref_labels, n_ref, pairs)


def _slice_boxes(overlaps: ClusterOverlaps, slice_axis: int) -> np.ndarray:
    """One row ``(detection, slice, row0, row1, col0, col1)`` (inclusive bounds) per detection per slice it touches.

    Rows and columns are the two non-slice axes in their array order.
    """
    coords = np.stack(np.unravel_index(overlaps.pred_index, overlaps.shape))
    in_plane = [a for a in range(3) if a != slice_axis]
    key = overlaps.pred_labels.astype(np.int64) * overlaps.shape[slice_axis] + coords[slice_axis]
    order = np.argsort(key, kind="stable")
    key, rows, cols = key[order], coords[in_plane[0]][order], coords[in_plane[1]][order]
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    detection, slice_index = np.divmod(key[starts], overlaps.shape[slice_axis])
    return np.stack(
        [
            detection,
            slice_index,
            np.minimum.reduceat(rows, starts),
            np.maximum.reduceat(rows, starts),
            np.minimum.reduceat(cols, starts),
            np.maximum.reduceat(cols, starts),
        ],
        axis=1,
    )


def _strict_pairs(overlaps: ClusterOverlaps, iou_threshold: float, slice_axis: int) -> np.ndarray:
    """``(detection, PE)`` pairs whose 3D IoU (detection boxified per slice) is above ``iou_threshold``."""
    if overlaps.n_pred == 0 or overlaps.n_ref == 0:
        return np.zeros((0, 2), dtype=np.int64)
    boxes = _slice_boxes(overlaps, slice_axis)
    areas = (boxes[:, 3] - boxes[:, 2] + 1) * (boxes[:, 5] - boxes[:, 4] + 1)
    boxified_sizes = np.bincount(boxes[:, 0], weights=areas, minlength=overlaps.n_pred + 1)
    pe_sizes = np.bincount(overlaps.ref_labels, minlength=overlaps.n_ref + 1)
    # reference voxels grouped by slice, to intersect each box with the PE voxels of its slice only
    ref_coords = np.stack(np.unravel_index(overlaps.ref_index, overlaps.shape))
    in_plane = [a for a in range(3) if a != slice_axis]
    by_slice = np.argsort(ref_coords[slice_axis], kind="stable")
    ref_slices = ref_coords[slice_axis][by_slice]
    ref_rows, ref_cols = ref_coords[in_plane[0]][by_slice], ref_coords[in_plane[1]][by_slice]
    ref_pes = overlaps.ref_labels[by_slice]
    first = np.searchsorted(ref_slices, boxes[:, 1], side="left")
    last = np.searchsorted(ref_slices, boxes[:, 1], side="right")
    intersection: dict[tuple[int, int], int] = {}
    for (detection, _, row0, row1, col0, col1), lo, hi in zip(boxes.tolist(), first.tolist(), last.tolist()):
        if lo == hi:
            continue
        rows, cols = ref_rows[lo:hi], ref_cols[lo:hi]
        inside = (rows >= row0) & (rows <= row1) & (cols >= col0) & (cols <= col1)
        pes, counts = np.unique(ref_pes[lo:hi][inside], return_counts=True)
        for pe, n in zip(pes.tolist(), counts.tolist()):
            intersection[(detection, pe)] = intersection.get((detection, pe), 0) + n
    pairs = [
        (detection, pe)
        for (detection, pe), inter in intersection.items()
        if inter / (boxified_sizes[detection] + pe_sizes[pe] - inter) > iou_threshold
    ]
    return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


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
        raise ValueError(
            f"{name} must have 1 channel (foreground) or 2 (background, foreground), got {tensor.shape[1]}"
        )
    return tensor[:, tensor.shape[1] - 1]


class ClusterMatchingMetric(CumulativeIterationMetric):
    """Per-PE cluster matching as a MONAI cumulative metric (sums the counts over studies: micro pooling).

    Each call adds one row per study to the buffer, with the columns :data:`DETAIL_COLUMNS`
    (``tp, fp, fn, sensitivity, ppv, f1`` of that study); :meth:`aggregate` sums the counts over all rows
    (gathered across ranks in distributed runs) and derives the pooled rates.

    Args:
        threshold: a voxel is a detection voxel when ``y_pred >= threshold`` (as ``monai.transforms.AsDiscrete``),
            so probabilities and binary masks both work; in (0, 1] (:func:`check_probability_threshold`).
        strict: use the strict variant (IoU of the boxified detection above ``iou_threshold``).
        iou_threshold: strict variant only; in [0, 1) (:func:`check_iou_threshold`).
        slice_axis: strict variant only: the slice axis among the spatial dims; default ``-1`` (``Z`` of MONAI's
            ``(X, Y, Z)`` layout).

    Inputs of ``__call__(y_pred, y)``: batch-first ``(B, C, X, Y, Z)`` tensors or lists of channel-first
    ``(C, X, Y, Z)`` tensors, ``C`` 1 (foreground) or 2 (background, foreground); ``y`` is foreground where nonzero.

    Raises:
        ValueError: ``threshold`` or ``iou_threshold`` is not a number in its range (at construction).
    """

    def __init__(
        self, threshold: float = 0.5, strict: bool = False, iou_threshold: float = 0.5, slice_axis: int = -1
    ) -> None:
        super().__init__()
        self.threshold = check_probability_threshold(threshold, "threshold")
        self.strict = bool(strict)
        self.iou_threshold = check_iou_threshold(iou_threshold, "iou_threshold")
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
