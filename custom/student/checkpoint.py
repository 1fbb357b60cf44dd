"""A resumable training checkpoint at one fixed path, rewritten atomically.

MONAI's ``CheckpointSaver`` names interval checkpoints after the epoch or iteration, so a config
cannot point a ``CheckpointLoader`` at "the latest one"; ignite's ``Checkpoint`` with a fixed
file name deletes the previous file before writing the next. This handler writes
``checkpoint.pt`` every ``interval`` iterations and at the end of training through
``custom.io.atomic``: an interruption at any moment leaves the previous complete checkpoint, and
``CheckpointLoader(load_path=".../checkpoint.pt", load_dict=<the same dict>)`` resumes from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from custom.io.atomic import atomic_path
from custom.io.errors import InputError

__all__ = ["LatestCheckpointSaver", "check_pretrained_checkpoint"]


class LatestCheckpointSaver:
    """Save ``{name: obj.state_dict()}`` to one file every ``interval`` iterations and on completion.

    Args:
        save_path: the checkpoint file, e.g. ``models/checkpoint.pt``.
        save_dict: objects with ``state_dict()`` (network, optimizer, lr scheduler, trainer). A
            ``DistributedDataParallel``/``DataParallel`` network is saved unwrapped, so the checkpoint
            loads in single-process runs too.
        interval: iterations between saves.

    Only rank 0 writes when ``torch.distributed`` is initialised.
    """

    def __init__(self, save_path: str | os.PathLike, save_dict: Mapping[str, Any], interval: int) -> None:
        if interval < 1:
            raise ValueError(f"interval must be a positive number of iterations, got {interval}")
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save")
        self.save_path = os.fspath(save_path)
        self.save_dict = dict(save_dict)
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        """Register the saves on ``engine`` (every ``interval`` iterations, and at completion)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the checkpoint now."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        with atomic_path(self.save_path) as tmp:
            torch.save(state, tmp)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


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
