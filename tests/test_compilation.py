"""torch.compile of a frozen network: same results as eager, frozen weights, one wrapper per network, eager fallback."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from torch._inductor.exc import InductorError

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


def _compiler_error(text: str) -> InductorError:
    return InductorError(RuntimeError(text), None)


def test_falls_back_to_eager_when_compiling_fails(caplog):
    model = _classifier()
    wrapper = CompiledNetwork(model)

    def failing(*args, **kwargs):
        raise _compiler_error("no working C++ compiler")

    wrapper.__dict__["_compiled"] = failing
    x = torch.rand(2, 7, 16, 16)
    with caplog.at_level("WARNING", logger="custom.compilation"):
        out = wrapper(x)
    assert torch.equal(out, model(x))
    assert not wrapper.is_compiled
    assert wrapper.fallback_reason.startswith("InductorError: ") and "no working C++ compiler" in wrapper.fallback_reason
    assert "running SmallClassifier eagerly" in caplog.text
    assert torch.equal(wrapper(x), model(x))  # stays eager, no second attempt


def test_other_errors_propagate_and_keep_the_compiled_path():
    wrapper = CompiledNetwork(_classifier())

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    wrapper.__dict__["_compiled"] = out_of_memory
    with pytest.raises(RuntimeError, match="out of memory"):
        wrapper(torch.rand(2, 7, 16, 16))
    assert wrapper.is_compiled and wrapper.fallback_reason is None


class _BackwardFails(torch.autograd.Function):
    """Identity whose backward raises a compiler error, like a lazily compiled backward that fails."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise _compiler_error("backward graph failed to compile")


def test_a_failing_compiled_backward_falls_back_in_integrated_gradients():
    x = torch.rand(2, 7, 16, 16, generator=torch.Generator().manual_seed(3))
    eager = IntegratedGradientsExplainer(_classifier(), n_steps=4, max_batch=8, channels_last=False)(x)
    explainer = IntegratedGradientsExplainer(_classifier(), n_steps=4, max_batch=8, channels_last=False, compile=True)
    network = explainer.model.network
    explainer.model.__dict__["_compiled"] = lambda points: _BackwardFails.apply(network(points))
    attributions = explainer(x)
    assert not explainer.model.is_compiled and "backward graph" in explainer.model.fallback_reason
    assert torch.allclose(attributions, eager, rtol=1e-5, atol=1e-8)


def test_cache_follows_the_layout_and_frees_unused_wrappers():
    import gc

    from custom.compilation import _COMPILED

    model = _classifier()
    first = compile_frozen(model)
    assert compile_frozen(model) is first and compile_frozen(model, dynamic=True) is not first
    second = compile_frozen(model)
    model.to(memory_format=torch.channels_last)  # a graph traced for the old layout is not valid any more
    third = compile_frozen(model)
    assert third is not second and compile_frozen(model) is third
    key = id(model)
    del first, second, third
    gc.collect()
    assert key not in _COMPILED


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
    eager = IExplainTeacher(model, high_threshold=1.0, channels_last=False, fold_batchnorm=False)
    assert eager.explainer.model is model and all(p.requires_grad for p in model.parameters())
    compiled = IExplainTeacher(model, high_threshold=1.0, channels_last=False, compile=True, fold_batchnorm=False)
    assert isinstance(compiled.explainer.model, CompiledNetwork) and compiled.explainer.model.network is model
    assert compiled.classifier is model  # forward-only probability passes stay eager
    folded = IExplainTeacher(model, high_threshold=1.0, channels_last=False, compile=True)
    network = folded.explainer.network  # the batch norm folded into a copy, which both kinds of pass use
    assert network is not model and isinstance(network.bn, nn.Identity) and isinstance(model.bn, nn.BatchNorm2d)
    assert folded.explainer.model.network is network and folded.classifier is network


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="TorchInductor on CPU needs a C++ compiler")
def test_compiled_bfloat16_slice_classifier_has_finite_input_gradients():
    # TorchInductor's backward of torch.amax divided by a zero tie count under bfloat16 autocast (NaN
    # gradients); the slice classifier's max pooling keeps its indices instead
    from custom.networks import SliceClassifier

    torch.manual_seed(0)
    model = SliceClassifier("tf_efficientnetv2_b0", in_chans=7, feature_stage=0)
    nn.init.normal_(model.fc.weight, std=0.3)
    x = torch.rand(2, 7, 32, 32, generator=torch.Generator().manual_seed(2))
    settings = dict(n_steps=4, max_batch=8, autocast_dtype=torch.bfloat16, channels_last=False)
    eager = IntegratedGradientsExplainer(model, **settings)(x)
    explainer = IntegratedGradientsExplainer(model, compile=True, **settings)
    compiled = explainer(x)
    assert explainer.model.is_compiled, explainer.model.fallback_reason
    assert bool(torch.isfinite(compiled).all()) and float(eager.abs().max()) > 0
    assert float((compiled - eager).abs().max()) <= 0.1 * float(eager.abs().max())
