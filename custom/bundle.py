"""Helpers that bundle configs call so a bundle runs from any working directory."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

__all__ = ["bundle_root"]


def bundle_root() -> str:
    """The directory of the bundle whose configs are being run.

    ``monai.bundle run`` and ``ConfigWorkflow`` know the config files' folder
    (``config_root_path``) but do not put it into the config; this looks it up on the workflow
    that is evaluating the expression, so ``"bundle_root": "$custom.bundle_root()"`` resolves to
    ``<bundle>/`` whatever the working directory is. Outside a workflow (``ConfigParser`` used
    directly, e.g. ``verify_net_in_out``) it falls back to the working directory; an explicit
    ``--bundle_root`` override always wins because it replaces the expression.

    Returns:
        The absolute path of the bundle root.
    """
    from monai.bundle.workflows import ConfigWorkflow

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigWorkflow):
                root = Path(candidate.config_root_path)
                root = root.parent if root.name == "configs" else root
                return str(root.resolve())
            frame = frame.f_back
    finally:
        del frame
    return os.getcwd()
