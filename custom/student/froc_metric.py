"""FROC score of an evaluation run, as an Ignite metric for the student's ``evaluate`` config.

The per-study work (candidate detections, their confidence, which PE each one finds) is
``custom.metrics.froc.score_detections``; this class only collects those per-study scores over an
evaluation epoch (and across ranks), then reports the average sensitivity at the FP-per-study
rates of ``custom.metrics.froc.FP_RATES`` and, optionally, writes the whole curve as JSON.
It is an ``ignite.metrics.Metric`` rather than a MONAI ``CumulativeIterationMetric`` because a
study contributes a variable number of scores, which MONAI's fixed-width buffers cannot hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric

from custom.distributed import all_gather_list, is_main_process
from custom.io.atomic import write_json_atomic
from custom.metrics.froc import FP_RATES, DetectionScores, average_sensitivity, froc_from_scores, score_detections, sensitivity_at

__all__ = ["FROCMetricHandler"]


class FROCMetricHandler(Metric):
    """Average FROC sensitivity over an evaluation epoch (attach as a key or additional metric).

    Args:
        threshold: candidates are the 26-connected components of ``prob >= threshold``.
        reduction: a detection's confidence, ``"max"`` (paper-style, default) or ``"mean"`` probability inside it.
        fp_rates: false positives per study at which sensitivity is averaged (default 0.125 ... 8).
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``: lists of channel-first ``(C, X, Y, Z)`` tensors or
            batch-first ``(B, C, X, Y, Z)`` tensors; ``C`` is 1 (PE probability) or 2 (background, PE).
        curve_path: if given, rank 0 writes ``{"average_sensitivity", "fp_rates", "sensitivity_at_fp_rates",
            "fp_per_study", "sensitivity", "thresholds", "n_studies", "n_references"}`` there at each compute.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        reduction: str = "max",
        fp_rates: Sequence[float] = FP_RATES,
        output_transform: Callable = lambda x: x,
        curve_path: str | os.PathLike | None = None,
    ) -> None:
        self.threshold = float(threshold)
        self.reduction = reduction
        self.fp_rates = tuple(float(r) for r in fp_rates)
        self.curve_path = None if curve_path is None else os.fspath(curve_path)
        self._scores: list[DetectionScores] = []
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        """Forget the studies of the previous epoch."""
        self._scores = []

    def update(self, output: Sequence[Any]) -> None:
        """Score the detections of every study of one batch.

        Args:
            output: ``(y_pred, y)`` after ``output_transform``.
        """
        y_pred, y = output
        for prob, ref in zip(_studies(y_pred, "y_pred"), _studies(y, "y")):
            if prob.shape != ref.shape:
                raise ValueError(f"y_pred and y differ in shape: {prob.shape} vs {ref.shape}")
            self._scores.append(score_detections(prob, ref != 0, self.threshold, self.reduction))

    def compute(self) -> float:
        """The average sensitivity at ``fp_rates`` over every study seen (and every rank); NaN without PE."""
        scores = self._gathered_scores()
        if not scores:
            raise ValueError("FROCMetricHandler has no study to score; run the evaluator on data first.")
        result = froc_from_scores(scores)
        score = average_sensitivity(result, self.fp_rates)
        if self.curve_path is not None and is_main_process():
            write_json_atomic(
                self.curve_path,
                {
                    "average_sensitivity": score,
                    "fp_rates": list(self.fp_rates),
                    "sensitivity_at_fp_rates": sensitivity_at(result, self.fp_rates).tolist(),
                    "fp_per_study": result.fp_per_study.tolist(),
                    "sensitivity": result.sensitivity.tolist(),
                    "thresholds": result.thresholds.tolist(),
                    "n_studies": result.n_studies,
                    "n_references": result.n_references,
                },
            )
        return score

    def _gathered_scores(self) -> list[DetectionScores]:
        return all_gather_list(self._scores)


def _studies(batch: Any, name: str) -> list[np.ndarray]:
    """3D foreground arrays of a batch: channel 0 of one-channel, channel 1 of two-channel studies."""
    items = list(batch) if isinstance(batch, (list, tuple)) else list(torch.as_tensor(batch))
    studies = []
    for item in items:
        array = torch.as_tensor(item).detach().float().cpu().numpy()
        if array.ndim != 4 or array.shape[0] not in (1, 2):
            raise ValueError(f"{name}: expected channel-first (C, X, Y, Z) with C 1 or 2, got shape {array.shape}")
        studies.append(array[array.shape[0] - 1])
    return studies
