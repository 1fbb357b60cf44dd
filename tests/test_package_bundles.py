"""Bundle zips: Model Zoo layout, sha256 ``large_files.yml``, ``monai.bundle download`` from a ``file://`` URL.

The student bundle is packaged with a tiny randomly initialised checkpoint, downloaded with the
MONAI CLI, and its inference from the downloaded copy must equal the inference from the
repository's configs with the same checkpoint, voxel for voxel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, download_large_files

from custom.io.errors import InputError
from custom.io.nifti import read_volume, write_volume
from custom.io.hashing import sha256_of
from custom.packaging import package_bundle

REPO = Path(__file__).resolve().parents[1]
STUDENT = REPO / "bundles" / "dynunet_student"
VERSION = json.loads((STUDENT / "configs" / "metadata.json").read_text())["version"]
TINY = {"patch_size": "[64,64,32]", "network_filters": "[4,8,8,8,8,8]", "num_workers": "0"}
AFFINE = np.array([[-0.8, 0.0, 0.0, 10.0], [0.0, -0.8, 0.0, 20.0], [0.0, 0.0, 2.0, -50.0], [0.0, 0.0, 0.0, 1.0]])


def _cli(*args: str, cwd: Path, overrides: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", *args]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", value]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory) -> dict[str, Path]:
    """A random tiny student checkpoint (``models/model.pt``) and a one-study test datalist."""
    root = tmp_path_factory.mktemp("package")
    parser = ConfigParser()
    parser.read_config(str(STUDENT / "configs" / "inference.json"))
    parser["network_filters"] = json.loads(TINY["network_filters"])
    torch.manual_seed(1)
    network = parser.get_parsed_content("network_def")
    models = root / "models"
    models.mkdir()
    torch.save(network.state_dict(), models / "model.pt")
    data = root / "data"
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 300.0, (20, 40, 40)).astype(np.int16)
    write_volume(data / "images" / "study0.nii.gz", image, AFFINE)
    entry = {"image": "images/study0.nii.gz", "study_uid": "study0"}
    (data / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": [entry]}))
    return {"root": root, "models": models, "data": data}


def test_zip_layout_large_files_and_reproducibility(tiny_student, tmp_path) -> None:
    zip_path = package_bundle(STUDENT, tmp_path / "dist", tiny_student["models"], url_base="https://example.org/b")
    assert zip_path.name == f"dynunet_student_v{VERSION}.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        large_files = yaml.safe_load(archive.read("dynunet_student/large_files.yml"))
    assert {name.split("/")[0] for name in names} == {"dynunet_student"}
    for member in ("configs/metadata.json", "configs/inference.json", "docs/README.md", "LICENSE", "models/model.pt"):
        assert f"dynunet_student/{member}" in names
    assert not any("/output/" in name or "/logs/" in name for name in names)
    assert large_files == {
        "large_files": [
            {
                "path": "models/model.pt",
                "url": "https://example.org/b/models/model.pt",
                "hash_val": sha256_of(tiny_student["models"] / "model.pt"),
                "hash_type": "sha256",
            }
        ]
    }
    first = zip_path.read_bytes()
    assert package_bundle(STUDENT, tmp_path / "dist", tiny_student["models"], url_base="https://example.org/b") == zip_path
    assert zip_path.read_bytes() == first  # reproducible
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [zip_path.name]  # no temporary file left


def _toy_bundle(root: Path) -> tuple[Path, Path]:
    """A minimal bundle and a models folder with weights, a threshold file and a training resume state."""
    bundle = root / "toy_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "docs").mkdir()
    (bundle / "configs" / "metadata.json").write_text('{"version": "0.2.0"}')
    (bundle / "configs" / "inference.json").write_text("{}")
    (bundle / "docs" / "README.md").write_text("# toy\n")
    (bundle / "LICENSE").write_text("license\n")
    models = root / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"weights")
    (models / "threshold.json").write_text('{"threshold": 0.4}')
    (models / "checkpoint.pt").write_bytes(b"resume state")
    (models / "best_metric.json").write_text('{"metric": 0.9}')  # custom.handlers.BestModelRecord's record
    return bundle, models


def test_zip_members_have_the_fixed_date_and_leave_out_the_resume_state(tmp_path) -> None:
    bundle, models = _toy_bundle(tmp_path)
    zip_path = package_bundle(bundle, tmp_path / "dist", models)
    with zipfile.ZipFile(zip_path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        assert archive.read("toy_bundle/models/threshold.json") == b'{"threshold": 0.4}'
        large_files = yaml.safe_load(archive.read("toy_bundle/large_files.yml"))
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos), [info.date_time for info in infos]
    assert names[:-1] == sorted(names[:-1]) and names[-1] == "toy_bundle/large_files.yml"  # written last
    assert "toy_bundle/models/model.pt" in names and "toy_bundle/models/threshold.json" in names
    assert not any(name.endswith(("checkpoint.pt", "best_metric.json")) for name in names)
    assert [entry["path"] for entry in large_files["large_files"]] == ["models/model.pt"]  # JSON is not a large file
    first = zip_path.read_bytes()
    for path in [*bundle.rglob("*"), *models.iterdir()]:  # new modification times, same contents
        os.utime(path, (1_700_000_000, 1_700_000_000))
    package_bundle(bundle, tmp_path / "dist", models)
    assert zip_path.read_bytes() == first


def test_package_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(InputError, match="missing LICENSE"):
        (tmp_path / "broken" / "configs").mkdir(parents=True)
        (tmp_path / "broken" / "configs" / "metadata.json").write_text('{"version": "1.0"}')
        package_bundle(tmp_path / "broken", tmp_path / "dist")
    with pytest.raises(InputError, match="no model.pt or model.ts"):
        package_bundle(STUDENT, tmp_path / "dist", weights=tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "package_bundles.py"), "--bundles", "no_such_bundle", "--out_dir", str(tmp_path / "d")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 2 and "no bundle no_such_bundle" in result.stderr
    assert not (tmp_path / "d").exists()


def test_downloaded_bundle_infers_like_the_repository(tiny_student, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "package_bundles.py"), "--bundles", "dynunet_student",
         "--out_dir", str(tmp_path / "dist"), "--weights", json.dumps({"dynunet_student": str(tiny_student["models"])})],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    zip_path = tmp_path / "dist" / f"dynunet_student_v{VERSION}.zip"
    assert f"wrote {zip_path}" in result.stdout

    downloads = tmp_path / "downloads"
    result = _cli("download", "--name", "dynunet_student", "--url", zip_path.as_uri(), "--bundle_dir", str(downloads),
                  "--progress", "False", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = downloads / "dynunet_student"
    assert (bundle / "models" / "model.pt").read_bytes() == (tiny_student["models"] / "model.pt").read_bytes()
    download_large_files(bundle_path=str(bundle))  # the hash matches: nothing to fetch, no error

    overrides = {**TINY, "dataset_dir": str(tiny_student["data"])}
    result = _cli("run", "--config_file", str(bundle / "configs" / "inference.json"), cwd=tmp_path, overrides=overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    repo_out = tmp_path / "repo_output"
    result = _cli("run", "--config_file", str(STUDENT / "configs" / "inference.json"), cwd=tmp_path,
                  overrides={**overrides, "ckpt_dir": str(tiny_student["models"]), "output_dir": str(repo_out)})
    assert result.returncode == 0, result.stderr[-3000:]

    downloaded, _ = read_volume(bundle / "output" / "study0_prob.nii.gz")
    repository, _ = read_volume(repo_out / "study0_prob.nii.gz")
    assert downloaded.shape == (20, 40, 40)
    assert float(downloaded.std()) > 1e-4  # a real, non-constant prediction is compared
    np.testing.assert_array_equal(downloaded, repository)

    (bundle / "models" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="hash check"):  # monai HashCheckError
        download_large_files(bundle_path=str(bundle))
