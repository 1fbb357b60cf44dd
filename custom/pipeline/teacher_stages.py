"""Teacher stages of the pipeline (bundle ``iexplain_teacher``) and what the results read from them.

The teacher explains the classifier trained in the same run, so it takes the classifier's network
settings (model, stage, window, Cutout fill) from the classifier's own configs: the two can never
disagree. It runs on the weak datalist (no box masks on the training split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from custom.pipeline.stages import Stage, python_command

if TYPE_CHECKING:
    from custom.pipeline.run import PipelineRun

__all__ = ["classifier_settings", "overlay_assets", "teacher_results", "teacher_stages"]

SHARED_KEYS = ("model_name", "feature_stage", "depth", "window", "cutout_fill")


def classifier_settings(run: PipelineRun) -> dict[str, Any]:
    """The network and input settings of the run's classifier (its configs plus profile overrides)."""
    from monai.bundle import ConfigParser

    from custom.pipeline.run import REPO

    c = run.profile["classifier"]
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "classifier" / "configs" / f) for f in c["configs"]])
    parser.update(dict(c["overrides"]))
    return {key: parser[key] for key in SHARED_KEYS}


def teacher_stages(run: PipelineRun) -> list[Stage]:
    """Calibrate, infer with 1 reference (all splits) and 5 references (one split), evaluate."""
    from custom.pipeline.run import bundle_command

    t = run.profile["teacher"]
    root = run.path("teacher")
    configs = list(t["configs"])
    common = {
        "bundle_root": str(root), "classifier_dir": str(run.path("classifier")), "dataset_dir": str(run.prepared),
        "datalist": str(run.datalists / "weak.json"), **classifier_settings(run), **t["overrides"],
    }
    five = ["five_references.json"]
    five_split = t.get("five_references_split", "test")  # null: the 5-reference ablation is not run
    evaluation = {**common, "datalist": str(run.prepared / "datalist.json")}
    if five_split is None:
        evaluation["evaluation_dirs"] = {"1": str(root / "output")}
    nproc = run.nproc
    multi = ["multi_gpu_inference.json"] if nproc > 1 else []
    stages = [
        Stage("teacher_calibrate", [root / "models" / "calibration.json"], bundle_command("iexplain_teacher", configs + ["calibrate.json"], None, 1, **common),
              summary=lambda: "high threshold {high_threshold:.4g}".format(**json.loads((root / "models" / "calibration.json").read_text()))),
        Stage("teacher_infer", [root / "output" / "index.json"], bundle_command("iexplain_teacher", configs + multi, None, nproc, **common),
              summary=lambda: _infer_summary(root / "output")),
    ]
    if five_split is not None:
        stages += [
            Stage("teacher_calibrate_5ref", [root / "models" / "calibration_5ref.json"],
                  bundle_command("iexplain_teacher", configs + five + ["calibrate.json"], None, 1, **common)),
            Stage("teacher_infer_5ref", [root / "output_5ref" / "index.json"],
                  bundle_command("iexplain_teacher", configs + five + multi, None, nproc, **{**common, "data_list_key": [five_split]}),
                  summary=lambda: _infer_summary(root / "output_5ref")),
        ]
    # evaluation reads the test split's reference masks: the full datalist, not the weak one
    stages.append(Stage("teacher_evaluate", [root / "eval" / "teacher_metrics.json"],
                        bundle_command("iexplain_teacher", configs + ["evaluate.json"], None, 1, **evaluation),
                        summary=lambda: _evaluate_summary(root / "eval" / "teacher_metrics.json")))
    ceiling = run.profile.get("teacher_ceiling")
    if run.synthetic and ceiling:
        stages.append(_ceiling_stage(run, configs, {**classifier_settings(run), **t["overrides"]}, ceiling))
    return stages


def _ceiling_stage(run: PipelineRun, configs: list[str], overrides: dict[str, Any], ceiling: Any) -> Stage:
    """The teacher's ceiling (``scripts/teacher_ceiling.py``): the same teacher settings with an oracle classifier.

    The profile key ``teacher_ceiling`` is ``true`` or ``{"high_thresholds": [...]}`` (the candidates).
    """
    from custom.pipeline.run import REPO, cli_value

    out = run.path("teacher", "eval", "ceiling.json")
    args = ["--datalist", run.prepared / "datalist.json", "--masks_dir", run.cohort / "masks", "--out", out,
            "--configs", cli_value(configs), "--overrides", cli_value(overrides)]
    if isinstance(ceiling, dict) and ceiling.get("high_thresholds"):
        args += ["--high_thresholds", cli_value([float(h) for h in ceiling["high_thresholds"]])]

    def summary() -> str:
        result = json.loads(out.read_text())
        return ("oracle classifier: test filtered F1 {:.3f} (iteration 1 {:.3f}), unfiltered {:.3f}".format(
            *(result[k]["f1"] or 0.0 for k in ("best", "iteration1", "unfiltered"))))

    return Stage("teacher_ceiling", [out], python_command(REPO / "scripts" / "teacher_ceiling.py", *args), summary=summary)


def _infer_summary(output: Path) -> str:
    index = json.loads((output / "index.json").read_text())
    studies = index.get("studies", index) if isinstance(index, dict) else index
    return f"pseudo-labels for {len(studies)} studies in {output}"


def _evaluate_summary(path: Path) -> str:
    metrics = json.loads(path.read_text())
    run = metrics.get("runs", metrics).get("1", {})
    filtered = run.get("filtered") or run.get("table3", {}).get("filtered", {})
    return f"test: filtered F1 {filtered.get('f1', float('nan')):.3f}" if filtered else "test metrics written"


def _rates(counts: dict[str, Any] | None) -> dict[str, Any]:
    counts = counts or {}
    return {k: counts.get(k) for k in ("sensitivity", "ppv", "f1", "tp", "fp", "fn") if k in counts}


def _froc(froc: dict[str, Any] | None) -> dict[str, Any]:
    froc = froc or {}
    curve = froc.get("curve", {})
    return {"fp_per_study": curve.get("fp_per_study", []), "sensitivity": curve.get("sensitivity", []),
            "average_sensitivity": froc.get("average_sensitivity")}


def teacher_results(run: PipelineRun) -> dict[str, Any] | None:
    """The teacher's evaluation (Tables 2-3, Fig. 4, FROC) and cost, in the report's schema.

    Table 3 compares filtered and unfiltered masks at the best iteration, as the paper does (its
    Table 3 filtered rows equal its Table 2 best rows).
    """
    root = run.path("teacher")
    path = root / "eval" / "teacher_metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    stages = json.loads((run.work / "stages.json").read_text()) if (run.work / "stages.json").exists() else {}
    runs: dict[str, Any] = {}
    for references, evaluation in (metrics.get("runs") or metrics.get("settings") or {}).items():
        if not isinstance(evaluation, dict) or "table2" not in evaluation:
            continue
        best_round = evaluation["table3"].get("best_round", {})
        histogram = evaluation.get("rounds_histogram", {})
        infer = stages.get("teacher_infer" if references == "1" else "teacher_infer_5ref", {})
        runs[references] = {
            "per_round": [{"round": r["round"], **_rates(r.get("filtered"))} for r in evaluation.get("per_round", [])],
            "iteration1": _rates(evaluation["table2"].get("iteration_1")),
            "best": {"round": evaluation["table2"].get("best", {}).get("round"), **_rates(evaluation["table2"].get("best"))},
            "filtered": _rates(best_round.get("filtered")),
            "strict": _rates(best_round.get("strict_filtered")),
            "unfiltered": _rates(best_round.get("unfiltered")),
            "rounds_histogram": {**histogram.get("windows", {}), "unit": "windows"},
            "rounds_histogram_studies": histogram.get("studies", {}),
            "froc": _froc(evaluation.get("froc")),
            "n_studies": evaluation.get("n_studies"),
        }
        if infer.get("status") == "done" and infer.get("seconds"):
            runs[references]["stage_seconds"] = infer["seconds"]
    out: dict[str, Any] = {"runs": runs}
    calibration = root / "models" / "calibration.json"
    if calibration.exists():
        out["high_threshold"] = json.loads(calibration.read_text()).get("high_threshold")
    if "1" in runs:
        out["froc"] = runs["1"]["froc"]
    out["ceiling"] = _ceiling(run)
    return out


def _ceiling(run: PipelineRun) -> dict[str, Any]:
    """The teacher's ceiling (oracle classifier) in the report's schema, or ``{"reason": ...}``."""
    path = run.path("teacher", "eval", "ceiling.json")
    if not path.exists():
        if not run.synthetic:
            return {"reason": "needs the true embolus masks of the synthetic cohort"}
        return {"reason": "profile key teacher_ceiling is off" if not run.profile.get("teacher_ceiling") else f"{path} not found"}
    try:
        result = json.loads(path.read_text())
        return _ceiling_section(result)
    except (OSError, KeyError, TypeError, ValueError) as error:  # e.g. a file of an older layout
        return {"reason": f"{path}: cannot read it ({type(error).__name__}: {error}); delete it to compute it again"}


def _ceiling_section(result: dict[str, Any]) -> dict[str, Any]:
    test = result["test"]
    return {
        "high_threshold": result["high_threshold"],
        "iteration1": _rates(result["iteration1"]),
        "best": {"round": result["best"]["round"], **_rates(result["best"])},
        "filtered": _rates(result["filtered"]),
        "unfiltered": _rates(result["unfiltered"]),
        "unfiltered_iteration1": _rates(test["per_round"][0]["unfiltered"]),
        "size_filter_only": _rates(result["size_filter_only"]),
        "distance_filter_only": _rates(result["distance_filter_only"]),
        "strict": _rates(result["strict"]),
        "rounds_histogram": test["rounds_histogram"],
        "n_studies": test["n_studies"],
    }


def overlay_assets(run: PipelineRun, n_studies: int = 3) -> str | None:
    """Save the Fig. 2 analog arrays (study slice, reference, first iteration, final) of a few test studies."""
    from custom.explain.filtering import filter_clusters
    from custom.io.atomic import atomic_path
    from custom.io.nifti import read_volume

    output = run.path("teacher", "output")
    datalist = json.loads((run.prepared / "datalist.json").read_text())
    arrays: dict[str, Any] = {}
    count = 0
    settings = None
    for entry in datalist.get("test", []):
        uid = entry["study_uid"]
        round_path, pseudo_path = output / "round_maps" / f"{uid}.nii.gz", output / "pseudo" / f"{uid}.nii.gz"
        if not entry.get("label") or not round_path.exists() or not pseudo_path.exists():
            continue
        reference = read_volume(run.prepared / entry["label"])[0] > 0
        if not reference.any():
            continue
        if settings is None:
            summary = json.loads((output / "clusters" / f"{uid}.json").read_text())
            settings = summary.get("settings", {})
        round_map = read_volume(round_path)[0]
        final = read_volume(pseudo_path)[0] > 0
        first = filter_clusters(((round_map == 1)).astype(np.uint8), int(settings.get("min_cluster_voxels", 1)),
                                float(settings.get("max_center_distance_px", 1e9)))[0] > 0
        k = int(np.argmax(reference.sum(axis=(1, 2))))
        image = read_volume(run.prepared / entry["image"])[0]
        arrays.update({f"image_{count}": image[k].astype(np.float32), f"reference_{count}": reference[k].astype(np.uint8),
                       f"first_{count}": first[k].astype(np.uint8), f"final_{count}": final[k].astype(np.uint8),
                       f"title_{count}": np.array(f"{uid[-12:]} slice {k}")})
        count += 1
        if count == n_studies:
            break
    if not count:
        return None
    path = run.work / "report_assets" / "overlays.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return "report_assets/overlays.npz"
