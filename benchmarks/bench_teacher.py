"""Whole-study teacher time (issue 5, item 7 c): the project's teacher against a per-slice, per-round Captum Algorithm 1.

In one run, on the same classifier and the same synthetic study (demo size, 96 x 192 x 192 by default):

- **project**: ``custom.teacher.TeacherFactory`` -> ``custom.explain.IExplainTeacher`` with the settings
  of ``bundles/iexplain_teacher/configs/demo.json`` (8 IG steps, one "fill" reference, no SmoothGrad
  noise, ``max_batch`` 16, ``windows_per_batch`` 1) and the paper's settings scaled to the grid: one
  batched forward pass over every slice's window, then Algorithm 1 on the positive windows with IG
  folded into passes of ``max_batch`` items; in float32 (the demo config) and with bfloat16 autocast,
  the classifier's batch norms folded into its convolutions (the teacher's default) and the memory
  format given by ``--channels_last`` (default ``auto``: measured per teacher, as the bundle does);
- **captum**: the straightforward implementation: one classifier forward pass per slice; for each
  positive window, for each round, ``captum.attr.IntegratedGradients(model).attribute(window,
  baselines=fill, n_steps, method)`` (Captum batches the steps of one window), the same hysteresis
  (``custom.explain.hysteresis_threshold``), masking and three stop conditions, then the same Gaussian
  slice vote (``custom.explain.aggregate_windows``) and filters (``custom.explain.filter_clusters``);
- the cluster-matching F1 (``custom.metrics.match_clusters``) of both filtered masks against the
  study's true embolus mask, and how many voxels the two masks differ in.

Classifier: ``work/bench_recipes/b0_stage2_levels/models/model.pt`` (``SliceClassifier('tf_efficientnetv2_b0',
feature_stage=2)``, the classifier recipe benchmark's demo classifier) with its ``threshold.json`` when
present, else an untrained one with a random output layer; without trained weights, or when their
threshold calls no window of the study positive, ``clf_threshold`` is the
``1 - positive_fraction`` quantile of the study's window probabilities, so that that fraction of the
windows is explained. The hysteresis high threshold is the 0.999 quantile of the first-round IG
attributions of the positive windows (``custom.teacher.attribution_scale``, the calibration's scale).

Times are wall and CPU seconds of this process (``time.process_time``) with ``--threads 1`` by default;
the machine is shared with other jobs, so the CPU time is the more stable one. The float32 teacher runs once
first as a warm-up (its result gives the work counts), then ``--repeats`` interleaved timed runs (best of).
With ``--compiled True`` (default) the teacher also runs with ``compile=True`` (``torch.compile`` of the
IG passes, ``custom.compilation``) in float32 and bfloat16; their first run compiles and is timed apart.
The last lines are the ratios (compiled float32 and bfloat16 when timed, bfloat16 autocast, then float32).

Usage: ``.venv/bin/python benchmarks/bench_teacher.py [--shape 96 192 192 --n_steps 8 --threads 1 --repeats 1]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import nn

from custom.data.minivolume import window_hu
from custom.explain import aggregate_windows, filter_clusters, hysteresis_threshold, window_slice_indices
from custom.io.atomic import write_json_atomic
from custom.io.records import json_ready
from custom.metrics import match_clusters
from custom.networks import SliceClassifier
from custom.synth.phantom import PhantomConfig, generate_study
from custom.teacher import TeacherFactory, attribution_scale, load_classifier, read_classifier_threshold

REPO = Path(__file__).resolve().parents[1]
DEMO_CLASSIFIER = REPO / "work" / "bench_recipes" / "b0_stage2_levels" / "models"
DEPTH = 7


def make_classifier(seed: int, models_dir: Path = DEMO_CLASSIFIER) -> tuple[nn.Module, float | None, str]:
    """The demo classifier and its threshold if trained weights exist, else an untrained one (threshold ``None``)."""
    network = SliceClassifier("tf_efficientnetv2_b0", in_chans=DEPTH, feature_stage=2)
    weights = Path(models_dir).resolve() / "model.pt"
    if not weights.is_file() and Path(models_dir).resolve() != DEMO_CLASSIFIER.resolve():
        raise FileNotFoundError(f"--classifier_models {models_dir}: no model.pt there")
    if weights.is_file():
        load_classifier(network, weights, "cpu")
        network.eval().requires_grad_(False)  # frozen for every variant alike (compile=True freezes it anyway)
        threshold_file = weights.parent / "threshold.json"
        threshold = read_classifier_threshold(threshold_file) if threshold_file.is_file() else 0.5
        return network, threshold, f"trained ({weights})"
    torch.manual_seed(seed)
    nn.init.normal_(network.fc.weight, std=1.0 / network.fc.in_features**0.5)
    network.eval().requires_grad_(False)
    return network, None, "untrained (random output layer)"


def positive_study(shape: tuple[int, int, int], seed: int, first_index: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The first synthetic study from ``first_index`` on that has an embolus: ``(index, windowed, true mask)``."""
    config = PhantomConfig(shape=shape)
    for index in range(first_index, first_index + 50):
        study = generate_study(index, seed, config)
        if study.pe_present:
            return index, window_hu(study.hu, 100.0, 700.0), (study.mask > 0).astype(np.uint8)
    raise RuntimeError(f"no positive study among indices {first_index}..{first_index + 49} of seed {seed}")


def captum_teacher(
    classifier: nn.Module,
    volume: np.ndarray,
    high_threshold: float,
    clf_threshold: float,
    n_steps: int,
    method: str,
    max_rounds: int,
    min_voxels: int,
    neighbourhood: tuple[int, int, int],
    fill_value: float,
    sigma: float,
    mask_threshold: float,
    min_cluster_voxels: int,
    max_center_distance_px: float,
) -> tuple[np.ndarray, int]:
    """Algorithm 1 per slice and per round with Captum IG: ``(filtered mask, IG calls)``."""
    study = torch.as_tensor(volume, dtype=torch.float32)
    sources = window_slice_indices(study.shape[0], DEPTH)
    ig = IntegratedGradients(classifier)
    centers, window_masks, calls = [], [], 0
    with torch.no_grad():
        probabilities = [float(torch.sigmoid(classifier(study[sources[k]][None])).item()) for k in range(study.shape[0])]
    for k, probability in enumerate(probabilities):
        if probability <= clf_threshold:
            continue
        current = study[sources[k]][None].clone()
        found = torch.zeros(current.shape[1:], dtype=torch.bool)
        for round_index in range(1, max_rounds + 1):
            attributions = ig.attribute(current, baselines=fill_value, n_steps=n_steps, method=method)
            calls += 1
            clusters = hysteresis_threshold(attributions[0], high_threshold, None, neighbourhood)
            new_voxels = int((clusters & ~found).sum())
            found |= clusters
            current[0][clusters] = fill_value
            with torch.no_grad():
                probability = float(torch.sigmoid(classifier(current)).item())
            if probability <= clf_threshold or round_index >= max_rounds or new_voxels < min_voxels:
                break
        centers.append(k)
        window_masks.append(found)
    if window_masks:
        soft = aggregate_windows(torch.stack(window_masks), torch.tensor(centers), study.shape[0], sigma)
        unfiltered = (soft >= mask_threshold).numpy().astype(np.uint8)
    else:
        unfiltered = np.zeros(volume.shape, np.uint8)
    return filter_clusters(unfiltered, min_cluster_voxels, max_center_distance_px)[0], calls


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 192, 192), help="(Z, Y, X) of the synthetic study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study_index", type=int, default=0, help="first synthetic study index tried (the first positive one is used)")
    parser.add_argument("--n_steps", type=int, default=8)
    parser.add_argument("--method", default="gausslegendre")
    parser.add_argument("--max_rounds", type=int, default=10)
    parser.add_argument("--max_batch", type=int, default=16)
    parser.add_argument("--windows_per_batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--positive_fraction", type=float, default=0.25, help="untrained classifier: fraction of windows explained")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out_json", default=None)
    parser.add_argument("--channels_last", type=lambda v: "auto" if v.lower() == "auto" else v.lower() in ("1", "true", "yes"), default="auto",
                        help="memory format of the project teacher's passes: true, false or auto (measured per teacher, the bundle's default)")
    parser.add_argument("--classifier_models", default=str(DEMO_CLASSIFIER),
                        help="folder with model.pt (and threshold.json) of a b0 stage-2 classifier, e.g. a demo run's W/classifier/models")
    parser.add_argument("--compiled", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="also time the teacher with compile=True (its first, compiling run is timed apart)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    classifier, clf_threshold, classifier_kind = make_classifier(args.seed, Path(args.classifier_models))
    index, volume, true_mask = positive_study(tuple(args.shape), args.seed, args.study_index)
    sources = window_slice_indices(volume.shape[0], DEPTH)
    with torch.no_grad():
        logits = torch.cat([classifier(torch.as_tensor(volume)[sources[s : s + 16]]) for s in range(0, volume.shape[0], 16)])
    probabilities = torch.sigmoid(logits).flatten().numpy()
    if clf_threshold is None or not (probabilities > clf_threshold).any():
        if clf_threshold is not None:
            classifier_kind += f"; its threshold {clf_threshold:.4f} calls no window of this study positive"
        clf_threshold = float(np.quantile(probabilities, 1.0 - args.positive_fraction))
    settings = dict(clf_threshold=clf_threshold, n_steps=args.n_steps, method=args.method, references=("fill",), n_noise=0,
                    max_rounds=args.max_rounds, max_batch=args.max_batch, windows_per_batch=args.windows_per_batch,
                    channels_last=args.channels_last)
    factory = TeacherFactory(classifier, None, **settings)
    high_threshold = attribution_scale(factory, [volume], quantile=0.999)
    teachers = {
        "project_fp32": factory(volume.shape[1], volume.shape[2], high_threshold=high_threshold),
        "project_bf16": TeacherFactory(classifier, high_threshold, autocast_dtype=torch.bfloat16, **settings)(volume.shape[1], volume.shape[2]),
    }
    compile_seconds: dict[str, float] = {}
    if args.compiled:
        for name, dtype in (("project_fp32_compiled", None), ("project_bf16_compiled", torch.bfloat16)):
            teacher = TeacherFactory(classifier, high_threshold, autocast_dtype=dtype, compile=True, **settings)(volume.shape[1], volume.shape[2])
            _, compile_seconds[name], _ = timed(lambda teacher=teacher: teacher(volume, study_id=f"synthetic {index}"))  # compiles
            teachers[name] = teacher
    reference = teachers["project_fp32"]
    variants = {name: (lambda teacher=teacher: teacher(volume, study_id=f"synthetic {index}").mask_filtered) for name, teacher in teachers.items()}
    variants["captum"] = lambda: captum_teacher(
        classifier, volume, high_threshold, clf_threshold, args.n_steps, args.method, args.max_rounds, reference.min_voxels,
        reference.neighbourhood, reference.fill_value, reference.sigma, reference.mask_threshold, reference.min_cluster_voxels,
        reference.max_center_distance_px,
    )[0]
    explanation = reference(volume, study_id=f"synthetic {index}")  # warm-up of the allocator and kernels, and the work done
    walls = {name: float("inf") for name in variants}
    cpus = dict(walls)
    masks = {}
    for _ in range(args.repeats):  # interleaved, best of
        for name, function in variants.items():
            masks[name], wall, cpu = timed(function)
            walls[name], cpus[name] = min(walls[name], wall), min(cpus[name], cpu)
    load_after = os.getloadavg()
    counts = {name: match_clusters(mask, true_mask) for name, mask in masks.items()}
    differing = {name: int((mask != masks["captum"]).sum()) for name, mask in masks.items()}
    positive_windows = int((explanation.window_rounds > 0).sum())
    window_rounds = int(explanation.window_rounds.sum())
    ratios = {name: cpus["captum"] / cpus[name] for name in teachers}
    print(f"study: synthetic index {index} (seed {args.seed}), {'x'.join(map(str, volume.shape))}, {int(true_mask.any(axis=(1, 2)).sum())} positive slices")
    print(f"classifier: tf_efficientnetv2_b0 feature_stage 2, {classifier_kind}; clf_threshold {clf_threshold:.4f}; high threshold {high_threshold:.4g}")
    print(f"settings: n_steps {args.n_steps} ({args.method}), 1 reference (fill), no noise, max_rounds {args.max_rounds}, "
          f"neighbourhood {reference.neighbourhood}, min_voxels {reference.min_voxels}, filters {reference.min_cluster_voxels} voxels / "
          f"{reference.max_center_distance_px:.0f} px, max_batch {args.max_batch}, windows_per_batch {args.windows_per_batch}, "
          f"channels_last {args.channels_last} ({', '.join(f'{name}: {teacher.channels_last}' for name, teacher in teachers.items())}), threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"work: {positive_windows} positive windows of {volume.shape[0]}, {window_rounds} window-rounds of IG ({window_rounds * args.n_steps} IG passes)")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other jobs share this CPU)")
    for name, seconds in compile_seconds.items():
        print(f"{name}: first run, compiling included, {seconds:.1f} s wall")
    for name in variants:
        c = counts[name]
        print(f"{name:>13}: {cpus[name]:8.2f} s CPU ({walls[name]:7.2f} s wall)  F1 {c.f1:.3f} (tp {c.tp}, fp {c.fp}, fn {c.fn})  "
              f"filtered mask differs from captum's in {differing[name]} voxels")
    if args.out_json:
        write_json_atomic(args.out_json, json_ready({
            "args": vars(args), "classifier": classifier_kind, "study_index": index, "clf_threshold": clf_threshold,
            "high_threshold": high_threshold, "positive_windows": positive_windows, "window_rounds": window_rounds,
            "load_average": [load_before[0], load_after[0]], "cpu_seconds": cpus, "wall_seconds": walls,
            "counts": {name: c.as_dict() for name, c in counts.items()}, "differing_voxels": differing, "ratios_cpu": ratios,
            "first_run_wall_seconds_compiled": compile_seconds,
        }))
    for name in compile_seconds:
        print(f"ratio whole-study teacher time captum / {name.replace('_', ' ')}: {ratios[name]:.2f}x CPU "
              f"({walls['captum'] / walls[name]:.2f}x wall), F1 difference {abs(counts[name].f1 - counts['captum'].f1):.3f}")
    print(f"ratio whole-study teacher time captum / project bf16 autocast: {ratios['project_bf16']:.2f}x CPU "
          f"({walls['captum'] / walls['project_bf16']:.2f}x wall), F1 difference {abs(counts['project_bf16'].f1 - counts['captum'].f1):.3f}")
    print(f"ratio whole-study teacher time captum / project fp32 (demo config): {ratios['project_fp32']:.2f}x CPU "
          f"({walls['captum'] / walls['project_fp32']:.2f}x wall), F1 difference {abs(counts['project_fp32'].f1 - counts['captum'].f1):.3f}")

if __name__ == "__main__":
    main()
