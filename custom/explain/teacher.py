"""The iExplain teacher: pseudo-label masks for a whole study (Condrea et al. 2025, 3.2, Fig. 1).

Pipeline of :class:`IExplainTeacher` for a ``(Z, H, W)`` windowed study:

1. one mini-volume per slice (``custom.explain.aggregation.window_slice_indices``) and one batched
   classifier forward pass over all of them: slices the classifier calls negative cost nothing more;
2. Algorithm 1 (``custom.explain.iexplain``) on the positive windows, ``windows_per_batch`` at a time,
   with the IG explainer of ``custom.explain.integrated_gradients`` and hysteresis clustering;
3. Gaussian-weighted (sigma 0.8 slices) aggregation of the windows' cluster masks onto the study grid,
   thresholded at ``mask_threshold`` (``custom.explain.aggregation``), once per round so that the study
   mask after any number of rounds can be read back (paper Table 2, Fig. 4);
4. size and location filters (``custom.explain.filtering``), keeping the unfiltered mask (Table 3).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from custom.explain.aggregation import aggregate_windows, window_slice_indices
from custom.explain.filtering import filter_clusters
from custom.explain.iexplain import STOP_NEGATIVE, iexplain_minivolumes, predict_probabilities
from custom.explain.integrated_gradients import IntegratedGradientsExplainer
from custom.io.errors import InputError
from custom.precision import is_auto, resolve_autocast_dtype, resolve_channels_last

__all__ = ["WINDOW_DEPTH", "IExplainTeacher", "StudyExplanation", "explain_study"]

WINDOW_DEPTH = 7


@dataclass
class StudyExplanation:
    """The teacher's output for one study (arrays in the ``(Z, Y, X)`` study layout).

    Attributes:
        heatmap: float32 soft map in [0, 1]: the Gaussian-weighted vote of the windows' final masks.
        round_map: uint8, the first round after which the voxel is in the aggregated mask (0: never);
            ``round_map > 0`` is the unfiltered mask, ``0 < round_map <= r`` the mask after ``r`` rounds.
        mask_unfiltered: uint8 0/1, union of all rounds, aggregated and thresholded.
        mask_filtered: uint8 0/1, ``mask_unfiltered`` without the small and off-centre clusters.
        clusters: one dictionary per cluster of ``mask_unfiltered`` (``custom.explain.filtering.Cluster``
            fields plus ``round``: first round any of its voxels appeared; ``confidence``: highest
            classifier probability among the windows centred on its slices; ``mean_heatmap``).
        slice_probabilities: ``(Z,)`` classifier probability of each slice's window before masking.
        window_rounds: ``(Z,)`` Algorithm 1 rounds run per window (0 for windows called negative).
        window_probabilities: ``(Z, max_rounds + 1)`` probability after each round of masking (NaN: not run).
        window_new_voxels: ``(Z, max_rounds)`` voxels each round added in each window.
        stop_reasons: per window, ``"negative"``, ``"max_rounds"`` or ``"few_voxels"``.
        min_cluster_voxels: size filter used.
        max_center_distance_px: location filter used.
    """

    heatmap: np.ndarray
    round_map: np.ndarray
    mask_unfiltered: np.ndarray
    mask_filtered: np.ndarray
    clusters: list[dict[str, Any]]
    slice_probabilities: np.ndarray
    window_rounds: np.ndarray
    window_probabilities: np.ndarray
    window_new_voxels: np.ndarray
    stop_reasons: list[str]
    min_cluster_voxels: int
    max_center_distance_px: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds_run(self) -> int:
        """The most rounds any window of the study ran."""
        return int(self.window_rounds.max()) if self.window_rounds.size else 0

    def mask_after_round(self, round_index: int, filtered: bool = True) -> np.ndarray:
        """The study mask using the clusters of rounds ``1..round_index`` only (uint8 0/1).

        Args:
            round_index: number of rounds (``>= rounds_run`` gives the final mask).
            filtered: apply the size and location filters to that mask (they depend on its clusters).
        """
        mask = ((self.round_map > 0) & (self.round_map <= round_index)).astype(np.uint8)
        if not filtered:
            return mask
        return filter_clusters(mask, self.min_cluster_voxels, self.max_center_distance_px)[0]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record of the clusters, rounds and settings (the bundle's ``clusters/<uid>.json``)."""
        positive = self.window_rounds > 0
        return {
            "clusters": self.clusters,
            "rounds_run": self.rounds_run,
            "positive_windows": int(positive.sum()),
            "window_rounds": self.window_rounds.tolist(),
            "stop_reasons": self.stop_reasons,
            "slice_probabilities": [round(float(p), 6) for p in self.slice_probabilities],
            "voxels_unfiltered": int(self.mask_unfiltered.sum()),
            "voxels_filtered": int(self.mask_filtered.sum()),
            "settings": self.settings,
        }


class IExplainTeacher:
    """iExplain pseudo-label generator with its configuration (paper 3.2; plain arguments for bundle configs).

    Args:
        classifier: the slice classifier, ``(B, 7, H, W)`` windowed mini-volumes -> ``(B, 1)`` logits.
            It is put in eval mode; the study is moved to its device unless ``device`` is given.
        high_threshold: hysteresis seed threshold on IG attributions, calibrated on validation studies.
        low_threshold: hysteresis candidate threshold (default ``high_threshold / 2``, paper).
        clf_threshold: a window is explained while its probability is above this.
        n_steps, method, references, n_noise, noise_level, blur_sigma_px: IG settings, see
            ``custom.explain.IntegratedGradientsExplainer``.
        max_rounds: Algorithm 1 iteration limit (paper: 10).
        min_voxels: Algorithm 1 stops after a round with fewer new voxels (paper: 50 at 512 px).
        neighbourhood: hysteresis box ``(Z, Y, X)`` (paper: 5 x 15 x 15 at 512 px).
        sigma: Gaussian sigma of the slice aggregation, in slices (paper: 0.8).
        mask_threshold: the aggregated vote a voxel needs, see ``custom.explain.aggregation``.
        min_cluster_voxels: size filter (paper: 100 at 512 px).
        max_center_distance_px: location filter (paper: 160 px at 512 px).
        fill_value: Cutout / masking fill in windowed units.
        value_range: range of the windowed input.
        max_batch: items per forward/backward pass (the memory budget).
        windows_per_batch: positive windows run through Algorithm 1 together; memory grows with it
            (inputs, references and noise copies of each window) while items per pass are already
            ``n_steps`` x references x noise per window, so a few windows fill ``max_batch``.
        autocast_dtype: ``None`` (float32), ``torch.bfloat16``, or ``"auto"``: measured once on the
            first study's grid (:meth:`resolve_precision`, ``custom.precision``), bfloat16 only
            where it is clearly faster on this device; see ``IntegratedGradientsExplainer`` for the
            accuracy trade-off.
        channels_last: channels-last memory format of the passes (numerically the same): ``True``,
            ``False``, or ``"auto"``: measured once on the first study's grid with the dtype chosen
            (:meth:`resolve_precision`, ``custom.precision.resolve_channels_last``). Converts the
            explained network in place (the folded copy, or ``classifier`` when nothing is folded).
        seed: seed of the IG noise.
        device: where to compute (default: the classifier's device).
        compile: run the IG passes through ``torch.compile`` (``custom.compilation``; freezes the
            parameters of the explained network, the folded copy or ``classifier`` itself; up to about
            a minute of compiling per process on the project's CPU; with batch norms folded it gained
            little there, see ``benchmarks/bench_teacher.py``). The forward-only passes stay eager.
        fold_batchnorm: run every pass on a copy of the classifier with its batch norms folded into
            the convolutions (``custom.networks.batchnorm_folding``; default on: the same function up
            to float rounding, faster passes). ``classifier`` itself is then left as it is.

    Use ``custom.explain.grid_scaling.scale_paper_settings`` for the pixel-unit settings of a grid
    other than 512 x 512.
    """

    def __init__(
        self,
        classifier: nn.Module,
        high_threshold: float,
        low_threshold: float | None = None,
        clf_threshold: float = 0.5,
        n_steps: int = 50,
        method: str = "gausslegendre",
        references: Sequence[str] = ("fill",),
        n_noise: int = 0,
        noise_level: float = 0.15,
        blur_sigma_px: float = 7.0,
        max_rounds: int = 10,
        min_voxels: int = 50,
        neighbourhood: Sequence[int] = (5, 15, 15),
        sigma: float = 0.8,
        mask_threshold: float = 0.5,
        min_cluster_voxels: int = 100,
        max_center_distance_px: float = 160.0,
        fill_value: float = 0.0,
        value_range: Sequence[float] = (0.0, 1.0),
        max_batch: int = 64,
        windows_per_batch: int = 16,
        autocast_dtype: torch.dtype | str | None = None,
        channels_last: bool | str = True,
        seed: int = 0,
        device: torch.device | str | None = None,
        compile: bool = False,
        fold_batchnorm: bool = True,
    ) -> None:
        if windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be positive, got {windows_per_batch}")
        # every argument by name, checked before any work (folding, compiling) is done
        settings = _settings_record(locals())
        self._autocast_pending = is_auto(autocast_dtype)
        self._channels_last_pending = is_auto(channels_last)
        if not self._channels_last_pending and not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be true, false or 'auto', got {channels_last!r}")
        self.explainer = IntegratedGradientsExplainer(
            classifier, n_steps=n_steps, method=method, references=references, n_noise=n_noise,
            noise_level=noise_level, fill_value=fill_value, value_range=value_range, blur_sigma_px=blur_sigma_px,
            max_batch=max_batch, autocast_dtype=None if self._autocast_pending else autocast_dtype,
            channels_last=False if self._channels_last_pending else channels_last, seed=seed, compile=compile,
            fold_batchnorm=fold_batchnorm,
        )
        #: the network of the forward-only probability passes: the explained one, eager
        self.classifier = self.explainer.network.eval()
        self.high_threshold: float = settings["high_threshold"]
        self.low_threshold: float | None = settings["low_threshold"]
        self.clf_threshold: float = settings["clf_threshold"]
        self.max_rounds: int = settings["max_rounds"]
        self.min_voxels: int = settings["min_voxels"]
        self.neighbourhood = tuple(settings["neighbourhood"])
        self.sigma: float = settings["sigma"]
        self.mask_threshold: float = settings["mask_threshold"]
        self.min_cluster_voxels: int = settings["min_cluster_voxels"]
        self.max_center_distance_px: float = settings["max_center_distance_px"]
        self.fill_value: float = settings["fill_value"]
        self.max_batch = int(max_batch)
        self.windows_per_batch = int(windows_per_batch)
        self.autocast_dtype = self.explainer.autocast_dtype
        if device is None:
            parameter = next(classifier.parameters(), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
        self.device = torch.device(device)
        #: the settings that shape the output, as written to each study's record (:meth:`output_settings`)
        self.settings = settings

    @classmethod
    def output_settings(cls, high_threshold: float, **settings: Any) -> dict[str, Any]:
        """The :attr:`settings` record of a teacher built with these arguments, checked, without building it.

        ``settings`` are the constructor's keyword arguments (the classifier is not needed); a teacher
        output whose recorded settings differ was made by another configuration
        (``custom.teacher.TeacherOutputs.outdated``).

        Raises:
            ValueError: a setting is out of range (the message names it and its value).
        """
        bound = inspect.signature(cls.__init__).bind(None, None, high_threshold, **settings)
        bound.apply_defaults()
        return _settings_record(bound.arguments)

    @property
    def channels_last(self) -> bool:
        """Whether the passes run channels-last (after :meth:`resolve_precision` for ``"auto"``)."""
        return self.explainer.channels_last

    def resolve_precision(self, height: int, width: int, agree_across_ranks: bool = False) -> torch.dtype | None:
        """The autocast dtype and memory format of every pass; ``"auto"`` is measured here once, on IG batches of this grid.

        The dtype is measured first, then the memory format under that dtype.

        Args:
            height, width: the slice size of the studies to explain.
            agree_across_ranks: under ``torch.distributed``, use rank 0's measurements (a collective
                call: every rank must make it; ``custom.teacher.run_cohort`` does, grid by grid,
                before the ranks split the studies).

        Returns:
            ``None`` (float32) or the autocast dtype, also set on the explainer (the memory format is
            :attr:`channels_last`).
        """
        shape = (self.max_batch, WINDOW_DEPTH, int(height), int(width))
        if self._autocast_pending:
            self.autocast_dtype = resolve_autocast_dtype(
                "auto", self.classifier, shape, self.device, backward=True, agree_across_ranks=agree_across_ranks
            )
            self.explainer.autocast_dtype = self.autocast_dtype
            self._autocast_pending = False
        if self._channels_last_pending:
            channels_last = resolve_channels_last(
                "auto", self.classifier, shape, self.device, self.autocast_dtype, backward=True,
                agree_across_ranks=agree_across_ranks,
            )
            self.explainer.set_channels_last(channels_last)
            self._channels_last_pending = False
        return self.autocast_dtype

    def __call__(self, volume_windowed: np.ndarray | torch.Tensor, study_id: str = "study") -> StudyExplanation:
        """Explain one study.

        Args:
            volume_windowed: ``(Z, H, W)`` study, HU windowed to the classifier's range.
            study_id: the study's name for error messages (e.g. its path or StudyInstanceUID).

        Returns:
            A :class:`StudyExplanation`.
        """
        volume = torch.as_tensor(np.asarray(volume_windowed) if not isinstance(volume_windowed, torch.Tensor) else volume_windowed)
        if volume.dim() != 3 or min(volume.shape) < 1:
            raise InputError(f"{study_id}: expected a (Z, H, W) windowed volume, got shape {tuple(volume.shape)}")
        volume = volume.to(device=self.device, dtype=torch.float32)
        if not bool(torch.isfinite(volume).all()):
            raise InputError(f"{study_id}: the windowed volume contains NaN or infinite values")
        self.resolve_precision(*volume.shape[1:])
        n_slices = volume.shape[0]
        sources = window_slice_indices(n_slices, WINDOW_DEPTH, self.device)
        probabilities = torch.cat(
            [
                predict_probabilities(self.classifier, volume[sources[start : start + self.max_batch]], self.max_batch, self.autocast_dtype)
                for start in range(0, n_slices, self.max_batch)
            ]
        )
        positive = torch.nonzero(probabilities > self.clf_threshold).flatten()
        window_round_maps = torch.zeros((positive.numel(), WINDOW_DEPTH, *volume.shape[1:]), dtype=torch.uint8, device=self.device)
        window_rounds = np.zeros(n_slices, dtype=np.int64)
        window_probabilities = np.full((n_slices, self.max_rounds + 1), np.nan, dtype=np.float32)
        window_probabilities[:, 0] = probabilities.cpu().numpy()
        window_new_voxels = np.zeros((n_slices, self.max_rounds), dtype=np.int64)
        stop_reasons = [STOP_NEGATIVE] * n_slices
        for start in range(0, positive.numel(), self.windows_per_batch):
            windows = positive[start : start + self.windows_per_batch]
            result = iexplain_minivolumes(
                volume[sources[windows]], self.classifier, self.explainer, self.high_threshold, self.low_threshold,
                self.clf_threshold, self.neighbourhood, self.max_rounds, self.min_voxels, self.fill_value,
                self.max_batch, self.autocast_dtype, initial_probabilities=probabilities[windows],
            )
            window_round_maps[start : start + windows.numel()] = result.round_map
            index = windows.cpu().numpy()
            window_rounds[index] = result.rounds.cpu().numpy()
            window_probabilities[index] = result.probabilities.cpu().numpy()
            window_new_voxels[index] = result.new_voxels.cpu().numpy()
            for window, reason in zip(index.tolist(), result.stop_reasons):
                stop_reasons[window] = reason
        heatmap, round_map = self._aggregate(window_round_maps, positive, n_slices, int(window_rounds.max(initial=0)))
        mask_unfiltered = (round_map > 0).astype(np.uint8)
        mask_filtered, clusters, labels = filter_clusters(mask_unfiltered, self.min_cluster_voxels, self.max_center_distance_px)
        return StudyExplanation(
            heatmap=heatmap,
            round_map=round_map,
            mask_unfiltered=mask_unfiltered,
            mask_filtered=mask_filtered,
            clusters=self._describe_clusters(clusters, labels, round_map, heatmap, window_probabilities[:, 0]),
            slice_probabilities=window_probabilities[:, 0].copy(),
            window_rounds=window_rounds,
            window_probabilities=window_probabilities,
            window_new_voxels=window_new_voxels,
            stop_reasons=stop_reasons,
            min_cluster_voxels=self.min_cluster_voxels,
            max_center_distance_px=self.max_center_distance_px,
            settings=dict(self.settings),
        )

    def _aggregate(
        self, window_round_maps: torch.Tensor, centers: torch.Tensor, n_slices: int, rounds_run: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Soft map of the final masks and the study round map (first round each voxel passes the threshold)."""
        shape = (n_slices, *window_round_maps.shape[2:])
        round_map = torch.zeros(shape, dtype=torch.uint8, device=window_round_maps.device)
        soft = torch.zeros(shape, dtype=torch.float32, device=window_round_maps.device)
        for round_index in range(1, rounds_run + 1):
            found = (window_round_maps > 0) & (window_round_maps <= round_index)
            soft = aggregate_windows(found, centers, n_slices, self.sigma)
            # the vote only grows with the rounds, so the first round over the threshold is well defined
            newly = (soft >= self.mask_threshold) & (round_map == 0)
            round_map[newly] = round_index
        return soft.cpu().numpy(), round_map.cpu().numpy()

    @staticmethod
    def _describe_clusters(
        clusters: list, labels: np.ndarray, round_map: np.ndarray, heatmap: np.ndarray, slice_probabilities: np.ndarray
    ) -> list[dict[str, Any]]:
        if not clusters:
            return []
        index = np.arange(1, len(clusters) + 1)
        first_rounds = ndimage.minimum(round_map, labels, index)
        mean_heatmap = ndimage.mean(heatmap, labels, index)
        described = []
        for cluster, first_round, mean_value in zip(clusters, first_rounds, mean_heatmap):
            record = cluster.to_dict()
            z0, z1 = cluster.bbox_zyx[0], cluster.bbox_zyx[3]
            record["round"] = int(first_round)
            record["confidence"] = float(np.max(slice_probabilities[z0:z1]))
            record["mean_heatmap"] = float(mean_value)
            described.append(record)
        return described


def _number(name: str, value: Any, integer: bool = False) -> Any:
    """``value`` as a float (an int when ``integer``); a ValueError naming the setting otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer:
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _settings_record(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The checked ``settings`` record of :class:`IExplainTeacher` from its constructor arguments (by name)."""
    a = arguments
    high = _number("high_threshold", a["high_threshold"])
    if not 0.0 < high < math.inf:
        raise ValueError(f"high_threshold must be positive and finite, got {a['high_threshold']!r}")
    low = None if a["low_threshold"] is None else _number("low_threshold", a["low_threshold"])
    if low is not None and not 0.0 <= low <= high:
        raise ValueError(f"low_threshold must be in [0, high_threshold={high:g}], got {a['low_threshold']!r}")
    clf = _number("clf_threshold", a["clf_threshold"])
    if not 0.0 <= clf < 1.0:
        raise ValueError(f"clf_threshold must be a probability in [0, 1), got {a['clf_threshold']!r}")
    max_rounds = _number("max_rounds", a["max_rounds"], integer=True)
    if not 1 <= max_rounds <= 255:
        raise ValueError(f"max_rounds must be in 1..255 (uint8 round map), got {a['max_rounds']!r}")
    min_voxels = _number("min_voxels", a["min_voxels"], integer=True)
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be non-negative, got {a['min_voxels']!r}")
    neighbourhood = [_number("neighbourhood", n, integer=True) for n in a["neighbourhood"]]
    if len(neighbourhood) != 3 or any(n < 1 or n % 2 == 0 for n in neighbourhood):
        raise ValueError(f"neighbourhood must be three odd positive sizes (Z, Y, X), got {a['neighbourhood']!r}")
    sigma = _number("sigma", a["sigma"])
    if not 0.0 < sigma < math.inf:
        raise ValueError(f"sigma must be positive and finite, got {a['sigma']!r}")
    mask_threshold = _number("mask_threshold", a["mask_threshold"])
    if not 0.0 < mask_threshold <= 1.0:
        raise ValueError(f"mask_threshold must be in (0, 1], got {a['mask_threshold']!r}")
    min_cluster_voxels = _number("min_cluster_voxels", a["min_cluster_voxels"], integer=True)
    if min_cluster_voxels < 0:
        raise ValueError(f"min_cluster_voxels must be non-negative, got {a['min_cluster_voxels']!r}")
    max_center_distance_px = _number("max_center_distance_px", a["max_center_distance_px"])
    if not max_center_distance_px > 0.0:
        raise ValueError(f"max_center_distance_px must be positive (inf: no location filter), got {a['max_center_distance_px']!r}")
    fill_value = _number("fill_value", a["fill_value"])
    low_value, high_value = (float(v) for v in a["value_range"])
    if not low_value <= fill_value <= high_value:
        raise ValueError(f"fill_value must lie in the windowed value_range {[low_value, high_value]}, got {a['fill_value']!r}")
    return {
        "high_threshold": high, "low_threshold": low, "clf_threshold": clf, "n_steps": a["n_steps"],
        "method": a["method"], "references": list(a["references"]), "n_noise": a["n_noise"],
        "noise_level": a["noise_level"], "blur_sigma_px": a["blur_sigma_px"], "max_rounds": max_rounds,
        "min_voxels": min_voxels, "neighbourhood": neighbourhood, "sigma": sigma, "mask_threshold": mask_threshold,
        "min_cluster_voxels": min_cluster_voxels, "max_center_distance_px": max_center_distance_px,
        "fill_value": fill_value,
    }


def explain_study(
    volume_windowed: np.ndarray | torch.Tensor,
    classifier: nn.Module,
    high_threshold: float,
    study_id: str = "study",
    **settings: Any,
) -> StudyExplanation:
    """Explain one ``(Z, H, W)`` windowed study with :class:`IExplainTeacher` ``(classifier, high_threshold, **settings)``."""
    return IExplainTeacher(classifier, high_threshold, **settings)(volume_windowed, study_id)
