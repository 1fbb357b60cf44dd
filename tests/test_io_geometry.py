"""custom.io.geometry: orientation and pixel-spacing checks, slice normal, affine."""

from __future__ import annotations

import re

import numpy as np
import pytest

from custom.io.geometry import affine_from_dicom, orientation_problem, pixel_spacing_problem, slice_normal


@pytest.mark.parametrize(
    "iop",
    [
        (1, 0, 0, 0, 1, 0),
        (0.999848, 0.017452, 0, -0.017452, 0.999848, 0),  # 1 degree in-plane rotation, 6 decimals
        (1, 0, 0, 0, 0.995, -0.0998749),  # tilted
    ],
)
def test_valid_orientations_pass(iop):
    assert orientation_problem(iop) is None
    normal = slice_normal(iop)
    assert np.linalg.norm(normal) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("iop", "problem"),
    [
        ((1, 0, 0, 1, 0, 0), r"not orthogonal: dot product 1 \(parallel: no slice normal\)"),
        ((0, 0, 0, 0, 0, 0), r"must be unit vectors, their lengths are 0 and 0"),
        ((2, 0, 0, 0, 1, 0), r"must be unit vectors, their lengths are 2 and 1"),
        ((1, 0, 0, 0.5, 0.8660254, 0), r"not orthogonal: dot product 0\.5$"),
        ((1, 0, 0, 0, float("nan"), 0), r"not finite"),
        ((1, 0, 0, 0, 1), r"5 values, six expected"),
    ],
)
def test_degenerate_orientations_are_named(iop, problem):
    assert orientation_problem(iop) is not None
    assert re.search(problem, orientation_problem(iop))
    with pytest.raises(ValueError, match=r"ImageOrientationPatient .*" + problem):
        slice_normal(iop)  # was a NaN normal with a RuntimeWarning for parallel cosines


@pytest.mark.parametrize("spacing", [(0, 0), (-0.7, -0.7), (0.7, float("inf")), (0.7,)])
def test_pixel_spacing_must_be_finite_and_positive(spacing):
    assert pixel_spacing_problem(spacing) is not None
    with pytest.raises(ValueError, match=r"PixelSpacing"):
        affine_from_dicom((1, 0, 0, 0, 1, 0), (0, 0, 0), spacing, (0, 0, 1))  # was singular or mirrored


def test_affine_rejects_a_degenerate_orientation_and_accepts_a_valid_one():
    with pytest.raises(ValueError, match=r"ImageOrientationPatient \[0\.0, 0\.0, 0\.0, 0\.0, 0\.0, 0\.0\]"):
        affine_from_dicom((0, 0, 0, 0, 0, 0), (0, 0, 0), (0.7, 0.7), (0, 0, 1))
    assert pixel_spacing_problem((0.7, 0.8)) is None
    affine = affine_from_dicom((1, 0, 0, 0, 1, 0), (-60, -45, 100), (0.7, 0.8), (0, 0, 2))
    np.testing.assert_allclose(affine @ [1, 1, 1, 1], [60 - 0.8, 45 - 0.7, 102, 1])
