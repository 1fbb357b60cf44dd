"""2.5D mini-volumes: 7 consecutive slices centred on a slice, as channels (Condrea et al. 2025, 3.1).

Edge handling: a mini-volume centred near a study end replicates the first / last slice, so every
slice of a study, including the outermost ones, gets a mini-volume of the same depth whose centre
channel is that slice. The teacher's sliding window (``custom.explain``) uses the same rule.

HU windowing maps ``[center - width / 2, center + width / 2]`` linearly to ``[0, 1]`` and clips.

:class:`MiniVolumeDataset` keeps each study as int16 HU, the type ``prepare`` writes: an image with
NaN / infinite values or HU outside the int16 range is refused (naming the file) rather than cast.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from custom.io.errors import InputError
from custom.io.nifti import read_checked_volume

__all__ = ["MiniVolumeDataset", "minivolume_indices", "window_hu", "extract_minivolume"]

_INT16 = np.iinfo(np.int16)


def window_hu(volume: np.ndarray | torch.Tensor, center: float, width: float) -> np.ndarray | torch.Tensor:
    """Map HU in ``[center - width/2, center + width/2]`` to ``[0, 1]``, clipping outside.

    Args:
        volume: HU values (numpy or torch).
        center: window level in HU.
        width: window width in HU (positive).

    Returns:
        float32 values in ``[0, 1]`` of the same type and shape.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    if isinstance(volume, torch.Tensor):
        return ((volume.float() - low) / width).clamp_(0.0, 1.0)
    return np.clip((np.asarray(volume, dtype=np.float32) - low) / width, 0.0, 1.0).astype(np.float32, copy=False)


def _check_depth(depth: Any) -> int:
    """``depth`` as an int; a ValueError unless it is a positive odd integer (a mini-volume has a centre slice)."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1 or depth % 2 != 1:
        raise ValueError(f"mini-volume depth must be a positive odd integer, got {depth!r}")
    return int(depth)


def minivolume_indices(center: int, n_slices: int, depth: int = 7) -> np.ndarray:
    """Slice indices of the mini-volume centred on ``center`` (study ends replicated).

    Args:
        center: index of the centre slice.
        n_slices: slices in the study.
        depth: slices per mini-volume (odd; paper: 7).

    Returns:
        ``depth`` indices, clipped to ``[0, n_slices - 1]``.
    """
    depth = _check_depth(depth)
    if not 0 <= center < n_slices:
        raise IndexError(f"slice {center} outside a study of {n_slices} slices")
    half = depth // 2
    return np.clip(np.arange(center - half, center + half + 1), 0, n_slices - 1)


def extract_minivolume(volume_zyx: np.ndarray, center: int, depth: int = 7) -> np.ndarray:
    """The ``(depth, Y, X)`` mini-volume of a ``(Z, Y, X)`` study centred on slice ``center``."""
    return volume_zyx[minivolume_indices(center, volume_zyx.shape[0], depth)]


def _read_hu(path: str) -> np.ndarray:
    """The ``(Z, Y, X)`` HU volume at ``path`` as int16 (rounded), or an InputError naming the file."""
    volume, _ = read_checked_volume(path, "image")
    if volume.dtype == np.int16:
        return volume
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise InputError(f"{path}: expected HU numbers, got {volume.dtype} voxels")
    if np.issubdtype(volume.dtype, np.floating):
        volume = np.rint(volume)
    low, high = volume.min(), volume.max()
    if low < _INT16.min or high > _INT16.max:
        raise InputError(f"{path}: HU values from {low:g} to {high:g} exceed the int16 range "
                         f"[{_INT16.min}, {_INT16.max}] of prepared images (not HU? a wrong rescale?)")
    return volume.astype(np.int16)


def _slice_labels(values: Any, n_slices: int, path: str, uid: str) -> np.ndarray:
    """``values`` as an int64 array of ``n_slices`` 0/1 labels, or an InputError naming the file and study."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise InputError(f"{path}: slice_labels must be a list of 0/1, got {type(values).__name__} (study {uid})")
    array = np.asarray(values, dtype=object).reshape(-1)
    if array.size != n_slices:
        raise InputError(f"{path}: {n_slices} slices but {array.size} slice labels (study {uid})")
    bad = sorted({repr(v) for v in array.tolist() if not isinstance(v, numbers.Real) or v not in (0, 1)})
    if bad:
        raise InputError(f"{path}: slice labels must be 0 or 1, got {', '.join(bad[:5])} (study {uid})")
    return array.astype(np.int64)


class MiniVolumeDataset(Dataset):
    """One item per slice of every study in a datalist: the windowed mini-volume and the slice label.

    Volumes are read once and kept in memory as int16 HU (a 96x192x192 study is 7 MB).

    Args:
        data: datalist entries (``custom`` conventions: ``image``, ``study_uid``, ``slice_labels``),
            with ``image`` already an absolute path or relative to ``base_dir``. Slice labels must be
            0 or 1; entries without ``slice_labels`` (inference) get label -1 on every slice unless
            ``require_labels``.
        window: ``(center, width)`` HU window.
        depth: slices per mini-volume (a positive odd integer).
        transform: a MONAI dictionary transform applied to ``{"image": (depth, H, W), "label": (1,)}``.
        base_dir: directory that relative ``image`` paths are relative to.
        require_labels: refuse entries without ``slice_labels`` (training and validation data;
            :func:`custom.data.balanced_slice_sampler` refuses unlabelled slices as well).
        source: where ``data`` comes from, for error messages (e.g. ``"datalist.json['training']"``).

    Items are dictionaries with ``image`` (float32 tensor ``(depth, H, W)``), ``label`` (float32
    tensor ``(1,)``), ``study_uid`` and ``slice_index``.

    Raises:
        InputError: no entries, or an entry's image cannot be read, holds NaN / infinite HU or HU
            outside the int16 range, or its slice labels are missing (``require_labels``), not 0/1,
            or not one per slice; the message names the file.
        ValueError: a bad ``depth`` or ``window``.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        window: Sequence[float] = (100.0, 700.0),
        depth: int = 7,
        transform: Callable[[dict], dict] | None = None,
        base_dir: str | os.PathLike | None = None,
        require_labels: bool = False,
        source: str | None = None,
    ) -> None:
        where = source or "datalist"
        if len(data) == 0:
            raise InputError(f"{where}: no studies to build mini-volumes from (is the datalist split empty?)")
        self.depth = _check_depth(depth)
        self.window = (float(window[0]), float(window[1]))
        if not (np.isfinite(self.window).all() and self.window[1] > 0):
            raise ValueError(f"window must be a finite (center, width) with a positive width, got {tuple(window)}")
        self.transform = transform
        self.volumes: list[np.ndarray] = []
        self.study_uids: list[str] = []
        index: list[tuple[int, int]] = []
        labels: list[int] = []
        for study, entry in enumerate(data):
            if "image" not in entry:
                raise InputError(f"{where}: entry {study} ({entry.get('study_uid', 'no study_uid')}) has no 'image'")
            path = str(entry["image"])
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(os.fspath(base_dir), path)
            volume = _read_hu(path)
            uid = str(entry.get("study_uid", os.path.basename(path)))
            if "slice_labels" in entry:
                slice_labels = _slice_labels(entry["slice_labels"], volume.shape[0], path, uid)
            elif require_labels:
                raise InputError(f"{path}: no slice_labels in its {where} entry (study {uid}); training needs them")
            else:  # unlabelled studies (inference) get -1 for every slice
                slice_labels = np.full(volume.shape[0], -1, dtype=np.int64)
            self.volumes.append(volume)
            self.study_uids.append(uid)
            index.extend((study, k) for k in range(volume.shape[0]))
            labels.extend(slice_labels.tolist())
        self.index = np.asarray(index, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        # relative level of each slice in its study (0 = first slice, 1 = last), for level-matched sampling
        n_slices = np.asarray([self.volumes[s].shape[0] for s in self.index[:, 0]], dtype=np.float64)
        self.levels = self.index[:, 1] / np.maximum(n_slices - 1, 1)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        study, k = (int(v) for v in self.index[i])
        minivolume = window_hu(extract_minivolume(self.volumes[study], k, self.depth), *self.window)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(minivolume)),
            "label": torch.tensor([float(self.labels[i])]),
            "study_uid": self.study_uids[study],
            "slice_index": k,
        }
        if self.transform is not None:
            item = self.transform(item)
        return item
