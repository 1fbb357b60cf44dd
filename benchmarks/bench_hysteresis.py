"""Speed of hysteresis clustering on the CPU: iterated box dilation (baseline) against component labelling.

In one process, on the same IG-like attributions, ``custom.explain.hysteresis_threshold`` with

- ``method="dilate"`` (the baseline: separable ``max_pool3d`` box dilations repeated until the region
  is stable, the implementation the teacher used before), and
- ``method="label"`` (one scipy connected-component labelling of the candidates' one-sided boxes; what
  ``method="auto"`` picks for CPU tensors),

checks that the two masks are identical and prints both times and their ratio. Two inputs:

- ``volume``: one ``(Z, H, W)`` volume (default 96 x 192 x 192), the size of a demo study;
- ``teacher``: ``(B, 7, H, W)`` mini-volumes (default 16 x 7 x 192 x 192), the shape the teacher passes
  (``windows_per_batch`` positive windows of Algorithm 1 at a time).

The attributions are IG-like: signed, smoothed Gaussian noise with a heavy tail, plus a few
ellipsoidal blobs of textured positive attribution (some touching the volume's borders). The high
threshold is the 0.999 quantile of the attributions (as ``benchmarks/bench_teacher.py`` calibrates it),
the low one half of it (paper 3.2). The neighbourhood is the paper's 15 x 15 x 5 (``(Z, Y, X) = (5, 15,
15)`` at 512 px) scaled to the grid by ``custom.explain.grid_scaling.scale_paper_settings``, as the
teacher does (192 px: ``(5, 5, 5)``); ``--neighbourhood`` overrides it.

Times are the best of ``--repeats`` interleaved runs, CPU seconds of this process (``time.process_time``)
and wall seconds, with ``--threads`` torch threads (default 1; run with ``OMP_NUM_THREADS=1`` too).
The last lines printed are the ratios baseline / new.

Usage: ``OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/bench_hysteresis.py [--repeats 3 --seed 0]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from custom.explain.grid_scaling import scale_paper_settings
from custom.explain.hysteresis import hysteresis_threshold

__all__ = ["ig_like_attributions", "main", "timed"]


def ig_like_attributions(shape: Sequence[int], n_blobs: int, seed: int) -> np.ndarray:
    """Float32 IG-like attributions of ``shape`` (``(..., Z, Y, X)``), each volume with its own blobs.

    Args:
        shape: array shape; the last three axes are one volume.
        n_blobs: ellipsoidal blobs of positive attribution per volume.
        seed: random seed.

    Returns:
        The attributions.
    """
    rng = np.random.default_rng(seed)
    volumes = []
    leading = int(np.prod(shape[:-3], dtype=np.int64))
    depth, height, width = (int(n) for n in shape[-3:])
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    for _ in range(leading):
        noise = ndimage.gaussian_filter(rng.standard_normal((depth, height, width)), sigma=(0.5, 1.0, 1.0))
        volume = noise * np.abs(rng.standard_t(3, size=(depth, height, width))) * 0.05
        for _ in range(n_blobs):
            centre = rng.uniform((0, 0, 0), (depth, height, width))
            if rng.random() < 0.3:  # touching a border
                centre[1] = rng.choice([0.0, height - 1.0])
            radii = rng.uniform((1.5, 4.0, 4.0), (max(2.0, depth / 4), height / 12, width / 12))
            inside = sum(((grid - c) / r) ** 2 for grid, c, r in zip((zz, yy, xx), centre, radii))
            texture = rng.uniform(0.2, 1.0, size=inside.shape)
            volume += np.where(inside <= 1.0, texture * np.exp(-inside), 0.0) * rng.uniform(0.5, 1.5)
        volumes.append(volume.astype(np.float32))
    return np.stack(volumes).reshape(tuple(shape))


def timed(function: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """Run ``function`` once.

    Args:
        function: the call to time.

    Returns:
        ``(result, CPU seconds of this process, wall seconds)``.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    """Parse the arguments, run both methods on both inputs, print the times and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume_shape", type=int, nargs=3, default=(96, 192, 192), metavar=("Z", "H", "W"))
    parser.add_argument("--windows", type=int, default=16, help="mini-volumes in the teacher input")
    parser.add_argument("--blobs", type=int, default=4, help="blobs per volume (teacher input: per mini-volume, at most 2)")
    parser.add_argument("--neighbourhood", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    depth, height, width = args.volume_shape
    neighbourhood = tuple(args.neighbourhood) if args.neighbourhood else scale_paper_settings(height, width).neighbourhood
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.2f}, neighbourhood (Z, Y, X) {neighbourhood}")
    inputs = {
        "volume": ig_like_attributions((depth, height, width), args.blobs, args.seed),
        "teacher": ig_like_attributions((args.windows, 7, height, width), min(args.blobs, 2), args.seed + 1),
    }
    ratios = []
    for name, array in inputs.items():
        heatmap = torch.from_numpy(array)
        high = float(np.quantile(array, 0.999))
        seeds = int((heatmap > high).sum())
        candidates = int((heatmap > high / 2).sum())
        results: dict[str, tuple[torch.Tensor, float, float]] = {}
        for _ in range(args.repeats):  # interleaved runs, the best time of each method
            for method in ("dilate", "label"):
                result, cpu, wall = timed(lambda: hysteresis_threshold(heatmap, high, None, neighbourhood, method=method))
                if method in results:
                    cpu, wall = min(cpu, results[method][1]), min(wall, results[method][2])
                results[method] = (result, cpu, wall)
        baseline, fast = results["dilate"], results["label"]
        if not torch.equal(baseline[0], fast[0]):
            raise RuntimeError(f"{name}: the two methods disagree")
        print(f"{name} {tuple(array.shape)}: high {high:.4g}, {seeds} seeds, {candidates} candidates, "
              f"{int(fast[0].sum())} voxels clustered (identical masks)")
        print(f"  dilate (baseline): {baseline[1]:.3f} s CPU, {baseline[2]:.3f} s wall")
        print(f"  label (new):       {fast[1]:.3f} s CPU, {fast[2]:.3f} s wall")
        ratios.append(f"{name}: dilate / label = {baseline[1] / fast[1]:.1f}x CPU, {baseline[2] / fast[2]:.1f}x wall")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
