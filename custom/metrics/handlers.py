"""Ignite handler of per-PE cluster matching, for the bundles' evaluators (issue 3, item 5).

One handler reports one number, chosen by ``key``, so it can be a ``key_val_metric`` (``key="f1"``, the
default) or one of several ``additional_metrics``; an ``evaluate`` config that wants the full report lists one
handler per key (and ``strict=True`` for the strict variant), e.g.::

    "key_val_metric": {"val_cluster_f1": {"_target_": "custom.metrics.ClusterMatchingMetricHandler",
                                          "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
    "additional_metrics": {
        "val_cluster_sensitivity": {"_target_": "custom.metrics.ClusterMatchingMetricHandler", "key": "sensitivity",
                                    "save_details": false, "output_transform": "..."},
        "val_strict_f1": {"_target_": "custom.metrics.ClusterMatchingMetricHandler", "strict": true, ...}}

With ``save_details=True`` the per-study rows (columns ``tp, fp, fn, sensitivity, ppv, f1`` =
``class0 .. class5`` in MONAI's ``MetricsSaver`` CSV, whose extra ``mean`` column is meaningless here) go to
``engine.state.metric_details[name]``; keep it on one handler per strictness to avoid duplicate files.
Each handler matches the clusters itself, so every extra handler costs one more matching pass per study.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler

from custom.metrics.cluster_matching import ClusterMatchingMetric

__all__ = ["REPORT_KEYS", "ClusterMatchingMetricHandler"]

#: Values a :class:`ClusterMatchingMetricHandler` can report.
REPORT_KEYS = ("f1", "sensitivity", "ppv", "fp_per_study", "tp", "fp", "fn")


class ClusterMatchingMetricHandler(IgniteMetricHandler):
    """Pooled per-PE cluster-matching score of an evaluation run (sums counts over studies and ranks).

    Args:
        threshold: a voxel of ``y_pred`` is a detection voxel when ``>= threshold``.
        strict: the strict variant (IoU of the per-slice boxified detection above ``iou_threshold``).
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``; batch-first tensors or lists of channel-first
            ``(C, X, Y, Z)`` tensors, ``C`` 1 or 2.
        save_details: put the per-study rows in ``engine.state.metric_details[name]`` for ``MetricsSaver``.
        key: which pooled value :meth:`compute` returns, one of :data:`REPORT_KEYS`.
        iou_threshold: strict variant only.
        slice_axis: strict variant only: slice axis among the spatial dims (``-1``: ``Z`` of ``(X, Y, Z)``).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        strict: bool = False,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        key: str = "f1",
        iou_threshold: float = 0.5,
        slice_axis: int = -1,
    ) -> None:
        if key not in REPORT_KEYS:
            raise ValueError(f"key must be one of {REPORT_KEYS}, got {key!r}")
        self.key = key
        metric = ClusterMatchingMetric(
            threshold=threshold, strict=strict, iou_threshold=iou_threshold, slice_axis=slice_axis
        )
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)

    def compute(self) -> float:
        """The pooled value of ``key`` over every study of the epoch (NaN when undefined, e.g. no PE at all)."""
        report = self.metric_fn.aggregate()
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call attach() to connect the handler to an engine first.")
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()  # type: ignore[attr-defined]
        return float(report[self.key])
