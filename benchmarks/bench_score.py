"""Speed of scoring one 300x512x512 study (issue 3, item 8): cluster + strict matching + FROC scores.

A realistic sparse study: the reference is the union of filled per-slice boxes of a few PEs; the
prediction is a float32 probability map (low noise everywhere) with blobs on most PEs, a few false-positive
blobs and scattered specks across the lungs. Compared, in the same run, with a naive baseline that labels the
full volumes with ``scipy.ndimage.label`` and matches on the full volumes.

Usage: ``.venv/bin/python benchmarks/bench_score.py [--repeats 5]``; the last line printed is the speed-up
(naive seconds / ours, cluster matching).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from custom.metrics import cluster_overlaps, count_matches
from custom.metrics.scoring import score_study

SHAPE = (300, 512, 512)


def make_study(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(prob float32, reference uint8)`` of a synthetic study with 8 PEs, 6 detected, 6 FP blobs, 40 specks."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(SHAPE, dtype=np.uint8)
    prob = (rng.random(SHAPE, dtype=np.float32) * 0.2).astype(np.float32)
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for pe in range(8):
        z0, length = int(rng.integers(40, 240)), int(rng.integers(4, 30))
        y, x = int(rng.integers(160, 380)), int(rng.integers(100, 410))
        for z in range(z0, z0 + length):  # one drifting box per slice, like RSPECT-augmented annotations
            y, x = y + int(rng.integers(-2, 3)), x + int(rng.integers(-2, 3))
            h, w = int(rng.integers(8, 30)), int(rng.integers(8, 30))
            ref[z, y : y + h, x : x + w] = 1
        if pe < 6:  # detected: an ellipsoid inside the PE
            zc, r = z0 + length // 2, max(2, length // 3)
            sub = (slice(zc - r, zc + r + 1), slice(y - 12, y + 25), slice(x - 12, x + 25))
            distance = ((zz[sub[0]] - zc) / r) ** 2 + ((yy[:, sub[1]] - y - 6) / 9.0) ** 2
            blob = distance + ((xx[:, :, sub[2]] - x - 6) / 9.0) ** 2 <= 1
            prob[sub][blob] = rng.uniform(0.6, 0.95)
    for _ in range(6):  # false-positive blobs
        zc, y, x = int(rng.integers(20, 280)), int(rng.integers(150, 390)), int(rng.integers(90, 420))
        prob[zc - 3 : zc + 3, y - 5 : y + 5, x - 5 : x + 5] = rng.uniform(0.5, 0.9)
    specks = (rng.integers(10, 290, 40), rng.integers(140, 400, 40), rng.integers(80, 430, 40))
    prob[specks] = 0.55
    return prob, ref


def naive_match(prob: np.ndarray, ref: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """Full-volume labelling and matching, no cropping: the baseline."""
    structure = np.ones((3, 3, 3), dtype=bool)
    pred_labels, n_pred = ndimage.label(prob >= threshold, structure=structure)
    ref_labels, n_ref = ndimage.label(ref != 0, structure=structure)
    both = (pred_labels > 0) & (ref_labels > 0)
    codes = np.unique(pred_labels[both].astype(np.int64) * (n_ref + 1) + ref_labels[both])
    tp = np.unique(codes % (n_ref + 1)).size
    return tp, n_pred - np.unique(codes // (n_ref + 1)).size, n_ref - tp


def best_of(repeats: int, fn, *args):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    prob, ref = make_study()
    ours_s, counts = best_of(args.repeats, lambda: count_matches(cluster_overlaps(prob, ref, threshold=0.5)))
    full_s, score = best_of(args.repeats, score_study, prob, ref)
    naive_s, naive = best_of(max(1, args.repeats // 2), naive_match, prob, ref)
    if (counts.tp, counts.fp, counts.fn) != naive:
        raise AssertionError(f"ours {counts} != naive {naive}")
    print(f"study {SHAPE}, float32 probabilities; cluster counts {counts}; strict {score.strict}")
    print(f"cluster matching (threshold + label + match): {ours_s:.3f} s")
    print(f"full scoring (cluster + strict + FROC scores): {full_s:.3f} s")
    print(f"naive full-volume baseline (cluster matching): {naive_s:.3f} s")
    print(f"speed-up over naive: {naive_s / ours_s:.1f}x")
    print(f"{naive_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
