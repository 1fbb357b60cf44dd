"""The teacher's ceiling: iExplain with a classifier that attends exactly to the emboli (issue 5; a synthetic-cohort diagnostic).

The teacher can only explain what its classifier has learned, and the project's CPU classifiers have
not learned the emboli (pointing game 0.00, issue 10), so the teacher's measured F1 says nothing about
the teacher's own steps. This benchmark replaces the classifier by an **oracle** that knows each study's
true embolus mask and reads the CT values under it, and runs everything else unchanged: the teacher
settings of the bundle (``inference.json`` + ``demo.json``, the paper's pixel settings scaled to the
grid), Integrated Gradients, hysteresis, masking and the three stop conditions (Algorithm 1), the
Gaussian slice vote, the size and distance filters, and the cluster-matching metric against the
**reference box masks**, as in the pipeline. What is left is the ceiling that those steps put on
the pseudo-labels, with no classifier error at all.

The oracle (:class:`EmbolusOracle`), for a windowed 7-slice mini-volume ``x``:

- finds the study window it shows (largest cosine similarity with the clean windows of the study:
  invariant to the IG path's scaling ``alpha * x`` from the all-``fill`` reference, robust to the
  masked-out clusters);
- takes the emboli present on that window's centre slice (the slice label's meaning), and for each one
  the sum of ``x`` over its voxels in the window (its evidence: embolus voxels are 0.1-0.45 in the
  classifier's window, and masking with the Cutout fill 0 removes them);
- returns ``max over those emboli of the evidence - bias`` (the classifier's global max pooling: the
  strongest finding decides, so masking it hands the decision to the next one, the situation
  Algorithm 1 is designed for); no embolus on the centre slice: ``-bias``.

The attribution of an embolus voxel is then its value ``x`` (the gradient is 1 along the whole IG path),
every other voxel gets 0, and the hysteresis high threshold is chosen on the validation split from
``--high_thresholds`` (pooled F1), as the bundle's calibration does.

    .venv/bin/python benchmarks/teacher_oracle_bound.py --work_dir work/full [--mask_thresholds 0.5,0.25]

Prints one markdown row per ``mask_threshold`` (the vote a voxel needs, ``custom.explain.aggregation``):
filtered and unfiltered F1, iteration 1 against the best, rounds used, and how many reference PEs
the filters and the vote removed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.explain import filter_clusters, window_slice_indices  # noqa: E402
from custom.io.nifti import read_volume  # noqa: E402
from custom.metrics import ClusterCounts, match_clusters  # noqa: E402
from custom.teacher import TeacherFactory, load_studies, masks_after_rounds, read_reference_mask, read_windowed_image, study_uid  # noqa: E402

DEPTH = 7
#: the teacher settings taken from the bundle config (everything but the classifier and its threshold)
TEACHER_KEYS = (
    "neighbourhood", "min_voxels", "min_cluster_voxels", "max_center_distance_px", "blur_sigma_px", "paper_size_px",
    "scale_to_grid", "n_steps", "references", "n_noise", "noise_level", "max_rounds", "sigma", "max_batch",
    "windows_per_batch", "seed",
)


class EmbolusOracle(nn.Module):
    """A slice classifier that attends exactly to the true emboli of one study (see the module docstring).

    Args:
        bias: the logit without evidence; an embolus needs ``sum of its windowed values > bias``.
    """

    def __init__(self, bias: float = 1.0) -> None:
        super().__init__()
        self.bias = float(bias)
        self._unit_windows: torch.Tensor | None = None

    def set_study(self, volume: np.ndarray, labels: np.ndarray) -> None:
        """The study to classify: its windowed volume ``(Z, Y, X)`` and its embolus label map (0 background, k embolus k)."""
        if volume.shape != labels.shape:
            raise ValueError(f"volume {volume.shape} and embolus labels {labels.shape} differ")
        indices = window_slice_indices(volume.shape[0], DEPTH)
        windows = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[indices].flatten(1)
        self._unit_windows = windows / windows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self._labels = torch.from_numpy(labels.astype(np.int64))[indices]  # (Z, 7, Y, X)
        centre = self._labels[:, DEPTH // 2]
        self._centre_emboli = [sorted(int(v) for v in torch.unique(c) if v > 0) for c in centre]

    def window_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """Index of the study window each input shows (cosine similarity; scale-invariant)."""
        if self._unit_windows is None:
            raise RuntimeError("call set_study first")
        flat = inputs.detach().float().flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (unit @ self._unit_windows.T).argmax(dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 7, H, W)`` windowed mini-volumes -> ``(B, 1)`` logits."""
        logits = []
        for item, window in zip(inputs, self.window_of(inputs).tolist()):
            evidence = [item[self._labels[window] == label].sum() for label in self._centre_emboli[window]]
            best = torch.stack(evidence).max() if evidence else item.sum() * 0.0
            logits.append(best - self.bias)
        return torch.stack(logits).reshape(-1, 1)


def teacher_settings(configs: Sequence[str] = ("inference.json", "demo.json")) -> dict[str, Any]:
    """The teacher settings of the bundle configs (merged in order), without the classifier."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "iexplain_teacher" / "configs" / name) for name in configs])
    settings = {key: parser.get_parsed_content(key) for key in TEACHER_KEYS}
    settings["method"] = parser.get_parsed_content("ig_method")
    settings["fill_value"] = parser.get_parsed_content("cutout_fill")
    settings["window"] = parser.get_parsed_content("window")
    return settings


def _load(entry: dict[str, Any], masks_dir: Path, window: Sequence[float]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    uid = study_uid(entry)
    volume, _ = read_windowed_image(entry, window)
    reference = read_reference_mask(entry, volume.shape)
    labels, _ = read_volume(str(masks_dir / f"{uid}.nii.gz"))
    if labels.shape != volume.shape:
        raise ValueError(f"{masks_dir / uid}: true mask {labels.shape} is not on the study grid {volume.shape}")
    positive_slices = [int(z) for z in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))]
    expected = [z for z, label in enumerate(entry["slice_labels"]) if label]
    if positive_slices != expected:
        raise ValueError(f"{uid}: the true mask's slices {positive_slices} are not the slice labels {expected}")
    return uid, volume, reference, labels.astype(np.int64)


def run_split(
    oracle: EmbolusOracle, factory: TeacherFactory, studies: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], high: float
) -> dict[str, Any]:
    """The teacher with the oracle over ``studies`` at one high threshold: pooled counts per round and filter."""
    max_rounds = int(factory.teacher_settings["max_rounds"])
    filtered_by_round = [ClusterCounts() for _ in range(max_rounds)]
    unfiltered_by_round = [ClusterCounts() for _ in range(max_rounds)]
    rounds_used: list[int] = []
    strict = ClusterCounts()
    one_filter = {"size_only": ClusterCounts(), "distance_only": ClusterCounts()}
    for uid, volume, reference, labels in studies:
        oracle.set_study(volume, labels)
        explanation = factory(volume.shape[1], volume.shape[2], high_threshold=high)(volume, study_id=uid)
        rounds = explanation.window_rounds
        rounds_used.extend(int(r) for r in rounds[rounds > 0])
        per_round = masks_after_rounds(
            explanation.round_map, max_rounds, explanation.min_cluster_voxels, explanation.max_center_distance_px
        )
        for r, (filtered, unfiltered) in enumerate(per_round):
            filtered_by_round[r] = filtered_by_round[r] + match_clusters(filtered, reference)
            unfiltered_by_round[r] = unfiltered_by_round[r] + match_clusters(unfiltered, reference)
        strict = strict + match_clusters(explanation.mask_filtered, reference, strict=True)
        unfiltered = explanation.mask_unfiltered
        size_only = filter_clusters(unfiltered, explanation.min_cluster_voxels, float("inf"))[0]
        distance_only = filter_clusters(unfiltered, 0, explanation.max_center_distance_px)[0]
        one_filter["size_only"] = one_filter["size_only"] + match_clusters(size_only, reference)
        one_filter["distance_only"] = one_filter["distance_only"] + match_clusters(distance_only, reference)
    n = len(studies)
    return {
        "high": high,
        "filtered_by_round": [c.as_dict(n) for c in filtered_by_round],
        "unfiltered_by_round": [c.as_dict(n) for c in unfiltered_by_round],
        "strict": strict.as_dict(n),
        **{name: counts.as_dict(n) for name, counts in one_filter.items()},
        "rounds_histogram": np.bincount(np.asarray(rounds_used, dtype=int), minlength=max_rounds + 1).tolist(),
    }


def _floats(values: str | float | Sequence[float]) -> list[float]:
    """``"0.1,0.2"``, ``0.1`` or ``[0.1, 0.2]`` (what ``fire`` passes) -> a list of floats."""
    if isinstance(values, str):
        return [float(v) for v in values.split(",") if v.strip()]
    if isinstance(values, (int, float)):
        return [float(values)]
    return [float(v) for v in values]


def main(
    work_dir: str = "work/full",
    high_thresholds: str | Sequence[float] = "0.05,0.1,0.2",
    mask_thresholds: str | Sequence[float] = "0.5",
    bias: float = 1.0,
    max_studies: int | None = None,
    results: str | None = None,
) -> list[dict[str, Any]]:
    """Calibrate on the validation split, report on the test split, for each ``mask_threshold``.

    Args:
        work_dir: a pipeline run with ``prepared/datalist.json`` (images and reference box masks) and
            ``cohort/masks`` (the true embolus masks of the synthetic cohort).
        high_thresholds: candidate hysteresis high thresholds (attribution units = windowed CT values).
        mask_thresholds: vote thresholds of the slice aggregation to compare (the bundle's is 0.5).
        bias: the oracle's logit without evidence.
        max_studies: at most this many studies per split (``None``: all).
        results: optional JSON-lines file each row is appended to.

    Returns:
        One record per mask threshold.
    """
    work = Path(work_dir)
    highs, votes = _floats(high_thresholds), _floats(mask_thresholds)
    settings = teacher_settings()
    window = settings.pop("window")
    datalist = work / "prepared" / "datalist.json"
    splits = {}
    for key in ("validation", "test"):
        entries = [e for e in load_studies(datalist, key) if e.get("label")][: max_studies or None]
        splits[key] = [_load(e, work / "cohort" / "masks", window) for e in entries]
    oracle = EmbolusOracle(bias)
    print(f"| mask threshold | high (validation F1) | test filtered: TP / FP / FN, F1 | unfiltered F1 | iteration 1 F1 | best iteration (F1) | strict F1 | PEs found: unfiltered / size filter only / distance filter only / both | windows by rounds used |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | --- | --- |")
    records = []
    for vote in votes:
        factory = TeacherFactory(
            oracle, None, clf_threshold=0.5, mask_threshold=vote, autocast_dtype=None, channels_last=False,
            fold_batchnorm=False, **settings,
        )
        start = time.perf_counter()
        validation = [run_split(oracle, factory, splits["validation"], high) for high in highs]
        best = max(validation, key=lambda row: (np.nan_to_num(row["filtered_by_round"][-1]["f1"]), -row["high"]))
        test = run_split(oracle, factory, splits["test"], best["high"])
        f1_by_round = [np.nan_to_num(row["f1"]) for row in test["filtered_by_round"]]
        best_round = int(np.argmax(f1_by_round)) + 1
        final = test["filtered_by_round"][-1]
        record = {
            "work_dir": str(work), "mask_threshold": vote, "bias": bias, "high": best["high"],
            "validation": [{"high": r["high"], "f1": r["filtered_by_round"][-1]["f1"]} for r in validation],
            "test": test, "best_round": best_round, "seconds": round(time.perf_counter() - start, 1),
            "n_studies": {k: len(v) for k, v in splits.items()}, "settings": {k: v for k, v in settings.items()},
        }
        records.append(record)
        print(
            f"| {vote} | {best['high']} ({np.nan_to_num(best['filtered_by_round'][-1]['f1']):.3f}) "
            f"| {final['tp']} / {final['fp']} / {final['fn']}, {np.nan_to_num(final['f1']):.3f} "
            f"| {np.nan_to_num(test['unfiltered_by_round'][-1]['f1']):.3f} | {f1_by_round[0]:.3f} "
            f"| {best_round} ({f1_by_round[best_round - 1]:.3f}) | {np.nan_to_num(test['strict']['f1']):.3f} "
            f"| {test['unfiltered_by_round'][-1]['tp']} / {test['size_only']['tp']} / {test['distance_only']['tp']} / {final['tp']} of {final['tp'] + final['fn']} "
            f"| {test['rounds_histogram'][1:]} |",
            flush=True,
        )
        if results:
            with open(results, "a") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
    return records


if __name__ == "__main__":
    import fire

    fire.Fire(lambda **kwargs: main(**kwargs) and None)
