"""iExplain teacher: Integrated Gradients, hysteresis clustering, Algorithm 1, whole-study aggregation, filters.

Condrea et al. 2025, section 3.2. Modules, one concept each:

- ``integrated_gradients``: batched IG with several references and SmoothGrad voting.
- ``hysteresis``: hysteresis clustering with a 5 x 15 x 15 box neighbourhood.
- ``iexplain``: Algorithm 1 (explain, cluster, mask, repeat), batched over mini-volumes.
- ``aggregation``: one window per slice and the Gaussian-weighted (sigma 0.8) slice vote.
- ``filtering``: size and location filters of the pseudo-label clusters.
- ``grid_scaling``: the paper's 512 px settings on another grid.
- ``teacher``: ``IExplainTeacher`` / ``explain_study`` for a whole study.
"""

from custom.explain.aggregation import aggregate_windows, slice_window_weights, window_slice_indices
from custom.explain.filtering import Cluster, filter_clusters, label_clusters
from custom.explain.grid_scaling import GridSettings, scale_paper_settings
from custom.explain.hysteresis import box_dilate, hysteresis_threshold
from custom.explain.iexplain import MiniVolumeExplanation, iexplain_minivolumes, predict_probabilities
from custom.explain.integrated_gradients import (
    FIVE_REFERENCES,
    REFERENCE_KINDS,
    IntegratedGradientsExplainer,
    integrated_gradients,
    quadrature,
    reference_images,
)
from custom.explain.teacher import IExplainTeacher, StudyExplanation, explain_study

__all__ = [
    "FIVE_REFERENCES",
    "REFERENCE_KINDS",
    "Cluster",
    "GridSettings",
    "IExplainTeacher",
    "IntegratedGradientsExplainer",
    "MiniVolumeExplanation",
    "StudyExplanation",
    "aggregate_windows",
    "box_dilate",
    "explain_study",
    "filter_clusters",
    "hysteresis_threshold",
    "iexplain_minivolumes",
    "integrated_gradients",
    "label_clusters",
    "predict_probabilities",
    "quadrature",
    "reference_images",
    "scale_paper_settings",
    "slice_window_weights",
    "window_slice_indices",
]
