"""TorchScript export of the classifier and the student with ``python -m monai.bundle ckpt_export``.

Each bundle gets a tiny randomly initialised checkpoint; the exported ``.ts`` must load with
``torch.jit.load`` (and MONAI's ``load_net_with_metadata``, which also returns the bundle metadata
and the embedded config) and give the checkpoint network's outputs. The student's DynUNet is
scripted; the timm classifier is traced (``--use_trace True``: timm's ``forward_intermediates``
does not script), so it is checked on an input shape other than the tracing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

REPO = Path(__file__).resolve().parents[1]


def _export(bundle: str, tmp_path: Path, overrides: dict[str, str], *extra: str) -> Path:
    configs = REPO / "bundles" / bundle / "configs"
    filepath = tmp_path / f"{bundle}.ts"
    command = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(filepath), "--ckpt_file", str(tmp_path / "model.pt"),
        "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.json"), *extra,
    ]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return filepath


def _network(bundle: str, overrides: dict[str, str]) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = json.loads(value)
    return parser.get_parsed_content("network_def")


def _check_metadata(filepath: Path, bundle: str) -> None:
    _, meta, extra = load_net_with_metadata(str(filepath), more_extra_files=("inference.json",))
    metadata = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] == metadata["version"] and meta["name"] == metadata["name"]
    assert json.loads(extra["inference.json"]) == json.loads((REPO / "bundles" / bundle / "configs" / "inference.json").read_text())


def test_student_export_scripts_and_matches_the_checkpoint(tmp_path) -> None:
    overrides = {"network_filters": "[4,8,8,8,8,8]"}
    torch.manual_seed(0)
    network = _network("dynunet_student", overrides).eval()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    filepath = _export("dynunet_student", tmp_path, overrides)

    exported = torch.jit.load(str(filepath))
    assert isinstance(exported, torch.jit.ScriptModule)
    fresh = _network("dynunet_student", overrides).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        expected, actual = fresh(x), exported(x)
    assert actual.shape == (1, 2, 64, 64, 32)
    assert float(expected.std()) > 1e-4
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    _check_metadata(filepath, "dynunet_student")


def test_classifier_export_traces_and_matches_the_checkpoint(tmp_path) -> None:
    overrides = {"model_name": '"tf_efficientnetv2_b0"', "feature_stage": "1"}
    torch.manual_seed(0)
    network = _network("classifier", overrides).eval()
    torch.nn.init.normal_(network.fc.weight, std=0.5)  # the head starts at zero: make the output depend on the input
    torch.nn.init.normal_(network.fc.bias, std=0.5)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    filepath = _export("classifier", tmp_path, {"model_name": "tf_efficientnetv2_b0", "feature_stage": "1"},
                       "--use_trace", "True", "--input_shape", "[1,7,64,64]")

    exported = torch.jit.load(str(filepath))
    fresh = _network("classifier", overrides).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.rand(3, 7, 96, 80)  # another batch size and slice size than the tracing input
    with torch.no_grad():
        expected, actual = fresh(x), exported(x)
    assert actual.shape == (3, 1)
    assert float(expected.std()) > 1e-4
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    _check_metadata(filepath, "classifier")


def test_export_without_checkpoint_fails_clearly(tmp_path) -> None:
    with pytest.raises(AssertionError, match="Checkpoint file"):
        _export("dynunet_student", tmp_path, {"network_filters": "[4,8,8,8,8,8]"})
