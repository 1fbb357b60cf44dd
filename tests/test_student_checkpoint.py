"""Resumable checkpoint at a fixed path and the fine-tuning start check (custom.student.checkpoint)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from custom.io.errors import InputError
from custom.handlers import LatestCheckpointSaver
from custom.student.checkpoint import check_pretrained_checkpoint


def _trainer(net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Engine:
    def step(engine: Engine, batch: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        optimizer.step()
        return float(loss)

    return Engine(step)


def test_saves_every_interval_and_resumes(tmp_path) -> None:
    path = tmp_path / "models" / "checkpoint.pt"
    net = torch.nn.DataParallel(torch.nn.Linear(3, 1))  # saved unwrapped
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)  # momentum: optimizer state to restore
    trainer = _trainer(net, optimizer)
    saver = LatestCheckpointSaver(path, {"model": net, "optimizer": optimizer, "trainer": trainer}, interval=3)
    saved_at = []
    saver.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: saved_at.append(e.state.iteration) if path.is_file() and not saved_at else None)
    trainer.run([torch.ones(2, 3)] * 5, max_epochs=2)  # 10 iterations: saves at 3, 6, 9 and at completion
    assert saved_at == [3]
    state = torch.load(path, weights_only=False)
    assert set(state) == {"model", "optimizer", "trainer"}
    assert set(state["model"]) == {"weight", "bias"}  # no "module." prefix
    assert state["trainer"]["iteration"] == 10
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left

    for name, value in net.module.state_dict().items():  # saved at completion: the final weights
        torch.testing.assert_close(state["model"][name], value, rtol=0, atol=0)

    fresh = torch.nn.Linear(3, 1)
    assert not torch.equal(fresh.weight, net.module.weight)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    resumed = _trainer(fresh, fresh_optimizer)
    CheckpointLoader(load_path=str(path), load_dict={"model": fresh, "optimizer": fresh_optimizer, "trainer": resumed}).attach(resumed)
    restored = {}

    def record(engine: Engine) -> None:  # after the loader's own STARTED handler, before any step
        restored["model"] = {k: v.clone() for k, v in fresh.state_dict().items()}
        restored["momentum"] = [fresh_optimizer.state[p]["momentum_buffer"].clone() for p in fresh.parameters()]

    resumed.add_event_handler(Events.STARTED, record)
    resumed.run([torch.ones(2, 3)] * 5, max_epochs=3)
    assert resumed.state.iteration == 15  # went on from iteration 10, not from 0
    for name, value in net.module.state_dict().items():
        torch.testing.assert_close(restored["model"][name], value, rtol=0, atol=0)
    saved_momentum = [optimizer.state[p]["momentum_buffer"] for p in net.module.parameters()]
    assert all(m.abs().sum() > 0 for m in saved_momentum)
    for got, expected in zip(restored["momentum"], saved_momentum):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_save_at_an_epoch_end_waits_for_the_validation(tmp_path) -> None:
    """A run killed during the validation after epoch 1 must resume into epoch 1's end, so it validates that model."""
    path = tmp_path / "checkpoint.pt"
    net = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = _trainer(net, optimizer)
    validated = []

    def validate(engine: Engine) -> None:  # the ValidationHandler, attached before the saver (as in the bundles)
        if engine.state.epoch == 2:
            raise KeyboardInterrupt  # interrupted during the validation of epoch 2
        validated.append(torch.load(path, weights_only=False)["trainer"]["iteration"] if path.is_file() else None)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    LatestCheckpointSaver(path, {"model": net, "optimizer": optimizer, "trainer": trainer}, interval=2).attach(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.run([torch.ones(2, 3)] * 4, max_epochs=3)  # iterations 2 and 6 are interval saves inside epochs
    assert validated == [2]  # epoch 1 (iterations 1-4) was validated before the save of its last iteration
    assert torch.load(path, weights_only=False)["trainer"]["iteration"] == 6  # not 8: epoch 2 still needs its validation


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="interval"):
        LatestCheckpointSaver("x.pt", {"m": torch.nn.Linear(1, 1)}, interval=0)
    with pytest.raises(ValueError, match="save_dict"):
        LatestCheckpointSaver("x.pt", {}, interval=1)


def test_pretrained_checkpoint_must_exist_and_not_be_overwritten(tmp_path) -> None:
    weak = tmp_path / "student" / "models" / "model.pt"
    weak.parent.mkdir(parents=True)
    weak.write_bytes(b"weights")
    assert check_pretrained_checkpoint(str(weak), tmp_path / "finetuned" / "models") == str(weak)
    with pytest.raises(InputError, match="overwrite its own starting weights"):
        check_pretrained_checkpoint(str(weak), weak.parent)
    with pytest.raises(InputError, match="not found"):
        check_pretrained_checkpoint(str(tmp_path / "missing.pt"), tmp_path)
    with pytest.raises(InputError, match="not given"):
        check_pretrained_checkpoint("", tmp_path)
