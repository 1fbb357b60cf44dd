"""Every bundle's ``configs/metadata.json`` against the repository's schema (MONAI bundle specification).

The official schema URL cannot be reached here, so ``verify_metadata`` gets ``--filepath`` to the
existing ``bundles/metadata_schema.json`` (an existing file is used as is, no download).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "bundles" / "metadata_schema.json"
BUNDLES = sorted(p.parent for p in (REPO / "bundles").glob("*/configs"))
METADATA = [b / "configs" / "metadata.json" for b in BUNDLES]
IDS = [b.name for b in BUNDLES]
# declared name -> installed distribution name
DISTRIBUTIONS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.match(r"[0-9]+(?:\.[0-9]+)*", version).group(0).split("."))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_bundles_are_found() -> None:
    assert {"classifier", "dynunet_student", "iexplain_teacher"} <= set(IDS)


@pytest.mark.parametrize("bundle", BUNDLES, ids=IDS)
def test_bundle_layout(bundle: Path) -> None:
    """The specification's required metadata file, plus the Model Zoo's README and LICENSE."""
    assert (bundle / "configs" / "metadata.json").is_file(), f"{bundle.name}: configs/metadata.json is missing"
    assert (bundle / "docs" / "README.md").is_file(), f"{bundle.name}: docs/README.md is missing"
    assert (bundle / "LICENSE").is_file(), f"{bundle.name}: LICENSE is missing"


@pytest.mark.parametrize("meta_file", METADATA, ids=IDS)
def test_verify_metadata_cli(meta_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta_file), "--filepath", str(SCHEMA_PATH)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "skipped downloading" in output and "metadata is verified with no error" in output


@pytest.mark.parametrize("meta_file", METADATA, ids=IDS)
def test_required_fields_and_versions(meta_file: Path) -> None:
    meta = _load(meta_file)
    assert meta["version"] in meta.get("changelog", {}), f"{meta_file}: the changelog has no entry for version {meta['version']}"
    for key, distribution in DISTRIBUTIONS.items():
        declared, installed = _release(meta[key]), _release(importlib.metadata.version(distribution))
        assert declared <= installed, f"{meta_file}: {key} {meta[key]} is newer than the installed {distribution}"
    required = meta.get("required_packages_version")
    assert required, f"{meta_file}: required_packages_version is missing or empty"
    for package, version in {**required, **meta["optional_packages_version"]}.items():
        installed = importlib.metadata.version(package)  # raises if the package is not installed
        assert _release(version) <= _release(installed), f"{meta_file}: {package} {version} > installed {installed}"
    formats = meta["network_data_format"]
    assert formats["inputs"] and formats["outputs"]
    for tensor in [*formats["inputs"].values(), *formats["outputs"].values()]:
        assert len(tensor["channel_def"]) == tensor["num_channels"], f"{meta_file}: channel_def does not match num_channels"


def _student_metadata() -> dict:
    return _load(REPO / "bundles" / "dynunet_student" / "configs" / "metadata.json")


def _broken_copies() -> list[tuple[str, dict]]:
    cases = []
    for key in ("version", "authors", "network_data_format", "optional_packages_version", "schema"):
        meta = _student_metadata()
        del meta[key]
        cases.append((f"without {key}", meta))
    meta = _student_metadata()
    meta["version"] = "1.0"
    cases.append(("version not semantic", meta))
    meta = _student_metadata()
    del meta["network_data_format"]["inputs"]["image"]["modality"]
    cases.append(("input without modality", meta))
    meta = _student_metadata()
    meta["network_data_format"]["outputs"]["pred"]["value_range"] = [0]
    cases.append(("value_range of one number", meta))
    meta = _student_metadata()
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"background": "0"}
    cases.append(("channel_def keyed by name", meta))
    meta = _student_metadata()
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [128, 0, 64]
    cases.append(("zero spatial size", meta))
    return cases


@pytest.mark.parametrize("case, meta", _broken_copies(), ids=[c for c, _ in _broken_copies()])
def test_schema_rejects_incomplete_metadata(case: str, meta: dict) -> None:
    schema = _load(SCHEMA_PATH)
    jsonschema.Draft7Validator.check_schema(schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, schema)


def test_verify_metadata_fails_on_bad_metadata(tmp_path) -> None:
    """The function behind the CLI, in-process (one subprocess less): incomplete metadata is an error."""
    from monai.bundle import verify_metadata

    meta = copy.deepcopy(_student_metadata())
    del meta["network_data_format"]["outputs"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outputs"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA_PATH))
