"""Hysteresis clustering: the 5 x 15 x 15 box neighbourhood, pinned on hand-built volumes, for both methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from custom.explain.hysteresis import box_dilate, hysteresis_threshold

METHODS = pytest.mark.parametrize("method", ["dilate", "label", "auto"])

HIGH = 1.0
LOW_VALUE = 0.6  # above the default low threshold high / 2 = 0.5, below high


def volume_with_seed(shape=(9, 40, 40), seed=(4, 20, 20)) -> torch.Tensor:
    heatmap = torch.zeros(shape)
    heatmap[seed] = 2.0
    return heatmap


@pytest.mark.parametrize(
    "offset, joins",
    [
        ((0, 0, 7), True),
        ((0, 0, 8), False),
        ((0, 7, 0), True),
        ((0, 8, 0), False),
        ((0, -7, -7), True),  # Chebyshev box, not a disc
        ((0, 7, 8), False),
        ((2, 0, 0), True),
        ((3, 0, 0), False),
        ((-2, 7, -7), True),  # a corner of the box
        ((-3, 1, 1), False),
    ],
)
@METHODS
def test_box_neighbourhood(offset, joins, method):
    heatmap = volume_with_seed()
    candidate = (4 + offset[0], 20 + offset[1], 20 + offset[2])
    heatmap[candidate] = LOW_VALUE
    mask = hysteresis_threshold(heatmap, HIGH, method=method)
    assert bool(mask[4, 20, 20])
    assert bool(mask[candidate]) is joins
    assert int(mask.sum()) == 1 + int(joins)


@METHODS
def test_chains_grow_transitively(method):
    heatmap = volume_with_seed(shape=(12, 8, 60), seed=(0, 4, 0))
    for x in (7, 14, 21, 28):  # each 7 columns from the previous one
        heatmap[0, 4, x] = LOW_VALUE
    for z in (2, 4, 6):  # and a chain through slices, 2 apart, from the last one
        heatmap[z, 4, 28] = LOW_VALUE
    heatmap[0, 4, 36] = LOW_VALUE  # 8 columns from the chain: stays out
    heatmap[9, 4, 28] = LOW_VALUE  # 3 slices from the chain: stays out
    mask = hysteresis_threshold(heatmap, HIGH, method=method)
    assert mask[0, 4, [0, 7, 14, 21, 28]].all()
    assert mask[[2, 4, 6], 4, 28].all()
    assert not mask[0, 4, 36] and not mask[9, 4, 28]
    assert int(mask.sum()) == 8


@METHODS
def test_nothing_without_a_seed(method):
    heatmap = torch.full((5, 20, 20), LOW_VALUE)
    assert not hysteresis_threshold(heatmap, HIGH, method=method).any()
    heatmap[2, 10, 10] = HIGH  # equal to high is not a seed (strictly above)
    assert not hysteresis_threshold(heatmap, HIGH, method=method).any()
    heatmap[2, 10, 10] = HIGH + 1e-3
    assert hysteresis_threshold(heatmap, HIGH, method=method).all()


@METHODS
def test_low_threshold_default_is_half_of_high(method):
    heatmap = volume_with_seed()
    heatmap[4, 20, 21] = 0.51
    heatmap[4, 20, 19] = 0.49
    mask = hysteresis_threshold(heatmap, HIGH, method=method)
    assert mask[4, 20, 21] and not mask[4, 20, 19]
    explicit = hysteresis_threshold(heatmap, HIGH, low=0.45, method=method)
    assert explicit[4, 20, 19]


@METHODS
def test_matches_scipy_reconstruction_and_batches(method):
    """Random heatmaps against geodesic reconstruction with scipy's binary dilation, batched (2, 3, Z, Y, X)."""
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.rand((2, 3, 7, 24, 24), generator=generator) ** 4 * 3.0
    mask = hysteresis_threshold(heatmaps, 2.0, neighbourhood=(3, 5, 7), method=method)
    structure = np.ones((3, 5, 7), dtype=bool)
    for index in np.ndindex(2, 3):
        values = heatmaps[index].numpy()
        candidates = values > 1.0
        region = values > 2.0
        while True:
            grown = ndimage.binary_dilation(region, structure=structure) & candidates
            if np.array_equal(grown, region):
                break
            region = grown
        assert region.sum() > (values > 2.0).sum()  # the test exercises growth
        np.testing.assert_array_equal(mask[index].numpy(), region)


def test_box_dilate_is_a_box():
    volume = torch.zeros(1, 1, 7, 21, 21)
    volume[0, 0, 3, 10, 10] = 1.0
    dilated = box_dilate(volume, (5, 15, 15))[0, 0]
    assert int(dilated.sum()) == 5 * 15 * 15
    assert dilated[1:6, 3:18, 3:18].all()


def test_argument_errors():
    with pytest.raises(ValueError, match="odd"):
        hysteresis_threshold(torch.zeros(5, 5, 5), 1.0, neighbourhood=(5, 14, 15))
    with pytest.raises(ValueError, match="above the high"):
        hysteresis_threshold(torch.zeros(5, 5, 5), 1.0, low=2.0)
    with pytest.raises(ValueError, match="at least 3"):
        hysteresis_threshold(torch.zeros(5, 5), 1.0)
    with pytest.raises(ValueError, match="method"):
        hysteresis_threshold(torch.zeros(5, 5, 5), 1.0, method="watershed")  # type: ignore[arg-type]
