"""How well does a hand-made "dark hole in a bright vessel" prior find the emboli? (issue 10)

A grey closing fills dark holes narrower than its window; ``closing(x) - x`` inside bright
(contrast-filled) structures is therefore the classic filling-defect detector. This script asks,
on the held-out test studies of the benchmark cohort and with the true masks (analysis only, no
training), two questions that decide whether such a prior can break the classifier's slice-level
shortcut:

- as a slice score (maximum residual over the slice): the slice AUC and the pointing game (its top
  pixel on or within 3 px of an embolus);
- as a candidate generator (local maxima of the residual, strongest first): the share of positive
  slices with an embolus within 3 px of one of the top N candidates (recall@N).

    python benchmarks/analyse_defect_prior.py --cohort work/bench_recipes/cohort \
        --datalist datalist_train300.json --closing 5 [--depth 5 --tissue_hu "(0,100)" --bright 0.7]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from custom.data import window_hu  # noqa: E402
from custom.handlers import roc_auc  # noqa: E402
from custom.io.nifti import read_volume  # noqa: E402


def defect_residual(
    windowed: np.ndarray, closing: int, bright: float, depth: int = 1, tissue: tuple[float, float] | None = None
) -> np.ndarray:
    """``closing(x) - x`` where the closed image is bright (a filled contrast vessel), else 0.

    ``windowed`` is a ``(Z, Y, X)`` volume; the closing window is ``depth x closing x closing``
    (``depth`` 1: each slice on its own, as in session 4; 3 or 5: a gap along the vessel's course
    through neighbouring slices is filled too). ``tissue`` keeps only voxels whose own windowed value
    lies in that range (a clot is soft-tissue grey, not lung black).
    """
    closed = ndi.grey_closing(windowed, size=(depth, closing, closing))
    residual = (closed - windowed) * (closed > bright)
    if tissue is not None:
        residual *= (windowed >= tissue[0]) & (windowed <= tissue[1])
    return residual


def main(
    cohort: str = "work/bench_recipes/cohort",
    datalist: str = "datalist_train300.json",
    closing: int = 5,
    bright: float = 0.6,
    window: tuple[float, float] = (100.0, 700.0),
    top_n: tuple[int, ...] = (1, 4, 16, 32, 64),
    depth: int = 1,
    tissue_hu: tuple[float, float] | None = None,
) -> dict:
    """Print and return the slice AUC, pointing game and candidate recall@N of the residual prior."""
    root = Path(cohort)
    test = json.loads((root / datalist).read_text())["test"]
    scores, labels = [], []
    hits = positives = 0
    recall = dict.fromkeys(top_n, 0)
    for entry in test:
        volume = window_hu(read_volume(root / entry["image"])[0], *window)
        mask = read_volume(root / entry["mask"])[0] > 0
        slice_labels = np.asarray(entry["slice_labels"])
        tissue = None if tissue_hu is None else tuple(float(window_hu(np.float32(h), *window)) for h in tissue_hu)
        residuals = defect_residual(volume, closing, bright, depth, tissue)
        for z in range(volume.shape[0]):
            residual = residuals[z]
            scores.append(float(residual.max()))
            labels.append(int(slice_labels[z]))
            if not mask[z].any():
                continue
            positives += 1
            distance = ndi.distance_transform_edt(~mask[z])
            top = np.unravel_index(int(np.argmax(residual)), residual.shape)
            hits += bool(distance[top] <= 3)
            peaks = (residual == ndi.maximum_filter(residual, size=5)) & (residual > 0.05)
            ys, xs = np.nonzero(peaks)
            order = np.argsort(-residual[ys, xs])
            for n in top_n:
                chosen = order[:n]
                recall[n] += bool((distance[ys[chosen], xs[chosen]] <= 3).any())
    result = {
        "slice_auc": round(roc_auc(np.asarray(scores), np.asarray(labels)), 3),
        "pointing": round(hits / max(positives, 1), 3),
        "recall_at": {n: round(recall[n] / max(positives, 1), 2) for n in top_n},
        "positive_slices": positives,
        "closing": closing,
        "depth": depth,
        "tissue_hu": tissue_hu,
        "bright": bright,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(main)
