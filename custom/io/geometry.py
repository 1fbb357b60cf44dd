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

__all__ = [
    "LPS_TO_RAS",
    "ORIENTATION_TOLERANCE",
    "affine_from_dicom",
    "orientation_problem",
    "pixel_spacing_problem",
    "slice_normal",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

ORIENTATION_TOLERANCE = 1e-2
"""Largest accepted deviation of a direction cosine's length from 1, and of the cosines' dot product from 0.

Loose on purpose: scanners write the cosines with few decimals; the check is there to catch
degenerate headers (zeros, parallel cosines), not rounding."""


def orientation_problem(image_orientation: Sequence[float], tolerance: float = ORIENTATION_TOLERANCE) -> str | None:
    """Why ``ImageOrientationPatient`` defines no slice geometry, or ``None`` when it does.

    Args:
        image_orientation: six direction cosines (row direction, column direction).
        tolerance: largest accepted ``|length - 1|`` of each cosine and ``|row . column|``.

    Returns:
        ``None`` for finite, unit-length, mutually orthogonal row and column cosines; otherwise a
        short description of the problem (for an error message).
    """
    try:
        iop = np.asarray(image_orientation, dtype=np.float64)
    except (TypeError, ValueError):
        return "not six numbers"
    if iop.shape != (6,):
        return f"{iop.size} values, six expected"
    if not np.isfinite(iop).all():
        return "not finite"
    row, col = iop[:3], iop[3:]
    lengths = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if max(abs(length - 1.0) for length in lengths) > tolerance:
        return (
            f"the row and column direction cosines must be unit vectors, their lengths are {lengths[0]:.6g} and "
            f"{lengths[1]:.6g}"
        )
    dot = float(row @ col)
    if abs(dot) > tolerance:
        parallel = " (parallel: no slice normal)" if abs(abs(dot) - 1.0) <= tolerance else ""
        return f"the row and column direction cosines are not orthogonal: dot product {dot:.6g}{parallel}"
    return None


def pixel_spacing_problem(pixel_spacing: Sequence[float]) -> str | None:
    """Why ``PixelSpacing`` is unusable (not two finite numbers > 0), or ``None`` when it is fine."""
    try:
        spacing = np.asarray(pixel_spacing, dtype=np.float64)
    except (TypeError, ValueError):
        return "not two numbers"
    if spacing.shape != (2,):
        return f"{spacing.size} values, two expected (row spacing, column spacing)"
    if not np.isfinite(spacing).all() or (spacing <= 0).any():
        return "the row and column spacing must be finite and > 0 mm"
    return None


def _shown(values: Sequence[float]) -> str:
    try:
        return str(np.asarray(values, dtype=np.float64).tolist())
    except (TypeError, ValueError):
        return repr(values)


def slice_normal(image_orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of an axial slice: cross product of the DICOM row and column directions.

    Args:
        image_orientation: ``ImageOrientationPatient``, six direction cosines (row dir, col dir).

    Returns:
        The unit normal, shape ``(3,)``, in LPS patient coordinates.

    Raises:
        ValueError: the cosines are not finite, unit-length and orthogonal (see
            :func:`orientation_problem`): there would be no normal, or a wrong one.
    """
    problem = orientation_problem(image_orientation)
    if problem is not None:
        raise ValueError(f"ImageOrientationPatient {_shown(image_orientation)}: {problem}")
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

    Raises:
        ValueError: a degenerate orientation or a pixel spacing that is not finite and > 0 (the
            affine would be singular or mirrored).
    """
    problem = orientation_problem(image_orientation)
    if problem is not None:
        raise ValueError(f"ImageOrientationPatient {_shown(image_orientation)}: {problem}")
    problem = pixel_spacing_problem(pixel_spacing)
    if problem is not None:
        raise ValueError(f"PixelSpacing {_shown(pixel_spacing)}: {problem}")
    iop = np.asarray(image_orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(s) for s in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # i runs along a row: the row direction cosine
    lps[:3, 1] = iop[3:] * row_spacing  # j runs down a column: the column direction cosine
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return LPS_TO_RAS @ lps
