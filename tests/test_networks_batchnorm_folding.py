"""Batch norms folded into convolutions: same function, fewer modules, only where it is exact."""

from __future__ import annotations

import logging

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from custom.explain.integrated_gradients import IntegratedGradientsExplainer, integrated_gradients
from custom.networks import SliceClassifier, fold_batchnorm
from custom.networks.batchnorm_folding import _find_pairs, example_input


def _randomise_batchnorms(network: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking batch-norm statistics and affine parameters (fresh ones are almost the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.6 * torch.rand(n, generator=generator) - 0.3)
    return network.eval()


def _count(network: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in network.modules())


def test_folds_every_batchnorm_of_the_slice_classifier_and_keeps_the_function():
    torch.manual_seed(0)
    model = SliceClassifier("tf_efficientnetv2_b0", in_chans=7, feature_stage=2)
    nn.init.normal_(model.fc.weight, std=0.1)
    model = _randomise_batchnorms(model)
    n_norms = _count(model, nn.BatchNorm2d)
    folded = fold_batchnorm(model)
    assert n_norms == 10 and _count(folded, nn.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm2d) == n_norms  # the original is untouched
    assert isinstance(model.backbone.bn1, BatchNormAct2d) and isinstance(folded.backbone.bn1[1], nn.SiLU)  # activation kept
    x = torch.rand((3, 7, 96, 96), generator=torch.Generator().manual_seed(1))  # another size than the example's
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    # the IG of the folded network agrees with the IG of the original (completeness holds for both)
    reference = integrated_gradients(model, x, 0.0, n_steps=8)
    attributions = IntegratedGradientsExplainer(model, n_steps=8, channels_last=False)(x)
    assert torch.allclose(attributions, reference, rtol=1e-3, atol=1e-4 * float(reference.abs().max()))


class ConvReluThenNorm(nn.Module):
    """conv -> in-place ReLU -> BN: the batch norm reads the conv's output *tensor*, modified in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu_(self.conv(x))).amax(dim=(-2, -1))


class SharedOutput(nn.Module):
    """conv -> BN, with the conv's output also added back: folding would change the residual branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return (self.norm(features) + features).amax(dim=(-2, -1))


def test_in_place_change_between_conv_and_norm_is_not_folded():
    model = _randomise_batchnorms(ConvReluThenNorm())
    assert _find_pairs(model, example_input(model)) == []  # the tensor's version changed since the conv
    assert fold_batchnorm(model) is model


def test_a_fold_that_changes_the_output_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture):
    model = _randomise_batchnorms(SharedOutput())
    assert _find_pairs(model, example_input(model)) == [(model.conv, model.norm)]
    with caplog.at_level(logging.WARNING, logger="custom.networks.batchnorm_folding"):
        assert fold_batchnorm(model) is model
    assert "changed its output" in caplog.text and isinstance(model.norm, nn.BatchNorm2d)


def test_networks_without_batchnorm_are_returned_as_they_are():
    model = nn.Sequential(nn.Conv2d(7, 2, 3), nn.Flatten(), nn.LazyLinear(1))
    assert fold_batchnorm(model) is model
    with pytest.raises(ValueError, match="no convolution"):
        example_input(nn.Linear(3, 1))
    assert example_input(nn.Conv3d(2, 1, 3), size=8).shape == (1, 2, 8, 8, 8)


def test_folding_failures_fall_back_to_the_network(caplog: pytest.LogCaptureFixture):
    class TupleOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
            return self.norm(self.conv(x)), 1

    unreadable = nn.Sequential(nn.Linear(3, 4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))  # the first conv does not read the input
    with caplog.at_level(logging.WARNING, logger="custom.networks.batchnorm_folding"):
        assert fold_batchnorm(unreadable) is unreadable
        tuple_output = _randomise_batchnorms(TupleOutput())
        assert fold_batchnorm(tuple_output) is tuple_output
    assert "example pass failed" in caplog.text and "not one output tensor" in caplog.text


def test_the_factory_folds_once_and_its_teachers_share_the_folded_network():
    from custom.teacher import TeacherFactory

    classifier = _randomise_batchnorms(nn.Sequential(nn.Conv2d(7, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 1)))
    factory = TeacherFactory(classifier, 1.0, scale_to_grid=False)
    first, second = factory(32, 32), factory(40, 40)
    assert factory.classifier is not classifier and isinstance(factory.classifier[1], nn.Identity)
    assert first.explainer.network is factory.classifier and second.explainer.network is factory.classifier
    assert first.classifier is factory.classifier and isinstance(classifier[1], nn.BatchNorm2d)
