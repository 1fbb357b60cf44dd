"""The bundle root of a config run through ``python -m monai.bundle run``, whatever the working directory.

MONAI does not hand the config file's location to the config itself: ``ConfigWorkflow`` keeps it in
``config_root_path`` and only puts the bundle folder on ``sys.path`` right before ``run``, and
``ConfigParser`` has no ``__file__``. Model Zoo bundles therefore default ``bundle_root`` to ``"."``
and ask for ``--bundle_root``. This module recovers it from the command line instead, with the
rule ``ConfigWorkflow.run`` uses: the parent of ``configs/`` (or the config's own folder), taken
from the first file of ``--config_file``. An explicit ``--bundle_root`` override still wins, and
callers that do not go through the CLI (``ConfigWorkflow`` in Python) get ``default``.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bundle_root_from_argv"]

_OPTION = "--config_file"


def bundle_root_from_argv(argv: Sequence[str] | None = None, default: str = ".") -> str:
    """Absolute bundle folder of the first ``--config_file`` on the command line.

    Args:
        argv: the command line (default: ``sys.argv``). The value may be one path, a Python/JSON
            list literal (``"['configs/train.json','configs/demo.json']"``) or a comma-separated list,
            as ``monai.bundle`` accepts; both ``--config_file X`` and ``--config_file=X`` are read.
        default: returned when no ``--config_file`` is given.

    Returns:
        The parent of the first config's folder when that folder is named ``configs``, else the
        folder itself, as an absolute path; or ``default``.
    """
    first = _first_config_file(list(sys.argv if argv is None else argv))
    if first is None:
        return default
    folder = Path(os.path.abspath(first)).parent
    return str(folder.parent if folder.name == "configs" else folder)


def _first_config_file(argv: list[str]) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == _OPTION and i + 1 < len(argv):
            value = argv[i + 1]
            break
        if arg.startswith(_OPTION + "="):
            value = arg[len(_OPTION) + 1 :]
            break
    if not value:
        return None
    text = value.strip()
    if text[:1] in "[(":
        try:
            parsed = ast.literal_eval(text)
            return str(parsed[0]) if parsed else None
        except (ValueError, SyntaxError):  # unquoted items, e.g. [configs/train.json,configs/demo.json]
            text = text.strip("[]()")
    return text.split(",")[0].strip().strip("'\"") or None
