"""Side-by-side comparison of slice-classifier recipes on the synthetic cohort (issue 10, item 6).

Every candidate is the classifier bundle's own ``train.json`` with a few overrides, trained through
``monai.bundle.ConfigWorkflow`` on the same cached cohort (default difficulty) for about the same
wall time. For each one it prints validation slice AUC against training minutes, then on held-out
test studies the slice AUC and the pointing-game hit rate (the fraction of positive slices whose
top Integrated Gradients pixel lies on or within 3 px of an embolus).

    python benchmarks/bench_classifier_recipes.py --work_dir work/bench_recipes --minutes 8

The cohort is generated once into ``work_dir/cohort`` (images, true masks, datalist) and reused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import fire
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# the demo keeps flips and Cutout but drops the random affine: on 2 cores its resampling cost more
# than the network's forward and backward pass (measured 0.96 s per batch of 32)
_NO_AFFINE = {"train#preprocessing#transforms#2#prob": 0.0}

CANDIDATES: dict[str, dict] = {
    # the paper's network family at full depth, plain balanced sampling
    "b0_full_balanced": {"model_name": "tf_efficientnetv2_b0", "feature_stage": None, "match_levels": False},
    # a shallow backbone (receptive field 43 px): its max response can only be local evidence
    "b0_stage2_levels": {"model_name": "tf_efficientnetv2_b0", "feature_stage": 2, "match_levels": True},
    # the same without level-matched negatives (ablation)
    "b0_stage2_balanced": {"model_name": "tf_efficientnetv2_b0", "feature_stage": 2, "match_levels": False},
    # one stage deeper (receptive field 128 px)
    "b0_stage3_levels": {"model_name": "tf_efficientnetv2_b0", "feature_stage": 3, "match_levels": True},
    # receptive field 19 px (34 mm at 1.8 mm): a vessel cross-section and its filling defect, no anatomy
    "b0_stage1_levels_noaffine": {"model_name": "tf_efficientnetv2_b0", "feature_stage": 1, "match_levels": True, **_NO_AFFINE},
    "b0_stage2_levels_noaffine": {"model_name": "tf_efficientnetv2_b0", "feature_stage": 2, "match_levels": True, **_NO_AFFINE},
    "b0_full_balanced_noaffine": {"model_name": "tf_efficientnetv2_b0", "feature_stage": None, "match_levels": False, **_NO_AFFINE},
}


def _write_study(args: tuple[int, int, str]) -> dict:
    from custom.io.nifti import write_volume
    from custom.synth.phantom import generate_study

    index, seed, out = args
    uid = f"bench{seed}_{index:04d}"
    image, mask = Path(out, "images", f"{uid}.nii.gz"), Path(out, "masks", f"{uid}.nii.gz")
    study = generate_study(index, seed)
    if not (image.exists() and mask.exists()):
        write_volume(image, study.hu, study.affine(), dtype=np.int16)
        write_volume(mask, (study.mask > 0).astype(np.uint8), study.affine(), dtype=np.uint8)
    return {"image": f"images/{uid}.nii.gz", "mask": f"masks/{uid}.nii.gz", "study_uid": uid,
            "n_slices": int(study.hu.shape[0]), "slice_labels": study.slice_labels.astype(int).tolist(),
            "pe_present": int(study.pe_present)}


def make_cohort(out: Path, n_train: int, n_val: int, n_test: int, seed: int = 100, workers: int = 2) -> Path:
    """Generate (once) the benchmark cohort and its datalist; return the datalist path."""
    datalist = out / "datalist.json"
    sizes = {"training": n_train, "validation": n_val, "test": n_test}
    if datalist.exists() and json.loads(datalist.read_text()).get("sizes") == sizes:
        return datalist
    total = n_train + n_val + n_test
    with Pool(workers) as pool:
        entries = pool.map(_write_study, [(i, seed, str(out)) for i in range(total)])
    split = {"training": entries[:n_train], "validation": entries[n_train : n_train + n_val], "test": entries[n_train + n_val :], "sizes": sizes}
    datalist.write_text(json.dumps(split))
    return datalist


def _curve_recorder(workflow, start: float, curve: list) -> None:
    from ignite.engine import Events

    evaluator = workflow.parser.get_parsed_content("validate#evaluator")

    def record(engine) -> None:
        metrics = engine.state.metrics
        curve.append({"minutes": (time.perf_counter() - start) / 60.0, "val_auc": float(metrics.get("slice_auc", float("nan"))),
                      "val_f1": float(metrics.get("slice_f1", float("nan")))})
        print(f"    {curve[-1]['minutes']:5.1f} min  val slice AUC {curve[-1]['val_auc']:.3f}", flush=True)

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, record)


def _seconds_per_iteration(overrides: dict, batch_size: int) -> float:
    from custom.networks import SliceClassifier

    torch.manual_seed(0)
    net = SliceClassifier(overrides["model_name"], feature_stage=overrides["feature_stage"]).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch_size, 7, 192, 192).to(memory_format=torch.channels_last)
    y = torch.zeros(batch_size, 1)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def _test_scores(workflow, cohort: Path, datalist: dict, pointing_slices: int) -> dict:
    from custom.data import window_hu
    from custom.explain import IntegratedGradientsExplainer
    from custom.explain.aggregation import window_slice_indices
    from custom.explain.pointing_game import pointing_game
    from custom.handlers import roc_auc
    from custom.io.nifti import read_volume

    network = workflow.parser.get_parsed_content("network")
    network.load_state_dict(torch.load(Path(workflow.parser.get_parsed_content("ckpt_dir")) / "model.pt", map_location="cpu"))
    network.eval()
    window = workflow.parser.get_parsed_content("window")
    scores, labels, studies = [], [], []
    with torch.no_grad():
        for entry in datalist["test"]:
            volume = window_hu(read_volume(cohort / entry["image"])[0], *window)
            mini = torch.as_tensor(volume)[window_slice_indices(volume.shape[0])]
            logits = torch.cat([network(mini[i : i + 64].contiguous(memory_format=torch.channels_last)) for i in range(0, len(mini), 64)])
            scores.extend(torch.sigmoid(logits).flatten().tolist())
            labels.extend(entry["slice_labels"])
            studies.append((volume, read_volume(cohort / entry["mask"])[0]))
    explainer = IntegratedGradientsExplainer(network, n_steps=16, references=("fill",), max_batch=128)
    game = pointing_game(explainer, studies, max_slices_per_study=pointing_slices)
    return {"test_auc": roc_auc(np.array(scores), np.array(labels)), "pointing_hit_rate": game.hit_rate,
            "pointing_slices": game.total, "median_distance_px": float(np.median(game.distances_px)) if game.distances_px else float("nan")}


def run(
    work_dir: str = "work/bench_recipes",
    minutes: float = 8.0,
    candidates: str = ",".join(CANDIDATES),
    n_train: int = 60,
    n_val: int = 8,
    n_test: int = 24,
    batch_size: int = 32,
    pointing_slices: int = 6,
    threads: int = 2,
) -> None:
    """Train each candidate for about ``minutes`` of wall time and print its curve and test scores."""
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(threads)
    work = Path(work_dir)
    cohort = work / "cohort"
    datalist_path = make_cohort(cohort, n_train, n_val, n_test)
    datalist = json.loads(datalist_path.read_text())
    n_pos = sum(sum(e["slice_labels"]) for e in datalist["training"])
    print(f"cohort: {n_train} train ({n_pos} positive slices), {n_val} validation, {n_test} test studies", flush=True)
    results = {}
    names = [name.strip() for name in (candidates.split(",") if isinstance(candidates, str) else candidates)]
    for name in names:
        overrides = CANDIDATES[name]
        seconds = _seconds_per_iteration(overrides, batch_size)
        epochs = max(2, int(round(minutes)))
        epoch_length = max(4, int(minutes * 60.0 / epochs / seconds * 0.85))  # leave room for validation
        print(f"[{name}] {seconds:.2f} s/iteration -> {epochs} epochs x {epoch_length} iterations", flush=True)
        bundle_root = work / name
        workflow = ConfigWorkflow(
            config_file=str(REPO / "bundles" / "classifier" / "configs" / "train.json"), workflow_type="train",
            bundle_root=str(bundle_root), dataset_dir=str(cohort), num_workers=0, batch_size=batch_size,
            epochs=epochs, epoch_length=epoch_length, warmup_iterations=max(1, epoch_length // 4), lr=1e-3,
            val_batch_size=64, **overrides,
        )
        workflow.initialize()
        curve: list = []
        start = time.perf_counter()
        _curve_recorder(workflow, start, curve)
        workflow.run()
        train_minutes = (time.perf_counter() - start) / 60.0
        scores = _test_scores(workflow, cohort, datalist, pointing_slices)
        workflow.finalize()
        results[name] = {"overrides": overrides, "train_minutes": train_minutes, "curve": curve, **scores}
        print(f"[{name}] {train_minutes:.1f} min, best val AUC {max(c['val_auc'] for c in curve):.3f}, "
              f"test AUC {scores['test_auc']:.3f}, pointing game {scores['pointing_hit_rate']:.2f} "
              f"({scores['pointing_slices']} slices)", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print("\ncandidate              train_min  test_auc  pointing_hit_rate")
    for name, r in results.items():
        print(f"{name:22s} {r['train_minutes']:9.1f} {r['test_auc']:9.3f} {r['pointing_hit_rate']:18.2f}")
    return None


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    fire.Fire(run)
