"""The study a datalist entry names (MONAI decathlon datalists, ``docs/conventions.md``).

Every stage names its per-study outputs by the StudyInstanceUID; an entry written by the
project's ``prepare`` carries it as ``study_uid``, and an entry from another tool falls back to its
image file name without the extension (``<uid>.nii.gz`` -> ``<uid>``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["NIFTI_SUFFIXES", "entry_uid", "file_stem"]

#: NIfTI file suffixes, longest first.
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def file_stem(filename: str | os.PathLike) -> str:
    """The file name without its folder and extension (both suffixes of ``.nii.gz``)."""
    name = os.path.basename(os.fspath(filename))
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


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
