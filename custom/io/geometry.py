"""Voxel-to-world geometry shared by the DICOM reader, the phantom writer and NIfTI output.

Convention (docs/conventions.md): a volume in memory is a ``(Z, Y, X)`` array (slice, row,
column), slices ordered by increasing position along the slice normal
``n = row_direction x column_direction`` of ``ImageOrientationPatient``. On disk (NIfTI) the
array is stored transposed as ``(X, Y, Z)`` with an RAS affine, so masks open aligned with the
image in 3D Slicer and ITK-SNAP.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LPS_TO_RAS", "affine_from_dicom", "slice_normal"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_normal(image_orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of an axial slice: cross product of the DICOM row and column directions.

    Args:
        image_orientation: ``ImageOrientationPatient``, six direction cosines (row dir, col dir).

    Returns:
        The unit normal, shape ``(3,)``, in LPS patient coordinates.
    """
    iop = np.asarray(image_orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def affine_from_dicom(
    image_orientation: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """RAS affine of the on-disk ``(X, Y, Z)`` array of a sorted DICOM series.

    Args:
        image_orientation: ``ImageOrientationPatient`` of the series.
        first_position: ``ImagePositionPatient`` of the first slice in sorted order (LPS, mm).
        pixel_spacing: ``PixelSpacing`` as DICOM stores it: (row spacing, column spacing) in mm.
        slice_step: LPS vector (mm) from one slice's position to the next one's in sorted order.

    Returns:
        A ``4x4`` affine mapping voxel ``(i=column, j=row, k=slice, 1)`` to RAS millimetres.
    """
    iop = np.asarray(image_orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(s) for s in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # i runs along a row: the row direction cosine
    lps[:3, 1] = iop[3:] * row_spacing  # j runs down a column: the column direction cosine
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return LPS_TO_RAS @ lps
