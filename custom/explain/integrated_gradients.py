"""Batched Integrated Gradients with several references and SmoothGrad voting (Condrea et al. 2025, 3.2).

Integrated Gradients (IG, Sundararajan et al. 2017) attributes the PE logit ``f`` of a mini-volume
``x`` to its voxels relative to a reference ``x'``::

    IG(x, x') = (x - x') * integral_0^1 grad f(x' + a (x - x')) da
             ~= (x - x') * sum_s w_s grad f(x' + a_s (x - x'))

with the quadrature nodes ``a_s`` and weights ``w_s`` of Captum (``captum.attr.IntegratedGradients``,
default ``"gausslegendre"``; the Riemann rules are available too). The paper's "prediction voting"
averages IG over several references and over SmoothGrad noise samples (Smilkov et al. 2017)::

    A(x) = mean_{r, n} IG(x + e_n, x'_r),   e_n ~ N(0, (noise_level * (max x - min x))^2)

Speed: every (interpolation point, reference, noise sample, mini-volume) is one independent item of a
single flat batch that is cut into chunks of ``max_batch`` items, so each forward/backward pass is
as large as the memory budget allows, whatever the number of steps or mini-volumes (there is no
Python loop of passes per step). Each chunk's points are written from the ``(N, B, ...)`` inputs and
``(R, B, ...)`` references straight into one buffer in the pass dtype, a block of steps at a time,
so memory stays ``O((N + R) B + max_batch)`` mini-volumes and no full-size copy is made on the way.
The points stay contiguous also for a channels-last network: its first convolution changes the
layout of the 7-channel input faster than a separate PyTorch copy would.

References (``reference_images``), the five baselines compared by Sturmfels et al. 2020 (the paper's
ref. [54], which it cites for multi-reference IG):

- ``"fill"``: the constant Cutout fill value (0.0 by default, i.e. the classic black/zeros reference).
  It is the single reference (paper Table 2, "1 reference") because it is what the classifier was
  trained to read as "nothing here" (Cutout holes) and what Algorithm 1 masks clusters with, so a
  masked voxel gets zero attribution in later rounds.
- ``"max_distance"``: per voxel, the end of the value range farthest from the input.
- ``"blur"``: the input blurred in-plane with a Gaussian (``blur_sigma_px``).
- ``"uniform"``: uniform noise over the value range.
- ``"gaussian"``: the input plus Gaussian noise (std ``noise_level`` x range), clipped to the range.

``FIVE_REFERENCES`` (all five) is the paper's "5 references" setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from monai.networks.layers.convutils import gaussian_1d
from monai.networks.layers.simplelayers import separable_filtering
from torch import nn

from custom.compilation import CompiledNetwork, compile_frozen
from custom.networks.batchnorm_folding import fold_batchnorm as fold_batchnorm_into_convolutions
from custom.precision import as_autocast_dtype
from custom.settings import finite_number, integer_at_least

__all__ = [
    "FIVE_REFERENCES",
    "REFERENCE_KINDS",
    "IntegratedGradientsExplainer",
    "integrated_gradients",
    "quadrature",
    "reference_images",
]

REFERENCE_KINDS: tuple[str, ...] = ("fill", "max_distance", "blur", "uniform", "gaussian")
FIVE_REFERENCES: tuple[str, ...] = REFERENCE_KINDS


def quadrature(n_steps: int, method: str = "gausslegendre") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``a_s`` in [0, 1] and weights ``w_s`` of the IG path integral, exactly as Captum uses them.

    Args:
        n_steps: number of interpolation points.
        method: ``"gausslegendre"`` (Captum's default) or ``"riemann_{left,right,middle,trapezoid}"``.

    Returns:
        ``(alphas, weights)``, float64 tensors of shape ``(n_steps,)``.
    """
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"unknown IG method {method!r}; expected one of {SUPPORTED_METHODS}")
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    step_sizes, alphas = approximation_parameters(method)
    return torch.tensor(alphas(n_steps), dtype=torch.float64), torch.tensor(step_sizes(n_steps), dtype=torch.float64)


def _target_logit(model: nn.Module, points: torch.Tensor, target: int) -> torch.Tensor:
    """The ``target`` logit of each item: ``(n,)`` float32 from a model output ``(n,)`` or ``(n, k)``."""
    output = model(points)
    return output.reshape(output.shape[0], -1)[:, target].float()


def _input_gradients(model: nn.Module, points: torch.Tensor, target: int, item_weights: torch.Tensor) -> torch.Tensor:
    """Gradient of each item's ``target`` logit times its weight, with respect to ``points`` (one forward + backward).

    The weights seed the backward pass (``grad_outputs``), so the gradient of item ``i`` comes out
    already multiplied by ``item_weights[i]``: the items are independent, the pass is linear in its seed.
    """
    logits = _target_logit(model, points, target)
    (gradients,) = torch.autograd.grad(logits, points, grad_outputs=item_weights)
    return gradients


def _ig_autocast_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """``dtype`` if the IG passes can run under it: float32 (``None``) or bfloat16.

    Raises:
        ValueError: float16, whose 5 exponent bits let the weighted input gradients (quadrature
            weights down to about 1e-3 seed the backward pass) underflow; bfloat16 has float32's range.
    """
    if dtype == torch.float16:
        raise ValueError("Integrated Gradients in float16 can underflow; use bfloat16 or float32 (autocast_dtype)")
    return dtype


def _item_blocks(start: int, stop: int, batch: int, n_steps: int) -> list[tuple[int, int, int, int, int]]:
    """The flat items ``[start, stop)`` as blocks ``(pair, s0, s1, b0, b1)``: steps ``s0 <= s < s1`` of
    mini-volumes ``b0 <= b < b1`` of one (reference, input) ``pair``, in item order.

    Items are numbered ``(pair * n_steps + s) * batch + b``: consecutive runs of ``b`` with the same
    ``pair`` and range differ only in their step, so they form one block.
    """
    blocks: list[tuple[int, int, int, int, int]] = []
    for group in range(start // batch, (stop - 1) // batch + 1):
        b0, b1 = max(start - group * batch, 0), min(stop - group * batch, batch)
        pair, s = divmod(group, n_steps)
        if blocks and blocks[-1][0] == pair and blocks[-1][2] == s and blocks[-1][3:] == (b0, b1):
            blocks[-1] = (pair, blocks[-1][1], s + 1, b0, b1)
        else:
            blocks.append((pair, s, s + 1, b0, b1))
    return blocks


def _integrated_gradients_core(
    model: nn.Module,
    inputs: torch.Tensor,
    references: torch.Tensor,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    target: int,
    max_batch: int,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Mean IG over ``N`` inputs ``(N, B, ...)`` and ``R`` references ``(R, B, ...)``: ``(B, ...)`` float32.

    The flat item index is ``((r * N + n) * S + s) * B + b`` (``S`` steps): a chunk of ``max_batch``
    consecutive items is a few blocks of steps ``s0..s1`` x mini-volumes ``b0..b1`` of one
    (reference, input) pair. A block's points ``x' + a_s (x - x')`` are written with one broadcast
    kernel straight into the chunk's contiguous buffer in the pass dtype, from the pair's reference and
    difference ``x - x'`` (computed, and cast to that dtype, once per pair); each step's gradients are
    added to the float32 attributions in place (``(x - x') * w_s * grad``, the weight ``w_s`` seeded
    into the backward pass).
    """
    _ig_autocast_dtype(autocast_dtype)
    n_inputs, batch = inputs.shape[:2]
    n_refs = references.shape[0]
    feature_shape = inputs.shape[2:]
    device = inputs.device
    n_steps = alphas.numel()
    alphas = alphas.to(device=device, dtype=torch.float32)
    weights = weights.to(device=device, dtype=torch.float32)
    total = n_refs * n_inputs * n_steps * batch
    attributions = torch.zeros((batch, *feature_shape), dtype=torch.float32, device=device)
    # under autocast the first layer would cast the points anyway: writing them in that dtype saves a copy
    points_dtype = autocast_dtype if autocast_dtype is not None else torch.float32
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    # a compiled network runs forward + backward together, so a compiler failure in its lazy backward falls back too
    run_passes = model.run if isinstance(model, CompiledNetwork) else (lambda passes: passes(model))
    step_view = (-1, 1) + (1,) * len(feature_shape)
    pass_alphas = alphas.to(points_dtype)
    pair_index = -1
    with torch.enable_grad(), autocast:
        for start in range(0, total, max_batch):
            stop = min(start + max_batch, total)
            # contiguous points: for a channels-last network the first convolution changes the layout
            # itself, faster than a PyTorch copy of the 7-channel points would
            points = torch.empty((stop - start, *feature_shape), dtype=points_dtype, device=device)
            seeds = torch.empty(stop - start, dtype=torch.float32, device=device)
            blocks, offset = [], 0
            for pair, s0, s1, b0, b1 in _item_blocks(start, stop, batch, n_steps):
                if pair != pair_index:  # pairs come in order: only the chunk's pairs are alive at a time
                    r, n = divmod(pair, n_inputs)
                    pair_index, delta = pair, inputs[n] - references[r]
                    # in the pass dtype once per pair, so that writing each block is one same-dtype kernel
                    pass_begin, pass_delta = references[r].to(points_dtype), delta.to(points_dtype)
                size = (s1 - s0) * (b1 - b0)
                block = points[offset : offset + size].view(s1 - s0, b1 - b0, *feature_shape)
                torch.addcmul(pass_begin[b0:b1], pass_alphas[s0:s1].view(step_view), pass_delta[b0:b1], out=block)
                seeds[offset : offset + size] = weights[s0:s1].repeat_interleave(b1 - b0)
                blocks.append((s1 - s0, b0, b1, offset, delta))
                offset += size
            points.requires_grad_(True)
            gradients = run_passes(lambda module: _input_gradients(module, points, target, seeds))
            for steps, b0, b1, offset, block_delta in blocks:
                for step in range(steps):  # in-place accumulation reads the (bfloat16) gradients as they are
                    first = offset + step * (b1 - b0)
                    attributions[b0:b1].addcmul_(block_delta[b0:b1], gradients[first : first + b1 - b0])
    return attributions.div_(n_inputs * n_refs)


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    references: torch.Tensor | float = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    target: int = 0,
    max_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Integrated Gradients of a classifier logit, averaged over references, in large batches.

    With one reference this equals ``captum.attr.IntegratedGradients(model).attribute(inputs,
    references, target=target, n_steps=n_steps, method=method)`` (to float32 rounding).

    Args:
        model: maps ``(n, ...)`` to logits ``(n,)`` or ``(n, k)``; should be in eval mode.
        inputs: ``(B, ...)`` items to explain (e.g. ``(B, 7, H, W)`` mini-volumes).
        references: a scalar, a ``(B, ...)`` tensor, or ``(R, B, ...)`` for ``R`` references whose
            attributions are averaged.
        n_steps: interpolation points of the path integral (Captum's default is 50).
        method: quadrature rule, see :func:`quadrature`.
        target: index of the logit to explain.
        max_batch: items per forward/backward pass (the memory budget).
        autocast_dtype: ``None`` (float32) or e.g. ``torch.bfloat16`` for autocast of the passes.

    Returns:
        Attributions, float32, shape of ``inputs``.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    inputs = inputs.float()  # the path and the attributions are float32; autocast lowers the passes only
    refs = torch.as_tensor(references, dtype=inputs.dtype, device=inputs.device)
    if refs.dim() == 0:
        refs = refs.expand_as(inputs)
    if refs.shape == inputs.shape:
        refs = refs.unsqueeze(0)
    if refs.shape[1:] != inputs.shape:
        raise ValueError(f"references of shape {tuple(refs.shape)} do not match inputs {tuple(inputs.shape)}")
    alphas, weights = quadrature(n_steps, method)
    return _integrated_gradients_core(
        model, inputs.unsqueeze(0), refs, alphas, weights, target, max_batch, autocast_dtype
    )


def reference_images(
    inputs: torch.Tensor,
    kinds: Sequence[str],
    fill_value: float = 0.0,
    value_range: tuple[float, float] = (0.0, 1.0),
    blur_sigma_px: float = 7.0,
    noise_level: float = 0.15,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """IG references for ``(B, C, H, W)`` mini-volumes (see the module docstring for the kinds).

    Args:
        inputs: the mini-volumes, windowed to ``value_range``.
        kinds: reference names from ``REFERENCE_KINDS``.
        fill_value: the Cutout / masking fill, in windowed units.
        value_range: the valid input range (HU window mapped to [0, 1]).
        blur_sigma_px: in-plane Gaussian sigma of ``"blur"`` in pixels; the default, 7 px, is the
            in-plane radius of the paper's 15x15 hysteresis neighbourhood at 512 px, so structures of
            embolus size are blurred away (scale it with the grid, see ``custom.explain.grid_scaling``).
        noise_level: std of ``"gaussian"`` as a fraction of the value range.
        generator: random generator of ``"uniform"`` and ``"gaussian"``.

    Returns:
        ``(R, B, C, H, W)`` references, in the order of ``kinds``.
    """
    low, high = (float(v) for v in value_range)
    references = []
    for kind in kinds:
        if kind == "fill":
            reference = torch.full_like(inputs, fill_value)
        elif kind == "max_distance":
            reference = torch.where(inputs < (low + high) / 2, torch.full_like(inputs, high), torch.full_like(inputs, low))
        elif kind == "blur":
            kernel = gaussian_1d(torch.tensor(float(blur_sigma_px)), truncated=3.0, normalize=True)
            flat = inputs.reshape(-1, 1, *inputs.shape[-2:])
            reference = separable_filtering(flat, [kernel, kernel], mode="replicate").reshape(inputs.shape)
        elif kind == "uniform":
            noise = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
            reference = low + (high - low) * noise
        elif kind == "gaussian":
            noise = torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
            reference = (inputs + noise_level * (high - low) * noise).clamp(low, high)
        else:
            raise ValueError(f"unknown IG reference {kind!r}; expected one of {REFERENCE_KINDS}")
        references.append(reference)
    return torch.stack(references)


class IntegratedGradientsExplainer:
    """The iExplain heatmap: IG of the PE logit, voted over references and SmoothGrad noise (paper 3.2).

    Args:
        model: the slice classifier, ``(B, 7, H, W)`` -> ``(B, 1)`` logits, in eval mode.
        n_steps: IG interpolation points (Captum's default, 50).
        method: quadrature rule (Captum's default ``"gausslegendre"``).
        references: reference kinds (``("fill",)``: paper's 1 reference; ``FIVE_REFERENCES``: 5).
        n_noise: SmoothGrad samples (0: explain the clean input only).
        noise_level: SmoothGrad noise std as a fraction of each mini-volume's ``max - min``; the
            default 0.15 is the middle of the 10-20 % that Smilkov et al. 2017 recommend.
        fill_value: Cutout fill in windowed units (the ``"fill"`` reference).
        value_range: valid input range of the windowed mini-volumes.
        blur_sigma_px: sigma of the ``"blur"`` reference, see :func:`reference_images`.
        max_batch: items per forward/backward pass (the memory budget). On the project's 2-core CPU the
            time per item measured about the same from 4 to 64 items (EfficientNetV2-B0, 7 x 128 x 128),
            so 64 only bounds memory there; on a GPU raise it until the memory is used.
        autocast_dtype: ``None`` (float32, the default: exact, matches Captum) or ``torch.bfloat16``
            (also the string ``"bfloat16"``). ``benchmarks/bench_ig.py`` measured bfloat16 1.6x faster on
            the project's AVX-512 CPU (about 10x slower on AVX2-only CPUs, so the teacher measures it),
            with attributions up to 14-21 % of the largest one away from float32 (random
            classifiers); calibrate the hysteresis threshold with the dtype that will be used.
        channels_last: channels-last memory format for the passes (default on: numerically the same,
            and 1.1x faster on the project's CPU in ``benchmarks/bench_ig.py``); sets the memory
            format of the explained network (``network``: the folded copy, or ``model`` itself) in
            place, either way (see :meth:`set_channels_last`).
        fold_batchnorm: explain a copy of ``model`` whose eval-mode batch norms are folded into the
            convolutions before them (``custom.networks.batchnorm_folding``; default on: the same
            function up to float rounding, checked on an example input, and faster passes: 1.1x in
            float32 and in bfloat16 on the project's CPU in ``benchmarks/bench_ig.py``).
        target: logit index to explain.
        seed: seed of the noise and random references; each call restarts it, so a call is reproducible.
        compile: run the passes through ``torch.compile`` (``custom.compilation.compile_frozen``:
            freezes the parameters of ``network``, the folded copy or ``model`` itself; falls back to
            eager if compiling fails). Numerically the same as eager (up to float rounding), up to
            about a minute of compiling per process first; little gain once batch norms are folded.
    """

    def __init__(
        self,
        model: nn.Module,
        n_steps: int = 50,
        method: str = "gausslegendre",
        references: Sequence[str] = ("fill",),
        n_noise: int = 0,
        noise_level: float = 0.15,
        fill_value: float = 0.0,
        value_range: Sequence[float] = (0.0, 1.0),
        blur_sigma_px: float = 7.0,
        max_batch: int = 64,
        autocast_dtype: torch.dtype | str | None = None,
        channels_last: bool = True,
        target: int = 0,
        seed: int = 0,
        compile: bool = False,
        fold_batchnorm: bool = True,
    ) -> None:
        if len(references) == 0:
            raise ValueError("at least one IG reference is needed")
        unknown = [kind for kind in references if kind not in REFERENCE_KINDS]
        if unknown:
            raise ValueError(f"unknown IG references {unknown}; expected some of {REFERENCE_KINDS}")
        n_noise = integer_at_least(n_noise, "n_noise", 0)
        max_batch = integer_at_least(max_batch, "max_batch", 1)
        noise_level = finite_number(noise_level, "noise_level", 0.0)
        blur_sigma_px = finite_number(blur_sigma_px, "blur_sigma_px", 0.0)
        if fold_batchnorm:
            model = fold_batchnorm_into_convolutions(model)
        #: the eager network the passes run (``model``, or its folded copy)
        self.network = model
        #: what the passes call: ``network``, or ``network`` behind ``torch.compile``
        self.model: nn.Module = model
        self.fold_batchnorm = bool(fold_batchnorm)
        self.alphas, self.weights = quadrature(n_steps, method)
        self.n_steps = n_steps
        self.method = method
        self.references = tuple(references)
        self.n_noise = n_noise
        self.noise_level = float(noise_level)
        self.fill_value = float(fill_value)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.blur_sigma_px = float(blur_sigma_px)
        self.max_batch = max_batch
        self.autocast_dtype = _ig_autocast_dtype(as_autocast_dtype(autocast_dtype))
        self.channels_last = False
        self.target = target
        self.seed = seed
        self.set_channels_last(channels_last)
        self.compile = bool(compile)
        if self.compile:
            self.model = compile_frozen(model)

    def set_channels_last(self, channels_last: bool) -> None:
        """Run the passes channels-last (``True``) or contiguous: converts ``network`` in place."""
        self.channels_last = bool(channels_last)
        self.network.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @property
    def passes_per_item(self) -> int:
        """Forward/backward items per explained mini-volume: steps x references x noise samples."""
        return self.n_steps * len(self.references) * max(self.n_noise, 1)

    def __call__(self, minivolumes: torch.Tensor) -> torch.Tensor:
        """Attributions of the PE logit for ``(B, 7, H, W)`` mini-volumes: float32, same shape."""
        if minivolumes.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) mini-volumes, got shape {tuple(minivolumes.shape)}")
        inputs = minivolumes.float()
        generator = torch.Generator(device=inputs.device)
        generator.manual_seed(self.seed)
        references = reference_images(
            inputs, self.references, self.fill_value, self.value_range, self.blur_sigma_px, self.noise_level, generator
        )
        if self.n_noise > 0:
            spread = (inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))).view(1, -1, 1, 1, 1)
            noise = torch.randn((self.n_noise, *inputs.shape), generator=generator, device=inputs.device)
            noisy = inputs.unsqueeze(0) + self.noise_level * spread * noise
        else:
            noisy = inputs.unsqueeze(0)
        return _integrated_gradients_core(
            self.model, noisy, references, self.alphas, self.weights, self.target,
            self.max_batch, self.autocast_dtype,
        )
