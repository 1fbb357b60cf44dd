"""A ``(centre, width)`` HU window as ``(low, high)`` bounds, checked (paper section 3.3: the student's
window is centre 100, width 400).

The student's configs, its contrast filter (``custom.transforms.contrast_adjacency``) and the deploy
app (``custom.deploy.model``) all scale through this one function. The window reaches them from the
command line (``--window "[100,400]"``) or a bundle config; a width that would invert the image or
leave it unscaled is refused here with the setting named.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["hu_window_bounds"]


def hu_window_bounds(window: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` HU of a ``(centre, width)`` window (paper: 100, 400 -> -100, 300).

    Raises:
        ValueError: not two finite numbers, or a width <= 0 (a negative width would invert the image,
            a zero width leave it unscaled).
    """
    values = list(window) if isinstance(window, Sequence) and not isinstance(window, str) else None
    if (values is None or len(values) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ValueError(f"window must be [centre, width] in HU, two finite numbers, got {window!r}")
    centre, width = float(values[0]), float(values[1])
    if width <= 0:
        raise ValueError(f"window width must be > 0 HU, got {width:g} (window {list(values)})")
    return centre - width / 2, centre + width / 2
