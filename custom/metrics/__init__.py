"""Evaluation of PE localisation: per-PE cluster matching, its strict IoU variant, FROC, Ignite handler,
where detections fall (:mod:`custom.metrics.detection_sites`, a diagnostic), and how much of a slice
classifier's AUC the slice's level explains (:mod:`custom.metrics.slice_level`).

See :mod:`custom.metrics.cluster_matching` for the matching rules and the 0/0 conventions.
"""

from custom.metrics.cluster_matching import (
    DETAIL_COLUMNS,
    ClusterCounts,
    ClusterMatchingMetric,
    ClusterOverlaps,
    cluster_overlaps,
    count_matches,
    label_clusters,
    match_clusters,
)
from custom.metrics.detection_sites import DetectionSite, detection_sites, regions_touched, site_counts
from custom.metrics.froc import (
    FP_RATES,
    DetectionScores,
    FROCResult,
    average_sensitivity,
    detection_confidences,
    froc_curve,
    froc_from_scores,
    score_detections,
    sensitivity_at,
)
from custom.metrics.handlers import REPORT_KEYS, ClusterMatchingMetricHandler
from custom.metrics.slice_level import DEFAULT_LEVEL_BINS, level_bins, slice_level_auc, within_level_auc

__all__ = [
    "DEFAULT_LEVEL_BINS",
    "DETAIL_COLUMNS",
    "FP_RATES",
    "REPORT_KEYS",
    "ClusterCounts",
    "ClusterMatchingMetric",
    "ClusterMatchingMetricHandler",
    "ClusterOverlaps",
    "DetectionScores",
    "DetectionSite",
    "FROCResult",
    "average_sensitivity",
    "cluster_overlaps",
    "count_matches",
    "detection_confidences",
    "detection_sites",
    "froc_curve",
    "froc_from_scores",
    "label_clusters",
    "level_bins",
    "match_clusters",
    "regions_touched",
    "score_detections",
    "sensitivity_at",
    "site_counts",
    "slice_level_auc",
    "within_level_auc",
]
