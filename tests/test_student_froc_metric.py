"""FROC score as an Ignite metric (custom.student.froc_metric)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from custom.metrics.froc import average_sensitivity, froc_curve
from custom.student.froc_metric import FROCMetricHandler


def _study(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = np.zeros((12, 12, 8), dtype=np.float32)
    ref = np.zeros((12, 12, 8), dtype=np.uint8)
    ref[2:4, 2:4, 2:4] = 1
    ref[8:10, 8:10, 5:7] = 1
    prob[2:4, 2:4, 2:4] = rng.uniform(0.5, 1.0)  # finds the first PE
    prob[6, 1, 1] = rng.uniform(0.5, 1.0)  # a false positive
    if seed % 2:
        prob[8, 8, 5] = rng.uniform(0.5, 1.0)  # odd studies find the second PE
    return prob, ref


def _evaluate(metric: FROCMetricHandler, studies: list[tuple[np.ndarray, np.ndarray]], two_channels: bool) -> float:
    def step(engine: Engine, batch: tuple[np.ndarray, np.ndarray]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        prob, ref = (torch.as_tensor(a)[None] for a in batch)
        pred = torch.cat([1 - prob, prob]) if two_channels else prob
        return [pred], [ref]

    engine = Engine(step)
    metric.attach(engine, "froc")
    engine.run(studies, max_epochs=1)
    return engine.state.metrics["froc"]


@pytest.mark.parametrize("two_channels", [False, True])
def test_matches_the_metrics_module(tmp_path, two_channels: bool) -> None:
    studies = [_study(s) for s in range(5)]
    expected = average_sensitivity(froc_curve(studies, threshold=0.5))
    curve_path = tmp_path / "froc.json"
    score = _evaluate(FROCMetricHandler(threshold=0.5, curve_path=curve_path), studies, two_channels)
    assert score == pytest.approx(expected)
    assert 0.0 < score < 1.0
    curve = json.loads(curve_path.read_text())
    assert curve["average_sensitivity"] == pytest.approx(expected)
    assert curve["n_studies"] == 5 and curve["n_references"] == 10
    assert len(curve["sensitivity_at_fp_rates"]) == 7
    assert curve["fp_per_study"] == sorted(curve["fp_per_study"])


def test_no_reference_pe_gives_nan_and_no_study_is_an_error() -> None:
    prob = np.zeros((6, 6, 6), dtype=np.float32)
    prob[1, 1, 1] = 0.9
    assert np.isnan(_evaluate(FROCMetricHandler(), [(prob, np.zeros_like(prob, dtype=np.uint8))], False))
    with pytest.raises(ValueError, match="no study"):
        FROCMetricHandler().compute()


def test_shape_mismatch_is_rejected() -> None:
    metric = FROCMetricHandler()
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(([torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 4, 4, 3)]))
    with pytest.raises(ValueError, match="channel-first"):
        metric.update(([torch.zeros(3, 4, 4, 4)], [torch.zeros(1, 4, 4, 4)]))
