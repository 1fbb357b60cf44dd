"""One JSON per evaluation run: pooled and per-study cluster-matching scores, keyed by StudyInstanceUID.

MONAI's ``MetricsSaver`` writes the per-study rows of ``engine.state.metric_details`` as CSV tables,
one per metric, keyed by file name. The pipeline report needs the same numbers as
``scripts/score.py`` writes them (``{"cluster": {...}, "strict": {...}, "per_study": {uid: {...}}}``),
so this handler writes that layout from the same ``metric_details`` rows, pairing each row with
the study it came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events

from custom.distributed import all_gather_list, is_main_process
from custom.io.atomic import write_json_atomic
from custom.metrics.cluster_matching import DETAIL_COLUMNS, ClusterCounts

__all__ = ["EvaluationReportWriter", "study_uids_from_batch"]


def study_uids_from_batch(batch: Any, uid_key: str = "study_uid", image_key: str = "image") -> list[str]:
    """The StudyInstanceUIDs of a collated batch (``study_uid`` entries, else the image file names).

    Args:
        batch: ``engine.state.batch``: a dict of collated items or a list of per-study dicts.
        uid_key: key of the StudyInstanceUID.
        image_key: key of the image, whose ``filename_or_obj`` metadata is the fallback.

    Returns:
        One identifier per study of the batch, in batch order.
    """
    if isinstance(batch, (list, tuple)):
        return [uid for item in batch for uid in study_uids_from_batch(item, uid_key, image_key)]
    uids = batch.get(uid_key)
    if uids is not None:
        return [str(u) for u in (uids if isinstance(uids, (list, tuple)) else [uids])]
    image = batch[image_key]
    names = image.meta["filename_or_obj"]
    names = names if isinstance(names, (list, tuple)) else [names]
    return [os.path.basename(str(n)).split(".nii")[0] for n in names]


class EvaluationReportWriter:
    """Write ``{"metrics", <section>: pooled counts and rates, "per_study": {uid: {<section>: row}}}``.

    Args:
        output_path: the JSON file (written atomically, by rank 0, at the end of every evaluation epoch).
        details: report section name -> name of a metric whose ``engine.state.metric_details`` rows are
            cluster-matching rows (``custom.metrics.DETAIL_COLUMNS``), e.g. ``{"cluster": "test_cluster_f1",
            "strict": "test_strict_f1"}`` (those metrics need ``save_details=True``).
        uid_transform: maps ``engine.state.batch`` to the batch's study identifiers
            (default :func:`study_uids_from_batch`).

    Pooled values sum the per-study counts (micro pooling, as ``custom.metrics``); ``engine.state.metrics``
    (every metric of the evaluator, e.g. the FROC score) is copied under ``"metrics"``.
    """

    def __init__(
        self,
        output_path: str | os.PathLike,
        details: Mapping[str, str],
        uid_transform: Callable[[Any], list[str]] = study_uids_from_batch,
    ) -> None:
        if not details:
            raise ValueError("details must name at least one metric")
        self.output_path = os.fspath(output_path)
        self.details = dict(details)
        self.uid_transform = uid_transform
        self._uids: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Collect study identifiers every iteration and write the report at each epoch's end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._uids = []

    def _collect(self, engine: Engine) -> None:
        self._uids.extend(self.uid_transform(engine.state.batch))

    def __call__(self, engine: Engine) -> None:
        """Write the report now (the metrics have been computed at this epoch's end)."""
        uids = self._gathered_uids()
        if not is_main_process():
            return
        report: dict[str, Any] = {"metrics": {k: _number(v) for k, v in engine.state.metrics.items()}}
        per_study: dict[str, dict[str, Any]] = {uid: {} for uid in uids}
        for section, metric_name in self.details.items():
            rows = engine.state.metric_details.get(metric_name)
            if rows is None:
                raise KeyError(f"no per-study details for metric {metric_name!r}; give it save_details=True")
            rows = rows.reshape(-1, len(DETAIL_COLUMNS)).tolist()
            if len(rows) != len(uids):
                raise ValueError(f"{metric_name}: {len(rows)} per-study rows for {len(uids)} studies")
            total = ClusterCounts()
            for uid, row in zip(uids, rows):
                counts = ClusterCounts(int(round(row[0])), int(round(row[1])), int(round(row[2])))
                total = total + counts
                per_study[uid][section] = _numbers(counts.as_dict(n_studies=1))
            report[section] = _numbers(total.as_dict(n_studies=len(uids)))
        report["n_studies"] = len(uids)
        report["per_study"] = per_study
        write_json_atomic(self.output_path, report)

    def _gathered_uids(self) -> list[str]:
        return all_gather_list(self._uids)


def _number(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return None if math.isnan(value) else value


def _numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, int) else _number(v)) for k, v in values.items()}
