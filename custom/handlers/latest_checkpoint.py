"""A resumable training checkpoint at one fixed path, rewritten atomically.

MONAI's ``CheckpointSaver`` names interval checkpoints after the epoch or iteration, so a config
cannot point a ``CheckpointLoader`` at "the latest one"; ignite's ``Checkpoint`` with a fixed
file name deletes the previous file before writing the next. This handler writes
``checkpoint.pt`` every ``interval`` iterations and at the end of training through
``custom.io.atomic``: an interruption at any moment leaves the previous complete checkpoint, and
``CheckpointLoader(load_path=".../checkpoint.pt", load_dict=<the same dict>)`` resumes from it.

A save due at the last iteration of an epoch waits for the epoch's end handlers (the validation):
a checkpoint written before them (on ``ITERATION_COMPLETED``) marks the epoch as done, so a run
interrupted during that validation resumed in the next epoch and the epoch's model was never
validated, however good it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.distributed import is_main_process
from custom.io.atomic import atomic_path

__all__ = ["LatestCheckpointSaver"]


class LatestCheckpointSaver:
    """Save ``{name: obj.state_dict()}`` to one file every ``interval`` iterations and on completion.

    Args:
        save_path: the checkpoint file, e.g. ``models/checkpoint.pt``.
        save_dict: objects with ``state_dict()`` (network, optimizer, lr scheduler, trainer). A
            ``DistributedDataParallel``/``DataParallel`` network is saved unwrapped, so the checkpoint
            loads in single-process runs too.
        interval: iterations between saves.

    Only rank 0 writes when ``torch.distributed`` is initialised. Attach it after the trainer's
    ``ValidationHandler`` (the bundles attach it in ``initialize``): a save due at an epoch's last
    iteration is made on ``EPOCH_COMPLETED``, after the validation of that epoch.
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
        """Register the saves on ``engine`` (every ``interval`` iterations, after the epoch's end handlers at an epoch's end, and at completion)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self)

    @staticmethod
    def _ends_epoch(engine: Engine) -> bool:
        length = engine.state.epoch_length
        return bool(length) and engine.state.iteration % length == 0

    def _iteration_completed(self, engine: Engine) -> None:
        if not self._ends_epoch(engine):  # an epoch's last iteration is saved on EPOCH_COMPLETED
            self(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if self._ends_epoch(engine) and engine.state.iteration % self.interval == 0:
            self(engine)

    def __call__(self, engine: Engine) -> None:
        """Write the checkpoint now."""
        if not is_main_process():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        with atomic_path(self.save_path) as tmp:
            torch.save(state, tmp)


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj
