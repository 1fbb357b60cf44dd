"""A frozen network compiled with ``torch.compile`` (TorchInductor), with an eager fallback.

The iExplain teacher spends nearly all its time in Integrated Gradients: forward and input-gradient
passes of a *frozen* classifier, thousands of them per study (paper 3.2). Eager PyTorch runs every
batch norm, activation and squeeze-excitation of EfficientNetV2 as its own memory pass, forward and
backward; TorchInductor fuses them into the convolutions' neighbours. On this project's 2-core
CPU that made an IG pass of ``tf_efficientnetv2_b0`` (16 x 7 x 128 x 128, one thread) 2.1x faster
in float32 (20-22 ms -> 14.4 ms per item, one run of a probe script; ``benchmarks/bench_ig.py`` and
``benchmarks/bench_teacher.py`` print the ratios of the run at hand). Compiling costs about one
minute per process and graph on that CPU (30 s more for the first second batch size, after which
the batch size is symbolic), so it pays on a cohort, not on one study: the teacher chooses it by
config (``compile``).

Parameters are frozen first (``requires_grad=False``): a compiled backward computes the gradient
of every input that requires one, so trainable weights would make each IG pass also compute weight
gradients nobody reads (eager ``torch.autograd.grad`` prunes them, a compiled graph does not).

If the first compiled call fails (no C++ compiler for TorchInductor on CPU, no Triton on GPU, an
unsupported operator), :class:`CompiledNetwork` logs the reason once and runs the network eagerly
from then on: compiling is a speed choice and never changes what is computed.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledNetwork", "compile_frozen"]

logger = logging.getLogger(__name__)


class CompiledNetwork(nn.Module):
    """``network`` behind ``torch.compile``, falling back to eager if compiling fails.

    The eager network stays the registered submodule, so ``state_dict`` keys, ``.eval()`` and
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
        # kept out of the registered submodules, so state_dict() has the network's keys only
        self.__dict__["_compiled"] = torch.compile(network, dynamic=dynamic, mode=mode)
        self.fallback_reason: str | None = None

    @property
    def is_compiled(self) -> bool:
        """Whether calls still go through the compiled graph (``False`` after a fallback)."""
        return self._compiled is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
                self._compiled = None
                self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                logger.warning("torch.compile failed, running %s eagerly: %s", type(self.network).__name__, self.fallback_reason)
        return self.network(*args, **kwargs)


_COMPILED: weakref.WeakKeyDictionary[nn.Module, CompiledNetwork] = weakref.WeakKeyDictionary()


def compile_frozen(network: nn.Module, dynamic: bool | None = None) -> CompiledNetwork:
    """Freeze ``network`` (eval mode, no parameter gradients) and compile it.

    The same network compiled twice returns the first wrapper, so objects built per study (the
    teacher of each grid) share one set of compiled graphs instead of compiling again.

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
    if network not in _COMPILED:
        _COMPILED[network] = CompiledNetwork(network, dynamic=dynamic)
    return _COMPILED[network]
