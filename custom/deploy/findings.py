"""``findings.json`` of the deploy app: per-PE clusters in patient coordinates and a study-level PE probability.

The clusters are those of :func:`custom.student.findings.study_findings` (26-connected components
of ``probability >= threshold``: centroid in voxel, RAS and LPS = DICOM patient coordinates (mm),
volume in ml, maximum and mean probability, slice range in the series' sorted order). This module
adds what a reader of the DICOM series needs: the series, the SOP instance and
``ImagePositionPatient`` of each cluster's first and last slice, and the study-level PE
probability (the highest voxel probability, the score the student's FROC uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from custom.io.dicom import CTSeries
from custom.student.findings import study_findings

__all__ = ["FINDINGS_FORMAT", "deploy_findings"]

FINDINGS_FORMAT = "iexplain-deploy-findings/1"
"""The ``format`` value of ``findings.json``."""


def deploy_findings(
    probability_zyx: np.ndarray, series: CTSeries, threshold: float, min_voxels: int, model: dict[str, Any]
) -> dict[str, Any]:
    """The findings document of one study.

    Args:
        probability_zyx: PE probability on the series grid, ``(Z, Y, X)``.
        series: the source series.
        threshold: probability threshold of a finding.
        min_voxels: smallest cluster reported.
        model: the model description (``StudentModel.describe()``).

    Returns:
        ``{"format", "study_uid", "series_uid", "n_slices", "study_pe_probability", "pe_detected",
        "threshold", "voxel_volume_ml", "n_clusters", "clusters", "model", "notes"}``; each cluster
        has the fields of ``custom.student.findings.find_clusters`` plus ``slice_sop_uids`` and
        ``slice_positions_mm`` (first and last slice).
    """
    document = study_findings(probability_zyx, series.affine, series.study_uid, threshold=threshold, min_voxels=min_voxels)
    clusters = []
    for cluster in document["clusters"]:
        first, last = cluster["slice_range"]
        clusters.append(
            {
                **cluster,
                "slice_sop_uids": [series.sop_uids[first], series.sop_uids[last]],
                "slice_positions_mm": [[float(v) for v in series.positions[first]], [float(v) for v in series.positions[last]]],
            }
        )
    return {
        "format": FINDINGS_FORMAT,
        "study_uid": series.study_uid,
        "series_uid": series.series_uid,
        "n_slices": series.n_slices,
        "study_pe_probability": document["max_probability"],
        "pe_detected": bool(clusters),
        "threshold": document["threshold"],
        "voxel_volume_ml": document["voxel_volume_ml"],
        "n_clusters": len(clusters),
        "clusters": clusters,
        "model": model,
        "notes": list(series.notes),
    }
