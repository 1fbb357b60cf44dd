"""A frozen network compiled with ``torch.compile`` (TorchInductor), with an eager fallback.

The iExplain teacher spends nearly all its time in Integrated Gradients: forward and input-gradient
passes of a *frozen* classifier, thousands of them per study (paper 3.2). Eager PyTorch runs every
batch norm, activation and squeeze-excitation of EfficientNetV2 as its own memory pass, forward and
backward; TorchInductor fuses them with their neighbours. On this project's 2-core CPU that made a
float32 IG pass of the demo classifier 1.31x faster (``benchmarks/bench_ig.py``, which prints the
ratios of the run at hand), and added nothing on top of bfloat16 + channels-last. Compiling costs
about one to one and a half minutes per process and graph on that CPU from a cold cache (less with
TorchInductor's on-disk cache warm), so it pays on a cohort, not on one study: the teacher chooses
it by config (``compile``).

Parameters are frozen first (``requires_grad=False``): a compiled backward computes the gradient
of every input that requires one, so trainable weights would make each IG pass also compute weight
gradients nobody reads (eager ``torch.autograd.grad`` prunes them, a compiled graph does not).

If compiling fails (no C++ compiler for TorchInductor on CPU, no Triton on GPU, an unsupported
operator), in the forward or in the lazily compiled backward, :class:`CompiledNetwork` logs the
reason once and runs the network eagerly from then on: compiling is a speed choice and never
changes what is computed. Other errors (bad input, out of memory) propagate unchanged.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch._dynamo.exc import BackendCompilerFailed
from torch._inductor.exc import InductorError

__all__ = ["COMPILER_ERRORS", "CompiledNetwork", "compile_frozen"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Exceptions that mean "compiling failed" (as opposed to an error of the computation itself).
COMPILER_ERRORS: tuple[type[BaseException], ...] = (BackendCompilerFailed, InductorError)


def _layout(network: nn.Module) -> tuple:
    """Device, dtype and memory format of every parameter: a compiled graph holds only for these."""
    signature = []
    for parameter in network.parameters():
        channels_last = parameter.dim() == 4 and parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
        signature.append((str(parameter.device), parameter.dtype, channels_last))
    return tuple(signature)


class CompiledNetwork(nn.Module):
    """``network`` behind ``torch.compile``, falling back to eager if compiling fails.

    The eager network stays the only registered submodule, so ``state_dict`` keys, ``.eval()`` and
    ``.to(...)`` are those of the network itself.

    Args:
        network: the module to compile (its parameters are shared, not copied).
        dynamic: ``torch.compile``'s ``dynamic``. ``None`` (default): the first graph is specialised
            to its shapes and a second batch size recompiles once with a symbolic batch size
            (measured 30 s); ``True`` makes every dimension symbolic from the start, which compiled
            for over 12 CPU minutes on EfficientNetV2-B0 on this project's CPU (abandoned).
        mode: ``torch.compile`` mode (``None``: the default).
    """

    def __init__(self, network: nn.Module, dynamic: bool | None = None, mode: str | None = None) -> None:
        super().__init__()
        self.network = network
        self.dynamic = dynamic
        self.layout = _layout(network)
        # kept out of the registered submodules, so state_dict() has the network's keys only
        self.__dict__["_compiled"] = torch.compile(network, dynamic=dynamic, mode=mode)
        self.fallback_reason: str | None = None

    @property
    def is_compiled(self) -> bool:
        """Whether calls still go through the compiled graph (``False`` after a fallback)."""
        return self._compiled is not None

    def _fall_back(self, error: BaseException) -> None:
        self.__dict__["_compiled"] = None
        message = str(error).strip().splitlines()
        self.fallback_reason = f"{type(error).__name__}: {message[0] if message else ''}"
        logger.warning("torch.compile failed, running %s eagerly: %s", type(self.network).__name__, self.fallback_reason)

    def run(self, function: Callable[[nn.Module], T]) -> T:
        """``function(module)`` with the compiled module, or with the eager one if compiling fails.

        Use it for a forward *and* backward pass (e.g. input gradients): the backward graph is
        compiled lazily, on its first use, so its failure shows up in ``torch.autograd.grad``, not
        in the forward call. The whole function is rerun eagerly after a compiler failure.
        """
        if self._compiled is not None:
            try:
                return function(self._compiled)
            except COMPILER_ERRORS as error:
                self._fall_back(error)
        return function(self.network)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(lambda module: module(*args, **kwargs))


#: one wrapper per live network (weak values: a wrapper no explainer holds any more is freed).
_COMPILED: weakref.WeakValueDictionary[int, CompiledNetwork] = weakref.WeakValueDictionary()


def compile_frozen(network: nn.Module, dynamic: bool | None = None) -> CompiledNetwork:
    """Freeze ``network`` (eval mode, no parameter gradients) and compile it.

    The same network compiled twice with the same parameter layout and ``dynamic`` returns the first
    wrapper, so objects built per study (the teacher of each grid) share one set of compiled graphs.
    If the parameters' device, dtype or memory format changed since (e.g. a later channels-last
    conversion), the compiled code is discarded (``torch._dynamo.reset``) and compiled anew, since a
    graph traced for one layout is not valid for another.

    Args:
        network: a trained network used for inference or input attributions only.
        dynamic: see :class:`CompiledNetwork`.

    Returns:
        A :class:`CompiledNetwork` around ``network``.
    """
    if isinstance(network, CompiledNetwork):
        return network
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    cached = _COMPILED.get(id(network))
    if cached is not None and cached.network is network and cached.dynamic == dynamic:
        if cached.layout == _layout(network):
            return cached
        logger.info("the parameters of %s changed layout since it was compiled: compiling again", type(network).__name__)
        torch._dynamo.reset()
    wrapper = CompiledNetwork(network, dynamic=dynamic)
    _COMPILED[id(network)] = wrapper
    return wrapper
