"""What a model's detections lie on, on the project's synthetic cohort (a diagnostic for issues 5, 6, 11).

The cluster-matching metric counts false detections; on the synthetic cohort we also know where every
embolus mimic was painted. :func:`analyse_predictions` regenerates each scored study from the cohort's seed
and phantom settings (``cohort.json``; the generator is deterministic, and the regenerated emboli's filled
per-slice boxes are checked against the study's reference mask voxel for voxel) and attributes every
detection to the first of these *sites* holding at least ``min_share`` of its voxels
(:func:`custom.metrics.detection_sites.detection_sites`):

- ``unopacified_vein``, ``lymph_node``, ``flow_artifact``: the phantom's mimics (each region grown by one
  voxel, as the blur spreads it);
- ``near_embolus``: within 2 voxels of an embolus without touching it;
- ``artery``, ``vein``: the contrast-filled lumen;
- ``lung``: aerated lung (body voxels below -400 HU); ``tissue``: any other voxel of the body;
  ``outside``: outside the body (air, table).

A detection is true when it touches the reference (the filled boxes, as in the metric). Beside the
counts, the share of the studies' volume each site takes (voxels assigned in the same order) is a rough
baseline, not an exact chance level: a detection needs only ``min_share`` of its voxels in a site, and
the small mimic sites are grown by a voxel and tried first, both of which favour them (by a factor of a
few for a detection of tens of voxels). A site that holds 0.02 % of the volume and 20 % of the false
detections still attracts them by orders of magnitude more than that.
The number of mimics of each kind that any detection touches is reported beside the number of emboli
(their true voxels, like the mimics) touched: a model that touches lymph nodes as often as emboli has
not learned the difference. These are the false-positive types of the paper's error analysis
(iExplain, "Error Analysis" and Fig. 5: reduced contrast in veins, contrast timing, imaging artefacts,
veins mistaken for arteries).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from custom.io.nifti import read_volume
from custom.io.rspect import Box, box_mask
from custom.metrics.detection_sites import detection_sites, regions_touched, site_counts
from custom.metrics.scoring import pair_studies
from custom.synth.phantom import PhantomConfig, SyntheticStudy, generate_study

__all__ = ["LUNG_HU", "MIMIC_KINDS", "SITES", "analyse_predictions", "box_reference", "mimic_touches", "phantom_config", "site_volumes", "study_sites"]

#: Mimic kinds of the phantom, in the order they are tried as sites.
MIMIC_KINDS = ("unopacified_vein", "lymph_node", "flow_artifact")
#: Every site, in the order they are tried; the last is the fallback.
SITES = (*MIMIC_KINDS, "near_embolus", "artery", "vein", "lung", "tissue", "outside")
#: Body voxels below this HU count as lung (aerated parenchyma), the rest as tissue.
LUNG_HU = -400.0


def phantom_config(cohort: Mapping[str, Any]) -> PhantomConfig:
    """The :class:`PhantomConfig` a ``cohort.json`` was written with."""
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in cohort["config"].items()}
    return PhantomConfig(**settings)


def box_reference(study: SyntheticStudy) -> np.ndarray:
    """The study's reference mask as ``prepare`` writes it (:func:`custom.io.rspect.box_mask`): the union of
    its filled per-slice embolus boxes."""
    slices = [str(k) for k in range(study.mask.shape[0])]
    boxes = [Box("", None, str(b.slice_index), None, b.x, b.y, b.width, b.height, 0) for b in study.boxes()]
    reference, _ = box_mask(slices, study.mask.shape[1:], boxes, f"study {study.index}")
    return reference > 0


def study_sites(study: SyntheticStudy) -> dict[str, np.ndarray]:
    """The ordered site masks of one study (see the module docstring), all but the fallback ``outside``."""
    if study.mimic_mask is None:
        raise ValueError(f"study {study.index}: the phantom kept no mimic regions")
    grow = np.ones((3, 3, 3), dtype=bool)
    sites: dict[str, np.ndarray] = {}
    for kind in MIMIC_KINDS:
        labels = [k for k, c in enumerate(study.confounders, start=1) if c["kind"] == kind]
        region = np.isin(study.mimic_mask, labels) if labels else np.zeros(study.mask.shape, dtype=bool)
        sites[kind] = ndi.binary_dilation(region, grow) if region.any() else region
    embolus = study.mask > 0
    sites["near_embolus"] = ndi.binary_dilation(embolus, grow, iterations=2) & ~embolus if embolus.any() else embolus
    sites["artery"] = study.artery_mask
    sites["vein"] = study.vein_mask
    sites["lung"] = study.body_mask & (study.hu < LUNG_HU)
    sites["tissue"] = study.body_mask
    return sites


def site_volumes(regions: Mapping[str, np.ndarray], fallback: str) -> dict[str, int]:
    """Voxels per site when each voxel goes to the first region holding it (the chance a random voxel lands there)."""
    free = np.ones(next(iter(regions.values())).shape, dtype=bool)
    out = {}
    for name, region in regions.items():
        out[name] = int(np.count_nonzero(region & free))
        free &= ~region
    out[fallback] = int(np.count_nonzero(free))
    return out


def mimic_touches(prediction: np.ndarray, study: SyntheticStudy, threshold: float) -> dict[str, tuple[int, int]]:
    """``{kind: (mimics touched by a detection, mimics)}`` over the mimics with voxels in ``study.mimic_mask``."""
    touched = set(regions_touched(prediction, study.mimic_mask, threshold).tolist())
    present = set(np.unique(study.mimic_mask).tolist())  # a region that an earlier one covers entirely cannot be touched
    out: dict[str, tuple[int, int]] = {}
    for k, confounder in enumerate(study.confounders, start=1):
        if confounder["kind"] in MIMIC_KINDS and k in present:
            hit, total = out.get(confounder["kind"], (0, 0))
            out[confounder["kind"]] = (hit + int(k in touched), total + 1)
    return out


def _empty_model() -> dict[str, Any]:
    return {"studies": 0, "false": Counter(), "true": Counter(), "mimics": {}, "emboli": [0, 0]}


def analyse_predictions(
    pred_dirs: Mapping[str, str | Path],
    labels_dir: str | Path,
    cohort: Mapping[str, Any],
    uids: Collection[str] | None = None,
    threshold: float = 0.5,
    min_share: float = 0.2,
) -> dict[str, Any]:
    """Sites of the true and false detections of several prediction folders of one synthetic cohort.

    Each study is regenerated once for all folders.

    Args:
        pred_dirs: ``{model name: folder}`` of ``<uid>_prob.nii.gz`` / ``<uid>.nii.gz`` / ``<uid>_mask.nii.gz``
            (the first that exists, as in ``scripts/score.py``).
        labels_dir: the reference masks ``<uid>.nii.gz`` (``prepared/labels``).
        cohort: the cohort's ``cohort.json``.
        uids: only these studies (for example the test split); default every paired study.
        threshold: detection threshold (the metric's 0.5).
        min_share: smallest share of a detection's voxels that makes a region its site.

    Returns:
        ``{"sites": SITES, "volume_share": {site: fraction}, "n_studies", "threshold", "min_share",
        "models": {name: {"n_studies", "false_detections": {site: n}, "true_detections": {site: n},
        "mimics_touched": {kind: {"touched", "total"}}, "emboli_touched": {"touched", "total"}}}}``;
        ``volume_share`` and ``n_studies`` are over every study analysed (of any model).

    Raises:
        ValueError: a scored study is not in the cohort, or its regenerated reference differs from its
            reference mask (another cohort, or a cohort written by another version of the generator).
    """
    config = phantom_config(cohort)
    index_of = {s["study_uid"]: s["index"] for s in cohort["studies"]}
    wanted = None if uids is None else set(uids)
    by_study: dict[str, dict[str, Path]] = {}
    references: dict[str, Path] = {}
    for name, folder in pred_dirs.items():
        for files in pair_studies(folder, labels_dir)[0]:
            if wanted is None or files.uid in wanted:
                by_study.setdefault(files.uid, {})[name] = files.prediction
                references[files.uid] = files.reference
    models = {name: _empty_model() for name in pred_dirs}
    volume: Counter = Counter()
    for uid in sorted(by_study):
        if uid not in index_of:
            raise ValueError(f"{references[uid]}: study {uid} is not in the cohort")
        study = generate_study(index_of[uid], int(cohort["seed"]), config)
        reference, _ = read_volume(references[uid])
        if reference.shape != study.mask.shape or not np.array_equal(reference > 0, box_reference(study)):
            raise ValueError(f"{references[uid]}: the regenerated study {uid} does not reproduce this reference mask")
        regions = study_sites(study)
        volume.update(site_volumes(regions, SITES[-1]))
        for name, path in by_study[uid].items():
            prediction, _ = read_volume(path)
            model = models[name]
            sites = detection_sites(prediction, reference, regions, threshold, min_share, fallback=SITES[-1])
            model["studies"] += 1
            model["false"].update(site_counts(sites, matched=False))
            model["true"].update(site_counts(sites, matched=True))
            for kind, (hit, total) in mimic_touches(prediction, study, threshold).items():
                counts = model["mimics"].setdefault(kind, [0, 0])
                counts[0] += hit
                counts[1] += total
            model["emboli"][0] += len(regions_touched(prediction, study.mask, threshold))
            model["emboli"][1] += len(study.emboli)
    total_volume = max(sum(volume.values()), 1)
    return {
        "sites": list(SITES),
        "volume_share": {site: volume[site] / total_volume for site in SITES},
        "n_studies": len(by_study),
        "threshold": threshold,
        "min_share": min_share,
        "models": {
            name: {
                "n_studies": m["studies"],
                "false_detections": {site: m["false"][site] for site in SITES},
                "true_detections": {site: m["true"][site] for site in SITES},
                "mimics_touched": {kind: {"touched": m["mimics"].get(kind, [0, 0])[0], "total": m["mimics"].get(kind, [0, 0])[1]}
                                   for kind in MIMIC_KINDS},
                "emboli_touched": {"touched": m["emboli"][0], "total": m["emboli"][1]},
            }
            for name, m in models.items()
        },
    }
