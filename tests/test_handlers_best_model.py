"""The best validation metric survives a resumed training run (custom.handlers.BestModelRecord).

The wiring is the bundles': a trainer with a ``ValidationHandler``, an evaluator whose key metric ranks
the models and whose ``CheckpointSaver(save_key_metric=True)`` writes ``model.pt``, a training
checkpoint loaded by ``CheckpointLoader``. The key metric is scripted per epoch (0.9, 0.5, 0.6): the
best model is epoch 1's, in an uninterrupted run and in one resumed after epoch 1.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader, CheckpointSaver, ValidationHandler

from custom.handlers import BestModelRecord

SCORES = {1: 0.9, 2: 0.5, 3: 0.6}


class _Scripted(Metric):
    """The key metric of each evaluation is ``SCORES[epoch]`` (the evaluator's epoch is the trainer's)."""

    def reset(self) -> None:
        pass

    def update(self, output) -> None:
        pass

    def compute(self) -> float:
        return 0.0

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = SCORES[engine.state.epoch]


def _run(models, epochs: int, stop_after: int | None = None) -> dict:
    """One training process: train until ``epochs`` (resuming from ``models/checkpoint.pt``), or die after ``stop_after``."""
    torch.manual_seed(epochs)
    network = torch.nn.Linear(2, 1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=[{"image": torch.ones(1, 2), "label": torch.ones(1, 1)}],
        network=network, key_val_metric={"val_auc": _Scripted()},
    )
    saver = CheckpointSaver(str(models), {"model": network}, save_key_metric=True, key_metric_filename="model.pt")
    saver.attach(evaluator)

    def step(engine: Engine, batch) -> float:
        with torch.no_grad():
            network.weight.add_(1.0)  # a different model every epoch
        return 0.0

    trainer = Engine(step)
    ValidationHandler(interval=1, validator=evaluator).attach(trainer)
    record = BestModelRecord(models / "best_metric.json", evaluator, models / "model.pt", saver)
    checkpoint = models / "checkpoint.pt"
    if checkpoint.is_file():
        CheckpointLoader(str(checkpoint), {"model": network, "trainer": trainer}).attach(trainer)
    record.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: torch.save({"model": network.state_dict(), "trainer": e.state_dict()}, checkpoint))
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run([0], max_epochs=epochs)
    return {"best": evaluator.state.best_metric, "best_epoch": evaluator.state.best_metric_epoch,
            "weight": torch.load(models / "model.pt", weights_only=True)["weight"].clone()}


def test_a_resumed_run_keeps_the_better_model_saved_before_the_interruption(tmp_path) -> None:
    straight = _run(tmp_path / "straight", 3)
    assert (straight["best"], straight["best_epoch"]) == (0.9, 1)

    first = _run(tmp_path / "resumed", 3, stop_after=1)
    resumed = _run(tmp_path / "resumed", 3)
    assert (resumed["best"], resumed["best_epoch"]) == (0.9, 1)  # not the 0.6 of epoch 3
    torch.testing.assert_close(resumed["weight"], first["weight"], rtol=0, atol=0)
    torch.testing.assert_close(resumed["weight"], straight["weight"], rtol=0, atol=0)
    assert json.loads((tmp_path / "resumed" / "best_metric.json").read_text())["epoch"] == 1


def test_a_better_model_after_the_resume_replaces_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(SCORES, 3, 0.95)
    _run(tmp_path, 3, stop_after=1)
    resumed = _run(tmp_path, 3)
    assert (resumed["best"], resumed["best_epoch"]) == (0.95, 3)
    assert json.loads((tmp_path / "best_metric.json").read_text())["value"] == 0.95


@pytest.mark.parametrize("damage", ["rewritten", "missing", "no record"])
def test_weights_the_record_does_not_describe_are_replaced_as_before(tmp_path, damage) -> None:
    first = _run(tmp_path, 3, stop_after=1)
    model = tmp_path / "model.pt"
    if damage == "rewritten":  # the interruption came between the weights and their record
        torch.save({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}, model)
        os.utime(model, ns=(1, 1))
    elif damage == "missing":
        model.unlink()
    else:
        (tmp_path / "best_metric.json").unlink()
    resumed = _run(tmp_path, 3)
    assert (resumed["best"], resumed["best_epoch"]) == (0.6, 3)  # the resumed run's own best, as before the record
    assert not torch.equal(resumed["weight"], first["weight"])


def test_a_run_from_scratch_ignores_the_record_of_an_earlier_run(tmp_path, monkeypatch) -> None:
    _run(tmp_path, 3)  # an earlier, finished run in the same folder: best 0.9
    (tmp_path / "checkpoint.pt").unlink()  # a new run from iteration 0
    monkeypatch.setitem(SCORES, 1, 0.1)
    _run(tmp_path, 3, stop_after=1)
    resumed = _run(tmp_path, 3)
    assert (resumed["best"], resumed["best_epoch"]) == (0.6, 3)  # competes with its own epoch 1 (0.1), not the old 0.9
