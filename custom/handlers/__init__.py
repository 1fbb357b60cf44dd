"""Ignite handlers used by the bundle configs."""

from custom.handlers.best_model import BestModelRecord
from custom.handlers.latest_checkpoint import LatestCheckpointSaver
from custom.handlers.slice_classification import (
    SliceClassificationReport,
    SliceProbabilityWriter,
    best_f1_threshold,
    roc_auc,
)

__all__ = [
    "BestModelRecord",
    "LatestCheckpointSaver",
    "SliceClassificationReport",
    "SliceProbabilityWriter",
    "best_f1_threshold",
    "roc_auc",
]
