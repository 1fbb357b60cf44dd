"""One configured ``IExplainTeacher`` per study grid, with the paper's 512 px settings scaled to it.

The paper gives its pixel-unit settings for 512 x 512 slices: the 15 x 15 x 5 hysteresis
neighbourhood and the 50-voxel stop of Algorithm 1 (3.2), the 100-voxel and 160-pixel filters
(4.2). A cohort may mix grids, so the bundle config holds the 512 px values and
:class:`TeacherFactory` scales them to each study's in-plane size with
``custom.explain.scale_paper_settings`` before building the teacher for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from custom.explain.grid_scaling import PAPER_IMAGE_SIZE_PX, GridSettings, scale_paper_settings
from custom.explain.teacher import IExplainTeacher
from custom.networks.batchnorm_folding import fold_batchnorm

__all__ = ["IG_SETTING_KEYS", "TeacherFactory"]

#: Teacher settings that change the scale of the IG attributions, so a calibrated threshold holds
#: only for the settings it was calibrated with.
IG_SETTING_KEYS = ("references", "n_steps", "method", "n_noise", "noise_level")

_IG_DEFAULTS = {"references": ("fill",), "n_steps": 50, "method": "gausslegendre", "n_noise": 0, "noise_level": 0.15}


class TeacherFactory:
    """Builds the iExplain teacher of a study grid (Condrea et al. 2025, 3.2).

    Args:
        classifier: the stage-1 classifier (``custom.teacher.load_classifier``).
        high_threshold: the calibrated hysteresis high threshold (``None`` while calibrating, when
            every call passes its candidate); the low threshold is half of it.
        neighbourhood: hysteresis box ``(Z, Y, X)`` at ``paper_size_px`` (paper: 5 x 15 x 15).
        min_voxels: Algorithm 1 stop condition at ``paper_size_px`` (paper: 50).
        min_cluster_voxels: size filter at ``paper_size_px`` (paper: 100).
        max_center_distance_px: location filter at ``paper_size_px`` (paper: 160).
        blur_sigma_px: sigma of the ``"blur"`` IG reference at ``paper_size_px``.
        paper_size_px: in-plane size the five settings above are given for (paper: 512).
        scale_to_grid: scale them to each study's grid (``False``: use them as given).
        teacher_settings: the other ``custom.explain.IExplainTeacher`` arguments (``clf_threshold``,
            ``n_steps``, ``references``, ``n_noise``, ``max_rounds``, ``sigma``, ``fill_value``, ...).
    """

    def __init__(
        self,
        classifier: nn.Module,
        high_threshold: float | None,
        neighbourhood: Sequence[int] = (5, 15, 15),
        min_voxels: int = 50,
        min_cluster_voxels: int = 100,
        max_center_distance_px: float = 160.0,
        blur_sigma_px: float = 7.0,
        paper_size_px: int = PAPER_IMAGE_SIZE_PX,
        scale_to_grid: bool = True,
        **teacher_settings: Any,
    ) -> None:
        if high_threshold is not None and not high_threshold > 0:
            raise ValueError(f"high_threshold must be positive, got {high_threshold}")
        reserved = {"classifier", "low_threshold"} & set(teacher_settings)
        if reserved:
            raise ValueError(f"{sorted(reserved)} cannot be set: the classifier is given, the low threshold is half the high one")
        # every setting checked now, at its paper value, not when the first study is explained
        IExplainTeacher.output_settings(
            1.0 if high_threshold is None else high_threshold, neighbourhood=neighbourhood, min_voxels=min_voxels,
            min_cluster_voxels=min_cluster_voxels, max_center_distance_px=max_center_distance_px,
            blur_sigma_px=blur_sigma_px, **teacher_settings,
        )
        # folded once here, so every grid's teacher explains (and compiles) the same network
        self.classifier = fold_batchnorm(classifier) if teacher_settings.get("fold_batchnorm", True) else classifier
        self.high_threshold = None if high_threshold is None else float(high_threshold)
        self.paper_settings = GridSettings(
            neighbourhood=tuple(int(n) for n in neighbourhood),  # type: ignore[arg-type]
            min_voxels=int(min_voxels),
            min_cluster_voxels=int(min_cluster_voxels),
            max_center_distance_px=float(max_center_distance_px),
            blur_sigma_px=float(blur_sigma_px),
        )
        self.paper_size_px = int(paper_size_px)
        self.scale_to_grid = bool(scale_to_grid)
        self.teacher_settings = dict(teacher_settings)
        self._precision_by_grid: dict[tuple[int, int], tuple[Any, bool]] = {}  # "auto" measured once per grid
        self._explain_network: nn.Module | None = None

    @property
    def ig_settings(self) -> dict[str, Any]:
        """The settings that set the scale of the attributions (``IG_SETTING_KEYS``), JSON-ready."""
        settings = {key: self.teacher_settings.get(key, _IG_DEFAULTS[key]) for key in IG_SETTING_KEYS}
        settings["references"] = [str(kind) for kind in settings["references"]]
        settings["n_steps"], settings["n_noise"] = int(settings["n_steps"]), int(settings["n_noise"])
        settings["noise_level"] = float(settings["noise_level"])
        return settings

    def grid_settings(self, height: int, width: int) -> GridSettings:
        """The pixel-unit settings on an ``height x width`` grid."""
        if not self.scale_to_grid:
            return self.paper_settings
        paper = self.paper_settings
        return scale_paper_settings(
            height, width, self.paper_size_px, paper.neighbourhood, paper.min_voxels, paper.min_cluster_voxels,
            paper.max_center_distance_px, paper.blur_sigma_px,
        )

    def output_settings(self, height: int, width: int, high_threshold: float | None = None) -> dict[str, Any]:
        """The ``settings`` record the teacher of an ``height x width`` grid writes, without building it.

        A study output whose recorded settings differ was made by another configuration and is redone
        (``custom.teacher.run_cohort``). Raises ``ValueError`` without a high threshold, like ``__call__``.
        """
        threshold = self.high_threshold if high_threshold is None else float(high_threshold)
        if threshold is None:
            raise ValueError("no high threshold: calibrate it (configs/calibrate.json) or set high_threshold")
        grid = self.grid_settings(height, width)
        return IExplainTeacher.output_settings(
            threshold, neighbourhood=grid.neighbourhood, min_voxels=grid.min_voxels, min_cluster_voxels=grid.min_cluster_voxels,
            max_center_distance_px=grid.max_center_distance_px, blur_sigma_px=grid.blur_sigma_px, **self.teacher_settings,
        )

    def __call__(self, height: int, width: int, high_threshold: float | None = None) -> IExplainTeacher:
        """The teacher of an ``height x width`` grid.

        Args:
            height: rows of the study's slices.
            width: columns of the study's slices.
            high_threshold: overrides the factory's threshold (calibration candidates).

        Returns:
            An ``IExplainTeacher`` (cheap to build: it holds settings and the classifier).
        """
        threshold = self.high_threshold if high_threshold is None else float(high_threshold)
        if threshold is None:
            raise ValueError("no high threshold: calibrate it (configs/calibrate.json) or set high_threshold")
        return self._teacher(height, width, threshold)

    def agree_precision(self, height: int, width: int) -> None:
        """Measure the ``"auto"`` dtype and memory format of a grid now, every rank taking rank 0's choice.

        A collective call under ``torch.distributed``: every rank must make it, for the same grids in
        the same order (``custom.teacher.run_cohort`` does before the ranks split the studies).
        Otherwise each rank measures on its own clock when it meets the grid, and two ranks sharing
        a CPU can choose differently, so a study's pseudo-label would depend on the rank that ran it.
        Does nothing for a grid already measured (on every rank alike) or without ``"auto"`` settings.
        """
        if (int(height), int(width)) not in self._precision_by_grid:
            # the threshold only matters for explaining, not for the probes
            self._teacher(height, width, self.high_threshold or 1.0, agree_across_ranks=True)

    def _teacher(self, height: int, width: int, threshold: float, agree_across_ranks: bool = False) -> IExplainTeacher:
        grid = self.grid_settings(height, width)
        settings = dict(self.teacher_settings)
        settings["fold_batchnorm"] = False  # folded once in __init__ (when asked): no example pass per study
        grid_key = (int(height), int(width))
        if grid_key in self._precision_by_grid:
            settings["autocast_dtype"], settings["channels_last"] = self._precision_by_grid[grid_key]
        teacher = IExplainTeacher(
            self.classifier,
            threshold,
            neighbourhood=grid.neighbourhood,
            min_voxels=grid.min_voxels,
            min_cluster_voxels=grid.min_cluster_voxels,
            max_center_distance_px=grid.max_center_distance_px,
            blur_sigma_px=grid.blur_sigma_px,
            **settings,
        )
        # autocast_dtype and channels_last "auto" are measured on the first teacher of each grid and reused after
        self._precision_by_grid[grid_key] = (teacher.resolve_precision(height, width, agree_across_ranks), teacher.channels_last)
        # with compile=True, holding the compiled classifier keeps it cached for the next studies' teachers
        self._explain_network = teacher.explainer.model
        return teacher
