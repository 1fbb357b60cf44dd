"""torch.compile of a frozen network: same results as eager, frozen weights, one wrapper per network, eager fallback."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from custom.compilation import CompiledNetwork, compile_frozen
from custom.explain.integrated_gradients import IntegratedGradientsExplainer


class SmallClassifier(nn.Module):
    """conv-BN-SiLU-conv, global max pool, linear: the elementwise chain that TorchInductor fuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(7, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv2(nn.functional.silu(self.bn(self.conv1(x))))
        return self.fc(torch.amax(features, dim=(-2, -1)))


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    model = SmallClassifier()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_compile_frozen_freezes_and_reuses_the_wrapper():
    model = _classifier().train()
    compiled = compile_frozen(model)
    assert isinstance(compiled, CompiledNetwork) and compiled.network is model
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert compile_frozen(model) is compiled  # a second teacher of the same classifier compiles nothing new
    assert compile_frozen(compiled) is compiled
    assert set(compiled.state_dict()) == {f"network.{key}" for key in model.state_dict()}


def test_falls_back_to_eager_when_compiling_fails(caplog):
    model = _classifier()
    wrapper = CompiledNetwork(model)

    def failing(*args, **kwargs):
        raise RuntimeError("InductorError: no working C++ compiler\nlong traceback")

    wrapper._compiled = failing
    x = torch.rand(2, 7, 16, 16)
    with caplog.at_level("WARNING", logger="custom.compilation"):
        out = wrapper(x)
    assert torch.equal(out, model(x))
    assert not wrapper.is_compiled
    assert wrapper.fallback_reason == "RuntimeError: InductorError: no working C++ compiler"
    assert "running SmallClassifier eagerly" in caplog.text
    assert torch.equal(wrapper(x), model(x))  # stays eager, no second attempt


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="TorchInductor on CPU needs a C++ compiler")
def test_compiled_integrated_gradients_equal_eager():
    x = torch.rand(3, 7, 24, 24, generator=torch.Generator().manual_seed(1))
    eager = IntegratedGradientsExplainer(_classifier(), n_steps=6, max_batch=8, channels_last=False)(x)
    explainer = IntegratedGradientsExplainer(_classifier(), n_steps=6, max_batch=8, channels_last=False, compile=True)
    compiled = explainer(x)  # 18 items in chunks of 8, 8, 2: the batch-size change recompiles once
    assert isinstance(explainer.model, CompiledNetwork) and explainer.model.is_compiled, explainer.model.fallback_reason
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-6 * float(eager.abs().max()))
    assert float(eager.abs().max()) > 0


def test_teacher_compiles_the_ig_passes_only_when_asked():
    from custom.explain.teacher import IExplainTeacher

    model = _classifier()
    eager = IExplainTeacher(model, high_threshold=1.0, channels_last=False)
    assert eager.explainer.model is model and all(p.requires_grad for p in model.parameters())
    compiled = IExplainTeacher(model, high_threshold=1.0, channels_last=False, compile=True)
    assert isinstance(compiled.explainer.model, CompiledNetwork) and compiled.explainer.model.network is model
    assert compiled.classifier is model  # forward-only probability passes stay eager
