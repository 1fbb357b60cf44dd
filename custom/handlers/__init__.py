"""Ignite handlers used by the bundle configs."""

from custom.handlers.slice_classification import (
    SliceClassificationReport,
    SliceProbabilityWriter,
    best_f1_threshold,
    roc_auc,
)

__all__ = ["SliceClassificationReport", "SliceProbabilityWriter", "best_f1_threshold", "roc_auc"]
