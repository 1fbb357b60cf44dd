"""Learning-rate schedules of the bundles, built from config values and checked.

- classifier (paper section 3.1: AdamW with warmup and decay): :func:`warmup_cosine`, MONAI's
  ``WarmupCosineSchedule``;
- student (paper section 3.3: AdamW, warmup, then linear decay to 1e-7): :func:`warmup_linear_decay`.

Config values reach these functions from the command line (``--warmup_iterations 2000``,
``--epochs 2``). A value that would silently change the schedule is refused here with the setting
named: MONAI's ``WarmupCosineSchedule`` quietly shortens a warmup longer than the run to the run, so
the run ends inside its warmup, never at the peak rate and with no decay; a zero warmup had been a
``ZeroDivisionError`` in a config expression.
"""

from __future__ import annotations

import torch
from monai.optimizers import WarmupCosineSchedule

from custom.settings import finite_number, integer_at_least

__all__ = ["warmup_cosine", "warmup_linear_decay"]


def _checked_settings(
    learning_rate: float, final_learning_rate: float, warmup_iterations: int, total_iterations: int, total_name: str
) -> tuple[float, float, int, int]:
    """The four settings of a warmup-then-decay schedule as numbers, or a ``ValueError`` naming the bad one."""
    learning_rate = finite_number(learning_rate, "learning_rate", 0.0, exclusive=True)
    final_learning_rate = finite_number(final_learning_rate, "final_learning_rate", 0.0, exclusive=True)
    warmup = integer_at_least(warmup_iterations, "warmup_iterations", 1)
    total = integer_at_least(total_iterations, f"total_iterations ({total_name})", 2)
    if final_learning_rate > learning_rate:
        raise ValueError(f"final_learning_rate ({final_learning_rate:g}) must not exceed learning_rate ({learning_rate:g})")
    if warmup >= total:
        raise ValueError(
            f"warmup_iterations ({warmup}) must be fewer than the run's {total} iterations ({total_name}): "
            "the run would end inside its warmup, before the peak learning rate and with no decay"
        )
    return learning_rate, final_learning_rate, warmup, total


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    learning_rate: float,
    final_learning_rate: float,
    warmup_iterations: int,
    total_iterations: int,
) -> WarmupCosineSchedule:
    """MONAI's ``WarmupCosineSchedule``: linear warmup from 0 to ``learning_rate``, then cosine decay,
    never below ``final_learning_rate`` (one scheduler step per iteration).

    Args:
        optimizer: the optimizer, whose learning rate is ``learning_rate``.
        learning_rate: the peak rate (the classifier's ``lr``).
        final_learning_rate: the floor of the decay, in (0, ``learning_rate``].
        warmup_iterations: iterations of warmup, at least 1 and fewer than ``total_iterations``.
        total_iterations: iterations of the run (the classifier's ``epochs * epoch_length``).

    Returns:
        The scheduler.

    Raises:
        ValueError: a value outside those ranges, named.
    """
    _, final_learning_rate, warmup, total = _checked_settings(
        learning_rate, final_learning_rate, warmup_iterations, total_iterations, "epochs * epoch_length"
    )
    return WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total, end_lr=final_learning_rate)


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer,
    learning_rate: float,
    final_learning_rate: float,
    warmup_iterations: int,
    total_iterations: int,
) -> torch.optim.lr_scheduler.SequentialLR:
    """Linear warmup from ``learning_rate / warmup_iterations`` to ``learning_rate``, then linear decay to
    ``final_learning_rate`` at ``total_iterations`` (one scheduler step per iteration).

    Args:
        optimizer: the optimizer, whose learning rate is ``learning_rate``.
        learning_rate: the peak rate (paper: 1e-4; fine-tuning 1e-5).
        final_learning_rate: the rate at the last iteration (paper: 1e-7), in (0, ``learning_rate``].
        warmup_iterations: iterations of warmup (paper: 1000; fine-tuning 200), at least 1 and fewer
            than ``total_iterations``.
        total_iterations: iterations of the run (the student's ``num_iterations``).

    Returns:
        The scheduler.

    Raises:
        ValueError: a value outside those ranges, named.
    """
    learning_rate, final_learning_rate, warmup, total = _checked_settings(
        learning_rate, final_learning_rate, warmup_iterations, total_iterations, "num_iterations"
    )
    LinearLR = torch.optim.lr_scheduler.LinearLR
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        schedulers=[
            LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup),
            LinearLR(optimizer, start_factor=1.0, end_factor=final_learning_rate / learning_rate, total_iters=total - warmup),
        ],
        milestones=[warmup],
    )
