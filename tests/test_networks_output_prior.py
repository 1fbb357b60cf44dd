"""Prior-probability initialisation of the student's output layer (Lin et al. 2017, section 4.1)."""
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DynUNet
from torch import nn

from custom.networks import set_foreground_prior

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "dynunet_student" / "configs"


def _dynunet(out_channels: int = 2) -> DynUNet:
    return DynUNet(3, 1, out_channels, [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [[2, 2, 2]] * 2,
                   filters=[4, 8, 16], norm_name="instance")


@pytest.mark.parametrize("prior", [0.01, 0.2])
def test_every_voxel_starts_at_the_prior(prior) -> None:
    torch.manual_seed(0)
    network = set_foreground_prior(_dynunet(), prior).eval()
    with torch.no_grad():
        probabilities = torch.softmax(network(torch.randn(2, 1, 16, 16, 8)), dim=1)
    assert probabilities[:, 1].mean().item() == pytest.approx(prior, rel=0.05)
    assert (probabilities[:, 1] - prior).abs().max().item() < 0.2 * prior


def test_default_initialisation_starts_near_one_half() -> None:
    """why the prior matters: without it the foreground starts at about 0.5 everywhere"""
    torch.manual_seed(0)
    network = set_foreground_prior(_dynunet(), None).eval()
    with torch.no_grad():
        probabilities = torch.softmax(network(torch.randn(2, 1, 16, 16, 8)), dim=1)
    assert 0.2 < probabilities[:, 1].mean().item() < 0.8


def test_several_foreground_classes_share_the_rest() -> None:
    network = set_foreground_prior(_dynunet(out_channels=3), 0.05)
    bias = network.output_block.conv.conv.bias.detach()
    assert torch.softmax(bias, 0).tolist() == pytest.approx([0.9, 0.05, 0.05])


@pytest.mark.parametrize("prior, match", [(0.0, "in \\(0, 1\\)"), (1.0, "in \\(0, 1\\)"), (float("nan"), "in \\(0, 1\\)"), (0.6, "no background")])
def test_bad_priors_are_refused(prior, match) -> None:
    with pytest.raises(ValueError, match=match):
        set_foreground_prior(_dynunet(out_channels=3) if prior == 0.6 else _dynunet(), prior)


def test_a_network_without_that_layer_is_named() -> None:
    with pytest.raises(ValueError, match="Sequential has no output layer 'output_block.conv.conv'"):
        set_foreground_prior(nn.Sequential(nn.Conv3d(1, 2, 1)), 0.01)
    with pytest.raises(ValueError, match="not a convolution with a bias"):
        set_foreground_prior(nn.Sequential(nn.Conv3d(1, 2, 1, bias=False)), 0.01, layer="0")


def test_the_student_config_applies_its_prior() -> None:
    """``foreground_prior`` in the bundle's config reaches the network, single- and multi-GPU alike"""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "demo.json")])
    parser["foreground_prior"] = 0.02
    network = parser.get_parsed_content("initialized_network")
    assert torch.softmax(network.output_block.conv.conv.bias.detach(), 0)[1].item() == pytest.approx(0.02)
    multi = ConfigParser.load_config_file(str(CONFIGS / "multi_gpu_train.json"))
    assert "@initialized_network" in multi["network"]["module"]
