"""The student's configs refuse a patch_size the DynUNet cannot take, naming the sizes that would work."""

import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DynUNet

from custom.networks import check_dynunet_patch_size

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "dynunet_student" / "configs"
SMALL = {"bundle_root": "/b", "device": "$torch.device('cpu')", "network_filters": [2, 2, 2, 2, 2, 2]}


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    parser.update({**SMALL, **overrides})
    return parser


@pytest.mark.parametrize("names", [("train.json",), ("train.json", "demo.json"), ("inference.json",)])
def test_default_patch_sizes_fit_and_run(names):
    parser = _parser(*names)
    network = parser.get_parsed_content("network")
    patch = parser.get_parsed_content("patch_size")
    with torch.no_grad():
        assert network(torch.zeros(1, 1, *patch)).shape == (1, 2, *patch)


@pytest.mark.parametrize("names", [("train.json",), ("inference.json",)])
def test_a_patch_size_off_the_strides_is_refused_when_the_network_is_built(names):
    """[128, 128, 40]: 40 is not a multiple of the z strides' product 16. Before, the network was built and
    the run failed at its first forward pass with ``Sizes of tensors must match``."""
    parser = _parser(*names, patch_size=[128, 128, 40])
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of the expression it evaluates
        parser.get_parsed_content("network")
    message = str(raised.value.__cause__ or raised.value)
    assert re.search(r"patch_size \[128, 128, 40\] does not fit the DynUNet.*\[32, 32, 16\].*e\.g\. \[128, 128, 48\]", message), message


def test_check_reads_the_strides_per_axis():
    network = DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, [2, 2, 1], 2], upsample_kernel_size=[[2, 2, 1], 2])
    assert check_dynunet_patch_size(network, [8, 8, 4]) is network  # totals 4, 4, 2
    with torch.no_grad():
        network(torch.zeros(1, 1, 8, 8, 4))
    with pytest.raises(ValueError, match=r"multiple of its total stride \[4, 4, 2\]"):
        check_dynunet_patch_size(network, [8, 8, 3])
    for bad in ([8, 8], [8, 8, 0], [8, 8.0, 4], "8,8,4"):
        with pytest.raises(ValueError, match="patch_size must be 3 positive integers"):
            check_dynunet_patch_size(network, bad)
