"""Gathering per-rank Python lists when a bundle runs under ``torchrun`` (one concept: rank-to-all gather).

Evaluation handlers and metrics collect picklable records per rank (a ``DistributedSampler`` shards
the studies); their summaries need every rank's records. Without an initialised process group, or
with one rank, the list is returned as is.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

__all__ = ["all_gather_list"]

T = TypeVar("T")


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
