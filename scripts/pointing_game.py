"""Pointing game of a trained classifier bundle on the test split (see custom.explain.pointing_game).

    python scripts/pointing_game.py --bundle_root work/demo/classifier --datalist work/demo/prepared/datalist.json \\
        --dataset_dir work/demo/prepared --config_files '["train.json","demo.json"]' --out pg.json [--mask_dir cohort/masks]

The network, its window and its weights come from the bundle (``configs`` + ``models/model.pt``).
Embolus masks: ``--mask_dir/<uid>.nii.gz`` when given (the synthetic cohort's true masks), else the
datalist's reference ``label`` masks (filled boxes on real data). A positive study without a reference
``label`` (no boxes on real data) is skipped and counted in the output's ``skipped_no_mask``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import fire
import numpy as np
from monai.bundle import ConfigParser

from custom.data import window_hu
from custom.explain import IntegratedGradientsExplainer
from custom.explain.pointing_game import pointing_game
from custom.io.atomic import write_json_atomic
from custom.io.nifti import read_volume
from custom.teacher.classifier import load_classifier

__all__ = ["main", "positive_studies"]

REPO = Path(__file__).resolve().parents[1]


def positive_studies(
    entries: list[dict[str, Any]], dataset_dir: str, window: tuple[float, float], mask_dir: str | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """``(windowed volume, embolus mask)`` of the entries with a positive slice, and the uids skipped for want of a mask.

    Without ``mask_dir`` the mask is the entry's reference ``label``; a positive entry without one is skipped
    (as :mod:`custom.pipeline.results` does).
    """
    studies: list[tuple[np.ndarray, np.ndarray]] = []
    skipped: list[str] = []
    for entry in entries:
        if not any(entry.get("slice_labels", [])):
            continue
        if mask_dir:
            mask_path = Path(mask_dir) / f"{entry['study_uid']}.nii.gz"
        elif entry.get("label"):
            mask_path = Path(dataset_dir) / entry["label"]
        else:
            skipped.append(str(entry.get("study_uid", entry.get("image"))))
            continue
        image = os.path.join(dataset_dir, entry["image"])
        studies.append((window_hu(read_volume(image)[0], *window), read_volume(mask_path)[0] > 0))
    return studies, skipped


def main(
    bundle_root: str,
    datalist: str,
    dataset_dir: str,
    out: str,
    config_files=("train.json",),
    overrides: dict | None = None,
    mask_dir: str | None = None,
    data_list_key: str = "test",
    slices_per_study: int = 6,
    n_steps: int = 16,
    tolerance_px: float = 3.0,
) -> None:
    """Write ``{"hit_rate", "hits", "total", "median_distance_px", "skipped_no_mask", ...}`` to ``out`` (strict JSON:
    ``hit_rate`` is ``null`` without a positive slice to explain)."""
    files = json.loads(config_files) if isinstance(config_files, str) else list(config_files)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "classifier" / "configs" / f) for f in files])
    parser.update({"bundle_root": bundle_root, "device": "$torch.device('cpu')", **(overrides or {})})
    network = load_classifier(parser.get_parsed_content("network_def"), Path(bundle_root) / "models" / "model.pt", "cpu")
    window = parser.get_parsed_content("window")
    entries = json.loads(Path(datalist).read_text())[data_list_key]
    studies, skipped = positive_studies(entries, dataset_dir, window, mask_dir)
    if skipped:
        print(f"pointing game: skipped {len(skipped)} positive {data_list_key} studies without a reference mask: "
              f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    explainer = IntegratedGradientsExplainer(network, n_steps=n_steps, references=("fill",),
                                             fill_value=float(parser.get_parsed_content("cutout_fill")))
    result = pointing_game(explainer, studies, tolerance_px=tolerance_px, max_slices_per_study=slices_per_study)
    summary = {"hit_rate": result.hit_rate if result.total else None, "hits": result.hits, "total": result.total,
               "median_distance_px": float(np.median(result.distances_px)) if result.distances_px else None,
               "tolerance_px": tolerance_px, "n_steps": n_steps, "studies": len(studies), "skipped_no_mask": len(skipped),
               "masks": "true" if mask_dir else "reference boxes"}
    write_json_atomic(out, summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    fire.Fire(main)
