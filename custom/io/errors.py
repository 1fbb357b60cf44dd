"""The one exception type for bad input: it always names the file or study and the problem."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input data (corrupt or mixed DICOM, missing slices, bad CSV rows, wrong shapes, NaN).

    The message starts with the offending file or study, e.g. ``"<path>: two slices at z=12.5 mm"``.
    """
