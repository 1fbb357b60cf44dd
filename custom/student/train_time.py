"""Training wall time of a bundle run, written beside the logs for the pipeline report (``train_minutes``)."""

from __future__ import annotations

import json
import logging
import math
import os
import time

from ignite.engine import Engine, Events

from custom.distributed import is_main_process
from custom.io.atomic import write_json_atomic

__all__ = ["TrainingTimeWriter"]

logger = logging.getLogger(__name__)


class TrainingTimeWriter:
    """Write ``{"minutes", "iterations", "seconds_per_iteration"}`` every ``interval`` iterations, at every epoch end and at completion.

    ``minutes`` is the wall time of training including validation. A run resumed from a checkpoint
    (``engine.state.iteration > 0`` when its first epoch starts, i.e. after every ``STARTED`` handler,
    the ``CheckpointLoader`` attached after this writer included) adds its time to the minutes already
    in the file. A run with nothing left to train (a finished run rerun) leaves the file as it is.

    Args:
        path: the JSON file, e.g. ``logs/train_minutes.json``. Only rank 0 writes.
        interval: also write every this many iterations (``None``: epoch ends only), so that an
            interrupted run that resumes from a checkpoint still counts the time it had spent.
    """

    def __init__(self, path: str | os.PathLike, interval: int | None = None) -> None:
        if interval is not None and interval < 1:
            raise ValueError(f"interval must be a positive number of iterations, got {interval}")
        self.path = os.fspath(path)
        self.interval = interval
        self._start = 0.0
        self._start_iteration: int | None = None
        self._previous_minutes = 0.0

    def attach(self, engine: Engine) -> None:
        """Start the clock when ``engine`` starts; write every ``interval`` iterations, at each epoch end and at completion."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._first_epoch_started)
        if self.interval is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._start_iteration = None
        self._previous_minutes = 0.0

    def _first_epoch_started(self, engine: Engine) -> None:
        """Read where the run starts once every ``STARTED`` handler, a checkpoint's loader included, has run."""
        if self._start_iteration is not None:
            return
        self._start_iteration = int(engine.state.iteration)
        if self._start_iteration > 0 and os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    minutes = float(json.load(f)["minutes"])
                if not math.isfinite(minutes) or minutes < 0:
                    raise ValueError(f"minutes {minutes}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                # a bad record costs the earlier minutes, not the resumed training
                logger.warning("%s: unreadable training time (%s: %s); counting from 0 minutes", self.path, type(error).__name__, error)
                minutes = 0.0
            self._previous_minutes = minutes

    def __call__(self, engine: Engine) -> None:
        """Write the record now (not before the first epoch has started: a finished run rerun keeps its record)."""
        if not is_main_process():
            return
        if self._start_iteration is None:
            return
        seconds = time.perf_counter() - self._start
        done = int(engine.state.iteration) - self._start_iteration
        write_json_atomic(
            self.path,
            {
                "minutes": self._previous_minutes + seconds / 60.0,
                "iterations": int(engine.state.iteration),
                "seconds_per_iteration": seconds / done if done > 0 else None,
            },
        )
