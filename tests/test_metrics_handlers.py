"""Tests of custom.metrics.handlers: a tiny SupervisedEvaluator run with MetricsSaver, and a 2-rank gather."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import MetricsSaver, from_engine

from custom.metrics import (
    REPORT_KEYS,
    ClusterCounts,
    ClusterMatchingMetric,
    ClusterMatchingMetricHandler,
    match_clusters,
)

SPATIAL = (16, 12, 6)  # MONAI layout (X, Y, Z)


def _studies(n: int, seed: int = 0) -> list[dict[str, MetaTensor]]:
    """``image`` = a probability map (the identity network turns it into ``pred``), ``label`` = reference."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        ref = np.zeros(SPATIAL, np.float32)
        ref[2:6, 2:6, 1:3] = 1
        ref[10:14, 6:10, 3:5] = 1
        prob = np.zeros(SPATIAL, np.float32)
        prob[3:5, 3:5, 1:3] = 0.9  # hits PE 1
        if i % 2:
            prob[11:13, 7:9, 4] = 0.8  # hits PE 2 on odd studies
        prob[rng.integers(0, 16), 11, 5] = 0.7  # one FP in a corner row away from both PEs
        meta = {"filename_or_obj": f"study{i}.nii.gz"}
        items.append({"image": MetaTensor(prob[None], meta=meta), "label": MetaTensor(ref[None], meta=meta)})
    return items


def _expected(items: list[dict[str, MetaTensor]], strict: bool = False) -> list[ClusterCounts]:
    return [
        match_clusters(item["image"][0].numpy() >= 0.5, item["label"][0].numpy(), strict=strict, slice_axis=2)
        for item in items
    ]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_handler_in_supervised_evaluator_with_metrics_saver(tmp_path, batch_size):
    items = _studies(3)
    transform = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(items), batch_size=batch_size),
        network=torch.nn.Identity(),
        key_val_metric={"val_cluster_f1": ClusterMatchingMetricHandler(output_transform=transform)},
        additional_metrics={
            "val_cluster_sensitivity": ClusterMatchingMetricHandler(
                output_transform=transform, key="sensitivity", save_details=False
            ),
            "val_fp_per_study": ClusterMatchingMetricHandler(
                output_transform=transform, key="fp_per_study", save_details=False
            ),
            "val_strict_f1": ClusterMatchingMetricHandler(output_transform=transform, strict=True),
        },
        val_handlers=[
            MetricsSaver(
                save_dir=str(tmp_path),
                metrics="*",
                metric_details="*",
                batch_transform=lambda batch: [item["image"].meta for item in batch],
            )
        ],
    )
    evaluator.run()
    expected = _expected(items)
    pooled = sum(expected, ClusterCounts())
    metrics = evaluator.state.metrics
    assert pooled == ClusterCounts(tp=4, fp=3, fn=2)
    assert metrics["val_cluster_f1"] == pytest.approx(pooled.f1)
    assert metrics["val_cluster_sensitivity"] == pytest.approx(pooled.sensitivity)
    assert metrics["val_fp_per_study"] == pytest.approx(1.0)
    assert metrics["val_strict_f1"] == pytest.approx(sum(_expected(items, strict=True), ClusterCounts()).f1)
    assert evaluator.state.best_metric == pytest.approx(pooled.f1)

    with open(tmp_path / "val_cluster_f1_raw.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "class0", "class1", "class2", "class3", "class4", "class5", "mean"]
    assert [r[0] for r in rows[1:]] == ["study0.nii.gz", "study1.nii.gz", "study2.nii.gz"]
    for row, counts in zip(rows[1:], expected):
        tp, fp, fn, sensitivity, ppv, f1 = (float(v) for v in row[1:7])
        assert (tp, fp, fn) == (counts.tp, counts.fp, counts.fn)
        assert (sensitivity, ppv, f1) == pytest.approx((counts.sensitivity, counts.ppv, counts.f1), abs=1e-4)
    assert (tmp_path / "val_strict_f1_raw.csv").is_file()
    assert not (tmp_path / "val_cluster_sensitivity_raw.csv").exists()
    saved = dict(csv.reader(open(tmp_path / "metrics.csv")))
    assert float(saved["val_cluster_sensitivity"]) == pytest.approx(4 / 6)


def test_handler_rejects_unknown_key_and_reports_nan_without_pe():
    with pytest.raises(ValueError, match="key must be one of"):
        ClusterMatchingMetricHandler(key="dice")
    assert set(REPORT_KEYS) <= set(ClusterCounts().as_dict())
    metric = ClusterMatchingMetric()
    metric(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 4))
    report = metric.aggregate()
    assert report["tp"] == report["fp"] == report["fn"] == 0
    assert math.isnan(report["sensitivity"]) and math.isnan(report["f1"]) and report["fp_per_study"] == 0.0


def _rank_worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        items = _studies(3, seed=7)[rank::world_size]  # rank 0: studies 0, 2; rank 1: study 1 (uneven)
        metric = ClusterMatchingMetric()
        for item in items:
            metric([item["image"]], [item["label"]])
        results[rank] = (metric.aggregate(), metric.get_buffer().shape[0])
    finally:
        dist.destroy_process_group()


def test_metric_gathers_counts_across_two_ranks(tmp_path):
    """Two CPU (gloo) ranks with uneven shares: both aggregate all three studies (forked: ~1 s, not ~30 s)."""
    with mp.Manager() as manager:
        results = manager.dict()
        arguments = (2, str(tmp_path / "init"), results)
        mp.start_processes(_rank_worker, args=arguments, nprocs=2, join=True, start_method="fork")
        results = dict(results)
    pooled = sum(_expected(_studies(3, seed=7)), ClusterCounts()).as_dict(n_studies=3)
    for rank in (0, 1):
        report, n_rows = results[rank]
        assert n_rows == 3
        assert report == pytest.approx(pooled)
