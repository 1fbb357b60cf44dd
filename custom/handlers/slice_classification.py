"""Ignite handlers of the slice classifier: validation report and per-slice probability output.

Both collect per-slice predictions together with the slice's study and index, which MONAI's metric
handlers cannot see (they read only the engine output), and gather them across ranks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import min_version, optional_import

from custom.io.atomic import atomic_path, write_json_atomic
from custom.metrics.slice_level import within_level_auc

idist, _ = optional_import("ignite.distributed", "0.4.11", min_version)
Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")

__all__ = ["SliceClassificationReport", "SliceProbabilityWriter", "best_f1_threshold", "roc_auc"]

logger = logging.getLogger(__name__)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when one class is absent."""
    from monai.metrics import compute_roc_auc

    labels = np.asarray(labels).astype(np.int64)
    if labels.min(initial=0) == labels.max(initial=0):
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(np.asarray(scores, dtype=np.float64)), torch.as_tensor(labels)))


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The probability threshold with the best F1, and that F1.

    The threshold is the midpoint between the last included and the first excluded score, so it
    generalises a little better than a score value itself; when every slice is included, the
    midpoint between the lowest score and 0, the lowest probability (so it is never negative; only
    scores of exactly 0 then fall on the threshold, which the teacher's ``probability > threshold``
    calls negative).

    Returns:
        ``(threshold, f1)``; ``(0.5, 0.0)`` when there is no positive slice.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or scores.size == 0:
        return 0.5, 0.0
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    tp = np.cumsum(sorted_labels)
    predicted = np.arange(1, scores.size + 1)
    f1 = 2.0 * tp / (predicted + n_pos)
    # only cut between distinct scores
    distinct = np.r_[sorted_scores[1:] < sorted_scores[:-1], True]
    f1 = np.where(distinct, f1, -1.0)
    best = int(np.argmax(f1))
    upper = sorted_scores[best]
    lower = sorted_scores[best + 1] if best + 1 < scores.size else min(upper, 0.0)
    return float(0.5 * (upper + lower)), float(f1[best])


class _SliceCollector(ABC):
    """Collects ``(study, slice, probability, label)`` per iteration and gathers them across ranks."""

    def __init__(self, pred_key: str = "pred", label_key: str = "label") -> None:
        self.pred_key = pred_key
        self.label_key = label_key
        self._rows: list[tuple[str, int, float, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _reset(self, engine: Engine) -> None:
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(output, list):  # not decollated: split the batch dimension here
            from monai.data import decollate_batch

            batch, output = decollate_batch(batch), decollate_batch(output)
        for item_batch, item_output in zip(batch, output):
            pred = torch.as_tensor(item_output[self.pred_key]).detach().float().reshape(-1)
            label = item_batch.get(self.label_key)
            label = float(torch.as_tensor(label).reshape(-1)[0]) if label is not None else float("nan")
            index = int(torch.as_tensor(item_batch["slice_index"]).reshape(-1)[0])
            self._rows.append((str(item_batch["study_uid"]), index, float(pred[0]), label))

    def gathered(self) -> list[tuple[str, int, float, float]]:
        if idist.get_world_size() > 1:
            rows: list[Any] = idist.all_gather(self._rows)  # list of picklable objects from every rank
            if rows and isinstance(rows[0], list):
                rows = [row for rank_rows in rows for row in rank_rows]
        else:
            rows = self._rows
        # a DistributedSampler pads with repeated items: keep one row per slice
        return sorted({(r[0], r[1]): r for r in rows}.values())

    @abstractmethod
    def _epoch_completed(self, engine: Engine) -> None:
        """Summarise the epoch's rows (subclasses)."""


class SliceClassificationReport(_SliceCollector):
    """Validation report of the slice classifier (Condrea et al. 2025, Table 1 and section 3.4).

    At the end of each evaluation it writes into ``engine.state.metrics``: ``slice_auc``,
    ``slice_f1`` at the best threshold, ``slice_threshold``, ``study_auc`` (a study scored by its
    maximum slice probability), and ``within_level_auc``: the slice AUC over pairs of slices at the same
    relative level only (:func:`custom.metrics.within_level_auc`, a study's evaluated slices in index
    order), i.e. what the classifier knows beyond the level a slice lies at (0.5: nothing; NaN when no
    level holds both classes). When the evaluator's key metric has just improved, it saves
    ``{"threshold", "slice_auc", "slice_f1", "study_auc", "within_level_auc", "epoch"}`` to
    ``threshold_file`` beside the best weights; the teacher reads its threshold.

    With ``history_file`` it also keeps the validation curve: one record per evaluation with the
    minutes since the handler was created (the training run's start), for AUC-against-time plots.
    A run resumed from a checkpoint (``resume``) continues the file: it keeps the records of the
    epochs before its first evaluation, and its minutes go on from the last of them (the time of an
    interrupted, repeated partial epoch is not counted, as in an uninterrupted run).

    Args:
        threshold_file: JSON path for the threshold of the best epoch (``None``: not saved).
        history_file: JSON path of the validation curve (``None``: not kept).
        pred_key: key of the probability in the engine output.
        label_key: key of the slice label in the batch.
        resume: the training run resumes from a checkpoint (``False``: a new curve replaces the file).
    """

    def __init__(
        self,
        threshold_file: str | None = None,
        history_file: str | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        resume: bool = False,
    ) -> None:
        super().__init__(pred_key, label_key)
        self.threshold_file = threshold_file
        self.history_file = history_file
        self.summary: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._resume = bool(resume)
        self._minutes_before = 0.0
        self._start = time.perf_counter()

    def _earlier_history(self, epoch: int) -> list[dict[str, float]]:
        """The records of ``history_file`` before ``epoch`` (the resumed run's first evaluation)."""
        if not self.history_file or not os.path.isfile(self.history_file):
            return []
        try:
            with open(self.history_file) as f:
                records = json.load(f)
            return [r for r in records if int(r["epoch"]) < epoch]
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(f"{self.history_file}: unreadable ({type(error).__name__}: {error}); the resumed run starts a new curve")
            return []

    def _epoch_completed(self, engine: Engine) -> None:
        rows = self.gathered()
        studies = np.array([r[0] for r in rows])
        probs = np.array([r[2] for r in rows], dtype=np.float64)
        labels = np.array([r[3] for r in rows], dtype=np.float64)
        threshold, f1 = best_f1_threshold(probs, labels)
        # each study's slices in index order (``gathered`` sorts by study, then slice)
        per_study = [(probs[studies == s], labels[studies == s]) for s in sorted(set(studies.tolist()))]
        study_prob = np.array([p.max() for p, _ in per_study])
        study_label = np.array([y.max() for _, y in per_study])
        within = (within_level_auc([p for p, _ in per_study], [y for _, y in per_study])
                  if np.isfinite(probs).all() else None)  # a diverged network: NaN, as its other metrics
        self.summary = {
            "slice_auc": roc_auc(probs, labels),
            "slice_f1": f1,
            "slice_threshold": threshold,
            "study_auc": roc_auc(study_prob, study_label),
            "within_level_auc": float("nan") if within is None else within,
        }
        engine.state.metrics.update(self.summary)
        if self.history_file and idist.get_rank() == 0:
            if self._resume:  # the first evaluation of a resumed run: continue the curve before it
                self._resume = False
                self.history = self._earlier_history(int(engine.state.epoch)) + self.history
                self._minutes_before = float(self.history[-1]["minutes"]) if self.history else 0.0
            minutes = self._minutes_before + (time.perf_counter() - self._start) / 60.0
            self.history.append({"epoch": int(engine.state.epoch), "minutes": round(minutes, 3), **self.summary})
            write_json_atomic(self.history_file, self.history)
        improved = getattr(engine.state, "best_metric_epoch", -1) == engine.state.epoch
        if self.threshold_file and improved and idist.get_rank() == 0:
            write_json_atomic(
                self.threshold_file,
                {"threshold": threshold, **{k: v for k, v in self.summary.items() if k != "slice_threshold"}, "epoch": engine.state.epoch},
            )


class SliceProbabilityWriter(_SliceCollector):
    """Writes the per-slice PE probabilities of an inference run.

    Output: ``<output_dir>/slice_probabilities.csv`` (``StudyInstanceUID, slice_index, probability,
    label``) and ``<output_dir>/slice_probabilities.json`` (``{study: [p_0, p_1, ...]}`` in slice
    order), both written atomically by rank 0.

    Args:
        output_dir: destination folder.
        pred_key: key of the probability in the engine output.
        label_key: key of the slice label in the batch (written when present).
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label") -> None:
        super().__init__(pred_key, label_key)
        self.output_dir = output_dir

    def _epoch_completed(self, engine: Engine) -> None:
        rows = self.gathered()
        if idist.get_rank() != 0:
            return
        per_study: dict[str, list[float]] = defaultdict(list)
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["StudyInstanceUID", "slice_index", "probability", "label"])
        for study, index, prob, label in rows:
            per_study[study].append(prob)
            writer.writerow([study, index, f"{prob:.6f}", "" if np.isnan(label) else int(label)])
        os.makedirs(self.output_dir, exist_ok=True)
        with atomic_path(os.path.join(self.output_dir, "slice_probabilities.csv")) as tmp:
            tmp.write_text(text.getvalue())
        write_json_atomic(os.path.join(self.output_dir, "slice_probabilities.json"), dict(per_study))
