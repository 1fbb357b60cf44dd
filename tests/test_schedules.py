"""custom.schedules: the bundles' learning-rate schedules resume at the checkpoint's iteration of the
schedule the resuming run configures."""

from __future__ import annotations

import warnings

import pytest
import torch

from custom.schedules import WarmupCosine, WarmupLinearDecay, warmup_cosine, warmup_linear_decay

BUILDERS = {
    "cosine": lambda optimizer, total: warmup_cosine(optimizer, 1e-3, 1e-7, 3, total),
    "linear": lambda optimizer, total: warmup_linear_decay(optimizer, 1e-3, 1e-7, 3, total),
}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def _rates(optimizer, scheduler, iterations: int) -> list[float]:
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(iterations):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def _resumed(name: str, total: int, state: dict, optimizer_state: dict):
    """As ignite's CheckpointLoader does it: optimizer first, then the scheduler."""
    optimizer = _optimizer()
    scheduler = BUILDERS[name](optimizer, total)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state)
    return optimizer, scheduler


@pytest.mark.parametrize("name", BUILDERS)
def test_an_interrupted_run_resumes_on_the_same_rates(name):
    optimizer = _optimizer()
    uninterrupted = _rates(optimizer, BUILDERS[name](optimizer, 10), 10)
    optimizer = _optimizer()
    scheduler = BUILDERS[name](optimizer, 10)
    first = _rates(optimizer, scheduler, 4)
    optimizer, scheduler = _resumed(name, 10, scheduler.state_dict(), optimizer.state_dict())
    assert first[:-1] + _rates(optimizer, scheduler, 6) == pytest.approx(uninterrupted, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", BUILDERS)
def test_a_run_resumed_with_more_iterations_follows_the_longer_schedule(name):
    """PyTorch's load_state_dict had restored the old length: the cosine climbed back to the peak after
    the old end and the linear decay stayed at 1e-7 for every new iteration."""
    optimizer = _optimizer()
    longer = _rates(optimizer, BUILDERS[name](optimizer, 20), 20)
    optimizer = _optimizer()
    scheduler = BUILDERS[name](optimizer, 10)
    _rates(optimizer, scheduler, 10)
    optimizer, scheduler = _resumed(name, 20, scheduler.state_dict(), optimizer.state_dict())
    assert (scheduler.t_total if name == "cosine" else scheduler.total) == 20
    assert _rates(optimizer, scheduler, 10) == pytest.approx(longer[10:], rel=1e-9, abs=1e-15)


def test_linear_decay_matches_the_sequential_linear_schedulers_it_replaced_and_resumes_from_their_checkpoints():
    """Student checkpoints before 0.1.6 hold a SequentialLR of two LinearLR; the rates are the same and
    such a checkpoint resumes at its iteration."""
    def sequential(optimizer, warmup=3, total=10, final=1e-4):
        LinearLR = torch.optim.lr_scheduler.LinearLR
        return torch.optim.lr_scheduler.SequentialLR(optimizer, milestones=[warmup], schedulers=[
            LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup),
            LinearLR(optimizer, start_factor=1.0, end_factor=final, total_iters=total - warmup)])

    optimizer = _optimizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's own deprecation notes
        old = _rates(optimizer, sequential(optimizer), 12)
        optimizer = _optimizer()
        scheduler = sequential(optimizer)
        _rates(optimizer, scheduler, 5)
        state, optimizer_state = scheduler.state_dict(), optimizer.state_dict()
    optimizer = _optimizer()
    assert _rates(optimizer, WarmupLinearDecay(optimizer, 3, 10, 1e-4), 12) == pytest.approx(old, rel=1e-9, abs=1e-15)
    optimizer, scheduler = _resumed("linear", 10, state, optimizer_state)
    assert scheduler.last_epoch == 5 and optimizer.param_groups[0]["lr"] == pytest.approx(old[5], rel=1e-9)


def test_builders_return_the_resuming_classes():
    optimizer = _optimizer()
    assert isinstance(warmup_cosine(optimizer, 1e-3, 1e-7, 3, 10), WarmupCosine)
    assert isinstance(warmup_linear_decay(_optimizer(), 1e-3, 1e-7, 3, 10), WarmupLinearDecay)
