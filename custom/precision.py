"""Autocast dtype and memory format chosen by measurement, and an inferer that runs a network under the dtype.

Whether bfloat16 autocast pays depends on the machine, not on the code: on this project's AVX-512
CPU it was measured 1.6-2.1x faster for the student's training step, 2.2-2.3x for its inference
and 2.3x for the classifier's training step (``benchmarks/bench_precision.py``), on an AVX2-only
CPU about 10x *slower* (the brief's measurement). So a bundle config says
``"autocast_dtype": "auto"`` and :func:`resolve_autocast_dtype` times a few real steps of a copy
of the network under float32 and under bfloat16, on the device and input shape at hand, and
keeps bfloat16 only when it is clearly faster. Explicit values (``null``/``"float32"``,
``"bfloat16"``, ``"float16"``) skip the probe. The memory format is measured the same way
(:func:`resolve_channels_last`, ``"channels_last": "auto"``): channels-last made the teacher's IG
passes 1.1-1.3x faster on the project's CPU, but it is not faster for every network, dtype and
device.

:class:`AutocastInferer` wraps any MONAI inferer: only the network's forward pass runs under
autocast and its outputs come back as float32, so a sliding-window aggregation, a loss or a metric
downstream stays in float32 and checkpoints keep the plain network's keys.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.inferers import Inferer

__all__ = [
    "AutocastInferer",
    "as_autocast_dtype",
    "dtype_name",
    "fastest_autocast_dtype",
    "is_auto",
    "resolve_autocast_dtype",
    "resolve_channels_last",
]

logger = logging.getLogger(__name__)

_NAMES: dict[str, torch.dtype | None] = {
    "float32": None,
    "fp32": None,
    "none": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def is_auto(setting: object) -> bool:
    """Whether an ``autocast_dtype`` setting asks for measurement (``"auto"``, any case)."""
    return isinstance(setting, str) and setting.strip().lower() == "auto"


def as_autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"float32"`` -> ``None`` (no autocast); ``"bfloat16"``/``"float16"`` or a dtype -> that dtype.

    Raises:
        ValueError: an unknown name (``"auto"`` is resolved by :func:`resolve_autocast_dtype`).
    """
    if value is None or value == torch.float32:
        return None
    if isinstance(value, torch.dtype):
        if value not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be float32, bfloat16 or float16, got {value}")
        return value
    key = str(value).strip().lower()
    if key not in _NAMES:
        raise ValueError(
            f"autocast_dtype must be 'auto', null/'float32', 'bfloat16' or 'float16', got {value!r}"
        )
    return _NAMES[key]


def dtype_name(dtype: torch.dtype | None) -> str:
    """``None`` (no autocast) -> ``"float32"``; ``torch.bfloat16`` -> ``"bfloat16"`` (the names :func:`as_autocast_dtype` reads)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest_autocast_dtype(
    run: Callable[[], Any],
    device: torch.device | str,
    candidates: Sequence[torch.dtype | None] = (None, torch.bfloat16),
    repeats: int = 3,
    min_speedup: float = 1.1,
) -> tuple[torch.dtype | None, dict[str, float]]:
    """Time ``run`` under each autocast candidate and return the fastest one.

    Each candidate runs once to warm up, then ``repeats`` times, the candidates interleaved so that
    a burst of load from other processes does not fall on one of them only; its time is the best
    of its repeats. A reduced-precision candidate wins only when it is at least ``min_speedup``
    times faster than float32 (``None``), so noise never trades accuracy for nothing.

    Args:
        run: one representative step (forward, or forward and backward) of the real network at
            the real input size; it is called inside ``torch.autocast`` for the reduced dtypes.
        device: where ``run`` computes (its type selects the autocast device).
        candidates: ``None`` (float32) and reduced dtypes to try; float32 is always included.
        repeats: timed calls per candidate.
        min_speedup: how much faster than float32 a reduced dtype must be to be chosen.

    Returns:
        ``(dtype, seconds)``: the chosen dtype (``None`` for float32) and the best seconds per
        call of each candidate by name.
    """
    device = torch.device(device)
    candidates = [None] + [c for c in candidates if c is not None]
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")

    def call(dtype: torch.dtype | None) -> float:
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            run()
        _synchronize(device)
        return time.perf_counter() - start

    for dtype in candidates:
        call(dtype)
    best = {dtype_name(dtype): float("inf") for dtype in candidates}
    for _ in range(repeats):
        for dtype in candidates:
            best[dtype_name(dtype)] = min(best[dtype_name(dtype)], call(dtype))
    fp32 = best["float32"]
    chosen = None
    for dtype in candidates[1:]:
        seconds = best[dtype_name(dtype)]
        if fp32 >= min_speedup * seconds and (chosen is None or seconds < best[dtype_name(chosen)]):
            chosen = dtype
    return chosen, best


def resolve_autocast_dtype(
    setting: str | torch.dtype | None,
    network: torch.nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str,
    backward: bool = False,
    repeats: int = 3,
    min_speedup: float = 1.1,
    agree_across_ranks: bool = True,
) -> torch.dtype | None:
    """A config's ``autocast_dtype``: ``"auto"`` is measured on this device, anything else is taken as given.

    For ``"auto"`` a copy of ``network`` (unwrapped from DDP, in the network's own train/eval
    mode) runs forward, and backward to its parameters and its input when ``backward``
    (training, Integrated Gradients), on a random batch of ``input_shape`` under
    float32 and bfloat16 (:func:`fastest_autocast_dtype`); the network itself is not touched. In a
    distributed run every rank measures and, with ``agree_across_ranks``, rank 0's choice is
    broadcast so that all ranks agree (a collective call: every rank must make it).

    Args:
        setting: ``"auto"``, ``None``/``"float32"``, ``"bfloat16"``, ``"float16"`` or a dtype.
        network: the model the run will use.
        input_shape: one batch of the run, e.g. ``[batch, 1, 128, 128, 64]``.
        device: the run's device.
        backward: time forward and backward (training, gradients) instead of forward only.
        repeats, min_speedup: see :func:`fastest_autocast_dtype`.
        agree_across_ranks: broadcast rank 0's choice when ``torch.distributed`` is initialised;
            ``False`` where ranks probe at different times (each keeps its own measurement).

    Returns:
        ``None`` (float32) or the autocast dtype.
    """
    if not is_auto(setting):
        return as_autocast_dtype(setting)
    device = torch.device(device)
    model = copy.deepcopy(getattr(network, "module", network)).to(device)  # keeps the network's mode
    # gradients reach the input too, as Integrated Gradients needs them (and a frozen network has no others)
    inputs = torch.randn(*[int(s) for s in input_shape], device=device, requires_grad=backward)

    def step() -> None:
        if backward:
            with torch.enable_grad():  # also when the caller runs under no_grad
                _sum_outputs(model(inputs)).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(inputs)

    chosen, seconds = fastest_autocast_dtype(step, device, repeats=repeats, min_speedup=min_speedup)
    if agree_across_ranks and dist.is_available() and dist.is_initialized():
        decision = [dtype_name(chosen)]
        dist.broadcast_object_list(decision, src=0)
        chosen = as_autocast_dtype(decision[0])
    fp32 = seconds["float32"]
    logger.info(
        "autocast probe on %s (%s, input %s): %s -> %s",
        device,
        "forward+backward" if backward else "forward",
        list(input_shape),
        ", ".join(f"{name} {value * 1000:.0f} ms ({fp32 / value:.2f}x)" for name, value in seconds.items()),
        dtype_name(chosen),
    )
    return chosen


def resolve_channels_last(
    setting: bool | str,
    network: torch.nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    backward: bool = False,
    repeats: int = 3,
    min_speedup: float = 1.05,
    agree_across_ranks: bool = False,
) -> bool:
    """A config's ``channels_last``: ``"auto"`` is measured on this device, a boolean is taken as given.

    For ``"auto"`` a copy of ``network`` runs forward (and backward to its input when ``backward``,
    as Integrated Gradients does) on a random contiguous 4D batch of ``input_shape`` under
    ``autocast_dtype``, once with the network's weights contiguous and once channels-last (the
    explainer feeds contiguous points either way: the first convolution changes the layout),
    interleaved, best of ``repeats`` after a warm-up call each; the network itself is not touched.

    Args:
        setting: ``True``, ``False`` or ``"auto"``.
        network: the model the run will use.
        input_shape: one 4D batch of the run, e.g. ``[max_batch, 7, 512, 512]``.
        device: the run's device.
        autocast_dtype: the dtype the run will use (``None``: float32).
        backward: time forward and input-gradient backward instead of forward only.
        repeats: timed calls per memory format.
        min_speedup: how much faster channels-last must be to be chosen.
        agree_across_ranks: broadcast rank 0's choice when ``torch.distributed`` is initialised (a
            collective call: every rank must make it).

    Returns:
        Whether to use channels-last.

    Raises:
        ValueError: a setting other than a boolean or ``"auto"``, or ``"auto"`` with a non-4D shape.
    """
    if isinstance(setting, bool):
        return setting
    if not is_auto(setting):
        raise ValueError(f"channels_last must be true, false or 'auto', got {setting!r}")
    if len(input_shape) != 4:
        raise ValueError(f"channels_last 'auto' measures 4D batches, got input shape {list(input_shape)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    model = copy.deepcopy(getattr(network, "module", network)).to(device)
    inputs = torch.randn(*[int(s) for s in input_shape], device=device)
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

    def call(name: str) -> float:
        model.to(memory_format=formats[name])
        batch = inputs.detach().requires_grad_(backward)
        _synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if backward:
                with torch.enable_grad():
                    torch.autograd.grad(_sum_outputs(model(batch)), batch)
            else:
                with torch.no_grad():
                    model(batch)
        _synchronize(device)
        return time.perf_counter() - start

    best = {}
    for name in formats:  # warm-up, then interleaved timed calls
        call(name)
        best[name] = float("inf")
    for _ in range(repeats):
        for name in formats:
            best[name] = min(best[name], call(name))
    chosen = best["contiguous"] >= min_speedup * best["channels_last"]
    if agree_across_ranks and dist.is_available() and dist.is_initialized():
        decision = [bool(chosen)]
        dist.broadcast_object_list(decision, src=0)
        chosen = bool(decision[0])
    logger.info(
        "memory-format probe on %s (%s, %s, input %s): contiguous %.0f ms, channels_last %.0f ms (%.2fx) -> %s",
        device, dtype_name(autocast_dtype), "forward+input gradient" if backward else "forward", list(input_shape),
        best["contiguous"] * 1000, best["channels_last"] * 1000, best["contiguous"] / best["channels_last"],
        "channels_last" if chosen else "contiguous",
    )
    return chosen


def _sum_outputs(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs.float().sum()
    if isinstance(outputs, Mapping):
        return sum(_sum_outputs(v) for v in outputs.values())
    return sum(_sum_outputs(v) for v in outputs)


def _to_float32(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Mapping):
        return type(outputs)({k: _to_float32(v) for k, v in outputs.items()})
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float32(v) for v in outputs)
    return outputs


class _AutocastForward:
    """``network`` called under autocast, outputs returned as float32."""

    def __init__(self, network: Callable[..., Any], dtype: torch.dtype) -> None:
        self.network = network
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            outputs = self.network(inputs, *args, **kwargs)
        return _to_float32(outputs)


class AutocastInferer(Inferer):
    """Run ``inferer`` with the network's forward pass under autocast (float32 outputs).

    MONAI's trainers and evaluators autocast only on CUDA (their ``amp`` flag); this inferer
    brings a measured autocast dtype to any device. The inferer's own work (sliding-window
    weighting and aggregation) stays in float32.

    With ``dtype="auto"`` the choice is made on the first call of the network, with the input
    the network really receives (a training batch, or a sliding-window batch of patches):
    :func:`resolve_autocast_dtype` times a copy of the network in float32 and bfloat16 on that
    input's device and shape, then every later call uses the result (``self.dtype``).

    Under ``torchrun`` the ranks must compute the same way, yet each measures its own clock (two
    ranks of one CPU run chose float32 and bfloat16 in a probe). Three ways to agree:
    ``agree_across_ranks`` broadcasts rank 0's measurement, a collective call that is safe only
    where every rank makes its first call together (a DDP training step: all ranks run every
    iteration); ``follow`` adopts the dtype another ``AutocastInferer`` has already measured, with
    no collective call (validation follows training, so ranks with uneven validation shards cannot
    hang); :meth:`agree` measures before the first call, where all ranks run together (a config's
    ``initialize``), and broadcasts rank 0's choice, for evaluation and inference, whose uneven
    shards (a rank may have no batch at all) make a collective call at the first call unsafe.
    Without any of them, each process keeps its own measurement.

    Args:
        inferer: the inferer to wrap (``SimpleInferer``, ``SlidingWindowInferer``, ...).
        dtype: ``"auto"``, ``None``/``"float32"`` (``inferer`` unchanged), ``"bfloat16"`` or
            ``"float16"``.
        backward: the ``"auto"`` probe times forward and backward (training) instead of forward
            only (inference).
        agree_across_ranks: broadcast rank 0's ``"auto"`` measurement (see above; ignored when
            ``torch.distributed`` is not initialised).
        follow: an ``AutocastInferer`` whose measured dtype this one takes when it has measured
            before this one's first call; otherwise this one measures on its own.
    """

    def __init__(
        self,
        inferer: Inferer,
        dtype: str | torch.dtype | None = None,
        backward: bool = False,
        agree_across_ranks: bool = False,
        follow: AutocastInferer | None = None,
    ) -> None:
        super().__init__()
        if follow is not None and not isinstance(follow, AutocastInferer):
            raise TypeError(f"follow must be an AutocastInferer, got {type(follow).__name__}")
        self.inferer = inferer
        self.backward = bool(backward)
        self.agree_across_ranks = bool(agree_across_ranks)
        self.follow = follow
        self.pending = is_auto(dtype)
        self.dtype = None if self.pending else as_autocast_dtype(dtype)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Returns:
        What ``inferer`` returns, in float32."""
        if self.pending:
            return self.inferer(inputs, self._measure_then_forward(network), *args, **kwargs)
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        return self.inferer(inputs, _AutocastForward(network, self.dtype), *args, **kwargs)

    def agree(
        self,
        network: torch.nn.Module,
        input_shape: Sequence[int],
        device: torch.device | str,
    ) -> torch.dtype | None:
        """Resolve a pending ``"auto"`` dtype now, every rank measuring and all taking rank 0's choice.

        A collective call when the dtype is pending (``torch.distributed`` initialised): every rank
        must make it together, e.g. in a config's ``initialize`` after ``init_process_group``, never
        at a first batch that an empty shard does not reach. :func:`resolve_autocast_dtype` times a
        copy of ``network`` with ``agree_across_ranks=True``; a forward-only inferer
        (``backward=False``) times it in eval mode, as an evaluator runs it (the network's own
        modes are restored). ``follow`` is not consulted, so whether this call is collective
        depends only on ``pending``, which is the same on every rank that built this inferer from
        the same config and has not called it. When the dtype is not pending (a fixed dtype, or
        already measured) nothing is measured and no collective call is made.

        Args:
            network: the network the inferer will run (a DDP wrapper is fine: its ``module`` is timed).
            input_shape: the batch the network will receive, e.g. ``[sw_batch_size, 1, *patch_size]``
                for a sliding window.
            device: where the network will compute.

        Returns:
            The dtype every later call uses (``None``: float32).
        """
        if not self.pending:
            return self.dtype
        modes = {}
        if not self.backward and isinstance(network, torch.nn.Module):
            modes = {module: module.training for module in network.modules()}
            network.eval()
        try:
            self.dtype = resolve_autocast_dtype(
                "auto", network, input_shape, device, backward=self.backward, agree_across_ranks=True
            )
        finally:
            for module, training in modes.items():
                module.training = training
        self.pending = False
        if dist.is_available() and dist.is_initialized():
            logger.info("autocast dtype %s, rank 0's choice for all %d ranks (rank %d), agreed before the first call",
                        dtype_name(self.dtype), dist.get_world_size(), dist.get_rank())
        else:
            logger.info("autocast dtype %s, measured before the first call", dtype_name(self.dtype))
        return self.dtype

    def _measure_then_forward(self, network: Callable[..., Any]) -> Callable[..., Any]:
        def forward(inputs: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.pending:
                if self.follow is not None and not self.follow.pending:
                    self.dtype = self.follow.dtype
                    logger.info("autocast dtype %s, as measured by the inferer it follows", dtype_name(self.dtype))
                else:
                    self.dtype = resolve_autocast_dtype(
                        "auto", network, inputs.shape, inputs.device,
                        backward=self.backward, agree_across_ranks=self.agree_across_ranks,
                    )
                self.pending = False
            if self.dtype is None:
                return network(inputs, *args, **kwargs)
            return _AutocastForward(network, self.dtype)(inputs, *args, **kwargs)

        return forward
