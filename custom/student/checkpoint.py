"""The fine-tuning run's starting weights, checked before training (paper section 3.3: fine-tuning starts
from the weakly supervised student). The training checkpoint itself is written by
``custom.handlers.LatestCheckpointSaver``.
"""

from __future__ import annotations

import os

from custom.io.errors import InputError

__all__ = ["check_pretrained_checkpoint"]


def check_pretrained_checkpoint(path: str | os.PathLike, ckpt_dir: str | os.PathLike) -> str:
    """The weights a fine-tuning run starts from, checked before training.

    Args:
        path: the weakly supervised model (``models/model.pt`` of the student's run).
        ckpt_dir: where the fine-tuning run writes its own ``model.pt`` and ``checkpoint.pt``.

    Returns:
        ``path``, unchanged.

    Raises:
        InputError: ``path`` is empty or missing, or it is one of the files the run would overwrite.
    """
    if not path:
        raise InputError("pretrained_checkpoint: not given; pass --pretrained_checkpoint <weakly supervised models/model.pt>")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: pretrained checkpoint not found; train the weakly supervised student first")
    own = {os.path.realpath(os.path.join(os.fspath(ckpt_dir), name)) for name in ("model.pt", "checkpoint.pt")}
    if os.path.realpath(path) in own:
        raise InputError(
            f"{path}: the fine-tuning run would overwrite its own starting weights; give it another --bundle_root or --ckpt_dir"
        )
    return path
