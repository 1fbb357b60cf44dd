"""float32 against bfloat16 autocast (and channels_last) for the student and the teacher, on this machine.

Whether bfloat16 pays is a property of the CPU (AVX-512 bf16 / AMX: faster; AVX2 only: far
slower), so the bundles choose it at start-up (``custom.precision.resolve_autocast_dtype``,
``"autocast_dtype": "auto"``). This benchmark shows the same measurement in the open, every ratio
against float32 timed in the same process, candidates interleaved, best of ``repeats``:

- student training step (DynUNet demo network, forward + backward + AdamW, batch 4 x 64x64x32);
- student inference (forward of a sliding-window batch of 8 patches);
- teacher IG batch (EfficientNetV2-B0 classifier of the demo, forward + backward to the input,
  16 x 7 x 192 x 192);
- classifier training step (the same network, forward + backward + AdamW, batch 32 x 7 x 192 x 192,
  with and without channels_last).

Usage:
    python benchmarks/bench_precision.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import fire
import torch
from monai.networks.nets import DynUNet

from custom.networks import SliceClassifier


def _timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _training_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype | None,
    memory_format: torch.memory_format | None,
) -> Callable[[], None]:
    """One BCE training step (forward under autocast ``dtype``, backward, AdamW) in ``memory_format``."""

    def step() -> None:
        net.to(memory_format=memory_format or torch.contiguous_format)
        batch = inputs.to(memory_format=memory_format) if memory_format else inputs
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = net(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def _student() -> DynUNet:
    kernels = [[3, 3, 3]] * 6
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1]]
    return DynUNet(3, 1, 2, kernels, strides, strides[1:], filters=[8, 16, 32, 64, 128, 128], norm_name="instance", res_block=True)


def main(repeats: int = 3, threads: int = 2) -> None:
    """Print seconds per call and the float32 / candidate ratio of each case."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _student()
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(4, 1, 64, 64, 32)
    y = (torch.rand(4, 2, 64, 64, 32) > 0.99).float()

    def train(dtype: torch.dtype | None, channels_last: bool = False) -> Callable[[], None]:
        return _training_step(net, optimizer, x, y, dtype, torch.channels_last_3d if channels_last else None)

    patches = torch.randn(8, 1, 64, 64, 32)

    def infer(dtype: torch.dtype | None) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                net(patches)

        return step

    classifier = SliceClassifier("tf_efficientnetv2_b0", in_chans=7, feature_stage=2).eval().requires_grad_(False)
    windows = torch.randn(16, 7, 192, 192)

    def ig(dtype: torch.dtype | None, channels_last: bool = False) -> Callable[[], None]:
        def step() -> None:
            inputs = windows.to(memory_format=torch.channels_last) if channels_last else windows
            inputs = inputs.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                out = classifier(inputs)
            (grad,) = torch.autograd.grad(out.float().sum(), inputs)

        return step

    trainee = SliceClassifier("tf_efficientnetv2_b0", in_chans=7, feature_stage=2)
    trainee_optimizer = torch.optim.AdamW(trainee.parameters(), 1e-3)
    slices = torch.randn(32, 7, 192, 192)
    labels = (torch.rand(32, 1) > 0.5).float()

    def classifier_train(dtype: torch.dtype | None, channels_last: bool = False) -> Callable[[], None]:
        return _training_step(trainee, trainee_optimizer, slices, labels, dtype, torch.channels_last if channels_last else None)

    cases = {
        "student train": {"float32": train(None), "bfloat16": train(torch.bfloat16), "float32 channels_last": train(None, True)},
        "student inference": {"float32": infer(None), "bfloat16": infer(torch.bfloat16)},
        "teacher IG batch": {"float32": ig(None), "bfloat16": ig(torch.bfloat16), "float32 channels_last": ig(None, True)},
        "classifier train": {
            "float32": classifier_train(None),
            "bfloat16": classifier_train(torch.bfloat16),
            "float32 channels_last": classifier_train(None, True),
            "bfloat16 channels_last": classifier_train(torch.bfloat16, True),
        },
    }
    print(f"torch {torch.__version__}, {threads} threads, best of {repeats} (one warm-up each)")
    for case, fns in cases.items():
        best = _timed(fns, repeats)
        for name, seconds in best.items():
            print(f"  {case:<18s} {name:<22s} {seconds * 1000:8.1f} ms   float32 / this = {best['float32'] / seconds:.2f}")


if __name__ == "__main__":
    fire.Fire(main)
