"""benchmarks/analyse_false_clusters.py: regenerated studies, their sites, and the refusal of a foreign reference."""
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from custom.io.nifti import write_volume
from custom.synth import PhantomConfig, generate_study

REPO = Path(__file__).resolve().parents[1]
CONFIG = PhantomConfig(shape=(24, 64, 64), positive_rate=1.0)
SEED = 1  # study 0: two emboli, one unopacified vein stretch and two lymph nodes with voxels


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("analyse_false_clusters", REPO / "benchmarks" / "analyse_false_clusters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_dir(tmp_path: Path, bench, reference: np.ndarray | None = None) -> tuple[Path, dict, object]:
    study = generate_study(0, SEED, CONFIG)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(CONFIG).items()}
    cohort = {"seed": SEED, "config": config, "studies": [{"index": 0, "study_uid": "1.2.826.0.1"}]}
    labels = tmp_path / "prepared" / "labels"
    labels.mkdir(parents=True)
    write_volume(labels / "1.2.826.0.1.nii.gz", bench.box_reference(study) if reference is None else reference, study.affine(), np.uint8)
    prediction = np.zeros(study.mask.shape, dtype=np.float32)
    prediction[study.mask == 1] = 0.9  # a true detection: embolus 1
    nodes = [k for k, c in enumerate(study.confounders, start=1) if c["kind"] == "lymph_node" and c["voxels"]]
    prediction[study.mimic_mask == nodes[0]] = 0.8  # a false one on a lymph node
    prediction[0, 0:2, 0:2] = 0.7  # and one in the air outside the body
    (tmp_path / "pred").mkdir()
    write_volume(tmp_path / "pred" / "1.2.826.0.1_prob.nii.gz", prediction, study.affine())
    return tmp_path, cohort, study


def test_sites_of_true_and_false_detections(tmp_path, bench):
    work, cohort, study = _run_dir(tmp_path, bench)
    assert len(study.emboli) == 2
    assert not np.any(study.body_mask[0, 0:2, 0:2])
    result = bench.analyse(work / "pred", work / "prepared", cohort)
    assert result["studies"] == 1
    assert result["false_detections"] == {"lymph_node": 1, "outside": 1}
    assert sum(result["true_detections"].values()) == 1
    assert result["mimics_touched"]["lymph_node"] == {"touched": 1, "total": 2}
    assert result["mimics_touched"]["unopacified_vein"]["touched"] == 0
    assert result["emboli_touched"] == {"touched": 1, "total": 2}
    share = result["site_volume_share"]
    assert set(share) == set(bench.SITES) and sum(share.values()) == pytest.approx(1.0)
    assert 0 < share["lymph_node"] < share["tissue"] and share["lung"] > 0 and share["outside"] > 0
    row = bench.format_row("pred", result)
    assert row.startswith("| pred | 2 | ") and row.endswith("| 1/2 |")


def test_a_reference_the_cohort_does_not_reproduce_is_refused(tmp_path, bench):
    study = generate_study(0, SEED, CONFIG)
    work, cohort, _ = _run_dir(tmp_path, bench, reference=(study.mask > 0).astype(np.uint8))  # voxels, not boxes
    with pytest.raises(ValueError, match="does not reproduce"):
        bench.analyse(work / "pred", work / "prepared", cohort)
    cohort["studies"][0]["study_uid"] = "9.9"
    with pytest.raises(ValueError, match="not in the cohort"):
        bench.analyse(work / "pred", work / "prepared", cohort)


def test_site_volumes_give_each_voxel_to_its_first_region(bench):
    a = np.zeros((2, 2, 2), dtype=bool)
    b = np.zeros((2, 2, 2), dtype=bool)
    a[0] = True
    b[:, 0] = True  # overlaps a on 2 voxels, which a keeps
    assert bench.site_volumes({"a": a, "b": b}, "rest") == {"a": 4, "b": 2, "rest": 2}


def test_main_needs_a_cohort_record(tmp_path, bench):
    with pytest.raises(FileNotFoundError, match="cohort.json"):
        bench.main(work_dir=str(tmp_path))
