"""The student's per-study output files (``docs/conventions.md``, "Student output per study").

For a study ``<uid>`` the inference writes, on the study's own grid (affine preserved):

- ``<uid>_prob.nii.gz``: float32 PE probability;
- ``<uid>_mask.nii.gz``: uint8 mask, ``probability >= threshold``;
- ``<uid>_clusters.json``: the findings of :func:`custom.student.findings.study_findings`.

All three are written atomically, so a study whose three files exist is complete and a rerun can
skip it (:func:`pending_entries`). The findings record the ``settings`` the outputs were made with
(the bundle's ``output_settings``: the weights' SHA-256, the threshold, the window, the sliding
window and the filters); a rerun with other settings, retrained weights for one, redoes the study
instead of keeping outputs of another model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from custom.distributed import is_main_process
from custom.io.atomic import write_json_atomic
from custom.io.datalist import entry_uid, file_stem
from custom.io.errors import InputError
from custom.io.nifti import write_volume
from custom.io.records import as_read_back, settings_changes
from custom.student.findings import study_findings

__all__ = ["SaveStudentOutputsd", "entry_uid", "outdated_outputs", "pending_entries", "student_output_paths"]

logger = logging.getLogger(__name__)


def student_output_paths(output_dir: str | os.PathLike, study_uid: str) -> dict[str, Path]:
    """Paths of the three output files of one study.

    Returns:
        ``{"prob": <uid>_prob.nii.gz, "mask": <uid>_mask.nii.gz, "clusters": <uid>_clusters.json}`` under ``output_dir``.
    """
    out = Path(output_dir)
    return {
        "prob": out / f"{study_uid}_prob.nii.gz",
        "mask": out / f"{study_uid}_mask.nii.gz",
        "clusters": out / f"{study_uid}_clusters.json",
    }


def pending_entries(
    entries: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    *,
    uid_key: str = "study_uid",
    image_key: str = "image",
) -> list[Mapping[str, Any]]:
    """Datalist entries that still need inference (a rerun resumes where it stopped).

    Args:
        entries: datalist entries (``load_decathlon_datalist`` output).
        output_dir: where the outputs are written.
        settings: the current output settings (the bundle's ``output_settings``); a study whose
            findings record other ones (or none) is redone. ``None``: not compared.
        uid_key: entry key of the StudyInstanceUID (the image file name is used when absent).
        image_key: entry key of the image path.

    Returns:
        The entries, in order, whose outputs are missing or outdated (:func:`outdated_outputs`); each
        outdated one is logged with its reason.
    """
    pending = []
    for entry in entries:
        reason = outdated_outputs(output_dir, entry_uid(entry, uid_key, image_key), settings)
        if reason is not None:
            pending.append(entry)
            if not reason.startswith("missing") and is_main_process():
                logger.info("redoing: %s", reason)
    return pending


def outdated_outputs(output_dir: str | os.PathLike, study_uid: str, settings: Mapping[str, Any] | None = None) -> str | None:
    """Why a study's outputs must be (re)written, or ``None`` when they are complete and current.

    Args:
        output_dir: where the outputs are written.
        study_uid: the study.
        settings: the current output settings; ``None``: only completeness is checked.

    Returns:
        ``None``, or a short reason: missing files, findings that cannot be read or record no
        settings (an older bundle), or the settings that differ with their recorded and current values.
    """
    paths = student_output_paths(output_dir, study_uid)
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    if settings is None:
        return None
    try:
        recorded = json.loads(paths["clusters"].read_text()).get("settings")
    except (OSError, ValueError, AttributeError) as error:
        return f"{paths['clusters']}: unreadable findings ({error})"
    if not isinstance(recorded, dict):
        return f"{paths['clusters']} records no settings (an older bundle)"
    changes = settings_changes(recorded, settings)
    return None if changes is None else f"{paths['clusters']} was made with other settings ({changes})"


class SaveStudentOutputsd(MapTransform):
    """Write the probability map, the mask and the findings of one study (a postprocessing transform).

    Args:
        keys: the key of the PE probability, one channel, ``(1, X, Y, Z)`` on the image grid.
        output_dir: destination folder.
        threshold: a voxel is PE when its probability is at least this value (also the findings threshold).
        image_key: the key of the input image; its affine and file name are used.
        uid_key: the key of the StudyInstanceUID (falls back to the image file name).
        min_voxels: smallest cluster reported in the findings (the mask is not filtered).
        settings: recorded in the findings as ``settings`` (the bundle's ``output_settings``), so that
            :func:`pending_entries` redoes the study when they change; ``None``: not recorded.
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        image_key: str = "image",
        uid_key: str = "study_uid",
        min_voxels: int = 1,
        settings: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.image_key = image_key
        self.uid_key = uid_key
        self.min_voxels = int(min_voxels)
        self.settings = None if settings is None else as_read_back(dict(settings))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        source = str(image.meta.get("filename_or_obj", "")) if isinstance(image, MetaTensor) else ""
        uid = str(d[self.uid_key]) if d.get(self.uid_key) else file_stem(source)
        affine = self._image_affine(image, d, source or uid)
        for key in self.key_iterator(d):
            self._write(d[key], image, affine, uid, source or uid)
        return d

    def _image_affine(self, image: Any, d: Mapping[Hashable, Any], source: str) -> np.ndarray:
        if isinstance(image, MetaTensor):
            return np.asarray(torch.as_tensor(image.affine).detach().cpu(), dtype=np.float64)
        meta = d.get(f"{self.image_key}_meta_dict")
        if meta is None or "affine" not in meta:
            raise InputError(f"{source}: the image has no affine; load it with LoadImaged so the outputs keep its grid")
        return np.asarray(meta["affine"], dtype=np.float64)

    def _write(self, pred: Any, image: Any, affine: np.ndarray, uid: str, source: str) -> None:
        prob = torch.as_tensor(pred).detach().float().cpu().numpy()
        if prob.ndim != 4 or prob.shape[0] != 1:
            raise InputError(f"{source}: expected a one-channel (1, X, Y, Z) probability, got shape {prob.shape}")
        image_shape = tuple(torch.as_tensor(image).shape[1:])
        if tuple(prob.shape[1:]) != image_shape:
            raise InputError(f"{source}: prediction grid {prob.shape[1:]} differs from the image grid {image_shape}")
        if not np.isfinite(prob).all():
            raise InputError(f"{source}: the probability map has NaN or infinite values")
        prob_zyx = np.ascontiguousarray(prob[0].transpose(2, 1, 0))
        paths = student_output_paths(self.output_dir, uid)
        # the findings, written last, mark the study complete with its settings: gone while the maps are replaced
        paths["clusters"].unlink(missing_ok=True)
        write_volume(paths["prob"], prob_zyx, affine, dtype=np.float32)
        write_volume(paths["mask"], prob_zyx >= self.threshold, affine, dtype=np.uint8)
        findings = study_findings(prob_zyx, affine, uid, threshold=self.threshold, min_voxels=self.min_voxels)
        if self.settings is not None:
            findings["settings"] = self.settings
        write_json_atomic(paths["clusters"], findings)
