"""The SHA-256 of a file: how the project names a set of weights (bundle zips, calibrations, outputs).

A calibrated threshold or a study's output belongs to the weights that made it; recording the
weights' hash lets a later run tell when they have changed (``custom.student.read_threshold``,
``custom.student.pending_entries``), and ``large_files.yml`` lists it for
``monai.bundle download_large_files`` (``custom.packaging``).
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_of"]


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
