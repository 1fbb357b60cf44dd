"""Batched Integrated Gradients: agreement with Captum, completeness, batching, references, SmoothGrad."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from custom.explain.integrated_gradients import (
    FIVE_REFERENCES,
    IntegratedGradientsExplainer,
    integrated_gradients,
    quadrature,
    reference_images,
)


class TinyClassifier(nn.Module):
    """conv-act-conv, global max (or mean) pool, linear: the shape of the slice classifier at toy size."""

    def __init__(self, activation: nn.Module | None = None, max_pool: bool = True) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv1 = nn.Conv2d(7, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.activation = activation if activation is not None else nn.ReLU()
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv2(self.activation(self.conv1(x)))
        pooled = torch.amax(features, dim=(-2, -1)) if self.max_pool else features.mean(dim=(-2, -1))
        return self.fc(pooled)


class LinearClassifier(nn.Module):
    """f(x) = sum(w * x): IG is exactly w * (x - reference) for any quadrature."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(dim=1, keepdim=True)


@pytest.fixture()
def model() -> nn.Module:
    torch.manual_seed(0)
    return TinyClassifier().eval()


@pytest.fixture()
def inputs() -> torch.Tensor:
    return torch.rand(3, 7, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_agrees_with_captum(model, inputs, method):
    references = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(2))
    expected = IntegratedGradients(model).attribute(inputs, references, n_steps=20, method=method)
    actual = integrated_gradients(model, inputs, references, n_steps=20, method=method, max_batch=17)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(actual, expected, atol=1e-6 * float(scale), rtol=1e-5)


def test_agrees_with_captum_scalar_reference(model, inputs):
    expected = IntegratedGradients(model).attribute(inputs, 0.25, n_steps=12)
    actual = integrated_gradients(model, inputs, 0.25, n_steps=12, max_batch=64)
    torch.testing.assert_close(actual, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)


def test_independent_of_max_batch(model, inputs):
    results = [integrated_gradients(model, inputs, 0.0, n_steps=10, max_batch=b) for b in (2, 7, 30, 1000)]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], atol=1e-7, rtol=1e-5)


def test_completeness():
    """Sum of attributions = f(x) - f(reference) for a smooth network with enough steps (IG axiom).

    Smooth (softplus, mean pooling) so that the quadrature error is negligible at 64 steps; the
    kinks of ReLU and max pooling only slow the convergence of the same identity.
    """
    torch.manual_seed(3)
    smooth = TinyClassifier(nn.Softplus(), max_pool=False).eval()
    x = torch.rand(2, 7, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = torch.zeros_like(x)
    attributions = integrated_gradients(smooth, x, reference, n_steps=64)
    with torch.no_grad():
        gap = (smooth(x) - smooth(reference)).flatten()
    assert gap.abs().min() > 1e-3
    torch.testing.assert_close(attributions.flatten(1).sum(dim=1), gap, atol=1e-4, rtol=2e-3)


def test_several_references_are_averaged(model, inputs):
    generator = torch.Generator().manual_seed(5)
    references = torch.rand((3, *inputs.shape), generator=generator)
    together = integrated_gradients(model, inputs, references, n_steps=8, max_batch=40)
    one_by_one = torch.stack([integrated_gradients(model, inputs, r, n_steps=8) for r in references]).mean(dim=0)
    torch.testing.assert_close(together, one_by_one, atol=1e-7, rtol=1e-5)


def test_explainer_single_fill_reference_equals_captum(model, inputs):
    explainer = IntegratedGradientsExplainer(model, n_steps=10, references=("fill",), fill_value=0.1, max_batch=25)
    expected = IntegratedGradients(model).attribute(inputs, 0.1, n_steps=10)
    torch.testing.assert_close(explainer(inputs), expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)
    assert explainer.passes_per_item == 10


def test_reference_kinds(inputs):
    generator = torch.Generator().manual_seed(6)
    refs = reference_images(inputs, FIVE_REFERENCES, fill_value=0.2, blur_sigma_px=2.0, noise_level=0.1, generator=generator)
    fill, max_distance, blur, uniform, gaussian = refs
    assert refs.shape == (5, *inputs.shape)
    assert torch.all(fill == 0.2)
    assert torch.equal(max_distance, (inputs < 0.5).float())
    assert blur.std() < 0.5 * inputs.std()  # white noise loses most of its variance
    torch.testing.assert_close(blur.mean(), inputs.mean(), atol=0.01, rtol=0)
    assert uniform.min() >= 0 and uniform.max() <= 1 and 0.45 < float(uniform.mean()) < 0.55
    assert gaussian.min() >= 0 and gaussian.max() <= 1
    assert 0.05 < float((gaussian - inputs).std()) < 0.1  # std 0.1, shrunk by the clipping
    constant = torch.full((1, 7, 16, 16), 0.3)
    torch.testing.assert_close(reference_images(constant, ("blur",))[0], constant)  # replicate padding
    with pytest.raises(ValueError, match="unknown IG reference"):
        reference_images(inputs, ("zero",))


def test_smoothgrad_noise_scaled_to_input_range():
    """Linear model: mean IG over noise = w * (x + mean noise - ref); the noise std is noise_level x (max - min)."""
    torch.manual_seed(7)
    x = 0.5 * torch.rand(1, 7, 64, 64)  # max - min close to 0.5
    weight = torch.ones(1, 7, 64, 64)
    explainer = IntegratedGradientsExplainer(LinearClassifier(weight), n_steps=4, n_noise=4, noise_level=0.2)
    mean_noise = explainer(x) - x  # w = 1, reference = fill 0
    spread = float(x.max() - x.min())
    expected_std = 0.2 * spread / 2.0  # mean of 4 independent samples
    assert abs(float(mean_noise.std()) - expected_std) < 0.05 * expected_std
    assert abs(float(mean_noise.mean())) < 0.05 * expected_std
    torch.testing.assert_close(explainer(x), explainer(x))  # seeded per call
    no_noise = IntegratedGradientsExplainer(LinearClassifier(weight), n_steps=4, n_noise=3, noise_level=0.0)
    torch.testing.assert_close(no_noise(x), x)


def test_smoothgrad_noise_is_scaled_per_minivolume():
    """Two mini-volumes of different ranges: each one's noise std follows its own max - min, not the batch's."""
    generator = torch.Generator().manual_seed(8)
    x = torch.stack([0.5 * torch.rand(7, 64, 64, generator=generator), 0.4 + 0.1 * torch.rand(7, 64, 64, generator=generator)])
    explainer = IntegratedGradientsExplainer(LinearClassifier(torch.ones(1, 7, 64, 64)), n_steps=4, n_noise=4, noise_level=0.2)
    mean_noise = explainer(x) - x  # w = 1, reference = fill 0
    for item in range(2):
        spread = float(x[item].max() - x[item].min())  # about 0.5 and 0.1
        expected_std = 0.2 * spread / 2.0  # mean of 4 independent samples
        assert abs(float(mean_noise[item].std()) - expected_std) < 0.05 * expected_std
    assert float(mean_noise[0].std()) > 4 * float(mean_noise[1].std())


def test_blur_reference_is_in_plane_with_the_configured_sigma():
    inputs = torch.zeros(2, 7, 41, 61)
    inputs[1, 3, 20, 30] = 1.0  # one bright pixel on one channel of one mini-volume
    blur = reference_images(inputs, ("blur",), blur_sigma_px=2.0)[0]
    assert not blur[0].any()  # mini-volumes are not mixed
    assert not blur[1, [0, 1, 2, 4, 5, 6]].any()  # channels (slices) are not mixed
    spot = blur[1, 3].double()
    assert float(spot.sum()) == pytest.approx(1.0, abs=1e-5)  # a normalised kernel
    rows = torch.arange(41, dtype=torch.float64).view(-1, 1)
    cols = torch.arange(61, dtype=torch.float64).view(1, -1)
    assert float((spot * rows).sum()) == pytest.approx(20.0, abs=1e-4)  # centred where the pixel was
    assert float((spot * cols).sum()) == pytest.approx(30.0, abs=1e-4)
    row_std = float((spot * (rows - 20) ** 2).sum().sqrt())
    col_std = float((spot * (cols - 30) ** 2).sum().sqrt())
    assert row_std == pytest.approx(2.0, rel=0.05) and col_std == pytest.approx(2.0, rel=0.05)


def test_five_references_average(model, inputs):
    explainer = IntegratedGradientsExplainer(model, n_steps=6, references=FIVE_REFERENCES, max_batch=64, seed=3)
    generator = torch.Generator().manual_seed(3)
    refs = reference_images(inputs, FIVE_REFERENCES, generator=generator)
    expected = torch.stack([IntegratedGradients(model).attribute(inputs, r, n_steps=6) for r in refs]).mean(dim=0)
    torch.testing.assert_close(explainer(inputs), expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)
    assert explainer.passes_per_item == 30


def test_channels_last_and_bfloat16(inputs):
    torch.manual_seed(0)
    reference = integrated_gradients(TinyClassifier().eval(), inputs, 0.0, n_steps=8)
    torch.manual_seed(0)
    channels_last = IntegratedGradientsExplainer(TinyClassifier().eval(), n_steps=8, channels_last=True)
    torch.testing.assert_close(channels_last(inputs), reference, atol=1e-6 * float(reference.abs().max()), rtol=1e-4)
    torch.manual_seed(0)
    bf16 = IntegratedGradientsExplainer(TinyClassifier().eval(), n_steps=8, autocast_dtype="bfloat16")(inputs)
    assert bf16.dtype == torch.float32
    # bfloat16 keeps ~3 significant digits: the map is the same up to a few per cent
    assert float(torch.nn.functional.cosine_similarity(bf16.flatten(), reference.flatten(), dim=0)) > 0.99
    assert float((bf16 - reference).norm() / reference.norm()) < 0.1


def test_quadrature_and_argument_errors(model, inputs):
    alphas, weights = quadrature(5)
    assert float(weights.sum()) == pytest.approx(1.0)
    assert 0 < float(alphas.min()) and float(alphas.max()) < 1
    with pytest.raises(ValueError, match="unknown IG method"):
        quadrature(5, "simpson")
    with pytest.raises(ValueError, match="do not match"):
        integrated_gradients(model, inputs, torch.zeros(2, 7, 32, 32))
    with pytest.raises(ValueError, match="unknown IG references"):
        IntegratedGradientsExplainer(model, references=("zeros",))
    with pytest.raises(ValueError, match="B, C, H, W"):
        IntegratedGradientsExplainer(model)(inputs[0])


def test_item_blocks_cover_each_item_once_in_order():
    from custom.explain.integrated_gradients import _item_blocks

    # 2 pairs x 3 steps x 2 mini-volumes = 12 items; a chunk of 5 from item 1
    assert _item_blocks(1, 6, batch=2, n_steps=3) == [(0, 0, 1, 1, 2), (0, 1, 3, 0, 2)]
    assert _item_blocks(6, 8, batch=2, n_steps=3) == [(1, 0, 1, 0, 2)]  # a new pair starts a new block
    assert _item_blocks(0, 6, batch=1, n_steps=6) == [(0, 0, 6, 0, 1)]  # one window: all its steps in one block
    for batch, n_steps, chunk in ((3, 4, 5), (1, 5, 2), (4, 2, 16)):
        total = 3 * n_steps * batch
        items = []
        for start in range(0, total, chunk):
            for pair, s0, s1, b0, b1 in _item_blocks(start, min(start + chunk, total), batch, n_steps):
                items += [(pair * n_steps + s) * batch + b for s in range(s0, s1) for b in range(b0, b1)]
        assert items == list(range(total))


def test_several_references_and_noise_independent_of_max_batch(model, inputs):
    results = [
        IntegratedGradientsExplainer(model, n_steps=5, references=("fill", "blur"), n_noise=2, max_batch=b, channels_last=False)(inputs)
        for b in (1, 4, 7, 1000)
    ]
    for result in results[1:]:
        assert torch.allclose(result, results[0], rtol=1e-5, atol=1e-7)


def test_bfloat16_independent_of_max_batch_and_float16_refused(model, inputs):
    explain = lambda b: IntegratedGradientsExplainer(  # noqa: E731
        model, n_steps=5, references=("fill", "blur"), max_batch=b, autocast_dtype="bfloat16", channels_last=False
    )(inputs)
    results = [explain(b) for b in (3, 10, 1000)]  # partial blocks at chunk edges, whole steps, everything at once
    for result in results[1:]:
        assert torch.allclose(result, results[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="float16"):
        IntegratedGradientsExplainer(model, autocast_dtype="float16")
    with pytest.raises(ValueError, match="float16"):
        integrated_gradients(model, inputs, 0.0, n_steps=4, autocast_dtype=torch.float16)


@pytest.mark.parametrize("setting, value, message", [
    ("noise_level", float("nan"), r"noise_level must be a finite number >= 0, got nan"),
    ("noise_level", -0.1, r"noise_level must be a finite number >= 0"),
    ("n_noise", 2.5, r"n_noise must be an integer >= 0, got 2.5"),
    ("n_noise", -1, r"n_noise must be an integer >= 0"),
    ("max_batch", 2.5, r"max_batch must be an integer >= 1, got 2.5"),
    ("max_batch", 0, r"max_batch must be an integer >= 1"),
    ("blur_sigma_px", -3.0, r"blur_sigma_px must be a finite number >= 0"),
])
def test_explainer_settings_are_checked_when_it_is_built(setting, value, message):
    """A NaN noise level had been accepted (every attribution NaN, so no cluster); 2.5 samples failed mid-cohort."""
    with pytest.raises(ValueError, match=message):
        IntegratedGradientsExplainer(TinyClassifier().eval(), **{setting: value})
