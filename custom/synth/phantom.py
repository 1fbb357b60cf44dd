"""One synthetic CTPA study: chest anatomy, pulmonary arteries and veins, emboli and mimics -> HU volume.

The phantom is built so that no cheap cue solves it:

- Emboli are filling defects of 20-70 HU (median near 47 HU, as real PE voxels) inside
  contrast-filled arteries (250-450 HU per study), elongated along the vessel, central,
  eccentric (wall-adherent) or occlusive, of four kinds (saddle/central, lobar, segmental,
  subsegmental). Their positions are drawn along the arterial tree's length, and the tree fills
  both lungs from apex to base, so emboli occur at every level where arteries run: the slice
  level is not a shortcut.
- Soft tissue of the same HU is everywhere (muscle, myocardium, liver, lymph-node-like blobs,
  airway walls, partial volume at vessel edges), bone is brighter than contrast, and mimics occur
  in positive and negative studies alike: flow artefacts (100-200 HU patches in arteries),
  unopacified vein stretches (30-80 HU, a filling defect in a vein) and hilar lymph nodes.
- Per-study variation of body size and position, contrast, noise (15-25 HU sd) and blur.

``generate_study(index, seed, config)`` is deterministic: the random generator is
``np.random.default_rng([seed, index])``, so a study does not depend on how many studies are
generated or by how many processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from custom.io.errors import InputError
from custom.io.geometry import affine_from_dicom
from custom.synth.anatomy import ChestAnatomy, draw_anatomy, ellipsoid_inside
from custom.synth.grid import SegmentSample, VoxelGrid, iter_polyline_samples, render_polyline
from custom.synth.vessel_tree import Branch, grow_lobe, make_branch

__all__ = [
    "EMBOLUS_KINDS",
    "IMAGE_ORIENTATION",
    "Embolus",
    "EmbolusBox",
    "PhantomConfig",
    "SyntheticStudy",
    "embolus_boxes",
    "generate_study",
]

IMAGE_ORIENTATION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""``ImageOrientationPatient`` of every synthetic slice: rows along +x (patient left), columns along +y."""

EMBOLUS_KINDS: tuple[str, ...] = ("saddle", "central", "lobar", "segmental", "subsegmental")
"""Embolus kinds: saddle/central sit in the main or left/right pulmonary artery."""

_KIND_LEVELS = {"central": (0, 1), "lobar": (2,), "segmental": (3,), "subsegmental": (4,)}
# (eccentric, central, occlusive) probabilities per kind: big vessels rarely occlude.
_MORPHOLOGY_WEIGHTS = {
    "saddle": (0.0, 1.0, 0.0),
    "central": (0.6, 0.35, 0.05),
    "lobar": (0.45, 0.35, 0.2),
    "segmental": (0.3, 0.25, 0.45),
    "subsegmental": (0.2, 0.1, 0.7),
}
# Embolus length along the vessel (mm) per kind.
_LENGTH_MM = {"central": (20.0, 45.0), "lobar": (14.0, 30.0), "segmental": (12.0, 26.0), "subsegmental": (10.0, 18.0)}
# Lumen radius (mm, before the study's scale) of a branch of each level below the trunks.
_RADIUS_MM = {2: (5.0, 6.5), 3: (2.8, 3.8), 4: (1.8, 2.5), 5: (1.3, 1.8), 6: (1.0, 1.3)}


@dataclass(frozen=True)
class PhantomConfig:
    """Settings of the synthetic cohort (the defaults give the project's default difficulty).

    Args:
        shape: ``(Z, Y, X)`` voxels. Spacing is scaled so the same chest fits any shape:
            in-plane ``pixel_spacing_mm * 192 / X``, slices ``slice_spacing_mm * 96 / Z``.
        positive_rate: probability that a study has emboli.
        emboli_per_positive: inclusive range of emboli in a positive study.
        emboli_count_weights: relative probability of each count in that range.
        kind_weights: relative frequency of the embolus kinds (``EMBOLUS_KINDS`` order).
        pixel_spacing_mm: range of the in-plane spacing drawn per study, at 192 columns.
        slice_spacing_mm: slice spacing at 96 slices.
        artery_hu: range of the per-study pulmonary-artery contrast.
        vein_hu: range of the per-study pulmonary-vein contrast.
        embolus_hu: ``(median, sd, low, high)`` of an embolus's HU (real PE: median near 47 HU).
        noise_sd: range of the per-study CT noise standard deviation (HU).
        blur_sigma: range of the per-study in-plane blur (voxels).
        noise: add CT noise (off gives the clean render used by tests).
        blur: blur the image (off gives the clean render).
        min_embolus_voxels: an embolus smaller than this on the grid is redrawn.
        flow_artifact_rate: probability that a study has flow artefacts in its arteries.
        unopacified_vein_rate: probability that a study has unopacified vein stretches.
        lymph_node_rate: probability that a study has hilar lymph-node-like blobs.
    """

    shape: tuple[int, int, int] = (96, 192, 192)
    positive_rate: float = 0.5
    emboli_per_positive: tuple[int, int] = (1, 5)
    emboli_count_weights: tuple[float, ...] = (0.2, 0.25, 0.2, 0.2, 0.15)
    kind_weights: tuple[float, ...] = (0.02, 0.08, 0.2, 0.4, 0.3)
    pixel_spacing_mm: tuple[float, float] = (1.7, 1.9)
    slice_spacing_mm: float = 2.5
    artery_hu: tuple[float, float] = (250.0, 450.0)
    vein_hu: tuple[float, float] = (120.0, 250.0)
    embolus_hu: tuple[float, float, float, float] = (47.0, 11.0, 22.0, 68.0)
    noise_sd: tuple[float, float] = (15.0, 25.0)
    blur_sigma: tuple[float, float] = (0.6, 0.8)
    noise: bool = True
    blur: bool = True
    min_embolus_voxels: int = 4
    flow_artifact_rate: float = 0.35
    unopacified_vein_rate: float = 0.6
    lymph_node_rate: float = 0.7

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise InputError(f"PhantomConfig: shape must be three sizes >= 8, got {self.shape}")
        if not 0.0 <= self.positive_rate <= 1.0:
            raise InputError(f"PhantomConfig: positive_rate must be in [0, 1], got {self.positive_rate}")
        low, high = self.emboli_per_positive
        if not 1 <= low <= high or len(self.emboli_count_weights) < high - low + 1:
            raise InputError(f"PhantomConfig: emboli_per_positive {self.emboli_per_positive} needs 1 <= low <= high and a weight per count")
        if len(self.kind_weights) != len(EMBOLUS_KINDS) or sum(self.kind_weights) <= 0:
            raise InputError(f"PhantomConfig: kind_weights needs {len(EMBOLUS_KINDS)} non-negative weights")


@dataclass
class Embolus:
    """One embolus of a study (label ``k`` in the instance mask).

    Attributes:
        label: instance label in the mask (1-based).
        kind: one of ``EMBOLUS_KINDS``.
        artery: anatomical name of the artery (``"Main PA"``, ``"RLL segmental"``, ...).
        side: ``"R"``, ``"L"`` or ``"C"`` (main PA; a saddle embolus is ``"C"`` and reaches both sides).
        morphology: ``"central"``, ``"eccentric"`` (wall-adherent) or ``"occlusive"``.
        defect_hu: designed HU of the clot before blur and noise.
        voxels: voxel count on the grid.
        mean_hu: mean HU of its voxels in the final (blurred, noisy, rounded) image.
        z_range: first and last slice index it occupies.
        centroid_zyx: centroid in voxel indices.
        core_hu: mean final HU of its voxels whose 6 neighbours all lie in the artery lumen (an
            ROI in the clot away from the vessel wall, as radiologists measure clot attenuation);
            ``None`` when the clot has no such voxel (small vessels).
    """

    label: int
    kind: str
    artery: str
    side: str
    morphology: str
    defect_hu: float
    voxels: int = 0
    mean_hu: float = 0.0
    z_range: tuple[int, int] = (0, 0)
    centroid_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    core_hu: float | None = None


@dataclass(frozen=True)
class EmbolusBox:
    """The tight box of one embolus in one slice (box CSV convention: ``x`` column, ``y`` row)."""

    slice_index: int
    label: int
    x: int
    y: int
    width: int
    height: int


@dataclass
class SyntheticStudy:
    """A generated study in memory.

    Attributes:
        index: study index in its cohort.
        seed: cohort seed.
        hu: float32 ``(Z, Y, X)`` HU, integer-valued, clipped to ``[-1024, 3071]``.
        mask: uint8 ``(Z, Y, X)`` instance mask (``k`` = embolus ``k``, 0 background).
        slice_labels: uint8 ``(Z,)``: 1 where the slice contains an embolus voxel.
        spacing: ``(dz, dy, dx)`` mm.
        origin: world ``(z, y, x)`` mm of voxel ``(0, 0, 0)``; ``ImagePositionPatient`` of slice
            ``k`` is ``(x, y, z + k * dz)``.
        emboli: the emboli, in label order.
        confounders: embolus mimics, each a dict with at least ``kind``.
        params: per-study values (contrast, noise, blur, body scale, ...).
        artery_mask: bool, lumen of the pulmonary arteries (partial-volume occupancy >= 0.5).
        vein_mask: bool, lumen of the pulmonary veins not covered by arteries.
        body_mask: bool, inside the patient's body.
        mimic_mask: int16 ``(Z, Y, X)``: ``k`` where confounder ``k - 1`` of ``confounders`` lies (its
            region, the voxels its ``voxels`` count describes), 0 elsewhere; the diffuse
            ``partial_volume`` entry has no region. Used to say what false detections fall on
            (``benchmarks/analyse_false_clusters.py``).
    """

    index: int
    seed: int
    hu: np.ndarray
    mask: np.ndarray
    slice_labels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    emboli: list[Embolus]
    confounders: list[dict]
    params: dict
    artery_mask: np.ndarray
    vein_mask: np.ndarray
    body_mask: np.ndarray = field(repr=False)
    mimic_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def pe_present(self) -> bool:
        """Whether the study has at least one embolus voxel."""
        return bool(self.slice_labels.any())

    def image_position(self, k: int) -> tuple[float, float, float]:
        """``ImagePositionPatient`` ``(x, y, z)`` (LPS mm) of slice ``k`` (0 = most inferior)."""
        return (self.origin[2], self.origin[1], self.origin[0] + k * self.spacing[0])

    def affine(self) -> np.ndarray:
        """RAS affine of the study's NIfTI files, as ``prepare`` derives it from the DICOMs."""
        return affine_from_dicom(IMAGE_ORIENTATION, self.image_position(0), (self.spacing[1], self.spacing[2]), (0.0, 0.0, self.spacing[0]))

    def boxes(self) -> list[EmbolusBox]:
        """Tight per-slice boxes of every embolus (see :func:`embolus_boxes`)."""
        return embolus_boxes(self.mask)


def embolus_boxes(mask: np.ndarray) -> list[EmbolusBox]:
    """One tight box per embolus per slice it crosses.

    Args:
        mask: uint8 ``(Z, Y, X)`` instance mask.

    Returns:
        Boxes sorted by slice then label; a box covers columns ``[x, x + width)`` and rows ``[y, y + height)``.
    """
    boxes = []
    for label, found in enumerate(ndimage.find_objects(mask), start=1):
        if found is None:
            continue
        zs, ys, xs = found
        for k in range(zs.start, zs.stop):
            here = mask[k, ys, xs] == label
            if not here.any():
                continue
            rows = np.flatnonzero(here.any(axis=1))
            cols = np.flatnonzero(here.any(axis=0))
            boxes.append(
                EmbolusBox(k, label, int(xs.start + cols[0]), int(ys.start + rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
            )
    boxes.sort(key=lambda b: (b.slice_index, b.label))
    return boxes


def generate_study(index: int, seed: int, config: PhantomConfig | None = None) -> SyntheticStudy:
    """Generate one synthetic CTPA study.

    Args:
        index: study index within the cohort (non-negative).
        seed: cohort seed (non-negative).
        config: phantom settings (default :class:`PhantomConfig`).

    Returns:
        The :class:`SyntheticStudy`; identical for identical ``(index, seed, config)``.
    """
    if index < 0 or seed < 0:
        raise InputError(f"study {index} (seed {seed}): index and seed must be non-negative")
    return _StudyBuilder(index, seed, config or PhantomConfig()).build()


class _StudyBuilder:
    """Renders one study; the order of random draws is fixed, so results are reproducible."""

    def __init__(self, index: int, seed: int, config: PhantomConfig) -> None:
        self.index, self.seed, self.config = index, seed, config
        self.rng = np.random.default_rng([seed, index])
        rng = self.rng
        nz, ny, nx = config.shape
        pixel = round(float(rng.uniform(*config.pixel_spacing_mm)) * 192.0 / nx, 4)
        dz = round(config.slice_spacing_mm * 96.0 / nz, 4)
        origin = (round(float(rng.uniform(-320.0, -120.0)), 2), round(-(ny - 1) * pixel / 2.0, 3), round(-(nx - 1) * pixel / 2.0, 3))
        self.grid = VoxelGrid((nz, ny, nx), (dz, pixel, pixel), origin)
        self.params = {
            "artery_hu": round(float(rng.uniform(*config.artery_hu)), 1),
            "noise_sd": round(float(rng.uniform(*config.noise_sd)), 2),
            "blur_sigma": round(float(rng.uniform(*config.blur_sigma)), 3),
        }
        self.params["vein_hu"] = round(float(min(rng.uniform(*config.vein_hu), 0.8 * self.params["artery_hu"])), 1)
        self.positive = bool(rng.random() < config.positive_rate)
        # Right-ventricle strain: an RV/LV diameter ratio >= 1 occurs only with emboli.
        self.params["rv_lv_ratio"] = round(float(rng.uniform(0.75, 1.4) if self.positive else rng.uniform(0.7, 0.98)), 3)
        self.anatomy: ChestAnatomy = draw_anatomy(rng, origin[0], nz * dz, self.params["artery_hu"], self.params["vein_hu"])
        self.params["left_heart_hu"] = round(self.anatomy.values["left_heart"], 1)
        self.params["body_scale"] = round(self.anatomy.scale, 4)
        self.zyx = self.grid.axes()

    # ------------------------------------------------------------------ build
    def build(self) -> SyntheticStudy:
        rng, grid, a = self.rng, self.grid, self.anatomy
        arteries = self._grow_arteries()
        veins = self._grow_veins()
        bronchi = self._bronchi(arteries)
        artery_occ = self._tree_occupancy(arteries)
        vein_occ = self._tree_occupancy(veins)
        artery_mask = artery_occ >= 0.5

        reserved = np.zeros(grid.shape, dtype=bool)
        flow = self._plan_stretches(arteries, artery_occ, "flow_artifact", self.config.flow_artifact_rate, (0, 1, 2), (100.0, 200.0), reserved)
        unopacified = self._plan_stretches(veins, vein_occ, "unopacified_vein", self.config.unopacified_vein_rate, (1, 2, 3), (30.0, 80.0), None)
        nodes = self._plan_nodes(arteries)
        mask = np.zeros(grid.shape, dtype=np.uint8)
        emboli = self._plan_emboli(arteries, artery_mask, reserved, mask) if self.positive else []

        hu, body = self._background()
        self._heart(hu)
        self._great_vessels(hu)
        self._airways(hu, bronchi)
        self._bones(hu)
        self._blend(hu, vein_occ, a.values["vein"])
        for item in unopacified:
            self._paint_stretch(hu, item)
        for item in nodes:
            self._paint_node(hu, item)
        self._blend(hu, artery_occ, a.values["artery"])
        for item in flow:
            self._paint_stretch(hu, item)
        defect_voxels = {}
        for embolus in emboli:
            where = mask == embolus.label
            values = embolus.defect_hu + rng.normal(0.0, 3.0, int(where.sum()))
            hu[where] = np.clip(values, 20.0, 70.0)
            defect_voxels[embolus.label] = where

        vessel_edge = ((artery_occ > 0.02) & (artery_occ < 0.98)) | ((vein_occ > 0.02) & (vein_occ < 0.98))
        partial = int(np.count_nonzero(vessel_edge & (hu >= 20.0) & (hu <= 70.0) & (mask == 0)))
        hu = self._finish(hu)

        regions = [self._stretch_region(item) for item in flow + unopacified]
        regions += [self._node_region(item, artery_mask) for item in nodes]
        confounders = [self._describe_stretch(item, hu, *region) for item, region in zip(flow + unopacified, regions)]
        confounders += [self._describe_node(item, hu, *region) for item, region in zip(nodes, regions[len(flow + unopacified):])]
        mimic_mask = np.zeros(grid.shape, dtype=np.int16)
        for label, (region, _core) in enumerate(regions, start=1):
            mimic_mask[region & (mimic_mask == 0)] = label
        confounders.append({"kind": "partial_volume", "voxels": partial, "hu_range": [20, 70]})
        for embolus in emboli:
            self._describe_embolus(embolus, defect_voxels[embolus.label], hu, artery_mask)
        slice_labels = (mask.reshape(mask.shape[0], -1).max(axis=1) > 0).astype(np.uint8)
        return SyntheticStudy(
            index=self.index,
            seed=self.seed,
            hu=hu,
            mask=mask,
            slice_labels=slice_labels,
            spacing=grid.spacing,
            origin=grid.origin,
            emboli=emboli,
            confounders=confounders,
            params=self.params,
            artery_mask=artery_mask,
            vein_mask=(vein_occ >= 0.5) & ~artery_mask,
            body_mask=body,
            mimic_mask=mimic_mask,
        )

    # ---------------------------------------------------------------- vessels
    def _radius(self, level: int) -> float:
        return float(self.rng.uniform(*_RADIUS_MM[level]) * self.anatomy.scale)

    def _inside_lung(self, side: int) -> Callable[[np.ndarray], np.ndarray]:
        anatomy = self.anatomy
        return lambda p: anatomy.lung_side(p[:, 0], p[:, 1], p[:, 2]) == side

    def _grow_arteries(self) -> list[Branch]:
        """Main PA from the right-ventricular outflow, left/right PA, then lobar to subsegmental branches."""
        rng, a = self.rng, self.anatomy
        s = a.scale
        rv_centre = a.heart_centre + np.array([2.0, -20.0, -6.0]) * s
        outflow = rv_centre + np.array([24.0, -8.0, 14.0]) * s
        bifurcation = np.array([a.bifurcation_z, a.cavity_cy - 0.02 * a.cavity_half_ap, a.cx + 8.0 * s]) + rng.normal(0.0, 2.0, 3)
        hilum_r = np.array([a.bifurcation_z - rng.uniform(4.0, 10.0), a.lung_cy + 0.1 * a.cavity_half_ap, a.cx - rng.uniform(50.0, 60.0) * s])
        hilum_l = np.array([a.bifurcation_z + rng.uniform(0.0, 8.0), a.lung_cy + 0.22 * a.cavity_half_ap, a.cx + rng.uniform(50.0, 60.0) * s])
        r_main = rng.uniform(13.0, 15.0) * s
        r_side = rng.uniform(9.0, 11.0) * s
        branches = []
        for index, (name, side, parent, start, end, r0, r1) in enumerate(
            (
                ("Main PA", "C", -1, outflow, bifurcation, r_main, 0.95 * r_main),
                ("Right PA", "R", 0, bifurcation, hilum_r, r_side, 0.85 * r_side),
                ("Left PA", "L", 0, bifurcation, hilum_l, r_side * 0.95, 0.8 * r_side),
            )
        ):
            points, radii = make_branch(rng, start, end, r0, r1, wobble=0.05, step_mm=6.0)
            branches.append(Branch(index, parent, 0 if index == 0 else 1, name, side, points, radii))
            if parent >= 0:
                branches[parent].children.append(index)
        for side, parent, hilum in ((1, 1, hilum_r), (2, 2, hilum_l)):
            cloud = a.lung_points(rng, side, 1300 if side == 1 else 1150)
            g = (cloud[:, 0] - hilum[0]) - 0.9 * (cloud[:, 1] - hilum[1]) - 5.0
            upper_start = branches[parent].point_at(0.8 * branches[parent].length)
            if side == 1:
                lobes = (
                    ("RUL", (g > 0) & (cloud[:, 0] > hilum[0] - 8.0), upper_start),
                    ("RML", (g > 0) & (cloud[:, 0] <= hilum[0] - 8.0), hilum),
                    ("RLL", g <= 0, hilum),
                )
            else:
                lobes = (
                    ("LUL", (g > 0) & (cloud[:, 0] > hilum[0] - 15.0), upper_start),
                    ("Lingula", (g > 0) & (cloud[:, 0] <= hilum[0] - 15.0), hilum),
                    ("LLL", g <= 0, hilum),
                )
            for name, members, start in lobes:
                grow_lobe(rng, branches, parent, start, cloud[members], 2, 5, self._radius, name, "R" if side == 1 else "L", self._inside_lung(side))
        return branches

    def _grow_veins(self) -> list[Branch]:
        """Four pulmonary veins into the left atrium, each draining its own upper or lower territory."""
        rng, a = self.rng, self.anatomy
        s = a.scale
        atrium = a.heart_centre + np.array([24.0, 30.0, 4.0]) * s
        branches: list[Branch] = []
        for side, sign, prefix in ((1, -1.0, "R"), (2, 1.0, "L")):
            cloud = a.lung_points(rng, side, 1150)
            split_z = a.bifurcation_z - rng.uniform(25.0, 40.0)
            for part, name in ((cloud[:, 0] > split_z, f"{prefix}SPV"), (cloud[:, 0] <= split_z, f"{prefix}IPV")):
                upper = name.endswith("SPV")
                ostium = atrium + np.array([6.0 if upper else -8.0, 0.0 if upper else 4.0, sign * 26.0]) * s
                hilum = np.array(
                    [
                        a.bifurcation_z - (rng.uniform(18.0, 28.0) if upper else rng.uniform(45.0, 60.0)),
                        a.lung_cy + (-0.15 if upper else 0.1) * a.cavity_half_ap,
                        a.cx + sign * rng.uniform(48.0, 56.0) * s,
                    ]
                )
                points, radii = make_branch(rng, ostium, hilum, rng.uniform(7.0, 8.5) * s, rng.uniform(6.0, 7.0) * s, wobble=0.05, step_mm=6.0)
                trunk = Branch(len(branches), -1, 1, name, prefix, points, radii)
                branches.append(trunk)
                grow_lobe(rng, branches, trunk.index, hilum, cloud[part], 2, 5, self._radius, f"{name} vein", prefix, self._inside_lung(side))
        return branches

    def _bronchi(self, arteries: list[Branch]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Airways: trachea, main bronchi, and a bronchus beside every lobar and segmental artery."""
        rng, a = self.rng, self.anatomy
        s = a.scale
        trachea_y = a.spine_y - a.vertebra_radius - 16.0 * s
        carina = np.array([a.bifurcation_z + 12.0, trachea_y + 3.0, a.cx + 2.0])
        top = np.array([a.z_bottom + a.height + 10.0, trachea_y, a.cx + 2.0])
        airways = []
        for start, end, radius in (
            (top, carina, 9.0 * s),
            (carina, np.array([carina[0] - 22.0, trachea_y + 8.0, a.cx - 40.0 * s]), 7.0 * s),
            (carina, np.array([carina[0] - 35.0, trachea_y + 12.0, a.cx + 45.0 * s]), 6.0 * s),
        ):
            points, radii = make_branch(rng, start, end, radius, 0.9 * radius, wobble=0.02, step_mm=6.0)
            airways.append((points, radii, 0.2 * radius + 0.6))
        for branch in arteries:
            if branch.level not in (2, 3):
                continue
            chord = branch.points[-1] - branch.points[0]
            side = rng.normal(size=3)
            side -= side.dot(chord) / max(chord.dot(chord), 1e-9) * chord
            side /= max(np.linalg.norm(side), 1e-9)
            radius = 0.7 * float(branch.radii[0])
            offset = side * (float(branch.radii[0]) + radius + 1.5)
            airways.append((branch.points + offset, branch.radii * 0.7, 0.2 * radius + 0.5))
        return airways

    def _tree_occupancy(self, branches: list[Branch]) -> np.ndarray:
        occupancy = np.zeros(self.grid.shape, dtype=np.float32)
        for branch in branches:
            render_polyline(self.grid, occupancy, branch.points, branch.radii)
        return occupancy

    # ------------------------------------------------------------- mimics
    def _plan_stretches(
        self,
        branches: list[Branch],
        occupancy: np.ndarray,
        kind: str,
        rate: float,
        levels: tuple[int, ...],
        hu_range: tuple[float, float],
        reserved: np.ndarray | None,
    ) -> list[dict]:
        """Flow artefacts (arteries) or unopacified stretches (veins): a lumen stretch of another HU.

        With probability ``rate`` the study gets 1-2 (flow) or 1-3 (veins) stretches of 10-28 mm on
        branches of ``levels``; where ``reserved`` is given, their voxels are marked so no embolus
        is placed on top of a flow artefact.
        """
        rng = self.rng
        if rng.random() >= rate:
            return []
        candidates = [b for b in branches if b.level in levels and b.length > 8.0]
        count = int(rng.integers(1, 3 if kind == "flow_artifact" else 4))
        out = []
        for _ in range(count):
            if not candidates:
                break
            lengths = np.array([b.length for b in candidates])
            branch = candidates[int(rng.choice(len(candidates), p=lengths / lengths.sum()))]
            half = rng.uniform(5.0, 14.0)
            centre = rng.uniform(0.0, branch.length)
            item = {
                "kind": kind,
                "branch": branch,
                "centre": centre,
                "half": half,
                "hu": float(rng.uniform(*hu_range)),
                "swirl": (float(rng.uniform(15.0, 35.0)), float(rng.uniform(6.0, 14.0)), float(rng.uniform(0, 2 * np.pi))),
            }
            if reserved is not None:
                for slices, weight, _ in self._stretch_weights(item):
                    reserved[slices] |= weight * occupancy[slices] > 0.05
            out.append(item)
        return out

    def _stretch_weights(self, item: dict) -> Iterator[tuple[tuple[slice, slice, slice], np.ndarray, SegmentSample]]:
        """Per segment: (slices, weight, sample) with weight = lumen occupancy x flat-topped bump along the stretch."""
        branch, centre, half = item["branch"], item["centre"], item["half"]
        width = np.float32(self.grid.partial_volume_width)
        for sample in iter_polyline_samples(self.grid, branch.points, branch.radii, arclength_range=(centre - half, centre + half)):
            u = (sample.arclength - np.float32(centre)) / np.float32(half)
            bump = np.clip(1.5 * (1.0 - u * u), 0.0, 1.0)
            occ = np.clip((sample.radius - sample.distance) / width + np.float32(0.5), 0.0, 1.0)
            yield sample.slices, bump * occ, sample

    def _paint_stretch(self, hu: np.ndarray, item: dict) -> None:
        amplitude, wavelength, phase = item["swirl"]
        for slices, weight, sample in self._stretch_weights(item):
            if item["kind"] == "flow_artifact":
                # Mixed, swirling contrast: the patch varies along and across the lumen.
                value = item["hu"] + amplitude * np.sin(2 * np.pi * sample.arclength / wavelength + phase) * (
                    0.5 + sample.distance / np.maximum(sample.radius, 1e-3)
                )
            else:
                value = np.float32(item["hu"])
            view = hu[slices]
            view += weight * (value - view)

    def _stretch_region(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(region, core)`` of a vessel stretch: its voxels at weight >= 0.5 and >= 0.95."""
        region = np.zeros(self.grid.shape, dtype=bool)
        core = np.zeros(self.grid.shape, dtype=bool)
        for slices, weight, _ in self._stretch_weights(item):
            region[slices] |= weight >= 0.5
            core[slices] |= weight >= 0.95
        return region, core

    def _describe_stretch(self, item: dict, hu: np.ndarray, region: np.ndarray, core: np.ndarray) -> dict:
        return {
            "kind": item["kind"],
            "vessel": item["branch"].name,
            "hu": round(item["hu"], 1),
            **_region_stats(region, hu, core),
        }

    def _plan_nodes(self, arteries: list[Branch]) -> list[dict]:
        """Lymph-node-like soft-tissue blobs beside hilar arteries (left/right PA and lobar)."""
        rng = self.rng
        if rng.random() >= self.config.lymph_node_rate:
            return []
        hilar = [b for b in arteries if b.level in (1, 2)]
        out = []
        for _ in range(int(rng.integers(1, 5))):
            branch = hilar[int(rng.integers(len(hilar)))]
            at = rng.uniform(0.3, 1.0 if branch.level == 1 else 0.6) * branch.length
            point, radius = branch.point_at(at), branch.radius_at(at)
            direction = rng.normal(size=3)
            tangent = branch.point_at(min(at + 1.0, branch.length)) - branch.point_at(max(at - 1.0, 0.0))
            direction -= direction.dot(tangent) / max(tangent.dot(tangent), 1e-9) * tangent
            direction /= max(np.linalg.norm(direction), 1e-9)
            half = rng.uniform(5.0, 10.0) * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)])
            centre = point + direction * (radius + 0.9 * half[0] + 1.0)
            axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
            out.append({"kind": "lymph_node", "vessel": branch.name, "centre": centre, "axes": axes, "half": half, "hu": float(rng.uniform(30.0, 60.0))})
        return out

    def _node_occupancy(self, item: dict) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        reach = float(item["half"].max()) + self.grid.partial_volume_width
        found = self.grid.box(item["centre"] - reach, item["centre"] + reach)
        if found is None:
            return None
        slices, (z, y, x) = found
        q = np.sqrt(ellipsoid_inside(z, y, x, item["centre"], item["axes"], item["half"]))
        occ = np.clip((1.0 - q) * np.float32(item["half"].min()) / np.float32(self.grid.partial_volume_width) + np.float32(0.5), 0.0, 1.0)
        return slices, occ

    def _paint_node(self, hu: np.ndarray, item: dict) -> None:
        found = self._node_occupancy(item)
        if found is not None:
            slices, occ = found
            view = hu[slices]
            view += occ * (np.float32(item["hu"]) - view)

    def _node_region(self, item: dict, artery_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(region, core)`` of a lymph node outside the arteries: occupancy >= 0.5 and >= 0.95."""
        region = np.zeros(self.grid.shape, dtype=bool)
        core = np.zeros(self.grid.shape, dtype=bool)
        found = self._node_occupancy(item)
        if found is not None:
            slices, occ = found
            region[slices] = (occ >= 0.5) & ~artery_mask[slices]
            core[slices] = (occ >= 0.95) & ~artery_mask[slices]
        return region, core

    def _describe_node(self, item: dict, hu: np.ndarray, region: np.ndarray, core: np.ndarray) -> dict:
        return {"kind": "lymph_node", "vessel": item["vessel"], "hu": round(item["hu"], 1), **_region_stats(region, hu, core)}

    # ------------------------------------------------------------------ emboli
    def _plan_emboli(self, arteries: list[Branch], artery_mask: np.ndarray, reserved: np.ndarray, mask: np.ndarray) -> list[Embolus]:
        """Place emboli along the arterial tree, stratified by level so every arterial z-level gets them.

        For each embolus: draw its kind, draw a slice level uniformly among the 10 mm levels where
        arteries of that kind run inside the volume, then a position along those arteries at that
        level. Central and lobar emboli stay near the hilum because their arteries are there;
        segmental and subsegmental emboli spread from apex to base.
        """
        rng, config = self.rng, self.config
        low, high = config.emboli_per_positive
        weights = np.asarray(config.emboli_count_weights[: high - low + 1], dtype=np.float64)
        count = int(low + rng.choice(high - low + 1, p=weights / weights.sum()))
        kind_p = np.asarray(config.kind_weights, dtype=np.float64)
        kind_p /= kind_p.sum()
        positions = {kind: self._artery_positions(arteries, levels) for kind, levels in _KIND_LEVELS.items()}
        emboli: list[Embolus] = []
        for _ in range(count):
            for _attempt in range(60):
                kind = EMBOLUS_KINDS[int(rng.choice(len(EMBOLUS_KINDS), p=kind_p))]
                pieces, artery, side = self._embolus_pieces(kind, arteries, positions)
                if pieces is None:
                    continue
                morphology = ("eccentric", "central", "occlusive")[int(rng.choice(3, p=_MORPHOLOGY_WEIGHTS[kind]))]
                fraction = float(rng.uniform(0.55, 0.85))
                wall_dir = rng.normal(size=3)
                label = len(emboli) + 1
                region = self._embolus_region(pieces, morphology, fraction, wall_dir)
                region &= artery_mask
                if np.count_nonzero(region) < config.min_embolus_voxels or np.any(region & (reserved | (mask > 0))):
                    continue
                mask[region] = label
                median, sd, lo, hi = config.embolus_hu
                defect = float(np.clip(rng.normal(median, sd), lo, hi))
                emboli.append(Embolus(label, kind, artery, side, morphology, round(defect, 1)))
                break
        return emboli

    def _artery_positions(self, arteries: list[Branch], levels: tuple[int, ...]) -> dict[int, list[tuple[Branch, float]]]:
        """Points every 1.5 mm along the arteries of some levels, grouped by 10 mm slab of z inside the volume."""
        z_low = self.grid.origin[0] + 2.0 * self.grid.spacing[0]
        z_high = self.grid.origin[0] + (self.grid.shape[0] - 3) * self.grid.spacing[0]
        slabs: dict[int, list[tuple[Branch, float]]] = {}
        for branch in arteries:
            if branch.level not in levels or branch.length <= 4.0:
                continue
            for at in np.arange(0.75, branch.length - 0.75, 1.5):
                z = branch.point_at(at)[0]
                if z_low <= z <= z_high:
                    slabs.setdefault(int(np.floor(z / 10.0)), []).append((branch, float(at)))
        return slabs

    def _embolus_pieces(self, kind: str, arteries: list[Branch], positions: dict) -> tuple[list[tuple[Branch, float, float]] | None, str, str]:
        """The stretches ``(branch, centre arclength, half length)`` an embolus covers, its artery and side."""
        rng = self.rng
        if kind == "saddle":
            main, right, left = arteries[0], arteries[1], arteries[2]
            z_bifurcation = main.points[-1][0]
            if not self.grid.origin[0] < z_bifurcation < self.grid.origin[0] + self.grid.shape[0] * self.grid.spacing[0]:
                return None, "", ""
            trunk = rng.uniform(8.0, 14.0)
            reach = rng.uniform(8.0, 16.0)
            return [(main, main.length, trunk), (right, 0.0, reach), (left, 0.0, reach)], "Main PA", "C"
        slabs = positions["central" if kind == "central" else kind]
        if not slabs:
            return None, "", ""
        keys = sorted(slabs)
        slab = slabs[keys[int(rng.integers(len(keys)))]]
        branch, at = slab[int(rng.integers(len(slab)))]
        half = 0.5 * rng.uniform(*_LENGTH_MM[kind])
        half = min(half, 0.5 * branch.length)
        centre = float(np.clip(at, 0.5 * half, branch.length - 0.5 * half))
        return [(branch, centre, half)], branch.name, branch.side

    def _embolus_region(self, pieces: list[tuple[Branch, float, float]], morphology: str, fraction: float, wall_dir: np.ndarray) -> np.ndarray:
        """Voxels of a clot: an elongated body along the vessel, central, wall-adherent or occlusive."""
        region = np.zeros(self.grid.shape, dtype=bool)
        for branch, centre, half in pieces:
            for sample in iter_polyline_samples(self.grid, branch.points, branch.radii, arclength_range=(centre - half, centre + half)):
                u = (sample.arclength - np.float32(centre)) / np.float32(half)
                taper = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))
                if morphology == "occlusive":
                    inside = sample.distance < sample.radius * np.minimum(1.0, 2.5 * taper)
                elif morphology == "central":
                    inside = sample.distance < sample.radius * np.float32(fraction) * taper
                else:
                    seg = branch.points[sample.segment + 1] - branch.points[sample.segment]
                    wall = wall_dir - wall_dir.dot(seg) / max(seg.dot(seg), 1e-9) * seg
                    wall = (wall / max(np.linalg.norm(wall), 1e-9)).astype(np.float32)
                    rho = sample.radius * np.float32(fraction) * taper
                    shift = sample.radius - np.float32(0.85) * rho
                    oz, oy, ox = sample.offset
                    dist = np.sqrt((oz - shift * wall[0]) ** 2 + (oy - shift * wall[1]) ** 2 + (ox - shift * wall[2]) ** 2)
                    inside = (dist < rho) & (sample.distance < sample.radius)
                inside &= np.abs(u) <= 1.0
                region[sample.slices] |= inside
        return region

    def _describe_embolus(self, embolus: Embolus, region: np.ndarray, hu: np.ndarray, artery_mask: np.ndarray) -> None:
        stats = _region_stats(region, hu)
        zs, ys, xs = ndimage.find_objects(region.astype(np.uint8))[0]
        box = tuple(slice(max(a.start - 1, 0), a.stop + 1) for a in (zs, ys, xs))
        lumen_core = ndimage.binary_erosion(artery_mask[box], border_value=1)
        core = region[box] & lumen_core
        embolus.core_hu = round(float(hu[box][core].mean()), 1) if core.any() else None
        embolus.voxels = stats["voxels"]
        embolus.mean_hu = stats["mean_hu"]
        embolus.z_range = tuple(stats["z_range"])
        embolus.centroid_zyx = tuple(stats["centroid_zyx"])

    # ------------------------------------------------------------- anatomy
    def _background(self) -> tuple[np.ndarray, np.ndarray]:
        """Air, table, body wall (fat, muscle), mediastinal fat, upper abdomen and lungs with texture."""
        a, v, grid = self.anatomy, self.anatomy.values, self.grid
        z, y, x = self.zyx
        y2, x2 = y[0], x[0]
        hu = np.full(grid.shape, v["air"], dtype=np.float32)
        body2d, muscle2d = a.body_wall(y2, x2)
        table_top = a.cy + a.body_half_ap_posterior + 6.0
        table2d = (y2 > table_top) & (y2 < table_top + 8.0) & (np.abs(x2 - a.cx) < 0.85 * a.body_half_width) & ~body2d
        hu[:, table2d] = v["table"]
        hu[:, body2d] = v["fat"]
        hu[:, muscle2d] = v["muscle"]
        cavity2d = a.cavity(y2, x2)
        hu[:, cavity2d] = v["mediastinal_fat"]
        abdomen = (z < a.dome(y2, x2)[None]) & cavity2d[None]
        liver = abdomen & (x2 < np.float32(a.cx + 25.0))[None]
        hu[abdomen] = v["spleen"]
        hu[liver] = v["liver"]
        lung = a.lung_side(z, y, x) > 0
        texture = self._lung_texture()
        gradient = (y - np.float32(a.lung_cy - a.lung_half_ap)) / np.float32(2.0 * a.lung_half_ap)
        lung_hu = np.float32(v["lung"]) + np.float32(v["lung_gradient"]) * gradient + np.float32(v["lung_texture"]) * texture
        hu[lung] = np.broadcast_to(lung_hu, grid.shape)[lung]
        body = np.broadcast_to(body2d[None], grid.shape).copy()
        return hu, body

    def _lung_texture(self) -> np.ndarray:
        """Smooth unit-variance random field (about 1 cm features), linearly interpolated onto the grid."""
        field = ndimage.gaussian_filter(self.rng.normal(size=(26, 40, 40)), 1.0)
        field = (field / field.std()).astype(np.float32)
        for axis, n in enumerate(self.grid.shape):
            # Separable linear interpolation, elementwise (no BLAS: bitwise reproducible anywhere).
            coarse = field.shape[axis]
            position = np.clip((np.arange(n) + 0.5) * coarse / n - 0.5, 0.0, coarse - 1.0)
            low = np.floor(position).astype(int)
            high = np.minimum(low + 1, coarse - 1)
            shape = [1, 1, 1]
            shape[axis] = n
            weight = (position - low).astype(np.float32).reshape(shape)
            field = field.take(low, axis=axis) * (1.0 - weight) + field.take(high, axis=axis) * weight
        return np.ascontiguousarray(field)

    def _heart(self, hu: np.ndarray) -> None:
        """Myocardium around four chambers: right heart contrast like the arteries, left heart dimmer."""
        a, v = self.anatomy, self.anatomy.values
        s = a.scale
        reach = float(a.heart_half_axes.max()) + 30.0 * s
        found = self.grid.box(a.heart_centre - reach, a.heart_centre + reach)
        if found is None:
            return
        slices, (z, y, x) = found
        view = hu[slices]
        identity = np.eye(3)
        rv = float(np.sqrt(self.params["rv_lv_ratio"] / 0.85))
        chambers = (
            ("right_heart", (2.0, -20.0, -6.0), (26.0, 16.0 * rv, 28.0 * rv), 4.0),
            ("right_heart", (6.0, 2.0, -38.0), (26.0, 19.0, 19.0), 4.0),
            ("left_heart", (-6.0, 6.0, 24.0), (26.0, 19.0, 20.0), 10.0),
            ("left_heart", (24.0, 30.0, 4.0), (15.0, 13.0, 27.0), 3.0),
        )
        tissue = a.heart_tissue(z, y, x)
        for _, offset, half, wall in chambers:
            tissue |= ellipsoid_inside(z, y, x, a.heart_centre + np.array(offset) * s, identity, np.array(half) * s + wall) < 1.0
        view[np.broadcast_to(tissue, view.shape)] = v["myocardium"]
        for value, offset, half, _ in chambers:
            inside = ellipsoid_inside(z, y, x, a.heart_centre + np.array(offset) * s, identity, np.array(half) * s) < 1.0
            view[np.broadcast_to(inside, view.shape)] = v[value]

    def _blend(self, hu: np.ndarray, occupancy: np.ndarray, value: float) -> None:
        """``hu <- hu + occ * (value - hu)`` where ``occ > 0`` (partial-volume compositing)."""
        where = occupancy > 0
        hu[where] += occupancy[where] * (np.float32(value) - hu[where])

    def _tube(self, hu: np.ndarray, scratch: np.ndarray, polylines: list[tuple[np.ndarray, np.ndarray]], value: float, radius_offset: float = 0.0) -> None:
        scratch[:] = 0.0
        for points, radii in polylines:
            render_polyline(self.grid, scratch, points, radii, radius_offset)
        self._blend(hu, scratch, value)

    def _great_vessels(self, hu: np.ndarray) -> None:
        """Aorta (left-heart contrast), dense SVC, mixed IVC and the oesophagus."""
        rng, a, v = self.rng, self.anatomy, self.anatomy.values
        s, top, bottom = a.scale, a.z_bottom + a.height + 10.0, a.z_bottom - 10.0
        ay, ax = a.aorta_descending_yx
        r_desc = a.aorta_descending_radius
        r_asc = r_desc * rng.uniform(1.15, 1.35)
        root = a.heart_centre + np.array([18.0, -4.0, 0.0]) * s
        aorta = np.array(
            [
                root,
                [a.bifurcation_z - 5.0, a.cavity_cy - 0.45 * a.cavity_half_ap, a.cx - 18.0 * s],
                [a.aorta_arch_z - 12.0, a.cavity_cy - 0.35 * a.cavity_half_ap, a.cx - 10.0 * s],
                [a.aorta_arch_z, a.cavity_cy - 0.05 * a.cavity_half_ap, a.cx + 5.0 * s],
                [a.aorta_arch_z - 10.0, ay - 10.0, ax - 3.0],
                [a.aorta_arch_z - 30.0, ay, ax],
                [bottom, ay + 2.0, ax - 8.0 * s],
            ]
        )
        aorta_r = np.array([r_asc, r_asc, r_asc, 0.5 * (r_asc + r_desc), r_desc, r_desc, r_desc])
        atrium_r = a.heart_centre + np.array([6.0, 2.0, -38.0]) * s
        svc = np.array([[top, a.cavity_cy - 0.3 * a.cavity_half_ap, a.cx - 35.0 * s], [a.heart_centre[0] + 35.0, a.cavity_cy - 0.25 * a.cavity_half_ap, a.cx - 38.0 * s], atrium_r])
        ivc = np.array([[bottom, a.cavity_cy + 0.1 * a.cavity_half_ap, a.cx - 25.0 * s], atrium_r])
        oesophagus_y = a.spine_y - a.vertebra_radius - 4.0 * s
        oesophagus = np.array([[top, oesophagus_y, a.cx + 6.0], [bottom, oesophagus_y - 6.0, a.cx + 14.0]])
        scratch = np.zeros(self.grid.shape, dtype=np.float32)
        self._tube(hu, scratch, [(oesophagus, np.full(2, 7.0 * s))], v["muscle"])
        if rng.random() < 0.5:
            self._tube(hu, scratch, [(oesophagus, np.full(2, 2.0))], v["air"])
        self._tube(hu, scratch, [(aorta, aorta_r)], v["left_heart"])
        self._tube(hu, scratch, [(svc, np.full(3, rng.uniform(8.0, 10.0) * s))], v["svc"])
        self._tube(hu, scratch, [(ivc, np.full(2, rng.uniform(10.0, 12.0) * s))], v["ivc"])

    def _airways(self, hu: np.ndarray, airways: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
        """Airway walls (soft tissue) then their air lumen."""
        v = self.anatomy.values
        scratch = np.zeros(self.grid.shape, dtype=np.float32)
        self._tube(hu, scratch, [(points, radii + wall) for points, radii, wall in airways], v["airway_wall"])
        self._tube(hu, scratch, [(points, radii) for points, radii, _ in airways], v["air"])

    def _bones(self, hu: np.ndarray) -> None:
        """Vertebrae with discs and posterior elements, ribs with costal cartilage, sternum (400-1200 HU)."""
        rng, a, v = self.rng, self.anatomy, self.anatomy.values
        s = a.scale
        cortex, marrow = v["cortical_bone"], v["cancellous_bone"]
        z, y, x = self.zyx
        # Vertebral column: bodies with discs, canal, lamina and spinous process.
        pitch = rng.uniform(23.0, 28.0) * s
        phase = rng.uniform(0.0, pitch)
        disc = (np.mod(z - np.float32(phase), np.float32(pitch)) < np.float32(5.0 * s))
        r = np.float32(a.vertebra_radius)
        canal_y = a.spine_y + a.vertebra_radius + 9.0 * s
        box = self.grid.box(
            np.array([z.min(), a.spine_y - r - 2.0, a.cx - 50.0 * s]), np.array([z.max(), canal_y + 36.0 * s, a.cx + 50.0 * s])
        )
        if box is not None:
            slices, (zb, yb, xb) = box
            view = hu[slices]
            disc_b = np.mod(zb - np.float32(phase), np.float32(pitch)) < np.float32(5.0 * s)
            rho = np.sqrt(((xb - np.float32(a.cx)) / np.float32(1.1)) ** 2 + (yb - np.float32(a.spine_y)) ** 2)
            body_outer = np.broadcast_to(rho < r, view.shape)
            body_inner = np.broadcast_to(rho < r - np.float32(2.0), view.shape)
            disc3 = np.broadcast_to(disc_b, view.shape)
            view[body_outer & ~disc3] = cortex
            view[body_inner & ~disc3] = marrow
            view[body_outer & disc3] = v["disc"]
            canal = np.sqrt((xb - np.float32(a.cx)) ** 2 + (yb - np.float32(canal_y)) ** 2)
            ring = np.broadcast_to((canal < 13.0 * s) & (canal >= 8.0 * s), view.shape) & ~disc3
            view[ring] = cortex
            view[np.broadcast_to(canal < 8.0 * s, view.shape)] = v["csf"]
            # Spinous process backwards and transverse processes out and back: 2D capsules.
            processes = np.zeros(np.broadcast_shapes(yb.shape, xb.shape), dtype=bool)
            for (y0, x0), (y1, x1), radius in (
                ((canal_y + 10.0 * s, a.cx), (canal_y + 34.0 * s, a.cx), 3.5 * s),
                ((canal_y - 2.0 * s, a.cx - 9.0 * s), (canal_y + 8.0 * s, a.cx - 30.0 * s), 4.0 * s),
                ((canal_y - 2.0 * s, a.cx + 9.0 * s), (canal_y + 8.0 * s, a.cx + 30.0 * s), 4.0 * s),
            ):
                dy_, dx_ = y1 - y0, x1 - x0
                t = np.clip(((yb - np.float32(y0)) * np.float32(dy_) + (xb - np.float32(x0)) * np.float32(dx_)) / np.float32(dy_ * dy_ + dx_ * dx_), 0.0, 1.0)
                processes |= (yb - np.float32(y0) - t * np.float32(dy_)) ** 2 + (xb - np.float32(x0) - t * np.float32(dx_)) ** 2 < np.float32(radius * radius)
            view[np.broadcast_to(processes, view.shape) & ~disc3] = marrow
        # Ribs: arcs around the rib cage from the spine, descending anteriorly, cartilage at the front.
        ribs, cartilages = [], []
        theta = np.linspace(np.deg2rad(18.0), np.deg2rad(160.0), 16)
        drop = rng.uniform(70.0, 100.0)
        rib_pitch = rng.uniform(22.0, 27.0) * s
        first = a.z_bottom + a.height + rng.uniform(10.0, 30.0)
        for i in range(int((a.height + 130.0) / rib_pitch) + 1):
            z_rib = first - i * rib_pitch
            for sign in (-1.0, 1.0):
                zs = z_rib + 6.0 * np.sin(np.pi * (theta - theta[0]) / (theta[-1] - theta[0])) - drop * (theta - theta[0]) / (theta[-1] - theta[0])
                ys = a.cavity_cy + (a.cavity_half_ap + 5.0) * np.cos(theta)
                xs = a.cx + sign * (a.cavity_half_width + 5.0) * np.sin(theta)
                points = np.stack([zs, ys, xs], axis=1)
                ribs.append((points[:13], np.full(13, 4.0 * s)))
                cartilages.append((points[12:], np.full(4, 3.5 * s)))
        scratch = np.zeros(self.grid.shape, dtype=np.float32)
        self._tube(hu, scratch, cartilages, v["cartilage"])
        self._tube(hu, scratch, ribs, cortex)
        self._tube(hu, scratch, ribs, marrow, radius_offset=-1.5)
        # Sternum: a flat bone at the front, over the middle and upper chest.
        sternum_y = a.cavity_cy - a.cavity_half_ap - 6.0
        box = self.grid.box(
            np.array([a.z_bottom + 0.3 * a.height, sternum_y - 8.0, a.cx - 16.0 * s]),
            np.array([a.z_bottom + 0.92 * a.height, sternum_y + 8.0, a.cx + 16.0 * s]),
        )
        if box is not None:
            slices, (zb, yb, xb) = box
            view = hu[slices]
            q = ((xb - np.float32(a.cx)) / np.float32(13.0 * s)) ** 2 + ((yb - np.float32(sternum_y)) / np.float32(5.5)) ** 2
            q_in = ((xb - np.float32(a.cx)) / np.float32(11.0 * s)) ** 2 + ((yb - np.float32(sternum_y)) / np.float32(3.8)) ** 2
            view[np.broadcast_to(q < 1.0, view.shape)] = cortex
            view[np.broadcast_to(q_in < 1.0, view.shape)] = marrow

    # --------------------------------------------------------------- finish
    def _finish(self, hu: np.ndarray) -> np.ndarray:
        """In-plane blur, correlated CT noise, rounding to integer HU."""
        sigma = self.params["blur_sigma"]
        if self.config.blur:
            hu = ndimage.gaussian_filter(hu, sigma=(0.5 * sigma, sigma, sigma))
        if self.config.noise:
            noise = self.rng.standard_normal(self.grid.shape, dtype=np.float32)
            noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6))
            noise *= np.float32(self.params["noise_sd"] / max(float(noise.std()), 1e-6))
            hu = hu + noise
        return np.clip(np.rint(hu), -1024.0, 3071.0).astype(np.float32)


def _region_stats(region: np.ndarray, hu: np.ndarray, core: np.ndarray | None = None) -> dict:
    """Voxel count, slice range and centroid (voxel indices) of a boolean region, and HU means.

    ``mean_hu`` averages the final HU over the region (partial-volume edges included);
    ``core_hu`` over ``core`` (voxels fully inside the structure), when given and not empty.
    """
    count = int(np.count_nonzero(region))
    if count == 0:
        return {"voxels": 0, "mean_hu": None, "core_hu": None, "z_range": None, "centroid_zyx": None}
    coords = np.stack(np.unravel_index(np.flatnonzero(region), region.shape), axis=1)
    core_hu = round(float(hu[core].mean()), 1) if core is not None and core.any() else None
    return {
        "voxels": count,
        "mean_hu": round(float(hu[region].mean()), 1),
        "core_hu": core_hu,
        "z_range": [int(coords[:, 0].min()), int(coords[:, 0].max())],
        "centroid_zyx": [round(float(c), 2) for c in coords.mean(axis=0)],
    }
