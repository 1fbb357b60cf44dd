"""Where the student's negative patch centres lie, with and without intrapulmonary negatives (issue 6).

The student bundle draws negative patch centres from the body's voxels above the HU window's lower end
(``FgBgToIndicesd``, ``image_threshold`` 0 on the windowed image). :class:`custom.transforms.IntrapulmonaryNegativesd`
adds the voxels of structures enclosed by lung (:func:`custom.transforms.intrapulmonary_structures`). On
the project's synthetic cohort the phantom knows its vessels and mimics; this script regenerates studies
from ``cohort.json`` and prints, for both candidate sets, the share of their voxels within ``distance``
voxels of a pulmonary artery, vein or mimic (unopacified vein, lymph node, flow artefact), and how many
mimics and emboli the set reaches (a voxel of the set within ``distance`` voxels).

    python benchmarks/negative_patch_sites.py --work_dir work/full --n_studies 8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.synth.phantom import generate_study  # noqa: E402
from custom.synth.sites import MIMIC_KINDS, phantom_config  # noqa: E402
from custom.transforms import intrapulmonary_structures  # noqa: E402


def main(work_dir: str = "work/full", n_studies: int = 8, distance: int = 3, window_low: float = -100.0) -> dict:
    """Print and return the shares for the first ``n_studies`` studies of ``work_dir/cohort/cohort.json``.

    Args:
        work_dir: a synthetic pipeline run (its ``cohort/cohort.json``).
        n_studies: studies to regenerate (the first ones of the cohort).
        distance: voxels (26-connected dilation steps) that count as "at" a vessel or mimic.
        window_low: the HU window's lower end: the default negatives are the voxels above it.
    """
    cohort = json.loads((Path(work_dir) / "cohort" / "cohort.json").read_text())
    config = phantom_config(cohort)
    ball = np.ones((3, 3, 3), dtype=bool)
    totals = {name: {"voxels": 0, "at_vessel": 0} for name in ("default", "intrapulmonary")}
    reached = {kind: [0, 0] for kind in (*MIMIC_KINDS, "embolus")}
    volume = 0
    for entry in cohort["studies"][:n_studies]:
        study = generate_study(int(entry["index"]), int(cohort["seed"]), config)
        embolus = study.mask > 0
        structures = intrapulmonary_structures(study.hu, axis=0) & ~embolus
        sets = {"default": (study.hu > window_low) & ~embolus, "intrapulmonary": structures}
        vessel = ndi.binary_dilation(study.artery_mask | study.vein_mask | (study.mimic_mask > 0), ball, iterations=distance)
        for name, voxels in sets.items():
            totals[name]["voxels"] += int(voxels.sum())
            totals[name]["at_vessel"] += int((voxels & vessel).sum())
        near = ndi.binary_dilation(structures, ball, iterations=distance)
        for k, confounder in enumerate(study.confounders, start=1):
            region = study.mimic_mask == k
            if confounder["kind"] in MIMIC_KINDS and region.any():
                reached[confounder["kind"]][0] += int((near & region).any())
                reached[confounder["kind"]][1] += 1
        labels, n = ndi.label(embolus, ball)
        for index in range(1, n + 1):
            reached["embolus"][0] += int((near & (labels == index)).any())
            reached["embolus"][1] += 1
        volume += study.hu.size
    result = {
        "n_studies": min(n_studies, len(cohort["studies"])), "distance": distance,
        "sets": {name: {"share_of_volume": t["voxels"] / volume, "share_at_vessel_or_mimic": t["at_vessel"] / max(t["voxels"], 1)}
                 for name, t in totals.items()},
        "reached_by_intrapulmonary": {kind: {"reached": r[0], "total": r[1]} for kind, r in reached.items()},
    }
    for name, row in result["sets"].items():
        print(f"{name:<15} {row['share_of_volume']:8.4%} of the volume, {row['share_at_vessel_or_mimic']:6.1%} within "
              f"{distance} voxels of a pulmonary vessel or mimic")
    print("intrapulmonary set reaches: " + ", ".join(f"{kind} {r['reached']}/{r['total']}" for kind, r in result["reached_by_intrapulmonary"].items()))
    ratio = result["sets"]["intrapulmonary"]["share_at_vessel_or_mimic"] / max(result["sets"]["default"]["share_at_vessel_or_mimic"], 1e-12)
    print(f"enrichment at vessels and mimics (intrapulmonary / default): {ratio:.1f}x")
    return result


if __name__ == "__main__":
    fire.Fire(lambda **kwargs: main(**kwargs) and None)
