"""Per-study evaluation JSON (custom.student.evaluation_report) from the cluster-matching handler's details."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from custom.metrics.handlers import ClusterMatchingMetricHandler
from custom.student.evaluation_report import EvaluationReportWriter, study_uids_from_batch


def _study(found: bool, false_positive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ref = torch.zeros(1, 8, 8, 4)
    ref[0, 1:3, 1:3, 1] = 1
    pred = torch.zeros(1, 8, 8, 4)
    if found:
        pred[0, 1, 1, 1] = 0.9
    if false_positive:
        pred[0, 6, 6, 3] = 0.8
    return pred, ref


def test_report_pairs_rows_with_studies(tmp_path) -> None:
    studies = {"1.1": _study(True, False), "1.2": _study(False, True), "1.3": _study(True, True)}
    batches = [[{"study_uid": uid, "pred": p, "label": r}] for uid, (p, r) in studies.items()]

    def step(engine: Engine, batch: list[dict]) -> list[dict]:
        return batch

    engine = Engine(step)
    engine.state.metric_details = {}
    transform = lambda out: ([d["pred"] for d in out], [d["label"] for d in out])  # noqa: E731
    ClusterMatchingMetricHandler(output_transform=transform, save_details=True).attach(engine, "test_cluster_f1")
    path = tmp_path / "eval" / "metrics.json"
    EvaluationReportWriter(path, {"cluster": "test_cluster_f1"}).attach(engine)
    engine.run(batches, max_epochs=1)
    report = json.loads(path.read_text())
    assert report["n_studies"] == 3
    assert report["cluster"] == {"tp": 2, "fp": 2, "fn": 1, "sensitivity": pytest.approx(2 / 3), "ppv": 0.5,
                                 "f1": pytest.approx(4 / 7), "fp_per_study": pytest.approx(2 / 3)}
    assert report["metrics"]["test_cluster_f1"] == pytest.approx(4 / 7)
    assert report["per_study"]["1.1"]["cluster"]["tp"] == 1 and report["per_study"]["1.1"]["cluster"]["fp"] == 0
    assert report["per_study"]["1.2"]["cluster"] == {"tp": 0, "fp": 1, "fn": 1, "sensitivity": 0.0, "ppv": 0.0, "f1": 0.0,
                                                     "fp_per_study": 1.0}


def test_missing_details_are_an_error(tmp_path) -> None:
    engine = Engine(lambda e, b: b)
    engine.state.metric_details = {}
    EvaluationReportWriter(tmp_path / "m.json", {"cluster": "absent"}).attach(engine)
    with pytest.raises(KeyError, match="save_details=True"):
        engine.run([[{"study_uid": "1"}]], max_epochs=1)
    with pytest.raises(ValueError, match="at least one"):
        EvaluationReportWriter(tmp_path / "m.json", {})


def test_uids_from_collated_and_decollated_batches() -> None:
    image = MetaTensor(torch.zeros(2, 1, 2, 2, 2), meta={"filename_or_obj": ["/d/images/a.nii.gz", "/d/images/b.nii.gz"]})
    assert study_uids_from_batch({"image": image}) == ["a", "b"]
    assert study_uids_from_batch({"image": image, "study_uid": ["1.2", "1.3"]}) == ["1.2", "1.3"]
    assert study_uids_from_batch([{"study_uid": "9"}, {"study_uid": "8"}]) == ["9", "8"]
