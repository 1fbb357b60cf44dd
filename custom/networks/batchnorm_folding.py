"""Batch norms folded into the convolutions before them, for a frozen network in eval mode.

In eval mode a batch norm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma +
beta``; when it reads a convolution's output directly, the convolution can absorb it (scaled
weights, a new bias) and the batch norm disappears (Jacob et al. 2018, "Quantization and training of
neural networks for efficient integer-arithmetic-only inference", 3.2; ``torch.nn.utils.fusion``).
The network computes the same function up to float rounding, but each forward *and backward* pass
skips one memory pass per batch norm. The iExplain teacher runs thousands of forward and
input-gradient passes of the frozen classifier per study (paper 3.2), and eager PyTorch on a CPU
spends a sizeable part of an EfficientNetV2 pass in its batch norms: on the project's CPU folding
made an IG pass of the demo classifier 1.09-1.12x faster, in float32 and in bfloat16
(``benchmarks/bench_ig.py`` prints the ratio of the run at hand).

The pairs are found by running the network once on an example input with hooks: a batch norm is
folded when its input *is* the output tensor of a convolution, not modified in place since
(timm's ``ConvBnAct``, ``EdgeResidual``, ``InvertedResidual``, the stem and head all have this
shape). timm's ``BatchNormAct2d`` (batch norm + dropout + activation in one module) keeps its
dropout and activation. Nothing in the network's code is assumed beyond that, so the result is
checked on the example: if the folded copy's output differs from the original's by more than
float rounding (e.g. a convolution output that something else reads too), the original network is
returned unchanged and a warning says why.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["example_input", "fold_batchnorm"]

logger = logging.getLogger(__name__)

#: In-plane size of the example input :func:`example_input` builds (EfficientNets need >= 32).
EXAMPLE_SIZE_PX = 64


def example_input(network: nn.Module, size: int = EXAMPLE_SIZE_PX, seed: int = 0) -> torch.Tensor:
    """A random input of one item for ``network``: channels and dimensions of its first convolution.

    Args:
        network: a network whose first convolution (in ``modules()`` order) reads the input.
        size: the length of each spatial dimension.
        seed: seed of the values (uniform in [0, 1), like windowed CT).

    Returns:
        ``(1, in_channels, size, ...)`` on the device and in the dtype of that convolution's weight.

    Raises:
        ValueError: ``network`` has no convolution.
    """
    first = next((module for module in network.modules() if isinstance(module, _ConvNd)), None)
    if first is None:
        raise ValueError(f"{type(network).__name__} has no convolution to take the input shape from")
    shape = (1, first.in_channels) + (size,) * (first.weight.dim() - 2)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator).to(device=first.weight.device, dtype=first.weight.dtype)


def _find_pairs(network: nn.Module, example: torch.Tensor) -> list[tuple[_ConvNd, _BatchNorm]]:
    """(convolution, batch norm) pairs where the batch norm reads the convolution's untouched output."""
    outputs: dict[int, tuple[_ConvNd, torch.Tensor, int]] = {}  # id -> (conv, output kept alive, version)
    pairs: list[tuple[_ConvNd, _BatchNorm]] = []

    def after_convolution(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor):
            outputs[id(output)] = (module, output, output._version)

    def before_batchnorm(module: nn.Module, inputs: tuple) -> None:
        source = outputs.get(id(inputs[0])) if inputs and isinstance(inputs[0], torch.Tensor) else None
        if source is not None and source[1] is inputs[0] and source[2] == inputs[0]._version:
            pairs.append((source[0], module))

    hooks = []
    for module in network.modules():
        if isinstance(module, _ConvNd) and not module.transposed:
            hooks.append(module.register_forward_hook(after_convolution))
        elif isinstance(module, _BatchNorm):
            hooks.append(module.register_forward_pre_hook(before_batchnorm))
    try:
        with torch.no_grad():
            network(example)
    finally:
        for hook in hooks:
            hook.remove()
    seen: set[int] = set()
    unique = []
    for conv, norm in pairs:  # a module run twice (weight sharing) is folded once, if at all
        if id(conv) not in seen and id(norm) not in seen:
            seen.update((id(conv), id(norm)))
            unique.append((conv, norm))
    return unique


def _output_difference(network: nn.Module, folded: nn.Module, example: torch.Tensor) -> tuple[float, float]:
    """Largest output difference of the two networks on ``example``, and the largest output magnitude.

    Computed without TF32 (on by default for cuDNN convolutions), whose rounding of the two sets of
    weights would differ by more than the folding itself; ``inf`` when an output is not one tensor.
    """
    cuda_matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        cudnn = torch.backends.cudnn
        no_tf32 = cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False)
        with torch.no_grad(), no_tf32:
            expected, actual = network(example), folded(example)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = cuda_matmul_tf32
    if not isinstance(expected, torch.Tensor) or not isinstance(actual, torch.Tensor) or expected.shape != actual.shape:
        return float("inf"), 0.0
    if expected.numel() == 0:
        return 0.0, 0.0
    return float((actual.float() - expected.float()).abs().max()), float(expected.float().abs().max())


def _replacement(norm: _BatchNorm) -> nn.Module | None:
    """What remains of ``norm`` once folded: nothing, or timm's dropout + activation; ``None``: unknown kind."""
    if type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.Identity()
    if hasattr(norm, "act") and hasattr(norm, "drop"):  # timm BatchNormAct2d: batch norm, then drop, then act
        return nn.Sequential(norm.drop, norm.act)
    return None


def fold_batchnorm(network: nn.Module, example: torch.Tensor | None = None, rtol: float = 1e-4) -> nn.Module:
    """An eval-mode copy of ``network`` with every foldable batch norm folded into its convolution.

    Args:
        network: the network (e.g. the stage-1 slice classifier); it is not modified.
        example: an input batch to find the pairs and check the result with (default:
            :func:`example_input`).
        rtol: the largest accepted output difference, relative to the largest output magnitude (or to
            1 when that is smaller).

    Returns:
        The folded copy, in eval mode; ``network`` itself (put in eval mode) when there is nothing to
        fold, or when the example pass or the check fails (logged as a warning).
    """
    network.eval()
    if not any(isinstance(module, _BatchNorm) for module in network.modules()):
        return network  # nothing to fold: no example pass
    try:
        if example is None:
            example = example_input(network)
        pairs = [(conv, norm) for conv, norm in _find_pairs(network, example) if norm.running_mean is not None]
    except Exception as error:  # an example the network cannot read: folding is only a speed-up
        logger.warning("batch-norm folding of %s skipped: the example pass failed (%s)", type(network).__name__, error)
        return network
    pairs = [(conv, norm) for conv, norm in pairs if _replacement(norm) is not None]
    if not pairs:
        return network
    index = {id(module): name for name, module in network.named_modules()}
    folded = copy.deepcopy(network).eval()
    modules = dict(folded.named_modules())
    for conv, norm in pairs:
        conv_copy, norm_copy = modules[index[id(conv)]], modules[index[id(norm)]]
        weight, bias = fuse_conv_bn_weights(
            conv_copy.weight, conv_copy.bias, norm_copy.running_mean, norm_copy.running_var, norm_copy.eps,
            norm_copy.weight, norm_copy.bias,
        )
        conv_copy.weight, conv_copy.bias = weight, bias
        parent_name, _, child_name = index[id(norm)].rpartition(".")
        setattr(modules[parent_name] if parent_name else folded, child_name, _replacement(norm_copy))
    difference, scale = _output_difference(network, folded, example)
    if not difference <= rtol * max(scale, 1.0):
        logger.warning(
            "batch-norm folding of %s changed its output by %.3g (largest output %.3g; inf: not one output tensor); using the network unfolded",
            type(network).__name__, difference, scale,
        )
        return network
    logger.info("folded %d batch norms of %s into their convolutions", len(pairs), type(network).__name__)
    return folded
