"""What do a model's false detections lie on? (issues 5 and 6; a synthetic-cohort diagnostic)

The cluster-matching metric counts false detections; on the project's synthetic cohort we also know
where every embolus mimic was painted. This script regenerates each scored study from the cohort's
seed and phantom settings (``cohort.json``; the generator is deterministic, and the regenerated emboli's
filled per-slice boxes are checked against the study's reference mask voxel for voxel), and attributes every detection of a
prediction folder to the first of these sites holding at least ``min_share`` of its voxels
(:mod:`custom.metrics.detection_sites`):

- ``unopacified_vein``, ``lymph_node``, ``flow_artifact``: the phantom's mimics (each region grown by one
  voxel, as the blur spreads it);
- ``near_embolus``: within 2 voxels of an embolus without touching it;
- ``artery``, ``vein``: the contrast-filled lumen;
- ``lung``: aerated lung (body voxels below -400 HU); ``tissue``: any other voxel of the body;
  ``outside``: outside the body (air, table).

A detection is true when it touches the reference (the filled boxes, as in the metric). The script
also reports how many mimics of each kind any detection touches, beside the share of emboli (their true
voxels, like the mimics) touched: a model that touches lymph nodes as often as emboli has not learned
the difference.

    python benchmarks/analyse_false_clusters.py --work_dir work/full --pred_dirs "student/output,teacher/output/pseudo"
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.io.nifti import read_volume  # noqa: E402
from custom.metrics.detection_sites import detection_sites, regions_touched, site_counts  # noqa: E402
from custom.metrics.scoring import pair_studies  # noqa: E402
from custom.synth import PhantomConfig, SyntheticStudy, generate_study  # noqa: E402

#: Mimic kinds of the phantom, in the order they are tried as sites.
MIMIC_KINDS = ("unopacified_vein", "lymph_node", "flow_artifact")
#: Every site, in the order they are tried; the last is the fallback.
SITES = (*MIMIC_KINDS, "near_embolus", "artery", "vein", "lung", "tissue", "outside")
#: Body voxels below this HU count as lung (aerated parenchyma), the rest as tissue.
LUNG_HU = -400.0


def phantom_config(cohort: dict[str, Any]) -> PhantomConfig:
    """The :class:`PhantomConfig` a ``cohort.json`` was written with."""
    settings = {key: tuple(value) if isinstance(value, list) else value for key, value in cohort["config"].items()}
    return PhantomConfig(**settings)


def box_reference(study: SyntheticStudy) -> np.ndarray:
    """The study's reference mask as ``prepare`` writes it: the union of its filled per-slice embolus boxes."""
    reference = np.zeros(study.mask.shape, dtype=bool)
    for box in study.boxes():
        reference[box.slice_index, box.y : box.y + box.height, box.x : box.x + box.width] = True
    return reference


def study_sites(study: SyntheticStudy) -> dict[str, np.ndarray]:
    """The ordered site masks of one regenerated study (see the module docstring), all but the fallback."""
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


def site_volumes(regions: dict[str, np.ndarray], fallback: str) -> dict[str, int]:
    """Voxels per site when each voxel goes to the first region holding it (the chance a random voxel lands there)."""
    free = np.ones(next(iter(regions.values())).shape, dtype=bool)
    out = {}
    for name, region in regions.items():
        out[name] = int(np.count_nonzero(region & free))
        free &= ~region
    out[fallback] = int(np.count_nonzero(free))
    return out


def mimic_touches(prediction: np.ndarray, study: SyntheticStudy, threshold: float) -> dict[str, tuple[int, int]]:
    """``{kind: (mimics touched by a detection, mimics)}`` for each mimic kind of the study."""
    touched = set(regions_touched(prediction, study.mimic_mask, threshold).tolist())
    out: dict[str, tuple[int, int]] = {}
    for k, confounder in enumerate(study.confounders, start=1):
        if confounder["kind"] in MIMIC_KINDS and confounder.get("voxels", 0) > 0:
            hit, total = out.get(confounder["kind"], (0, 0))
            out[confounder["kind"]] = (hit + int(k in touched), total + 1)
    return out


def analyse(
    pred_dir: Path, prepared: Path, cohort: dict[str, Any], threshold: float = 0.5, min_share: float = 0.2, kind: str = "auto"
) -> dict[str, Any]:
    """Sites of the true and false detections of one prediction folder, and the mimics touched.

    Raises:
        ValueError: a scored study is not in the cohort, or its regenerated mask differs from its reference.
    """
    config = phantom_config(cohort)
    index_of = {s["study_uid"]: s["index"] for s in cohort["studies"]}
    pairs, _ = pair_studies(pred_dir, prepared / "labels", kind)
    false_sites: Counter = Counter()
    true_sites: Counter = Counter()
    mimics: dict[str, list[int]] = {}
    emboli = [0, 0]
    volume: Counter = Counter()
    for files in pairs:
        if files.uid not in index_of:
            raise ValueError(f"{files.prediction}: study {files.uid} is not in the cohort")
        study = generate_study(index_of[files.uid], int(cohort["seed"]), config)
        reference, _ = read_volume(files.reference)
        if reference.shape != study.mask.shape or not np.array_equal(reference > 0, box_reference(study)):
            raise ValueError(f"{files.reference}: the regenerated study {files.uid} does not reproduce this reference mask")
        prediction, _ = read_volume(files.prediction)
        regions = study_sites(study)
        sites = detection_sites(prediction, reference, regions, threshold, min_share, fallback="outside")
        volume.update(site_volumes(regions, "outside"))
        false_sites.update(site_counts(sites, matched=False))
        true_sites.update(site_counts(sites, matched=True))
        for mimic_kind, (hit, total) in mimic_touches(prediction, study, threshold).items():
            counts = mimics.setdefault(mimic_kind, [0, 0])
            counts[0] += hit
            counts[1] += total
        touched = regions_touched(prediction, study.mask, threshold)
        emboli[0] += len(touched)
        emboli[1] += len(study.emboli)
    return {
        "pred_dir": str(pred_dir),
        "studies": len(pairs),
        "false_detections": dict(false_sites),
        "true_detections": dict(true_sites),
        "mimics_touched": {k: {"touched": v[0], "total": v[1]} for k, v in sorted(mimics.items())},
        "emboli_touched": {"touched": emboli[0], "total": emboli[1]},
        "site_volume_share": {site: volume[site] / max(sum(volume.values()), 1) for site in SITES},
        "threshold": threshold,
        "min_share": min_share,
    }


def format_row(name: str, result: dict[str, Any]) -> str:
    """One table row: false detections per site, then mimics and emboli touched."""
    false = result["false_detections"]
    total = sum(false.values())
    cells = [f"{false.get(site, 0)} ({false.get(site, 0) / total:.0%})" if total else "0" for site in SITES]
    touched = [f"{m['touched']}/{m['total']}" for m in (result["mimics_touched"].get(k, {"touched": 0, "total": 0}) for k in MIMIC_KINDS)]
    e = result["emboli_touched"]
    return f"| {name} | {total} | " + " | ".join(cells) + " | " + " | ".join(touched) + f" | {e['touched']}/{e['total']} |"


def main(
    work_dir: str = "work/full",
    pred_dirs: str | tuple[str, ...] = "student/output",
    threshold: float = 0.5,
    min_share: float = 0.2,
    results: str | None = None,
) -> None:
    """Print one table row per prediction folder (relative to ``work_dir``, or absolute) against the run's cohort.

    Args:
        work_dir: a pipeline run (``cohort/cohort.json``, ``prepared/labels``).
        pred_dirs: comma-separated prediction folders, relative to ``work_dir``.
        threshold: detection threshold (the metric's 0.5).
        min_share: smallest share of a detection's voxels that makes a region its site.
        results: optional JSON-lines file the results (see :func:`analyse`) are appended to.
    """
    work = Path(work_dir)
    cohort_path = work / "cohort" / "cohort.json"
    if not cohort_path.is_file():
        raise FileNotFoundError(f"{cohort_path}: no cohort record (run the pipeline first)")
    cohort = json.loads(cohort_path.read_text())
    names = [d for d in (pred_dirs.split(",") if isinstance(pred_dirs, str) else pred_dirs) if d]
    print(f"| predictions | false | {' | '.join(SITES)} | {' | '.join(k + ' touched' for k in MIMIC_KINDS)} | emboli touched |")
    print("|" + " --- |" * (len(SITES) + len(MIMIC_KINDS) + 3))
    for number, name in enumerate(names):
        result = analyse(work / name, work / "prepared", cohort, threshold, min_share)
        if number == 0:  # the studies are the same for every folder of a run: the volume shares once
            share = result["site_volume_share"]
            print("| share of the volume | | " + " | ".join(f"{share[site]:.2%}" for site in SITES) + " |" + " |" * (len(MIMIC_KINDS) + 1))
        print(format_row(name, result), flush=True)
        if results:
            with open(results, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
