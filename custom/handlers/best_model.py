"""The best validation metric of a training run, kept beside its best weights so that a resumed run competes with it.

MONAI's ``CheckpointSaver(save_key_metric=True)`` and the evaluator's ``best_metric`` live in memory
only. A run resumed from its training checkpoint started both afresh, so its first validation always
"improved": it replaced ``models/model.pt`` (and the classifier's ``models/threshold.json``) with the
resumed model, however much worse it scored than the model saved before the interruption.

:class:`BestModelRecord` writes ``{"key_metric", "value", "epoch", "model_bytes", "model_mtime_ns"}``
beside the weights after every validation that (re)wrote them. When the training run resumes
(``trainer.state.iteration > 0`` once its ``CheckpointLoader`` has run) it sets the evaluator's best
metric and the saver's record from it, so the resumed run replaces the weights only with a better
model, as the uninterrupted run would have. The record is trusted only while it describes the weights
on disk (their size and modification time): weights missing, or written after the record (an
interruption between the two writes), are replaced at the next validation, as before. A run that
starts from iteration 0 deletes the record of an earlier run in the same folder.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events

from custom.io.atomic import write_json_atomic

__all__ = ["BestModelRecord"]

logger = logging.getLogger(__name__)


def _stat(path: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of ``path``, or ``None`` when it does not exist."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return int(stat.st_size), int(stat.st_mtime_ns)


class BestModelRecord:
    """Keep the best key metric beside the best weights, and restore it when training resumes.

    Args:
        path: the record, e.g. ``models/best_metric.json``.
        evaluator: the validation evaluator; its key metric (``state.key_metric_name``) ranks the models.
        model_file: the weights its ``CheckpointSaver(save_key_metric=True)`` writes, e.g. ``models/model.pt``.
        saver: that ``CheckpointSaver``; its record of the best score is restored too (``None``:
            only the evaluator's ``best_metric`` and ``best_metric_epoch`` are).

    Attach with :meth:`attach` after the evaluator's handlers (so the weights are written before the
    record) and after the trainer's ``CheckpointLoader`` (so a resume is seen). Only rank 0 writes.
    """

    def __init__(self, path: str | os.PathLike, evaluator: Engine, model_file: str | os.PathLike, saver: Any | None = None) -> None:
        self.path = os.fspath(path)
        self.evaluator = evaluator
        self.model_file = os.fspath(model_file)
        self.saver = saver
        self._recorded: tuple[int, int] | None = None

    def attach(self, trainer: Engine) -> None:
        """Record after each validation of ``evaluator``; restore when ``trainer`` starts from a checkpoint."""
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._record)
        trainer.add_event_handler(Events.STARTED, self._restore)

    def _record(self, evaluator: Engine) -> None:
        if idist.get_rank() != 0:
            return
        stat = _stat(self.model_file)
        if stat is None or stat == self._recorded:  # the weights were not written by this validation
            return
        name = evaluator.state.key_metric_name
        write_json_atomic(
            self.path,
            {
                "key_metric": name,
                "value": float(evaluator.state.metrics[name]),
                "epoch": int(evaluator.state.epoch),
                "model_bytes": stat[0],
                "model_mtime_ns": stat[1],
            },
        )
        self._recorded = stat

    def _restore(self, trainer: Engine) -> None:
        if int(trainer.state.iteration) == 0:  # from scratch: an earlier run's record is not this run's
            if idist.get_rank() == 0 and os.path.isfile(self.path):
                os.remove(self.path)
            self._recorded = None
            return
        record, reason = self._trusted_record()
        if record is None:
            logger.warning(f"{self.path}: {reason}; the first validation of the resumed run replaces {self.model_file}")
            return
        self.evaluator.state.best_metric = float(record["value"])
        self.evaluator.state.best_metric_epoch = int(record["epoch"])
        if self.saver is not None:
            self.saver.load_state_dict({"_saved": [(float(record["value"]), os.path.basename(self.model_file))]})
        self._recorded = (int(record["model_bytes"]), int(record["model_mtime_ns"]))
        logger.info(f"resumed with the best {record['key_metric']} {record['value']:.4f} of epoch {record['epoch']} ({self.model_file})")

    def _trusted_record(self) -> tuple[dict[str, Any] | None, str]:
        """``(record, "")`` when the record stands for the weights on disk, else ``(None, why not)``."""
        if not os.path.isfile(self.path):
            return None, "no record of the best model (a run started before it was kept)"
        try:
            with open(self.path) as f:
                record = json.load(f)
            recorded = (int(record["model_bytes"]), int(record["model_mtime_ns"]))
            float(record["value"]), int(record["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, f"unreadable ({type(error).__name__}: {error})"
        if record.get("key_metric") != self.evaluator.state.key_metric_name:
            return None, f"records {record.get('key_metric')!r}, the evaluator ranks by {self.evaluator.state.key_metric_name!r}"
        if _stat(self.model_file) != recorded:
            return None, f"{self.model_file} is missing or was written after the record"
        return record, ""
