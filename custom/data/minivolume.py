"""2.5D mini-volumes: 7 consecutive slices centred on a slice, as channels (Condrea et al. 2025, 3.1).

Edge handling: a mini-volume centred near a study end replicates the first / last slice, so every
slice of a study, including the outermost ones, gets a mini-volume of the same depth whose centre
channel is that slice. The teacher's sliding window (``custom.explain``) uses the same rule.

HU windowing maps ``[center - width / 2, center + width / 2]`` linearly to ``[0, 1]`` and clips.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from custom.io.errors import InputError
from custom.io.nifti import read_volume

__all__ = ["MiniVolumeDataset", "minivolume_indices", "window_hu", "extract_minivolume"]


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


def minivolume_indices(center: int, n_slices: int, depth: int = 7) -> np.ndarray:
    """Slice indices of the mini-volume centred on ``center`` (study ends replicated).

    Args:
        center: index of the centre slice.
        n_slices: slices in the study.
        depth: slices per mini-volume (odd; paper: 7).

    Returns:
        ``depth`` indices, clipped to ``[0, n_slices - 1]``.
    """
    if depth % 2 != 1:
        raise ValueError(f"mini-volume depth must be odd, got {depth}")
    if not 0 <= center < n_slices:
        raise IndexError(f"slice {center} outside a study of {n_slices} slices")
    half = depth // 2
    return np.clip(np.arange(center - half, center + half + 1), 0, n_slices - 1)


def extract_minivolume(volume_zyx: np.ndarray, center: int, depth: int = 7) -> np.ndarray:
    """The ``(depth, Y, X)`` mini-volume of a ``(Z, Y, X)`` study centred on slice ``center``."""
    return volume_zyx[minivolume_indices(center, volume_zyx.shape[0], depth)]


class MiniVolumeDataset(Dataset):
    """One item per slice of every study in a datalist: the windowed mini-volume and the slice label.

    Volumes are read once and kept in memory as int16 HU (a 96x192x192 study is 7 MB).

    Args:
        data: datalist entries (``custom`` conventions: ``image``, ``study_uid``, ``slice_labels``),
            with ``image`` already an absolute path or relative to ``base_dir``. Entries without
            ``slice_labels`` (inference) get label -1 on every slice.
        window: ``(center, width)`` HU window.
        depth: slices per mini-volume.
        transform: a MONAI dictionary transform applied to ``{"image": (depth, H, W), "label": (1,)}``.
        base_dir: directory that relative ``image`` paths are relative to.

    Items are dictionaries with ``image`` (float32 tensor ``(depth, H, W)``), ``label`` (float32
    tensor ``(1,)``), ``study_uid`` and ``slice_index``.
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        window: Sequence[float] = (100.0, 700.0),
        depth: int = 7,
        transform: Callable[[dict], dict] | None = None,
        base_dir: str | os.PathLike | None = None,
    ) -> None:
        if len(data) == 0:
            raise InputError("datalist: no studies to build mini-volumes from")
        self.window = (float(window[0]), float(window[1]))
        self.depth = depth
        self.transform = transform
        self.volumes: list[np.ndarray] = []
        self.study_uids: list[str] = []
        index: list[tuple[int, int]] = []
        labels: list[int] = []
        for study, entry in enumerate(data):
            path = str(entry["image"])
            if base_dir is not None and not os.path.isabs(path):
                path = os.path.join(os.fspath(base_dir), path)
            volume, _ = read_volume(path)
            # unlabelled studies (inference) get -1 for every slice
            slice_labels = np.asarray(entry.get("slice_labels", [-1] * volume.shape[0]), dtype=np.int64)
            if slice_labels.shape != (volume.shape[0],):
                raise InputError(f"{path}: {volume.shape[0]} slices but {slice_labels.size} slice labels")
            self.volumes.append(volume.astype(np.int16, copy=False))
            self.study_uids.append(str(entry.get("study_uid", os.path.basename(path))))
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
