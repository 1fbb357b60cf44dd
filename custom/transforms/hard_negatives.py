"""Negative training patches centred on intrapulmonary structures (issue 6: the student's false detections).

Session 11's site analysis (:mod:`custom.synth.sites`) found that a student trained on true masks puts
most of its false detections on contrast-filled veins and on the mimics the paper's error analysis
names (iExplain, Fig. 5: veins taken for arteries, reduced contrast, lymph nodes). The bundle's
``RandCropByPosNegLabeld`` draws its negative patch centres uniformly from the body's soft tissue
(``FgBgToIndicesd`` with ``image_threshold`` at the window's lower end): about 6 % of them lie within 3
voxels of a pulmonary vessel or mimic on the synthetic cohort, so the network rarely sees a vessel
without an embolus at a patch's centre.

:func:`intrapulmonary_structures` finds, from the CT values alone (so it works on real studies), the
voxels of structures surrounded by aerated lung in their axial slice: the pulmonary vessels, emboli,
nodes and mimics that lie inside the lungs, not the mediastinum or the chest wall. On 8 studies of the
synthetic ``full`` cohort they are 0.17 % of the volume and 89 % of them lie within 3 voxels of a vessel
or mimic, against 5.6 % of the default negatives, and they reach 10 of 10 unopacified vein stretches and
9 of 11 lymph nodes (``benchmarks/negative_patch_sites.py``). :class:`IntrapulmonaryNegativesd` mixes
them into the background indices so that a chosen share of negative patches is centred on them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage as ndi

__all__ = ["intrapulmonary_structures", "mix_indices", "IntrapulmonaryNegativesd"]


def intrapulmonary_structures(hu: np.ndarray, lung_hu: float = -400.0, tissue_hu: float = -100.0, axis: int = -1) -> np.ndarray:
    """Voxels of structures enclosed by aerated lung in their axial slice.

    Per slice along ``axis``: the body is the filled region above ``lung_hu``; the lung is the body's
    voxels below ``lung_hu``; a structure is a hole of the lung (filled by ``binary_fill_holes``) whose
    CT value exceeds ``tissue_hu``.

    Args:
        hu: a CT volume in HU, any number of dimensions >= 2.
        lung_hu: upper HU of aerated lung (and of the air around the body).
        tissue_hu: lower HU of a structure (vessels, clots, nodes; excludes fat and partial-volume lung).
        axis: the slice axis (``-1`` for MONAI's channel-less ``(X, Y, Z)``).

    Returns:
        A boolean array of ``hu``'s shape.
    """
    hu = np.asarray(hu)
    if hu.ndim < 2:
        raise ValueError(f"intrapulmonary_structures needs a volume of at least 2 dimensions, got shape {hu.shape}")
    if not np.isfinite(hu).all():
        raise ValueError("intrapulmonary_structures: the volume holds NaN or infinite values")
    slices = np.moveaxis(hu, axis, 0) if hu.ndim > 2 else hu[None]
    out = np.zeros(slices.shape, dtype=bool)
    for k, image in enumerate(slices):
        body = ndi.binary_fill_holes(image > lung_hu)
        lung = body & (image <= lung_hu)
        out[k] = ndi.binary_fill_holes(lung) & ~lung & (image > tissue_hu)
    return np.moveaxis(out, 0, axis) if hu.ndim > 2 else out[0]


def mix_indices(background: np.ndarray, extra: np.ndarray, fraction: float) -> np.ndarray:
    """Background indices with ``extra`` indices repeated so that a uniform draw lands on them with
    probability ``fraction`` (deterministic: ``extra`` is tiled, not sampled).

    Args:
        background: 1-D indices (``FgBgToIndicesd``'s background).
        extra: 1-D indices to favour; empty: ``background`` is returned unchanged.
        fraction: share of draws that should land on ``extra``, in ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
    background, extra = np.asarray(background).ravel(), np.asarray(extra).ravel()
    if extra.size == 0 or fraction == 0.0:
        return background
    if background.size == 0:
        return extra
    n_extra = max(1, int(round(fraction / (1.0 - fraction) * background.size)))
    return np.concatenate([background, np.resize(extra, n_extra).astype(background.dtype, copy=False)])


class IntrapulmonaryNegativesd(MapTransform):
    """Favour intrapulmonary structures as centres of ``RandCropByPosNegLabeld``'s negative patches.

    Place it after ``FgBgToIndicesd`` (same padded grid) and give it a copy of the image in HU taken
    before the intensity window (``CopyItemsd``, padded like the image): the window clips the lung.
    The HU copy is removed from the data, so a cache does not hold it twice.

    Args:
        keys: the background-indices key(s) to modify (``FgBgToIndicesd``'s ``label_bg_indices``).
        hu_key: the HU image, channel-first ``(1, X, Y, Z)``.
        label_key: the label (one channel, or one-hot); structure voxels with a label are skipped.
        fraction: share of negative draws centred on a structure, in ``[0, 1)``.
        lung_hu, tissue_hu: see :func:`intrapulmonary_structures`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        hu_key: str = "image_hu",
        label_key: str = "label",
        fraction: float = 0.5,
        lung_hu: float = -400.0,
        tissue_hu: float = -100.0,
    ) -> None:
        super().__init__(keys)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must lie in [0, 1), got {fraction}")
        self.hu_key, self.label_key = hu_key, label_key
        self.fraction, self.lung_hu, self.tissue_hu = float(fraction), float(lung_hu), float(tissue_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.hu_key not in d:
            raise KeyError(f"IntrapulmonaryNegativesd: no '{self.hu_key}' in the data (copy the image before the HU window)")
        hu = convert_to_numpy(d.pop(self.hu_key))
        if hu.ndim < 3 or hu.shape[0] != 1:
            raise ValueError(f"IntrapulmonaryNegativesd: '{self.hu_key}' must be channel-first with one channel, got {hu.shape}")
        structures = intrapulmonary_structures(hu[0], self.lung_hu, self.tissue_hu)
        if self.label_key in d:
            label = convert_to_numpy(d[self.label_key])
            if label.shape[1:] != structures.shape:
                raise ValueError(f"IntrapulmonaryNegativesd: label shape {label.shape} does not match '{self.hu_key}' {hu.shape}")
            structures &= ~(label[-1] > 0 if label.shape[0] > 1 else label[0] > 0)
        extra = np.flatnonzero(structures.ravel())
        for key in self.key_iterator(d):
            d[key] = convert_to_dst_type(mix_indices(convert_to_numpy(d[key]), extra, self.fraction), d[key])[0]
        return d
