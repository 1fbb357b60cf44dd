"""JSON records of how an output was made, and what changed since (resumable runs, ``docs/conventions.md``).

A stage that skips finished outputs on a rerun must not keep outputs made another way: the teacher
records its settings in each study's ``clusters/<uid>.json`` (``custom.teacher.TeacherOutputs``), the
student in ``<uid>_clusters.json`` (``custom.student.outputs``). Both compare the record with the
current settings as they read back from JSON (:func:`as_read_back`) and redo a study that
:func:`settings_changes` finds different.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["as_read_back", "json_ready", "settings_changes"]


def json_ready(value: Any) -> Any:
    """``value`` for strict JSON: numpy scalars and arrays as Python values, tuples as lists, NaN and inf as ``None``.

    Args:
        value: nested dicts, lists, tuples, numpy values and Python scalars.

    Returns:
        The same structure with JSON types only (dict keys as strings).
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def as_read_back(value: Any) -> Any:
    """``value`` as it reads back from a JSON record (:func:`json_ready`, then a JSON round trip)."""
    return json.loads(json.dumps(json_ready(value)))


def settings_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The settings whose recorded value differs from the current one, described, or ``None``.

    Args:
        recorded: the settings read from a record.
        current: the current settings (compared :func:`as_read_back`).

    Returns:
        ``"key <recorded> -> <current>, ..."`` sorted by key (a key on one side only counts), or ``None``.
    """
    expected = as_read_back(dict(current))
    changed = sorted(key for key in set(expected) | set(recorded) if expected.get(key) != recorded.get(key))
    if not changed:
        return None
    return ", ".join(f"{key} {recorded.get(key)!r} -> {expected.get(key)!r}" for key in changed)
