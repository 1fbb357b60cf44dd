"""Learning-rate schedules of the bundles, built from config values and checked.

- classifier (paper section 3.1: AdamW with warmup and decay): :func:`warmup_cosine`, MONAI's
  ``WarmupCosineSchedule``;
- student (paper section 3.3: AdamW, warmup, then linear decay to 1e-7): :func:`warmup_linear_decay`.

Both are functions of the iteration alone. A checkpoint restores only the iteration: the shape of
the schedule (peak and final rate, warmup, length) comes from the config of the run that resumes.
PyTorch's schedulers restore their whole ``__dict__`` instead, so a run resumed with more iterations
(``--epochs 40`` after 20) had kept the old length: the cosine wrapped round and climbed back to the
peak rate, and the linear decay sat at its final rate for all the new iterations.

Config values reach these functions from the command line (``--warmup_iterations 2000``,
``--epochs 2``). A value that would silently change the schedule is refused here with the setting
named: MONAI's ``WarmupCosineSchedule`` quietly shortens a warmup longer than the run to the run, so
the run ends inside its warmup, never at the peak rate and with no decay; a zero warmup had been a
``ZeroDivisionError`` in a config expression.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.optimizers import WarmupCosineSchedule
from torch.optim.lr_scheduler import LambdaLR

from custom.settings import finite_number, integer_at_least

__all__ = ["WarmupCosine", "WarmupLinearDecay", "warmup_cosine", "warmup_linear_decay"]


class _ResumesAtIteration:
    """A scheduler whose checkpoint restores the iteration only (see the module docstring)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Set the scheduler, and the optimizer's rates, to the checkpoint's iteration of this schedule.

        Args:
            state_dict: from ``state_dict()`` of any PyTorch scheduler (``last_epoch`` is read).
        """
        iteration = int(state_dict["last_epoch"])
        self._step_count = max(int(state_dict.get("_step_count", 1)), 2)  # it has stepped: no call-order warning
        self.last_epoch = iteration - 1
        self.step()  # to ``iteration``, setting the optimizer's rates


class WarmupCosine(_ResumesAtIteration, WarmupCosineSchedule):
    """MONAI's ``WarmupCosineSchedule`` that resumes at the checkpoint's iteration of this schedule."""


class WarmupLinearDecay(_ResumesAtIteration, LambdaLR):
    """Linear warmup from ``1 / warmup`` of the peak to the peak, then linear decay to
    ``final_factor`` of the peak at ``total`` iterations, constant after (a factor on the optimizer's rate).

    Args:
        optimizer: the optimizer, whose rate is the peak.
        warmup: iterations of warmup, at least 1.
        total: iterations of the run, more than ``warmup``.
        final_factor: the last rate over the peak, in (0, 1].
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, total: int, final_factor: float) -> None:
        self.warmup, self.total, self.final_factor = warmup, total, final_factor
        super().__init__(optimizer, self.factor)

    def factor(self, iteration: int) -> float:
        """The rate at ``iteration`` over the peak rate."""
        if iteration < self.warmup:
            return 1.0 / self.warmup + (1.0 - 1.0 / self.warmup) * iteration / self.warmup
        progress = min(1.0, (iteration - self.warmup) / (self.total - self.warmup))
        return 1.0 + (self.final_factor - 1.0) * progress


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
) -> WarmupCosine:
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
    return WarmupCosine(optimizer, warmup_steps=warmup, t_total=total, end_lr=final_learning_rate)


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer,
    learning_rate: float,
    final_learning_rate: float,
    warmup_iterations: int,
    total_iterations: int,
) -> WarmupLinearDecay:
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
    return WarmupLinearDecay(optimizer, warmup, total, final_learning_rate / learning_rate)
