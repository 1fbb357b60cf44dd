"""The teacher's output folder: one set of files per study, written atomically, the JSON last.

Layout of ``output_dir`` (all NIfTI on the study's grid, with the input image's affine)::

    pseudo/<uid>.nii.gz              uint8 0/1, the filtered pseudo-label (the student's training mask)
    pseudo_unfiltered/<uid>.nii.gz   uint8 0/1, before the size and location filters (paper Table 3)
    round_maps/<uid>.nii.gz          uint8, first round (1..10) after which a voxel is in the mask, 0 never;
                                     ``0 < round_map <= r`` is the mask after r rounds (Table 2, Fig. 4)
    heatmaps/<uid>.nii.gz            float32 in [0, 1], the Gaussian-weighted slice vote (soft map, FROC)
    clusters/<uid>.json              ``StudyExplanation.summary()`` + study name, image, shape, seconds
    index.json, failures.json        written by the cohort runner

``clusters/<uid>.json`` is written after the volumes, so its presence means the study is complete:
a rerun skips it, and a crash leaves at most the volumes of the study in flight, which the rerun
overwrites. It also records the ``settings`` and HU ``window`` the study was made with; a study whose
record differs from the current ones (or has no ``settings``: an older layout) is not done
(:meth:`TeacherOutputs.outdated`), so a rerun with other settings redoes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.explain.teacher import StudyExplanation
from custom.io.atomic import write_json_atomic
from custom.io.errors import InputError
from custom.io.nifti import NIFTI_READ_ERRORS, read_volume, write_volume
from custom.io.records import as_read_back, json_ready, settings_changes

__all__ = ["CLUSTERS", "HEATMAPS", "PSEUDO", "PSEUDO_UNFILTERED", "ROUND_MAPS", "TeacherOutputs"]

PSEUDO = "pseudo"
PSEUDO_UNFILTERED = "pseudo_unfiltered"
ROUND_MAPS = "round_maps"
HEATMAPS = "heatmaps"
CLUSTERS = "clusters"


class TeacherOutputs:
    """Paths, writing and reading of one teacher output folder (see the module docstring).

    Args:
        output_dir: the folder (created on the first write).
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.root = Path(output_dir)

    def path(self, kind: str, uid: str) -> Path:
        """The file of ``kind`` (``PSEUDO``, ``ROUND_MAPS``, ...) for study ``uid``."""
        suffix = ".json" if kind == CLUSTERS else ".nii.gz"
        return self.root / kind / f"{uid}{suffix}"

    def is_done(
        self,
        uid: str,
        settings: Mapping[str, Any] | Callable[[Sequence[int]], Mapping[str, Any]] | None = None,
        window: Sequence[float] | None = None,
    ) -> bool:
        """Whether the study's files are complete (its JSON, written last, exists) and, when ``settings``
        or ``window`` are given, made with them (see :meth:`outdated`)."""
        if settings is None and window is None:
            return self.path(CLUSTERS, uid).is_file()
        return self.outdated(uid, settings, window) is None

    def outdated(
        self,
        uid: str,
        settings: Mapping[str, Any] | Callable[[Sequence[int]], Mapping[str, Any]] | None = None,
        window: Sequence[float] | None = None,
    ) -> str | None:
        """Why the study must be (re)done, or ``None`` when its files are complete and current.

        Args:
            uid: the study.
            settings: the teacher's current ``settings`` record, or a function of the recorded study
                ``shape`` ``(Z, H, W)`` that gives it (the pixel settings depend on the grid); ``None``:
                not compared.
            window: the current ``(level, width)`` HU window; ``None``: not compared.

        Returns:
            ``None``, or a short reason: no output, an unreadable record, an older record without
            settings, or the settings (or window) that differ, with their recorded and current values.
        """
        path = self.path(CLUSTERS, uid)
        if not path.is_file():
            return f"no {path}"
        if settings is None and window is None:
            return None
        try:
            record = self.read_summary(uid)
        except InputError as error:
            return str(error)
        recorded = record.get("settings") if isinstance(record, dict) else None
        if not isinstance(recorded, dict) or not recorded:
            return f"{path} records no settings (older layout)"
        if window is not None and record.get("window") != as_read_back([float(w) for w in window]):
            return f"{path} was made with window {record.get('window')}, now {[float(w) for w in window]}"
        if settings is None:
            return None
        if callable(settings):
            shape = record.get("shape")
            if not isinstance(shape, list) or len(shape) != 3:
                return f"{path} records no study shape (older layout)"
            try:
                settings = settings(shape)
            except (TypeError, ValueError) as error:
                return f"{path}: no current settings for its recorded shape {shape} ({error})"
        changes = settings_changes(recorded, settings)
        return None if changes is None else f"{path} was made with other settings ({changes})"

    def done_studies(self) -> list[str]:
        """The studies whose JSON exists, sorted."""
        folder = self.root / CLUSTERS
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.startswith("."))

    def write(self, uid: str, explanation: StudyExplanation, affine: np.ndarray, record: dict[str, Any]) -> None:
        """Write a study's volumes, then its JSON (``record`` merged with ``explanation.summary()``)."""
        write_volume(self.path(PSEUDO, uid), explanation.mask_filtered, affine, np.uint8)
        write_volume(self.path(PSEUDO_UNFILTERED, uid), explanation.mask_unfiltered, affine, np.uint8)
        write_volume(self.path(ROUND_MAPS, uid), explanation.round_map, affine, np.uint8)
        write_volume(self.path(HEATMAPS, uid), explanation.heatmap, affine, np.float32)
        write_json_atomic(self.path(CLUSTERS, uid), json_ready({**record, **explanation.summary()}))

    def read_summary(self, uid: str) -> dict[str, Any]:
        """The study's ``clusters/<uid>.json``."""
        path = self.path(CLUSTERS, uid)
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise InputError(f"{path}: cannot read the teacher's study record ({error})") from error

    def read_volume(self, kind: str, uid: str) -> np.ndarray:
        """The study's ``kind`` volume, ``(Z, Y, X)``."""
        path = self.path(kind, uid)
        try:
            return read_volume(path)[0]
        except NIFTI_READ_ERRORS as error:
            raise InputError(f"{path}: cannot read the teacher output ({error})") from error
