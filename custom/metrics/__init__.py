"""Evaluation of PE localisation: per-PE cluster matching, its strict IoU variant, FROC, Ignite handler,
and where detections fall (:mod:`custom.metrics.detection_sites`, a diagnostic).

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

__all__ = [
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
    "match_clusters",
    "regions_touched",
    "score_detections",
    "sensitivity_at",
    "site_counts",
]
