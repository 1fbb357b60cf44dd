"""The classifier's Cutout (paper section 3.1: "aggressive Cutout"), MONAI's ``RandCoarseDropoutd`` with
its settings checked.

The teacher later masks explained clusters out of the input with the same fill (Algorithm 1), so the
classifier must see such holes in training. The settings come from the config and the command line
(``--cutout#max_spatial_size "[8,8]"``). ``RandCoarseDropoutd`` takes some bad values silently: a
probability of 2 is clipped to 1 and a negative one to 0 (Cutout off), and it fails on others with
numpy's bare ``low >= high`` (``max_holes < holes``, ``max_spatial_size < spatial_size``) at the first
training batch. Here each is refused when the config is parsed, with the setting named.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from monai.transforms import RandCoarseDropoutd

from custom.settings import integer_at_least

__all__ = ["cutout"]


def _sizes(value: object, name: str) -> list[int]:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    if values is None or len(values) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise ValueError(f"cutout {name} must be two integers >= 1 (rows, columns in pixels), got {value!r}")
    return [int(v) for v in values]


def cutout(
    keys: str | Sequence[str],
    holes: int,
    max_holes: int,
    spatial_size: Sequence[int],
    max_spatial_size: Sequence[int],
    fill_value: float,
    prob: float,
) -> RandCoarseDropoutd:
    """Cutout of ``holes`` to ``max_holes`` rectangles per image, each ``spatial_size`` to
    ``max_spatial_size`` pixels, filled with ``fill_value``, applied with probability ``prob``; the
    same rectangles cut through every channel (all slices of a 2.5D mini-volume).

    Args:
        keys: the image key(s).
        holes: the fewest rectangles, at least 1.
        max_holes: the most rectangles, at least ``holes``.
        spatial_size: the smallest rectangle (rows, columns), each at least 1 pixel.
        max_spatial_size: the largest rectangle, each side at least ``spatial_size``'s.
        fill_value: the value holes get, after the HU window (the teacher masks with the same value).
        prob: the chance an image is cut, in [0, 1].

    Returns:
        The ``RandCoarseDropoutd`` transform.

    Raises:
        ValueError: a setting out of those ranges, named.
    """
    holes = integer_at_least(holes, "cutout holes", 1)
    max_holes = integer_at_least(max_holes, "cutout max_holes", 1)
    if max_holes < holes:
        raise ValueError(f"cutout max_holes ({max_holes}) must be >= holes ({holes})")
    smallest = _sizes(spatial_size, "spatial_size")
    largest = _sizes(max_spatial_size, "max_spatial_size")
    if any(big < small for small, big in zip(smallest, largest)):
        raise ValueError(f"cutout max_spatial_size {largest} must be >= spatial_size {smallest} on each side")
    if isinstance(prob, bool) or not isinstance(prob, numbers.Real) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutout prob must be a number in [0, 1], got {prob!r}")
    if isinstance(fill_value, bool) or not isinstance(fill_value, numbers.Real) or not math.isfinite(fill_value):
        raise ValueError(f"cutout fill_value must be a finite number, got {fill_value!r}")
    return RandCoarseDropoutd(
        keys=keys, holes=holes, max_holes=max_holes, spatial_size=smallest, max_spatial_size=largest,
        fill_value=float(fill_value), prob=float(prob),
    )
