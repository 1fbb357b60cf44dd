"""The study a datalist entry names (MONAI decathlon datalists, ``docs/conventions.md``).

Every stage names its per-study outputs by the StudyInstanceUID; an entry written by the
project's ``prepare`` carries it as ``study_uid``, and an entry from another tool falls back to its
image file name without a known image extension (``<uid>.nii.gz`` -> ``<uid>``). A name without
one, such as a DICOM series folder named by its UID, is kept whole: a UID is full of dots, so
``os.path.splitext`` would cut its last component.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "entry_uid", "file_stem"]

#: Image file suffixes MONAI's ``LoadImage`` reads, longest first; matched case-sensitively.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".dcm")


def file_stem(filename: str | os.PathLike) -> str:
    """The file name without its folder and its image extension (:data:`IMAGE_SUFFIXES`; kept whole without one)."""
    text = os.fspath(filename)
    name = os.path.basename(os.path.normpath(text)) if text else ""
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def entry_uid(entry: Mapping[str, Any], uid_key: str = "study_uid", image_key: str = "image") -> str:
    """The StudyInstanceUID of a datalist entry.

    Args:
        entry: a datalist entry.
        uid_key: the entry key of the UID.
        image_key: the entry key of the image path, whose :func:`file_stem` names the study when
            ``uid_key`` is absent or empty.

    Returns:
        The UID, a string.
    """
    uid = entry.get(uid_key)
    if uid:
        return str(uid)
    return file_stem(entry[image_key])
