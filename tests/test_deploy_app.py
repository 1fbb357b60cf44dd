"""The deploy app (``deploy/app.py``) on a synthetic DICOM study with a tiny random student.

The student's final bias is shifted so about 1 % of the voxels pass the threshold (a non-empty,
non-trivial mask). The DICOM SEG must read with pydicom and highdicom, reference the source
series, and line up with it slice by slice (each frame's source instance and position) and in
patient coordinates (the findings' centroids). The bundle folder and its TorchScript export must
give the same findings. Bad input must exit 2 with a message naming the problem and leave no output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from pydicom.uid import SegmentationStorage

from custom.deploy import load_student, predict_probability, write_dicom_seg
from custom.io.errors import InputError
from custom.io.dicom import read_ct_series
from custom.synth.phantom import PhantomConfig
from custom.synth.writer import write_study
from custom.transforms import remove_unenhanced_clusters

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "deploy" / "app.py"
TINY = {"patch_size": [64, 64, 32], "network_filters": [4, 8, 8, 8, 8, 8], "sw_batch_size": 1}
ENV = dict(os.environ, OMP_NUM_THREADS="1")
STUDENT_VERSION = json.loads((REPO / "bundles" / "dynunet_student" / "configs" / "metadata.json").read_text())["version"]


def _run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict[str, Path]:
    """A 24x64x64 synthetic study, a tiny student bundle and its TorchScript export, and the app's outputs for both."""
    root = tmp_path_factory.mktemp("deploy")
    record = json.loads(write_study(root / "cohort", 0, 0, PhantomConfig(shape=(24, 64, 64), positive_rate=1.0)).read_text())
    study = root / "cohort" / "train" / record["study"]["study_uid"]
    bundle = root / "dynunet_student"
    shutil.copytree(REPO / "bundles" / "dynunet_student" / "configs", bundle / "configs")
    tiny = root / "tiny.json"
    tiny.write_text(json.dumps(TINY))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(tiny)])
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    with torch.no_grad():
        network.output_block.conv.conv.bias[1] -= 10.0  # PE only where the random logits disagree strongly
    (bundle / "models").mkdir()
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    export = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(root / "student.ts"),
         "--ckpt_file", str(bundle / "models" / "model.pt"), "--meta_file", str(bundle / "configs" / "metadata.json"),
         "--config_file", str(bundle / "configs" / "inference.json"), "--network_filters", json.dumps(TINY["network_filters"])],
        cwd=root, capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    outputs = {}
    for name, model in (("bundle", bundle), ("torchscript", root / "student.ts")):
        result = _run_app("-i", str(study), "-o", str(root / f"out_{name}"), "-m", str(model), "--config", str(tiny), cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = root / f"out_{name}"
    return {"root": root, "study": study, "record": record, **outputs}


def _source_slices(study: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in study.rglob("*.dcm"))}


def _seg_volume(seg: pydicom.Dataset, sources: dict[str, pydicom.Dataset]) -> tuple[np.ndarray, list[str]]:
    """The SEG as a (Z, Y, X) mask in source order along the slice normal, and that SOP order."""
    first = next(iter(sources.values()))
    normal = np.cross(np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float))
    order = sorted(sources, key=lambda uid: float(np.dot(np.asarray(sources[uid].ImagePositionPatient, float), normal)))
    volume = np.zeros((len(order), int(first.Rows), int(first.Columns)), dtype=np.uint8)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        sop = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, np.asarray(sources[sop].ImagePositionPatient, float), atol=1e-3)
        identification = item if "SegmentIdentificationSequence" in item else shared  # shared when one segment
        assert identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        volume[order.index(sop)] = frame
    return volume, order


def test_seg_references_the_series_and_lines_up_slice_by_slice(deployed) -> None:
    out, record = deployed["bundle"], deployed["record"]
    assert sorted(p.name for p in out.iterdir()) == ["findings.json", "pe_seg.dcm"]  # no staging folder left
    seg = pydicom.dcmread(out / "pe_seg.dcm")
    assert seg.SOPClassUID == SegmentationStorage and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == record["study"]["study_uid"]
    assert seg.FrameOfReferenceUID == record["study"]["frame_of_reference_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == record["study"]["series_uid"]
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Embolus" and segment.SegmentAlgorithmType == "AUTOMATIC"
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("55584005", "SCT")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert hd.seg.segread(out / "pe_seg.dcm").get_segment_description(1).segment_label == "Embolus"

    sources = _source_slices(deployed["study"])
    volume, order = _seg_volume(seg, sources)
    findings = json.loads((out / "findings.json").read_text())
    assert 0 < volume.sum() < 0.1 * volume.size
    assert int(seg.NumberOfFrames) == int(volume.any(axis=(1, 2)).sum())  # one frame per slice with voxels
    assert volume.sum() == sum(c["voxels"] for c in findings["clusters"])
    for cluster in findings["clusters"]:
        first, last = cluster["slice_range"]
        assert cluster["slice_sop_uids"] == [order[first], order[last]]
        assert volume[first].any() and volume[last].any()


def test_findings_are_in_patient_coordinates(deployed) -> None:
    findings = json.loads((deployed["bundle"] / "findings.json").read_text())
    for key in ("study_uid", "series_uid", "study_pe_probability", "pe_detected", "n_clusters", "clusters", "model", "seg_file"):
        assert key in findings
    assert findings["series_uid"] == deployed["record"]["study"]["series_uid"] and findings["pe_detected"]
    clusters = findings["clusters"]
    assert findings["n_clusters"] == len(clusters) > 0
    assert findings["study_pe_probability"] == max(c["max_probability"] for c in clusters)
    for cluster in clusters:
        assert {"centroid_lps_mm", "volume_ml", "max_probability", "slice_range"} <= set(cluster)
        assert cluster["volume_ml"] == pytest.approx(cluster["voxels"] * findings["voxel_volume_ml"])
        assert findings["threshold"] <= cluster["max_probability"] <= 1.0

    # the voxel-weighted mean of the cluster centroids is the centroid of the SEG's voxels, computed
    # here independently from each frame's ImagePositionPatient, ImageOrientationPatient and PixelSpacing
    sources = _source_slices(deployed["study"])
    volume, order = _seg_volume(pydicom.dcmread(deployed["bundle"] / "pe_seg.dcm"), sources)
    points = []
    for k, rows, cols in zip(*np.nonzero(volume)):
        ds = sources[order[k]]
        iop = np.asarray(ds.ImageOrientationPatient, float)
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        points.append(np.asarray(ds.ImagePositionPatient, float) + iop[:3] * col_spacing * cols + iop[3:] * row_spacing * rows)
    weights = np.array([c["voxels"] for c in clusters], float)
    mean_centroid = (np.array([c["centroid_lps_mm"] for c in clusters]) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(mean_centroid, np.mean(points, axis=0), atol=0.05)


def test_torchscript_export_gives_the_same_findings(deployed) -> None:
    bundle = json.loads((deployed["bundle"] / "findings.json").read_text())
    scripted = json.loads((deployed["torchscript"] / "findings.json").read_text())
    assert scripted["model"]["kind"] == "torchscript" and bundle["model"]["kind"] == "bundle"
    assert scripted["model"]["version"] == bundle["model"]["version"] == STUDENT_VERSION
    assert [c["voxels"] for c in scripted["clusters"]] == [c["voxels"] for c in bundle["clusters"]]
    assert [c["slice_range"] for c in scripted["clusters"]] == [c["slice_range"] for c in bundle["clusters"]]
    np.testing.assert_allclose([c["max_probability"] for c in scripted["clusters"]],
                               [c["max_probability"] for c in bundle["clusters"]], atol=1e-5)
    seg_bundle = pydicom.dcmread(deployed["bundle"] / "pe_seg.dcm").pixel_array
    np.testing.assert_array_equal(pydicom.dcmread(deployed["torchscript"] / "pe_seg.dcm").pixel_array, seg_bundle)


def _load_app():
    spec = importlib.util.spec_from_file_location("pe_deploy_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _bad_no_ct(study: Path, target: Path) -> str:
    target.mkdir()
    for index, path in enumerate(sorted(study.rglob("*.dcm"))[:3]):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(target / f"mr{index}.dcm")
    return "no CT image series"


def _bad_corrupt(study: Path, target: Path) -> str:
    shutil.copytree(study, target)
    victim = sorted(target.rglob("*.dcm"))[5]
    victim.write_bytes(victim.read_bytes()[:200])
    return victim.name


def _bad_mixed(study: Path, target: Path) -> str:
    shutil.copytree(study, target)
    victim = sorted(target.rglob("*.dcm"))[7]
    ds = pydicom.dcmread(victim)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(victim)
    return "mixed orientation"


@pytest.mark.parametrize("make_bad", [_bad_no_ct, _bad_corrupt, _bad_mixed], ids=["no_ct", "corrupt_file", "mixed_series"])
def test_bad_input_exits_2_and_writes_nothing(deployed, tmp_path, capsys, make_bad) -> None:
    expected = make_bad(deployed["study"], tmp_path / "input")
    fresh, existing = tmp_path / "fresh_out", tmp_path / "existing_out"
    existing.mkdir()
    (existing / "keep.txt").write_text("earlier result")
    app = _load_app()
    for out in (fresh, existing):
        status = app.main(["-i", str(tmp_path / "input"), "-o", str(out), "-m", str(deployed["root"] / "student.ts")])
        message = capsys.readouterr().err
        assert status == 2 and expected in message and message.startswith("pe-app: ")
    assert not fresh.exists()
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_bad_model_is_named(deployed, tmp_path, capsys) -> None:
    app = _load_app()
    empty = tmp_path / "empty_models"
    empty.mkdir()
    status = app.main(["-i", str(deployed["study"]), "-o", str(tmp_path / "out"), "-m", str(empty)])
    assert status == 2 and "expected one bundle folder or one .ts file inside, found none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_negative_study_seg_keeps_every_frame(deployed, tmp_path) -> None:
    series = read_ct_series(deployed["study"])
    seg = pydicom.dcmread(write_dicom_seg(np.zeros(series.volume_zyx.shape, bool), series, tmp_path / "negative.dcm", "0.1.0"))
    assert int(seg.NumberOfFrames) == series.n_slices and not seg.pixel_array.any()


def test_contrast_filter_follows_the_bundle_config(deployed, tmp_path) -> None:
    """``contrast_min_share`` in the bundle's config turns the contrast filter on in the deployed model too."""
    series = read_ct_series(deployed["study"])
    tiny = deployed["root"] / "tiny.json"
    plain = load_student(deployed["root"] / "dynunet_student", [tiny])
    override = tmp_path / "contrast.json"
    override.write_text(json.dumps({"contrast_min_share": 0.3}))
    filtered = load_student(deployed["root"] / "dynunet_student", [tiny, override])
    assert plain.contrast_min_share == 0.0 and filtered.describe()["contrast_min_share"] == 0.3
    raw = predict_probability(plain, series.volume_zyx)
    expected, shares = remove_unenhanced_clusters(raw, series.volume_zyx, filtered.threshold, filtered.contrast_hu, 0.3)
    assert (shares < 0.3).any()  # the random student's detections in grey tissue go
    np.testing.assert_array_equal(predict_probability(filtered, series.volume_zyx), expected)


def test_app_is_a_monai_deploy_sdk_application_with_the_operator_chain(tmp_path):
    """The app is composed with the MONAI Deploy App SDK: Application + Operators wired by add_flow."""
    from monai.deploy.core import Application, Operator

    app_module = _load_app()
    app = app_module.PESegmentationApp(tmp_path / "model.ts")
    assert isinstance(app, Application)
    graph = app.graph
    roots = list(graph.get_root_operators())
    assert [type(op).__name__ for op in roots] == ["DicomLoaderOperator"]
    chain, op = [], roots[0]
    while True:
        chain.append(type(op).__name__)
        following = [o for o in graph.gen_next_operators(op) if o is not None]
        if len(following) != 1:
            break
        op = following[0]
    assert chain == ["DicomLoaderOperator", "CTSeriesSelectorOperator", "SeriesVolumeOperator", "StudentInferenceOperator"]
    leaves = sorted(type(o).__name__ for o in following)
    assert leaves == ["DicomSegWriterOperator", "FindingsWriterOperator"]
    assert all(isinstance(o, Operator) for o in [*roots, *following])


def test_calibrated_threshold_beside_the_weights_is_used(deployed, tmp_path) -> None:
    """A ``threshold.json`` next to ``model.pt`` (bundle) or the ``.ts`` file sets the deployed threshold."""
    tiny = deployed["root"] / "tiny.json"
    bundle = tmp_path / "dynunet_student"
    shutil.copytree(deployed["root"] / "dynunet_student", bundle)
    scripted = tmp_path / "export" / "model.ts"
    scripted.parent.mkdir()
    shutil.copy(deployed["root"] / "student.ts", scripted)
    assert load_student(bundle, [tiny]).threshold == load_student(scripted).threshold == 0.5
    for folder in (bundle / "models", scripted.parent):
        (folder / "threshold.json").write_text(json.dumps({"threshold": 0.8, "calibrated": True}))
    assert load_student(bundle, [tiny]).threshold == load_student(scripted).threshold == 0.8
    (bundle / "models" / "threshold.json").write_text(json.dumps({"threshold": 1.5}))
    with pytest.raises(InputError, match="threshold.json: threshold 1.5 is not in"):
        load_student(bundle, [tiny])


@pytest.mark.parametrize("window, message", [([100, -400], "window width must be > 0"), ([100], r"window must be \[centre, width\]")])
def test_a_bad_window_is_refused_at_load_naming_the_model(deployed, tmp_path, window, message) -> None:
    """As the bundle's inference refuses it (``custom.transforms.hu_window_bounds``); an ``InputError``, so the app exits 2."""
    override = tmp_path / "window.json"
    override.write_text(json.dumps({"window": window}))
    with pytest.raises(InputError, match=f"dynunet_student: {message}"):
        load_student(deployed["root"] / "dynunet_student", [deployed["root"] / "tiny.json", override])

