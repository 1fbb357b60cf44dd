"""Cohort statistics of a synthetic cohort (from its ``cohort.json``): what the phantom really produced."""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["summarize_cohort"]


def summarize_cohort(cohort: dict, z_bins: int = 5) -> dict:
    """Positive-slice fraction, emboli per kind, embolus size quantiles and z-distribution, mimic counts.

    Args:
        cohort: the parsed ``cohort.json`` written by ``custom.synth.writer.write_cohort``.
        z_bins: number of equal bins of the relative slice position (0 = most inferior) for the
            z-distribution of embolus centroids.

    Returns:
        A JSON-serialisable dict.
    """
    studies = cohort["studies"]
    n_slices = sum(s["geometry"]["shape_zyx"][0] for s in studies)
    positive_slices = sum(s["n_positive_slices"] for s in studies)
    emboli = [(e, s["geometry"]["shape_zyx"][0]) for s in studies for e in s["emboli"]]
    voxels = np.array([e["voxels"] for e, _ in emboli], dtype=np.float64)
    relative_z = np.array([e["centroid_zyx"][0] / max(nz - 1, 1) for e, nz in emboli], dtype=np.float64)
    histogram = np.histogram(relative_z, bins=z_bins, range=(0.0, 1.0))[0] if len(emboli) else np.zeros(z_bins, int)

    def quantiles(values: np.ndarray) -> dict:
        if len(values) == 0:
            return {}
        q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
        return dict(zip(("min", "q25", "median", "q75", "max"), (round(float(v), 1) for v in q)))

    per_kind = {}
    for kind in sorted({e["kind"] for e, _ in emboli}):
        sizes = np.array([e["voxels"] for e, _ in emboli if e["kind"] == kind], dtype=np.float64)
        per_kind[kind] = {"count": int(len(sizes)), "voxels": quantiles(sizes)}
    mean_hu = np.array([e["mean_hu"] for e, _ in emboli], dtype=np.float64)
    return {
        "studies": len(studies),
        "positive_studies": sum(s["pe_present"] for s in studies),
        "slices": n_slices,
        "positive_slices": positive_slices,
        "positive_slice_fraction": round(positive_slices / max(n_slices, 1), 4),
        "emboli": len(emboli),
        "emboli_per_kind": per_kind,
        "embolus_voxels": quantiles(voxels),
        "embolus_mean_hu": quantiles(mean_hu),
        "embolus_defect_hu": quantiles(np.array([e["defect_hu"] for e, _ in emboli], dtype=np.float64)),
        "embolus_relative_z_histogram": {"bins": z_bins, "counts": [int(c) for c in histogram]},
        "confounders": dict(Counter(c["kind"] for s in studies for c in s["confounders"] if c["kind"] != "partial_volume")),
    }
