"""The student's learning-rate schedule and HU window, checked (paper section 3.3: AdamW with warmup and
linear decay to 1e-7; HU window centre 100, width 400).

Config values reach these functions from the command line (``--warmup_iterations 2000``); a value that
would silently change the schedule or invert the image is refused here with the setting named, instead
of a ``ZeroDivisionError`` deep in a config expression or a run that never leaves its warmup.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from custom.settings import finite_number, integer_at_least

__all__ = ["hu_window_bounds", "warmup_linear_decay"]


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
        total_iterations: iterations of the run.

    Returns:
        The scheduler.

    Raises:
        ValueError: a value outside those ranges, named (a warmup as long as the run would end the run
            before the peak rate, with no decay).
    """
    learning_rate = finite_number(learning_rate, "learning_rate", 0.0, exclusive=True)
    final_learning_rate = finite_number(final_learning_rate, "final_learning_rate", 0.0, exclusive=True)
    warmup = integer_at_least(warmup_iterations, "warmup_iterations", 1)
    total = integer_at_least(total_iterations, "total_iterations (num_iterations)", 2)
    if final_learning_rate > learning_rate:
        raise ValueError(f"final_learning_rate ({final_learning_rate:g}) must not exceed learning_rate ({learning_rate:g})")
    if warmup >= total:
        raise ValueError(
            f"warmup_iterations ({warmup}) must be fewer than the run's {total} iterations (num_iterations): "
            "the run would end inside its warmup, before the peak learning rate and with no decay"
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


def hu_window_bounds(window: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` HU of a ``(centre, width)`` window (paper: 100, 400 -> -100, 300).

    Raises:
        ValueError: not two finite numbers, or a width <= 0 (a negative width would invert the image,
            a zero width leave it unscaled).
    """
    values = list(window) if isinstance(window, Sequence) and not isinstance(window, str) else None
    if (values is None or len(values) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ValueError(f"window must be [centre, width] in HU, two finite numbers, got {window!r}")
    centre, width = float(values[0]), float(values[1])
    if width <= 0:
        raise ValueError(f"window width must be > 0 HU, got {width:g} (window {list(values)})")
    return centre - width / 2, centre + width / 2
