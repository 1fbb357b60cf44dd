"""Speed of the batched IG explainer (issue 5, item 7 a, b): against plain Captum, and against the matmul peak.

In one run, on the same classifier and mini-volumes:

- Captum: ``IntegratedGradients(model).attribute(x_i, 0.0, n_steps=...)`` called per mini-volume, float32
  (Captum batches the ``n_steps`` points of one mini-volume into one pass);
- the project's ``IntegratedGradientsExplainer`` (one "fill" reference, the same quadrature) folding
  all mini-volumes x steps into passes of ``max_batch`` items, in eight variants: float32 or bfloat16
  autocast, contiguous or channels-last, eager or ``torch.compile`` (``compile=True``; its first run
  pays the compiling, printed apart, and ``--repeats`` must be at least 2 for the compiled rate),
  batch norms folded into the convolutions (the explainer's default, ``fold_batchnorm=True``) or
  not (``*_unfolded``);
- the largest attribution difference of each variant from Captum (absolute, and relative to Captum's
  largest attribution);
- this machine's matmul peak (``torch.mm`` of two large square matrices, float32 and bfloat16), the FLOPs
  of one explained mini-volume (``torch.utils.flop_counter.FlopCounterMode``, forward + input
  gradient), and the fraction of the peak of the same dtype each variant reaches.

The classifier is ``custom.networks.SliceClassifier`` (default ``tf_efficientnetv2_b0``, 7 x 128 x 128,
the demo scale), randomly initialised; its zero-initialised output layer is given random weights so
that the attributions are not all zero, and its batch norms trained-looking statistics and affine
parameters, so that folding them is not close to the identity. Rates and the peak are per CPU-second of this process
(``time.process_time``) with ``--threads 1`` by default: on a machine shared with other jobs the wall
time mostly measures their load, the CPU time much less. Each time is the best of ``--repeats - 1``
interleaved rounds after a first, untimed warm-up round (which pays the compiling of the compiled
variants; with ``--repeats 1`` that single round is timed, warm-up included); wall times and the load
average are printed too.

Usage: ``.venv/bin/python benchmarks/bench_ig.py [--n_volumes 4 --n_steps 16 --max_batch 64 --repeats 3 --threads 1 --compiled True]``.
The last lines printed are the ratios.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import torch
from captum.attr import IntegratedGradients
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from custom.explain import IntegratedGradientsExplainer
from custom.io.atomic import write_json_atomic
from custom.networks import SliceClassifier

VARIANTS = {  # name: (autocast dtype, channels_last, torch.compile, batch norms folded)
    "fp32_unfolded": (None, False, False, False),
    "fp32": (None, False, False, True),
    "fp32_channels_last": (None, True, False, True),
    "bf16": (torch.bfloat16, False, False, True),
    "bf16_channels_last_unfolded": (torch.bfloat16, True, False, False),
    "bf16_channels_last": (torch.bfloat16, True, False, True),
    "fp32_compiled": (None, False, True, True),
    "bf16_channels_last_compiled": (torch.bfloat16, True, True, True),
}


def make_classifier(model_name: str, feature_stage: int | None, seed: int) -> nn.Module:
    """The slice classifier with a random (not zero) output layer and random batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = SliceClassifier(model_name=model_name, in_chans=7, feature_stage=feature_stage)
    nn.init.normal_(model.fc.weight, std=1.0 / model.fc.in_features**0.5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


def measure(function: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """Run ``function`` once: ``(result, wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP per CPU-second of ``torch.mm`` on two ``size x size`` matrices of ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = min(measure(lambda: torch.mm(a, b))[2] for _ in range(repeats))
    return 2.0 * size**3 / best


def flops_per_minivolume(model: nn.Module, size: int, n_steps: int) -> float:
    """FLOPs of explaining one mini-volume: forward + input-gradient backward of ``n_steps`` points.

    Counted on a pass like the explainer's; the points are fed through ``* 1.0`` because
    ``FlopCounterMode``'s module hooks reject a leaf tensor as a module input under ``autograd.grad``.
    """
    points = torch.rand((n_steps, 7, size, size), requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        logits = model(points * 1.0)
        torch.autograd.grad(logits.sum(), points)
    return float(counter.get_total_flops())


def best_times(
    functions: dict[str, Callable[[], torch.Tensor]], repeats: int
) -> tuple[dict[str, float], dict[str, float], dict[str, torch.Tensor], dict[str, float]]:
    """Best wall and CPU seconds of each function over ``repeats`` interleaved rounds (after the
    first round when there are several), its last result, and the wall seconds of its first run."""
    walls = {name: float("inf") for name in functions}
    cpus = dict(walls)
    first: dict[str, float] = {}
    results: dict[str, torch.Tensor] = {}
    for round_index in range(repeats):
        for name, function in functions.items():
            results[name], wall, cpu = measure(function)
            if round_index == 0:
                first[name] = wall
                if repeats > 1:
                    continue
            walls[name], cpus[name] = min(walls[name], wall), min(cpus[name], cpu)
    return walls, cpus, results, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", default="tf_efficientnetv2_b0")
    parser.add_argument("--feature_stage", type=int, default=None)
    parser.add_argument("--size", type=int, default=128, help="in-plane size of the 7-slice mini-volumes")
    parser.add_argument("--n_volumes", type=int, default=4)
    parser.add_argument("--n_steps", type=int, default=16)
    parser.add_argument("--max_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the first is a warm-up when there are several")
    parser.add_argument("--compiled", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="also time the torch.compile variants (about a minute of compiling each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible CPU time on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_json", default=None, help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = make_classifier(args.model_name, args.feature_stage, args.seed)
    x = torch.rand((args.n_volumes, 7, args.size, args.size), generator=torch.Generator().manual_seed(args.seed))
    captum = IntegratedGradients(model)
    functions: dict[str, Callable[[], torch.Tensor]] = {
        "captum": lambda: torch.cat(
            [captum.attribute(x[i : i + 1], 0.0, n_steps=args.n_steps, method="gausslegendre") for i in range(len(x))]
        )
    }
    for name, (dtype, channels_last, compiled, folded) in VARIANTS.items():
        if compiled and not args.compiled:
            continue
        explainer = IntegratedGradientsExplainer(
            copy.deepcopy(model), n_steps=args.n_steps, method="gausslegendre", references=("fill",),
            max_batch=args.max_batch, autocast_dtype=dtype, channels_last=channels_last, compile=compiled,
            fold_batchnorm=folded,
        )
        functions[name] = lambda explainer=explainer: explainer(x)
    walls, times, results, first_walls = best_times(functions, args.repeats)
    flops = flops_per_minivolume(model, args.size, args.n_steps)
    peaks = {"fp32": matmul_peak_flops(torch.float32), "bf16": matmul_peak_flops(torch.bfloat16)}
    load_after = os.getloadavg()

    reference = results["captum"]
    scale = float(reference.abs().max())
    rates = {name: args.n_volumes / seconds for name, seconds in times.items()}
    print(f"model {args.model_name} (feature_stage {args.feature_stage}), {args.n_volumes} mini-volumes 7x{args.size}x{args.size}, "
          f"n_steps {args.n_steps}, max_batch {args.max_batch}, threads {torch.get_num_threads()}, "
          f"best of {max(args.repeats - 1, 1)} timed rounds{' after a warm-up round' if args.repeats > 1 else ' (warm-up included)'}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (other jobs share this CPU)")
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; "
          f"{flops / 1e9:.2f} GFLOP per explained mini-volume")
    summary: dict[str, dict[str, float]] = {}
    for name, rate in rates.items():
        difference = float((results[name] - reference).abs().max())
        peak = peaks["bf16" if name.startswith("bf16") else "fp32"]
        summary[name] = {
            "cpu_seconds": times[name], "wall_seconds": walls[name], "minivolumes_per_cpu_s": rate, "max_abs_difference": difference,
            "max_rel_difference": difference / scale, "peak_fraction": rate * flops / peak,
        }
        print(f"{name:>27}: {rate:7.3f} mini-volumes/s  {times[name]:7.2f} s CPU ({walls[name]:6.2f} s wall)  max |diff| {difference:.2e} "
              f"({difference / scale:.1e} of max |attr|)  {100 * rate * flops / peak:5.1f} % of the {('bf16' if name.startswith('bf16') else 'fp32')} matmul peak"
              f"  first run {first_walls[name]:.1f} s wall")
        summary[name]["first_run_wall_seconds"] = first_walls[name]
    best = max((name for name in VARIANTS if name in rates), key=lambda name: rates[name])
    ratios = {
        "explainer fp32 unfolded / captum fp32": rates["fp32_unfolded"] / rates["captum"],
        "explainer fp32 / captum fp32": rates["fp32"] / rates["captum"],
        "batch norms folded / unfolded (fp32)": rates["fp32"] / rates["fp32_unfolded"],
        "batch norms folded / unfolded (bf16 channels_last)": rates["bf16_channels_last"] / rates["bf16_channels_last_unfolded"],
        f"explainer best ({best}) / captum fp32": rates[best] / rates["captum"],
        "channels_last / contiguous (fp32)": rates["fp32_channels_last"] / rates["fp32"],
        "bf16 / fp32 (contiguous)": rates["bf16"] / rates["fp32"],
        "bf16 channels_last / fp32 contiguous": rates["bf16_channels_last"] / rates["fp32"],
        "explainer fp32 fraction of fp32 matmul peak": summary["fp32"]["peak_fraction"],
    }
    if "fp32_compiled" in rates:
        ratios["compiled / eager (fp32)"] = rates["fp32_compiled"] / rates["fp32"]
        ratios["compiled / eager (bf16 channels_last)"] = rates["bf16_channels_last_compiled"] / rates["bf16_channels_last"]
    ratios[f"explainer best ({best}) / captum fp32"] = ratios.pop(f"explainer best ({best}) / captum fp32")  # last line
    if args.out_json:
        write_json_atomic(args.out_json, {"args": vars(args), "flops_per_minivolume": flops, "peaks": peaks,
                                          "load_average": [load_before[0], load_after[0]], "variants": summary, "ratios": ratios})
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.3f}")


if __name__ == "__main__":
    main()
