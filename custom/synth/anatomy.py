"""Per-study chest anatomy of the synthetic CTPA phantom: shapes, landmarks and tissue HU.

:func:`draw_anatomy` draws every size, position and tissue value of one study from its random
generator; :class:`ChestAnatomy` answers "which lung is this point in" for point clouds and for
whole grids (the same analytic shapes, so vessel trees grown in the point clouds fit the image).

Coordinates are patient millimetres ``(z, y, x)``: ``x`` to the patient's left, ``y`` posterior,
``z`` to the head (DICOM LPS, see ``custom.synth.grid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ChestAnatomy", "draw_anatomy", "ellipsoid_inside"]


def ellipsoid_inside(z, y, x, centre: np.ndarray, axes: np.ndarray, half_axes: np.ndarray):
    """Normalised radius of points w.r.t. a rotated ellipsoid (``< 1`` inside).

    Args:
        z, y, x: broadcastable coordinate arrays (mm).
        centre: ``(z, y, x)`` centre in mm.
        axes: ``(3, 3)`` orthonormal rows (each a ``(z, y, x)`` direction).
        half_axes: ``(3,)`` half-axis lengths in mm along those rows.

    Returns:
        The squared normalised radius, broadcast over the inputs.
    """
    dz, dy, dx = z - np.float32(centre[0]), y - np.float32(centre[1]), x - np.float32(centre[2])
    total = 0.0
    for row, half in zip(axes, half_axes):
        proj = dz * np.float32(row[0]) + dy * np.float32(row[1]) + dx * np.float32(row[2])
        total = total + (proj / np.float32(half)) ** 2
    return total


@dataclass
class ChestAnatomy:
    """Geometry and tissue values of one synthetic chest (all lengths in mm, values in HU).

    The fields are drawn by :func:`draw_anatomy`; see there for their ranges.
    """

    z_bottom: float
    height: float
    scale: float
    cx: float
    cy: float
    body_half_width: float
    body_half_ap_anterior: float
    body_half_ap_posterior: float
    fat_thickness: float
    muscle_thickness: float
    cavity_half_width: float
    cavity_half_ap: float
    cavity_cy: float
    lung_centre_x: tuple[float, float]
    lung_half_width: tuple[float, float]
    lung_half_ap: float
    lung_cy: float
    lung_power: float
    apex_z: tuple[float, float]
    apex_shrink_z: float
    dome_z: tuple[float, float]
    dome_depth: float
    mediastinum_half_width: float
    heart_centre: np.ndarray
    heart_axes: np.ndarray
    heart_half_axes: np.ndarray
    spine_y: float
    vertebra_radius: float
    aorta_descending_yx: tuple[float, float]
    aorta_descending_radius: float
    aorta_arch_z: float
    bifurcation_z: float
    outline_harmonics: np.ndarray
    fat_harmonics: np.ndarray
    values: dict

    def body_wall(self, y, x):
        """Body and subcutaneous-fat boundaries: ``(inside_body, inside_fat_layer_inner_edge)`` of 2D points.

        The outline is an ellipse (flatter at the back) with a few low-order harmonics; the fat layer
        is thicker in front and at the sides than over the spine, and varies per study.
        """
        u = (x - np.float32(self.cx)) / np.float32(self.body_half_width)
        half_ap = np.where(y > self.cy, self.body_half_ap_posterior, self.body_half_ap_anterior).astype(np.float32)
        w = (y - np.float32(self.cy)) / half_ap
        rho = np.sqrt(u * u + w * w)
        phi = np.arctan2(w, u)
        outline = np.ones_like(phi)
        for order, (amplitude, phase) in enumerate(self.outline_harmonics, start=2):
            outline += np.float32(amplitude) * np.cos(order * phi + np.float32(phase))
        local_radius = np.sqrt((self.body_half_width * np.cos(phi)) ** 2 + (half_ap * np.sin(phi)) ** 2)
        fat = np.float32(self.fat_thickness) * (1.0 - 0.35 * np.sin(phi))  # sin > 0 posterior: thinner over the back
        for order, (amplitude, phase) in enumerate(self.fat_harmonics, start=1):
            fat *= 1.0 + np.float32(amplitude) * np.cos(order * phi + np.float32(phase))
        return rho < outline, rho < outline - fat / local_radius

    def dome(self, y, x):
        """Height (mm) of the diaphragm under ``(y, x)``: the higher of two paraboloid domes."""
        heights = []
        for side in range(2):
            u = (x - np.float32(self.lung_centre_x[side])) / np.float32(self.lung_half_width[side])
            v = (y - np.float32(self.lung_cy)) / np.float32(self.lung_half_ap)
            heights.append(np.float32(self.dome_z[side]) - np.float32(self.dome_depth) * (u * u + v * v))
        return np.maximum(heights[0], heights[1])

    def cavity(self, y, x):
        """Inside the rib cage (elliptic cross-section), any ``z``."""
        u = (x - np.float32(self.cx)) / np.float32(self.cavity_half_width)
        v = (y - np.float32(self.cavity_cy)) / np.float32(self.cavity_half_ap)
        return u * u + v * v < 1.0

    def heart_tissue(self, z, y, x, margin: float = 0.0):
        """Inside the heart ellipsoid grown by ``margin`` mm."""
        return ellipsoid_inside(z, y, x, self.heart_centre, self.heart_axes, self.heart_half_axes + margin) < 1.0

    def lung_side(self, z, y, x):
        """Lung label of points: 0 outside, 1 right lung, 2 left lung.

        Args:
            z, y, x: broadcastable coordinate arrays in mm (point clouds, or grid axes shaped
                ``(Z,1,1)``, ``(1,Y,1)``, ``(1,1,X)``: terms are combined only when needed, so a
                whole grid costs a few full-volume operations).

        Returns:
            uint8 array of the broadcast shape.
        """
        z, y, x = (np.asarray(a, dtype=np.float32) for a in (z, y, x))
        shape = np.broadcast_shapes(z.shape, y.shape, x.shape)
        label = np.zeros(shape, dtype=np.uint8)
        dx_mid = x - np.float32(self.cx)
        dy_mid = (y - np.float32(self.lung_cy)) / np.float32(self.lung_half_ap)
        # The mediastinum is narrow in front (anterior junction) and wider in the middle.
        band = np.float32(self.mediastinum_half_width) * (np.float32(0.45) + np.float32(0.55) * np.exp(-4.0 * (dy_mid - np.float32(0.1)) ** 2))
        common = self.cavity(y, x) & (np.abs(dx_mid) > band) & (z > self.dome(y, x))
        spine = dx_mid**2 + (y - np.float32(self.spine_y)) ** 2 < np.float32((self.vertebra_radius + 7.0) ** 2)
        ay, ax = self.aorta_descending_yx
        aorta = ((x - np.float32(ax)) ** 2 + (y - np.float32(ay)) ** 2 < np.float32((self.aorta_descending_radius + 4.0) ** 2)) & (
            z < np.float32(self.aorta_arch_z)
        )
        common &= ~(spine | aorta)
        for side, value in ((0, 1), (1, 2)):
            grow = (z - np.float32(self.apex_shrink_z)) / np.float32(self.apex_z[side] - self.apex_shrink_z)
            shrink = np.sqrt(np.clip(1.0 - np.clip(grow, 0.0, None) ** 2, 0.0, 1.0)) + np.float32(1e-4)
            u = np.abs(x - np.float32(self.lung_centre_x[side])) / (np.float32(self.lung_half_width[side]) * shrink)
            v = np.abs(dy_mid) / shrink
            power = np.float32(self.lung_power)
            inside = (u**power + v**power < 1.0) & common & ((dx_mid < 0) if side == 0 else (dx_mid >= 0))
            label[inside] = value
        # Heart exclusion, evaluated only at lung candidates.
        candidates = np.nonzero(label)
        if len(candidates[0]):
            zc, yc, xc = (np.broadcast_to(a, shape)[candidates] for a in (z, y, x))
            heart = self.heart_tissue(zc, yc, xc, margin=5.0)
            label[tuple(c[heart] for c in candidates)] = 0
        return label

    def lung_points(self, rng: np.random.Generator, side: int, n: int) -> np.ndarray:
        """``n`` points ``(z, y, x)`` sampled uniformly inside one lung (``side`` 1 right, 2 left)."""
        sign = -1.0 if side == 1 else 1.0
        low = np.array([min(self.dome_z) - self.dome_depth - 5.0, self.lung_cy - self.lung_half_ap, self.cx])
        high = np.array([max(self.apex_z), self.lung_cy + self.lung_half_ap, self.cx + sign * 1.05 * self.cavity_half_width])
        low, high = np.minimum(low, high), np.maximum(low, high)
        found: list[np.ndarray] = []
        total = 0
        while total < n:
            candidates = rng.uniform(low, high, size=(4 * n, 3))
            keep = candidates[self.lung_side(candidates[:, 0], candidates[:, 1], candidates[:, 2]) == side]
            found.append(keep)
            total += len(keep)
        return np.concatenate(found)[:n]


def _frame(direction: np.ndarray) -> np.ndarray:
    """Orthonormal rows: ``direction`` and two unit vectors perpendicular to it."""
    d = direction / np.linalg.norm(direction)
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e2 = np.cross(d, helper)
    e2 /= np.linalg.norm(e2)
    return np.stack([d, e2, np.cross(d, e2)])


def draw_anatomy(rng: np.random.Generator, z_bottom: float, height: float, artery_hu: float, vein_hu: float) -> ChestAnatomy:
    """Draw one study's chest: sizes, positions and tissue values vary per study.

    Args:
        rng: the study's random generator.
        z_bottom: world ``z`` (mm) of the most inferior slice.
        height: craniocaudal coverage of the volume (mm).
        artery_hu: the study's pulmonary-artery contrast (HU); right-heart and SVC values follow it.
        vein_hu: the study's pulmonary-vein contrast (HU).

    Returns:
        The :class:`ChestAnatomy`.
    """
    s = rng.uniform(0.9, 1.06)
    cx, cy = rng.uniform(-8.0, 8.0), rng.uniform(-14.0, 0.0)
    half_w = 150.0 * s
    half_ap = half_w * rng.uniform(0.68, 0.78)
    fat, muscle = rng.uniform(8.0, 24.0), rng.uniform(8.0, 16.0)
    cavity_w = half_w - fat - muscle - 8.0
    cavity_ap = half_ap - fat - muscle - 8.0
    cavity_cy = cy + 2.0
    vertebra_r = 16.0 * s
    spine_y = cavity_cy + cavity_ap - 1.2 * vertebra_r
    heart_centre = np.array(
        [z_bottom + height * rng.uniform(0.27, 0.33), cavity_cy - 0.25 * cavity_ap, cx + 0.12 * cavity_w]
    )
    heart_axes = _frame(np.array([-0.45, -0.55, 0.55]) + rng.normal(0.0, 0.05, 3))
    heart_half = np.array([58.0, 46.0, 42.0]) * s * rng.uniform(0.92, 1.08, 3)
    values = {
        "air": -1000.0,
        "fat": rng.uniform(-120.0, -80.0),
        "muscle": rng.uniform(35.0, 60.0),
        "mediastinal_fat": rng.uniform(-110.0, -70.0),
        "lung": rng.uniform(-880.0, -820.0),
        "lung_gradient": rng.uniform(30.0, 70.0),
        "lung_texture": rng.uniform(15.0, 35.0),
        "liver": rng.uniform(70.0, 110.0),
        "spleen": rng.uniform(45.0, 70.0),
        "myocardium": rng.uniform(35.0, 50.0),
        "cortical_bone": rng.uniform(900.0, 1200.0),
        "cancellous_bone": rng.uniform(400.0, 520.0),
        "disc": rng.uniform(70.0, 100.0),
        "csf": rng.uniform(5.0, 15.0),
        "cartilage": rng.uniform(100.0, 160.0),
        "airway_wall": rng.uniform(20.0, 50.0),
        "table": rng.uniform(-200.0, -100.0),
        "artery": artery_hu,
        "right_heart": artery_hu * rng.uniform(0.95, 1.08),
        "left_heart": artery_hu * rng.uniform(0.6, 0.85),
        "svc": min(artery_hu * rng.uniform(1.1, 1.8), 1000.0),
        "ivc": rng.uniform(70.0, 150.0),
        "vein": vein_hu,
    }
    return ChestAnatomy(
        z_bottom=z_bottom,
        height=height,
        scale=s,
        cx=cx,
        cy=cy,
        body_half_width=half_w,
        body_half_ap_anterior=0.92 * half_ap,
        body_half_ap_posterior=1.05 * half_ap,
        fat_thickness=fat,
        muscle_thickness=muscle,
        cavity_half_width=cavity_w,
        cavity_half_ap=cavity_ap,
        cavity_cy=cavity_cy,
        lung_centre_x=(cx - 0.48 * cavity_w, cx + 0.5 * cavity_w),
        lung_half_width=(0.54 * cavity_w, 0.52 * cavity_w),
        lung_half_ap=0.97 * cavity_ap,
        lung_cy=cavity_cy + 0.05 * cavity_ap,
        lung_power=rng.uniform(2.2, 2.8),
        apex_z=(z_bottom + height * rng.uniform(0.95, 1.03), z_bottom + height * rng.uniform(0.94, 1.02)),
        apex_shrink_z=z_bottom + height * rng.uniform(0.58, 0.66),
        dome_z=(z_bottom + height * rng.uniform(0.2, 0.26), z_bottom + height * rng.uniform(0.16, 0.22)),
        dome_depth=rng.uniform(45.0, 65.0),
        mediastinum_half_width=rng.uniform(16.0, 24.0) * s,
        heart_centre=heart_centre,
        heart_axes=heart_axes,
        heart_half_axes=heart_half,
        spine_y=spine_y,
        vertebra_radius=vertebra_r,
        aorta_descending_yx=(spine_y - vertebra_r * 0.8, cx + 25.0 * s),
        aorta_descending_radius=rng.uniform(10.0, 13.0) * s,
        aorta_arch_z=z_bottom + height * rng.uniform(0.78, 0.84),
        bifurcation_z=z_bottom + height * rng.uniform(0.56, 0.62),
        outline_harmonics=np.stack([rng.uniform(0.0, 0.03, 3), rng.uniform(0.0, 2 * np.pi, 3)], axis=1),
        fat_harmonics=np.stack([rng.uniform(0.0, 0.3, 2), rng.uniform(0.0, 2 * np.pi, 2)], axis=1),
        values=values,
    )
