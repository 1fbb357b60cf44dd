"""Checks of numeric settings that reach the code from configs and command lines.

A value from ``--key value`` may be a bool, a float where a count is meant, or NaN; these checks turn
it into the right type or raise a ``ValueError`` that names the setting, before it can fail late (in
the middle of a cohort) or silently change a result.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["finite_number", "integer_at_least"]


def integer_at_least(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``.

    Raises:
        ValueError: a bool, a non-integer (2.5, "3") or a value below ``minimum``, naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def finite_number(value: object, name: str, minimum: float, exclusive: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> ``minimum`` when ``exclusive``).

    Raises:
        ValueError: a bool, a non-number, NaN, an infinity or a value out of range, naming ``name``.
    """
    in_range = (
        not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
        and (value > minimum if exclusive else value >= minimum)
    )
    if not in_range:
        raise ValueError(f"{name} must be a finite number {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    return float(value)
