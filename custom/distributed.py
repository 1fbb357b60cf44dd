"""Ranks of a bundle run under ``torchrun``: which one writes, and gathering per-rank Python lists.

Evaluation handlers and metrics collect picklable records per rank (a ``DistributedSampler`` shards
the studies); their summaries need every rank's records (:func:`all_gather_list`). Without an
initialised process group, or with one rank, the list is returned as is. Files that every rank
would write alike are written by the main process only (:func:`is_main_process`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

__all__ = ["all_gather_list", "is_main_process"]

T = TypeVar("T")


def is_main_process() -> bool:
    """Whether this process writes the run's shared files: rank 0, or the only process when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_gather_list(items: list[T]) -> list[T]:
    """Concatenate ``items`` of every rank, in rank order.

    Args:
        items: this rank's picklable records.

    Returns:
        The records of all ranks (a copy of ``items`` when not distributed).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for rank_items in gathered for item in (rank_items or [])]
