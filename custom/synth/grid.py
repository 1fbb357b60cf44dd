"""The voxel grid of a synthetic study and vectorised rendering of tubes (capsule chains) on it.

All phantom geometry lives in patient millimetres ordered ``(z, y, x)`` like the arrays
(docs/conventions.md): ``x`` grows to the patient's left, ``y`` to the posterior and ``z`` to the
head (DICOM LPS). Voxel ``(k, j, i)`` sits at ``origin + (k, j, i) * spacing``.

Tubes are rendered segment by segment inside each segment's bounding box only, so a tree of
hundreds of segments costs little more than its own voxels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["SegmentSample", "VoxelGrid", "iter_polyline_samples", "render_polyline"]


@dataclass(frozen=True)
class VoxelGrid:
    """A ``(Z, Y, X)`` grid with its spacing and the world position of voxel ``(0, 0, 0)``.

    Args:
        shape: ``(Z, Y, X)`` voxels.
        spacing: ``(dz, dy, dx)`` in mm.
        origin: world ``(z, y, x)`` in mm of voxel ``(0, 0, 0)`` (LPS axes, see module docstring).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates of the grid as broadcastable arrays ``(Z,1,1)``, ``(1,Y,1)``, ``(1,1,X)`` (float32)."""
        out = []
        for axis, (n, step, start) in enumerate(zip(self.shape, self.spacing, self.origin)):
            values = (start + step * np.arange(n)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = n
            out.append(values.reshape(shape))
        return out[0], out[1], out[2]

    def box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """Voxel slices and broadcastable world coordinates of the voxels inside a world box.

        Args:
            low_mm: lower ``(z, y, x)`` corner in mm.
            high_mm: upper ``(z, y, x)`` corner in mm.

        Returns:
            ``(slices, (z, y, x))`` or ``None`` when the box misses the grid.
        """
        slices = []
        coords = []
        for axis in range(3):
            start, step, n = self.origin[axis], self.spacing[axis], self.shape[axis]
            lo = max(int(np.ceil((low_mm[axis] - start) / step)), 0)
            hi = min(int(np.floor((high_mm[axis] - start) / step)) + 1, n)
            if hi <= lo:
                return None
            slices.append(slice(lo, hi))
            values = (start + step * np.arange(lo, hi)).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = hi - lo
            coords.append(values.reshape(shape))
        return (slices[0], slices[1], slices[2]), (coords[0], coords[1], coords[2])

    @property
    def partial_volume_width(self) -> float:
        """Width (mm) over which a surface blends into its surroundings: the in-plane voxel size."""
        return float(0.5 * (self.spacing[1] + self.spacing[2]))


@dataclass
class SegmentSample:
    """One tube segment evaluated inside its bounding box.

    Attributes:
        slices: the voxel slices of the bounding box in the grid.
        distance: distance (mm) of each voxel from the segment's axis.
        radius: tube radius (mm) at each voxel's projection on the axis.
        arclength: arclength (mm) along the whole polyline of each voxel's projection.
        offset: ``(3, ...)`` vector (mm, ``z, y, x``) from the projection to the voxel.
        segment: index of the segment in its polyline.
    """

    slices: tuple[slice, slice, slice]
    distance: np.ndarray
    radius: np.ndarray
    arclength: np.ndarray
    offset: tuple[np.ndarray, np.ndarray, np.ndarray]
    segment: int


def iter_polyline_samples(
    grid: VoxelGrid,
    points: np.ndarray,
    radii: np.ndarray,
    margin_mm: float = 0.0,
    arclength_range: tuple[float, float] | None = None,
) -> Iterator[SegmentSample]:
    """Evaluate a tapered tube (a chain of capsules) segment by segment on the grid.

    Args:
        grid: the voxel grid.
        points: ``(n, 3)`` centreline points ``(z, y, x)`` in mm.
        radii: ``(n,)`` radius (mm) at each point; it varies linearly along each segment.
        margin_mm: extra bounding-box margin (for shapes that extend beyond the tube).
        arclength_range: only segments overlapping this ``(start, stop)`` arclength interval (mm).

    Yields:
        A :class:`SegmentSample` per segment that touches the grid.
    """
    points = np.asarray(points, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    starts = np.concatenate([[0.0], np.cumsum(lengths)])
    pad = grid.partial_volume_width + margin_mm
    for seg in range(len(points) - 1):
        if arclength_range is not None and (starts[seg + 1] < arclength_range[0] or starts[seg] > arclength_range[1]):
            continue
        p0, p1 = points[seg], points[seg + 1]
        r0, r1 = radii[seg], radii[seg + 1]
        reach = max(r0, r1) + pad
        found = grid.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
        if found is None:
            continue
        slices, (zc, yc, xc) = found
        direction = (p1 - p0).astype(np.float32)
        length_sq = float(max(lengths[seg] ** 2, 1e-12))
        rz, ry, rx = zc - np.float32(p0[0]), yc - np.float32(p0[1]), xc - np.float32(p0[2])
        t = (rz * direction[0] + ry * direction[1] + rx * direction[2]) / np.float32(length_sq)
        np.clip(t, 0.0, 1.0, out=t)
        oz, oy, ox = rz - t * direction[0], ry - t * direction[1], rx - t * direction[2]
        distance = np.sqrt(oz * oz + oy * oy + ox * ox)
        yield SegmentSample(
            slices=slices,
            distance=distance,
            radius=np.float32(r0) + t * np.float32(r1 - r0),
            arclength=np.float32(starts[seg]) + t * np.float32(lengths[seg]),
            offset=(oz, oy, ox),
            segment=seg,
        )


def render_polyline(grid: VoxelGrid, occupancy: np.ndarray, points: np.ndarray, radii: np.ndarray, radius_offset: float = 0.0) -> None:
    """Add a tube's partial-volume occupancy to ``occupancy`` (in place, by maximum).

    A voxel's occupancy ramps linearly from 1 to 0 across one in-plane voxel width around the
    tube surface, which gives the partial-volume edges of real CT vessels.

    Args:
        grid: the voxel grid.
        occupancy: float32 ``(Z, Y, X)`` array updated in place.
        points: ``(n, 3)`` centreline ``(z, y, x)`` in mm.
        radii: ``(n,)`` radii in mm.
        radius_offset: added to every radius (e.g. negative for the inner marrow of a bone).
    """
    width = np.float32(grid.partial_volume_width)
    for sample in iter_polyline_samples(grid, points, np.asarray(radii) + radius_offset):
        occ = np.clip((sample.radius - sample.distance) / width + np.float32(0.5), 0.0, 1.0)
        view = occupancy[sample.slices]
        np.maximum(view, occ, out=view)
