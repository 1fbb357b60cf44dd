"""Reading ``W/results.json``, the numbers of one pipeline run, for the report.

Every key of ``results.json`` is optional. A section (``classifier``, ``teacher``, ...) that is absent,
``null``, a string, or a mapping with a ``"reason"`` key and nothing else is *not run*: the report says
"not run in this profile" with that reason. A number that is ``null`` or NaN is *not computed* and is
shown as ``n/a``; anything else where a number is expected is a :class:`ResultsValueError` (an
:class:`~custom.io.errors.InputError`) naming the key.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.io.errors import InputError

__all__ = ["NotRun", "ResultsValueError", "load_results", "number", "numbers", "records", "section"]


class ResultsValueError(InputError):
    """A value of ``results.json`` has the wrong type; the message names its key (e.g. ``teacher.runs.1.best``)."""


@dataclass(frozen=True)
class NotRun:
    """A part of the report whose stage did not run (or produced nothing) in this profile.

    Args:
        reason: why, when ``results.json`` says so.
    """

    reason: str | None = None

    @property
    def text(self) -> str:
        """The sentence the report shows in place of the missing part."""
        return "not run in this profile" + (f": {self.reason}" if self.reason else ".")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json``.

    Args:
        path: the JSON file written by the pipeline (``W/results.json``).

    Returns:
        The results as a dict.

    Raises:
        InputError: the file is missing, is not JSON, or is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results file not found (run the pipeline's 'results' stage first)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(results, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return results


def section(parent: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any] | NotRun:
    """The mapping ``parent[key]``, or :class:`NotRun` when it is missing or only gives a reason.

    Args:
        parent: the mapping that holds the section.
        key: its key.
        where: dotted path of ``parent`` in ``results.json``, for error messages.

    Returns:
        The section, or ``NotRun(reason)``.

    Raises:
        ResultsValueError: the value is neither a mapping, a string nor null.
    """
    value = parent.get(key)
    if value is None:
        return NotRun()
    if isinstance(value, str):
        return NotRun(value)
    if not isinstance(value, Mapping):
        raise ResultsValueError(f"{_join(where, key)} is a {type(value).__name__}, expected an object")
    if set(value) <= {"reason", "status"} and value:
        reason = value.get("reason")
        return NotRun(str(reason) if reason is not None else None)
    return dict(value)


def number(parent: Mapping[Any, Any] | NotRun, key: str | int, where: str = "") -> float | None:
    """The number ``parent[key]``; ``None`` when missing, ``null``, NaN, or the section did not run.

    Args:
        parent: the mapping that holds the number.
        key: its key.
        where: dotted path of ``parent`` in ``results.json``, for error messages.

    Returns:
        The value as a float, or ``None`` when it was not computed.

    Raises:
        ResultsValueError: the value is not a number (a string, a list, a boolean ...).
    """
    if isinstance(parent, NotRun):
        return None
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsValueError(f"{_join(where, key)} is {value!r}, expected a number")
    value = float(value)
    return None if math.isnan(value) else value


def numbers(parent: Mapping[str, Any], key: str, where: str = "") -> list[float | None]:
    """The list of numbers ``parent[key]`` (empty when missing); ``null``/NaN entries become ``None``.

    Raises:
        ResultsValueError: the value is not a list of numbers.
    """
    values = parent.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise ResultsValueError(f"{_join(where, key)} is {values!r}, expected a list of numbers")
    return [number(dict(enumerate(values)), i, _join(where, key)) for i in range(len(values))]


def records(parent: Mapping[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
    """The list of objects ``parent[key]`` (empty when missing).

    Raises:
        ResultsValueError: the value is not a list of objects.
    """
    values = parent.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, Mapping) for v in values):
        raise ResultsValueError(f"{_join(where, key)} is {values!r:.200}, expected a list of objects")
    return [dict(v) for v in values]


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key
