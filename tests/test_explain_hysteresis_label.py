"""Hysteresis clustering: the labelling method equals the iterated-dilation reference exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import custom.explain.hysteresis as hysteresis_module
from custom.explain.hysteresis import hysteresis_threshold

NEIGHBOURHOODS = [
    (1, 1, 1),
    (1, 1, 3),
    (1, 3, 1),
    (3, 1, 1),
    (3, 3, 3),
    (1, 5, 5),
    (5, 5, 5),
    (3, 5, 7),
    (7, 3, 1),
    (5, 15, 15),
    (5, 7, 7),
    (9, 3, 5),
    (17, 17, 3),  # radius 8 on thin axes
]
SHAPES = [(1, 1, 1), (2, 3, 4), (3, 2, 40), (3, 3, 30), (2, 5, 3, 6), (7, 24, 24), (2, 7, 19, 23), (2, 2, 6, 11, 9), (13, 5, 31)]


def both_methods(heatmap: torch.Tensor, high: float, low: float | None, neighbourhood) -> tuple[torch.Tensor, ...]:
    reference = hysteresis_threshold(heatmap, high, low, neighbourhood, method="dilate")
    fast = hysteresis_threshold(heatmap, high, low, neighbourhood, method="label")
    return reference, fast


def assert_same(reference: torch.Tensor, fast: torch.Tensor) -> None:
    assert fast.dtype == torch.bool and fast.shape == reference.shape and fast.device == reference.device
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("neighbourhood", NEIGHBOURHOODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_random_volumes_match_the_reference(shape, neighbourhood):
    """Sparse to dense candidates (the power spreads the values), several thresholds and seeds."""
    generator = torch.Generator().manual_seed(hash((shape, neighbourhood)) % 2**31)
    grown = 0
    for power, high, low in [(4, 2.0, None), (8, 2.5, 0.3), (2, 2.9, 1.5), (6, 1.0, 1.0), (3, 2.0, 0.05)]:
        heatmap = torch.rand(shape, generator=generator) ** power * 3.0
        reference, fast = both_methods(heatmap, high, low, neighbourhood)
        assert_same(reference, fast)
        grown += int(reference.sum()) - int((heatmap > high).sum())
    if np.prod(shape) > 100 and max(neighbourhood) > 1:
        assert grown > 0  # the volumes exercise growth beyond the seeds


@pytest.mark.parametrize("neighbourhood", [(3, 5, 7), (5, 15, 15), (1, 3, 5), (5, 1, 3)])
def test_objects_touching_the_borders(neighbourhood):
    """Candidates concentrated on the faces, edges and corners of the volume, seeds among them."""
    generator = torch.Generator().manual_seed(7)
    shape = (9, 33, 29)
    for trial in range(6):
        heatmap = torch.zeros(shape)
        border = torch.zeros(shape, dtype=torch.bool)
        for axis in range(3):
            index = [slice(None)] * 3
            for edge in (0, shape[axis] - 1):
                index[axis] = edge
                border[tuple(index)] = True
        noise = torch.rand(shape, generator=generator)
        density = 0.02 + 0.05 * trial
        heatmap[border & (noise < density)] = 0.6
        heatmap[border & (noise < density / 8)] = 1.5
        heatmap[(~border) & (noise < density / 10)] = 0.6
        reference, fast = both_methods(heatmap, 1.0, None, neighbourhood)
        assert_same(reference, fast)
        assert reference.sum() > (heatmap > 1.0).sum()


@pytest.mark.parametrize("neighbourhood", [(5, 15, 15), (3, 5, 7), (5, 5, 5), (1, 5, 3), (3, 1, 5), (3, 3, 1)])
@pytest.mark.parametrize("corner", list(itertools.product((0, 1), repeat=3)))
def test_diagonal_chains_at_r_and_r_plus_one(neighbourhood, corner):
    """A chain of steps of exactly ``r`` on every axis joins; one more on any axis cuts it."""
    radius = np.array([n // 2 for n in neighbourhood])
    steps = 3
    shape = tuple(int(r) * steps + 3 for r in radius)
    direction = np.array([-1 if c else 1 for c in corner])
    start = np.array([s - 1 if c else 0 for s, c in zip(shape, corner)])  # a corner of the volume
    heatmap = torch.zeros(shape)
    chain = [tuple(start + direction * radius * k) for k in range(steps + 1)]
    heatmap[chain[0]] = 2.0
    for voxel in chain[1:]:
        heatmap[voxel] = 0.6
    reference, fast = both_methods(heatmap, 1.0, None, neighbourhood)
    assert_same(reference, fast)
    assert all(bool(reference[voxel]) for voxel in chain)
    for axis in range(3):
        step = radius.copy()
        step[axis] += 1  # r + 1 on one axis, r on the others
        end = start + direction * step
        if not all(0 <= e < s for e, s in zip(end, shape)):
            continue
        cut = torch.zeros(shape)
        cut[tuple(start)] = 2.0
        cut[tuple(end)] = 0.6
        reference, fast = both_methods(cut, 1.0, None, neighbourhood)
        assert_same(reference, fast)
        assert not bool(reference[tuple(end)]) and int(reference.sum()) == 1


def test_batch_entries_are_independent():
    """A seed in one volume of a batch does not pull candidates of the next one (both methods)."""
    heatmap = torch.zeros(3, 5, 8, 8)
    heatmap[0, 4, 4, 4] = 2.0
    heatmap[1, 0, 4, 4] = 0.6  # same Y, X, next volume: would be a neighbour if the batch were stacked
    heatmap[2, 2, 2, 2] = 0.6
    heatmap[2, 2, 2, 3] = 2.0
    reference, fast = both_methods(heatmap, 1.0, None, (5, 5, 5))
    assert_same(reference, fast)
    assert not reference[1].any() and int(reference[2].sum()) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_non_contiguous_input(dtype):
    generator = torch.Generator().manual_seed(3)
    heatmap = (torch.rand((4, 7, 21, 17), generator=generator) ** 5 * 3.0).to(dtype).transpose(-1, -2)
    assert not heatmap.is_contiguous()
    reference, fast = both_methods(heatmap, 2.0, None, (3, 5, 5))
    assert_same(reference, fast)
    assert reference.sum() > (heatmap > 2.0).sum()


@pytest.mark.parametrize("method", ["dilate", "label", "auto"])
@pytest.mark.parametrize("shape", [(0, 7, 5, 5), (2, 0, 5, 5), (3, 4, 0), (0, 0, 0)])
def test_empty_inputs(shape, method):
    mask = hysteresis_threshold(torch.zeros(shape), 1.0, method=method)
    assert mask.shape == shape and mask.dtype == torch.bool


def test_no_seed_and_all_seeds():
    for fill in (0.6, 2.0, 0.0):
        heatmap = torch.full((2, 4, 9, 9), fill)
        reference, fast = both_methods(heatmap, 1.0, None, (3, 5, 5))
        assert_same(reference, fast)
        assert bool(reference.all()) is (fill > 1.0)


def test_auto_uses_labels_on_cpu(monkeypatch):
    calls: list[str] = []
    label, dilate = hysteresis_module._reconstruct_by_labels, hysteresis_module._reconstruct_by_dilation

    def spy_label(*args):
        calls.append("label")
        return label(*args)

    def spy_dilate(*args):
        calls.append("dilate")
        return dilate(*args)

    monkeypatch.setattr(hysteresis_module, "_reconstruct_by_labels", spy_label)
    monkeypatch.setattr(hysteresis_module, "_reconstruct_by_dilation", spy_dilate)
    heatmap = torch.zeros(5, 9, 9)
    heatmap[2, 4, 4] = 2.0
    heatmap[2, 4, 6] = 0.6
    assert int(hysteresis_threshold(heatmap, 1.0, neighbourhood=(3, 5, 5)).sum()) == 2
    assert calls == ["label"]
    hysteresis_threshold(heatmap, 1.0, neighbourhood=(3, 5, 5), method="dilate")
    assert calls == ["label", "dilate"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors():
    generator = torch.Generator().manual_seed(5)
    heatmap = (torch.rand((3, 7, 40, 40), generator=generator) ** 4 * 3.0).cuda()
    auto = hysteresis_threshold(heatmap, 2.0, neighbourhood=(5, 7, 7))
    label = hysteresis_threshold(heatmap, 2.0, neighbourhood=(5, 7, 7), method="label")
    cpu = hysteresis_threshold(heatmap.cpu(), 2.0, neighbourhood=(5, 7, 7))
    assert auto.device == heatmap.device and label.device == heatmap.device
    assert torch.equal(auto, label) and torch.equal(auto.cpu(), cpu)


@pytest.mark.parametrize("length", list(range(1, 21)))
def test_one_sided_box_is_a_max_filter(length):
    generator = np.random.default_rng(length)
    mask = generator.random((3, 5, 41)) < 0.05
    for axis in range(3):
        expected = np.zeros_like(mask)
        for shift in range(min(length, mask.shape[axis])):
            index = [slice(None)] * 3
            source = [slice(None)] * 3
            index[axis] = slice(shift, None)
            source[axis] = slice(None, mask.shape[axis] - shift)
            expected[tuple(index)] |= mask[tuple(source)]
        np.testing.assert_array_equal(hysteresis_module._one_sided_box(mask, length, axis), expected)
