"""Procedural pulmonary vessel trees that fill the lungs up and down from the hilum.

A tree is a list of :class:`Branch` polylines. Below the explicitly placed central trunks
(main / left / right pulmonary artery, or the pulmonary vein trunks) each lobe's territory is a
cloud of points sampled inside the lung; the cloud is split recursively with a few k-means steps
and every split sends a tapering, slightly curved branch towards its part of the cloud. Branches
therefore run wherever the lung is (apex, bases, anterior and posterior), not only near the
hilum, and arteries and veins grown from independent clouds interleave like real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Branch", "grow_lobe", "make_branch", "split_points"]


@dataclass
class Branch:
    """One vessel branch.

    Attributes:
        index: position in the tree's branch list.
        parent: index of the parent branch (-1 for a root).
        level: 0 main trunk, 1 left/right trunk, 2 lobar, 3 segmental, 4 subsegmental, 5 and 6 smaller.
        name: anatomical name used in the box CSV ``Artery`` column, e.g. ``"RLL segmental"``.
        side: ``"R"``, ``"L"`` or ``"C"`` (central, both sides).
        points: ``(n, 3)`` centreline ``(z, y, x)`` in mm.
        radii: ``(n,)`` lumen radius in mm at each point.
    """

    index: int
    parent: int
    level: int
    name: str
    side: str
    points: np.ndarray
    radii: np.ndarray
    children: list[int] = field(default_factory=list)

    @property
    def length(self) -> float:
        """Arclength of the centreline in mm."""
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def point_at(self, arclength: float) -> np.ndarray:
        """Centreline point ``(z, y, x)`` at an arclength (mm), clamped to the branch."""
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cumulative = np.concatenate([[0.0], np.cumsum(steps)])
        return np.array([np.interp(arclength, cumulative, self.points[:, axis]) for axis in range(3)])

    def radius_at(self, arclength: float) -> float:
        """Lumen radius (mm) at an arclength."""
        steps = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cumulative = np.concatenate([[0.0], np.cumsum(steps)])
        return float(np.interp(arclength, cumulative, self.radii))


def make_branch(
    rng: np.random.Generator,
    start: np.ndarray,
    end: np.ndarray,
    radius_start: float,
    radius_end: float,
    wobble: float = 0.06,
    step_mm: float = 8.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A gently curved centreline from ``start`` to ``end`` with a linear taper.

    Args:
        rng: the study's random generator.
        start: ``(z, y, x)`` mm.
        end: ``(z, y, x)`` mm.
        radius_start: radius at the start (mm).
        radius_end: radius at the end (mm).
        wobble: peak sideways bow as a fraction of the length.
        step_mm: approximate distance between centreline points.

    Returns:
        ``(points (n, 3), radii (n,))``.
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    chord = end - start
    length = float(np.linalg.norm(chord))
    n = max(3, int(np.ceil(length / step_mm)) + 1)
    t = np.linspace(0.0, 1.0, n)
    side = rng.normal(size=3)
    if length > 0:
        side -= side.dot(chord) / length**2 * chord
    side /= max(np.linalg.norm(side), 1e-9)
    bow = wobble * length * rng.uniform(-1.0, 1.0) * np.sin(np.pi * t)
    points = start[None] + t[:, None] * chord[None] + bow[:, None] * side[None]
    radii = radius_start + t * (radius_end - radius_start)
    return points, radii


def split_points(rng: np.random.Generator, points: np.ndarray, k: int, iterations: int = 6) -> list[np.ndarray]:
    """Split a point cloud into ``k`` compact groups with a few Lloyd (k-means) steps.

    Args:
        rng: the study's random generator (chooses the initial centres).
        points: ``(m, 3)`` points.
        k: number of groups wanted.
        iterations: Lloyd iterations.

    Returns:
        The non-empty groups (at most ``k``), each an ``(m_i, 3)`` array.
    """
    k = min(k, len(points))
    centres = points[rng.choice(len(points), size=k, replace=False)].copy()
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        labels = d2.argmin(axis=1)
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return [points[labels == c] for c in range(k) if np.any(labels == c)]


def grow_lobe(
    rng: np.random.Generator,
    branches: list[Branch],
    parent: int,
    start: np.ndarray,
    cloud: np.ndarray,
    level: int,
    max_level: int,
    radius_for_level: Callable[[int], float],
    name: str,
    side: str,
    inside: Callable[[np.ndarray], np.ndarray],
) -> None:
    """Recursively grow branches from ``start`` into the territory ``cloud`` (appends to ``branches``).

    Args:
        rng: the study's random generator.
        branches: the tree so far; new branches are appended and linked to ``parent``.
        parent: index of the branch this subtree hangs from.
        start: ``(z, y, x)`` mm where the subtree starts.
        cloud: ``(m, 3)`` points of the territory this subtree supplies.
        level: level of the branches grown now (2 lobar, 3 segmental, ...).
        max_level: deepest level grown.
        radius_for_level: draws the start radius (mm) of a branch of a level.
        name: lobe name (``"RUL"``, ``"Lingula"``, ...); the level is appended.
        side: ``"R"`` or ``"L"``.
        inside: vectorised test ``points (n, 3) -> bool (n,)`` of lying inside the lung.
    """
    if level > max_level or len(cloud) < 2:
        return
    level_names = {2: "lobar", 3: "segmental"}
    if level == 2:
        groups = [cloud]
    elif level == 3:
        groups = split_points(rng, cloud, int(rng.integers(3, 6)))
    else:
        groups = split_points(rng, cloud, 2 if rng.random() < 0.5 else 3)
    parent_radius = float(branches[parent].radii[-1]) if parent >= 0 else np.inf
    for group in groups:
        centre = group.mean(axis=0)
        if level == max_level or len(group) < 4:
            # A terminal branch reaches well into its territory: toward the group's far edge.
            reach = np.linalg.norm(group - start, axis=1)
            end = group[int(np.argsort(reach)[int(0.8 * (len(group) - 1))])]
        elif level == 2:
            end = start + rng.uniform(0.45, 0.6) * (centre - start)
        elif level == 3:
            # Segmental arteries run to about the middle of their segment (down to the bases, up to the apex).
            end = start + rng.uniform(0.8, 1.0) * (centre - start)
        else:
            end = start + rng.uniform(0.7, 0.9) * (centre - start)
        radius = min(radius_for_level(level), 0.9 * parent_radius)
        points, radii = make_branch(rng, start, end, radius, radius * rng.uniform(0.75, 0.9))
        if level >= 3:
            keep = inside(points)
            keep[0] = True
            if not keep.all():
                # A branch stops where it would leave the lung (e.g. into the heart).
                stop = int(np.argmin(keep))
                if stop < 2:
                    continue
                points, radii = points[:stop], radii[:stop]
        branch = Branch(len(branches), parent, level, f"{name} {level_names.get(level, 'subsegmental')}", side, points, radii)
        branches.append(branch)
        if parent >= 0:
            branches[parent].children.append(branch.index)
        grow_lobe(rng, branches, branch.index, points[-1], group, level + 1, max_level, radius_for_level, name, side, inside)
