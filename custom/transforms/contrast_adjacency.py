"""Remove detections that do not touch contrast-filled blood (issue 6: the student's false detections).

An embolus is a filling defect *of a contrast-filled artery*: the clot lies in the lumen, so contrast
surrounds it (a partial defect) or at least caps it where the flow stops (an occlusion). The mimics the
paper's error analysis names (iExplain, Fig. 5: veins taken for arteries, reduced contrast, lymph nodes)
are grey structures *beside* the vessels. The site analysis of sessions 11-12 (:mod:`custom.synth.sites`)
put 37-48 % of a student's false detections on such mimics and another 8-23 % in other grey tissue.

The rule here is a post-processing filter in the spirit of the paper's size and location filters of the
pseudo-labels (section 3.2, Table 3), applied to a probability map: label the detections (26-connected
clusters of ``probability >= threshold``, as the cluster-matching metric does), and for each one measure
the share of its *shell* (the voxels that touch it, 26-neighbourhood, outside it) whose image value lies
at or above ``contrast_level`` (e.g. 200 HU). A detection whose share is below ``min_share`` is removed:
its voxels' probability is set to 0, so every consumer of the map (mask, findings, metrics, FROC at the
same threshold) sees it gone.

Measured on the synthetic ``full`` cohort (``bundles/dynunet_student/docs/README.md``, "Repeats, a
calibrated threshold and a contrast filter (session 13)"; ``benchmarks/bench_contrast_filter.py``): over
five students trained on true masks, with the operating point chosen on the validation split, the mean
test F1 is 0.115 at the bundle's threshold 0.5, 0.143 at a calibrated threshold and 0.178 with the
filter as well (better than the threshold alone in four of five runs), while the strict F1 and the FROC
fall. It is not in the paper, so the bundle's default (``contrast_min_share`` 0) leaves it off.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage as ndi

from custom.metrics.cluster_matching import CONNECTIVITY_26, label_clusters
from custom.transforms.window import hu_window_bounds

__all__ = ["ContrastAdjacencyFilterd", "contrast_shares", "remove_unenhanced_clusters"]


def contrast_shares(labels: np.ndarray, count: int, image: np.ndarray, contrast_level: float) -> np.ndarray:
    """Share of each cluster's shell whose image value is at least ``contrast_level``.

    Args:
        labels: 3D int array, ``0`` background and ``1..count`` clusters (:func:`label_clusters`).
        count: number of clusters.
        image: the image on the same grid (HU, or any units ``contrast_level`` is given in).
        contrast_level: image value of contrast-filled blood.

    Returns:
        float64 array of ``count`` shares in ``[0, 1]`` (index ``k`` for label ``k + 1``); a cluster that
        fills its whole volume has no shell and gets 0.
    """
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in shape")
    shares = np.zeros(count, dtype=np.float64)
    for k, box in enumerate(ndi.find_objects(labels, max_label=count)):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        cluster = labels[grown] == k + 1
        shell = ndi.binary_dilation(cluster, CONNECTIVITY_26) & ~cluster
        if shell.any():
            shares[k] = float(np.count_nonzero(image[grown][shell] >= contrast_level)) / np.count_nonzero(shell)
    return shares


def remove_unenhanced_clusters(
    probability: np.ndarray, image: np.ndarray, threshold: float, contrast_level: float, min_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Zero the detections of ``probability`` whose shell is less than ``min_share`` contrast-filled.

    Args:
        probability: 3D PE probability map.
        image: the image on the same grid.
        threshold: detections are the 26-connected clusters of ``probability >= threshold``.
        contrast_level: image value of contrast-filled blood (same units as ``image``).
        min_share: a detection is kept when at least this share of its shell is contrast-filled; ``0``
            keeps every detection.

    Returns:
        ``(filtered probability, shares)``: a copy of ``probability`` with the removed detections' voxels
        at 0 (the input itself when ``min_share`` is 0), and the share of every detection in label order.
    """
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must lie in [0, 1], got {min_share}")
    probability, image = np.asarray(probability), np.asarray(image)
    if probability.ndim != 3 or probability.shape != image.shape:
        raise ValueError(f"expected a 3D probability map and an image of the same shape, got {probability.shape} and {image.shape}")
    labels, count = label_clusters(probability >= threshold)
    shares = contrast_shares(labels, count, image, contrast_level)
    if min_share == 0.0 or count == 0:
        return probability, shares
    removed = np.flatnonzero(shares < min_share) + 1
    filtered = probability.copy()
    filtered[np.isin(labels, removed)] = 0
    return filtered, shares


class ContrastAdjacencyFilterd(MapTransform):
    """Remove predicted clusters that touch no contrast-filled blood (a postprocessing transform).

    The prediction's last channel is the PE probability (one channel, or background and PE after a
    softmax); a removed cluster's voxels get PE probability 0 (and background 1 when there are two
    channels). The image is the network input, scaled from HU by the bundle's window: ``window`` maps
    ``contrast_hu`` into the image's units, so no HU copy is kept.

    Args:
        keys: the prediction key(s), channel-first ``(C, X, Y, Z)``.
        image_key: the image on the same grid, ``(1, X, Y, Z)``.
        threshold: probability threshold of a detection (the metric's and the mask's).
        contrast_hu: CT value of contrast-filled blood.
        min_share: keep a detection when at least this share of its shell is at or above ``contrast_hu``;
            ``0`` (the default) turns the filter off.
        window: ``(centre, width)`` in HU of the window that scaled the image to ``[0, 1]``; ``None``: the
            image is in HU. When the filter is on, ``contrast_hu`` must lie strictly inside the window (the
            window clips).
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        threshold: float = 0.5,
        contrast_hu: float = 200.0,
        min_share: float = 0.0,
        window: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= min_share <= 1.0:
            raise ValueError(f"contrast min_share must lie in [0, 1], got {min_share}")
        self.image_key, self.threshold, self.min_share = image_key, float(threshold), float(min_share)
        self.contrast_level = float(contrast_hu)
        if window is not None:
            low, high = hu_window_bounds(window)
            if self.min_share > 0 and not low < contrast_hu < high:  # an unused filter never refuses a window
                raise ValueError(f"contrast_hu {contrast_hu} must lie inside the window [{low}, {high}] HU")
            self.contrast_level = (contrast_hu - low) / (high - low)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.min_share == 0.0:
            return d
        image = convert_to_numpy(d[self.image_key])
        for key in self.key_iterator(d):
            pred = convert_to_numpy(d[key])
            if pred.ndim != 4 or pred.shape[0] not in (1, 2) or pred.shape[1:] != image.shape[1:]:
                raise ValueError(
                    f"ContrastAdjacencyFilterd: '{key}' must be (C, X, Y, Z) with C 1 or 2 on the grid of "
                    f"'{self.image_key}' {image.shape}, got {pred.shape}"
                )
            filtered, _ = remove_unenhanced_clusters(pred[-1], image[0], self.threshold, self.contrast_level, self.min_share)
            out = pred.copy()
            out[-1] = filtered
            if pred.shape[0] == 2:
                out[0][filtered != pred[-1]] = 1.0
            d[key] = convert_to_dst_type(out, d[key])[0]
        return d
