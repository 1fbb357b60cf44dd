"""Where detections fall on the synthetic cohort (custom.synth.sites and benchmarks/analyse_false_clusters.py):
regenerated studies, their sites, the chance level, and the refusal of a foreign reference."""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from custom.io.nifti import write_volume
from custom.synth import PhantomConfig, generate_study
from custom.synth.sites import SITES, analyse_predictions, box_reference, site_volumes

REPO = Path(__file__).resolve().parents[1]
CONFIG = PhantomConfig(shape=(24, 64, 64), positive_rate=1.0)
SEED = 1  # study 0: two emboli, one unopacified vein stretch and two lymph nodes with voxels
UID = "1.2.826.0.1"


@pytest.fixture(scope="module")
def study():
    return generate_study(0, SEED, CONFIG)


def _cohort() -> dict:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(CONFIG).items()}
    return {"seed": SEED, "config": config, "studies": [{"index": 0, "study_uid": UID}]}


def _run_dir(tmp_path: Path, study, reference: np.ndarray | None = None) -> Path:
    """A pipeline-run folder: cohort record, datalist, reference mask, and one prediction folder ``pred``."""
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "cohort.json").write_text(json.dumps(_cohort()))
    labels = tmp_path / "prepared" / "labels"
    labels.mkdir(parents=True)
    (tmp_path / "prepared" / "datalist.json").write_text(json.dumps({"test": [{"study_uid": UID, "label": f"labels/{UID}.nii.gz"}], "training": []}))
    write_volume(labels / f"{UID}.nii.gz", box_reference(study) if reference is None else reference, study.affine(), np.uint8)
    prediction = np.zeros(study.mask.shape, dtype=np.float32)
    prediction[study.mask == 1] = 0.9  # a true detection: embolus 1
    nodes = [k for k, c in enumerate(study.confounders, start=1) if c["kind"] == "lymph_node" and c["voxels"]]
    prediction[study.mimic_mask == nodes[0]] = 0.8  # a false one on a lymph node
    prediction[0, 0:2, 0:2] = 0.7  # and one in the air outside the body
    (tmp_path / "pred").mkdir()
    write_volume(tmp_path / "pred" / f"{UID}_prob.nii.gz", prediction, study.affine())
    return tmp_path


def test_sites_of_true_and_false_detections(tmp_path, study):
    work = _run_dir(tmp_path, study)
    assert len(study.emboli) == 2 and not np.any(study.body_mask[0, 0:2, 0:2])
    result = analyse_predictions({"model": work / "pred", "again": work / "pred"}, work / "prepared" / "labels", _cohort())
    assert result["n_studies"] == 1 and result["sites"] == list(SITES)
    model = result["models"]["model"]
    assert model == result["models"]["again"]
    assert {k: v for k, v in model["false_detections"].items() if v} == {"lymph_node": 1, "outside": 1}
    assert sum(model["true_detections"].values()) == 1
    assert model["mimics_touched"]["lymph_node"] == {"touched": 1, "total": 2}
    assert model["mimics_touched"]["unopacified_vein"]["touched"] == 0
    assert model["mimics_touched"]["flow_artifact"] == {"touched": 0, "total": 0}
    assert model["emboli_touched"] == {"touched": 1, "total": 2}
    share = result["volume_share"]
    assert set(share) == set(SITES) and sum(share.values()) == pytest.approx(1.0)
    assert 0 < share["lymph_node"] < share["tissue"] and share["lung"] > 0 and share["outside"] > 0
    # a split without the study leaves nothing to analyse
    assert analyse_predictions({"model": work / "pred"}, work / "prepared" / "labels", _cohort(), uids=[])["n_studies"] == 0


def test_a_reference_the_cohort_does_not_reproduce_is_refused(tmp_path, study):
    work = _run_dir(tmp_path, study, reference=(study.mask > 0).astype(np.uint8))  # voxels, not boxes
    with pytest.raises(ValueError, match="does not reproduce"):
        analyse_predictions({"model": work / "pred"}, work / "prepared" / "labels", _cohort())
    cohort = _cohort()
    cohort["studies"][0]["study_uid"] = "9.9"
    with pytest.raises(ValueError, match="not in the cohort"):
        analyse_predictions({"model": work / "pred"}, work / "prepared" / "labels", cohort)


def test_site_volumes_give_each_voxel_to_its_first_region():
    a = np.zeros((2, 2, 2), dtype=bool)
    b = np.zeros((2, 2, 2), dtype=bool)
    a[0] = True
    b[:, 0] = True  # overlaps a on 2 voxels, which a keeps
    assert site_volumes({"a": a, "b": b}, "rest") == {"a": 4, "b": 2, "rest": 2}


def test_the_command_prints_the_table(tmp_path, study, capsys):
    spec = importlib.util.spec_from_file_location("analyse_false_clusters", REPO / "benchmarks" / "analyse_false_clusters.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    work = _run_dir(tmp_path, study)
    bench.main(work_dir=str(work), pred_dirs="pred", results=str(tmp_path / "sites.jsonl"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].startswith("| share of the volume (1 studies) |")
    assert lines[3].startswith("| pred | 2 | ") and lines[3].endswith("| 1/2 |")
    assert json.loads((tmp_path / "sites.jsonl").read_text())["split"] == "test"
    with pytest.raises(ValueError, match="no split 'validation'"):
        bench.main(work_dir=str(work), pred_dirs="pred", split="validation")
    with pytest.raises(FileNotFoundError, match="cohort.json"):
        bench.main(work_dir=str(tmp_path / "nowhere"))


def test_the_pipeline_results_carry_the_sites_of_its_models(tmp_path, study):
    from types import SimpleNamespace

    from custom.pipeline.results import false_detection_sites

    work = _run_dir(tmp_path, study)
    run = SimpleNamespace(synthetic=True, cohort=work / "cohort", prepared=work / "prepared", path=lambda *parts: work.joinpath(*parts))
    assert false_detection_sites(run) == {"reason": "no test predictions with reference masks"}
    (work / "student").mkdir()
    (work / "pred").rename(work / "student" / "output")
    result = false_detection_sites(run)
    assert set(result["models"]) == {"student"} and result["n_studies"] == 1
    assert result["models"]["student"]["false_detections"]["lymph_node"] == 1
    (work / "prepared" / "labels" / f"{UID}.nii.gz").unlink()
    write_volume(work / "prepared" / "labels" / f"{UID}.nii.gz", (study.mask > 0).astype(np.uint8), study.affine())
    assert "does not reproduce" in false_detection_sites(run)["reason"]  # the report says why; results still written
    assert "synthetic" in false_detection_sites(SimpleNamespace(synthetic=False))["reason"]
