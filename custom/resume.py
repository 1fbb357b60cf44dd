"""Random streams of a training run resumed from a checkpoint.

A bundle seeds its random streams when the config is parsed (``monai.utils.set_determinism(seed)``,
the classifier's weighted sampler, the student's Mixup, the dataset's random transforms). A run
resumed from a checkpoint parses the same config, so it drew the samples, augmentations and Mixup
weights of the run's first epochs again: a classifier resumed at epoch 5 trained on epoch 1's slices
in epoch 1's order. :func:`reseed_when_resumed` reseeds them all with ``seed + iteration`` when the
run resumes, so a resumed run draws new samples, reproducibly for a given checkpoint. It does not
make the resumed run equal to an uninterrupted one (that would need every random state in the
checkpoint); a run from iteration 0 is left exactly as the seed made it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["reseed_when_resumed"]

logger = logging.getLogger(__name__)


def reseed_when_resumed(trainer: Engine, seed: int, streams: Sequence[Any] = ()) -> None:
    """Reseed the run's random streams with ``seed + iteration`` when ``trainer`` resumes from a checkpoint.

    Call it after attaching the trainer's ``CheckpointLoader`` (its ``STARTED`` handler must run first).

    Args:
        trainer: the training engine.
        seed: the config's ``seed``.
        streams: ``torch.Generator`` objects (a sampler's ``generator``; ``None`` is skipped) and
            objects whose randomizable parts MONAI's ``set_rnd`` reaches (a dataset with random
            transforms, ``custom.transforms.MixUpPrepareBatch``). The global Python, NumPy and torch
            generators are always reseeded (``monai.utils.set_determinism``).
    """

    def reseed(engine: Engine) -> None:
        iteration = int(engine.state.iteration)
        if iteration == 0:
            return
        resumed_seed = int(seed) + iteration
        set_determinism(seed=resumed_seed)
        for stream in streams:
            if stream is None:
                continue
            if isinstance(stream, torch.Generator):
                stream.manual_seed(resumed_seed)
            else:
                set_rnd(stream, resumed_seed)
        logger.info(f"resumed at iteration {iteration}: random streams reseeded with {resumed_seed}")

    trainer.add_event_handler(Events.STARTED, reseed)
