"""Sliding-window layout and the Gaussian-weighted slice vote (sigma 0.8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from custom.data.minivolume import minivolume_indices
from custom.explain.aggregation import aggregate_windows, slice_window_weights, window_slice_indices


def test_windows_match_the_classifier_data():
    for n_slices in (1, 3, 10):
        indices = window_slice_indices(n_slices)
        assert indices.shape == (n_slices, 7)
        for k in range(n_slices):
            np.testing.assert_array_equal(indices[k].numpy(), minivolume_indices(k, n_slices, 7))


def test_weights():
    weights = slice_window_weights(7, 0.8)
    expected = [math.exp(-(d**2) / (2 * 0.64)) for d in range(-3, 4)]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    assert float(weights[3]) == 1.0
    with pytest.raises(ValueError):
        slice_window_weights(7, 0.0)


def test_all_windows_agreeing_give_one_everywhere():
    soft = aggregate_windows(torch.ones(10, 7, 2, 3), torch.arange(10), 10)
    torch.testing.assert_close(soft, torch.ones(10, 2, 3))


def test_single_window_votes_with_gaussian_weights():
    weights = slice_window_weights()
    total = float(weights.sum())  # weight an interior slice receives from all windows
    maps = torch.zeros(1, 7, 1, 2)
    maps[0, :, 0, 0] = 1.0
    soft = aggregate_windows(maps, torch.tensor([10]), 20)
    expected = np.zeros(20)
    expected[7:14] = weights.numpy() / total
    np.testing.assert_allclose(soft[:, 0, 0].numpy(), expected, rtol=1e-5, atol=1e-8)
    assert not soft[:, 0, 1].any()
    assert float(soft[10, 0, 0]) == pytest.approx(0.4987, abs=1e-4)  # the centre window alone: under 0.5
    assert float(soft[10, 0, 0] + soft[11, 0, 0]) > 0.5  # ... with one neighbouring window: over


def test_a_non_default_sigma_changes_the_weights():
    sigma = 2.0
    gaussian = [math.exp(-(d**2) / (2 * sigma**2)) for d in range(-3, 4)]  # 1, 0.8825, 0.6065, 0.3247
    np.testing.assert_allclose(slice_window_weights(7, sigma).numpy(), gaussian, rtol=1e-6)
    maps = torch.zeros(1, 7, 1, 1)
    maps[0, :, 0, 0] = 1.0
    soft = aggregate_windows(maps, torch.tensor([10]), 20, sigma=sigma)[:, 0, 0].numpy()
    expected = np.zeros(20)
    expected[7:14] = np.asarray(gaussian) / sum(gaussian)
    np.testing.assert_allclose(soft, expected, rtol=1e-5, atol=1e-8)
    assert soft[10] == pytest.approx(1 / 4.6274, abs=1e-4)  # sigma 0.8 would give 0.4987


def brute_force(maps: np.ndarray, centers: list[int], n_slices: int, weights: np.ndarray) -> np.ndarray:
    votes = np.zeros((n_slices, *maps.shape[2:]))
    received = np.zeros(n_slices)
    for k in range(n_slices):
        for d in range(7):
            z = min(max(k + d - 3, 0), n_slices - 1)
            received[z] += weights[d]
            if k in centers:
                votes[z] += weights[d] * maps[centers.index(k), d]
    return votes / received[:, None, None]


def test_matches_a_brute_force_vote_including_the_ends():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand((5, 7, 2, 3), generator=generator) > 0.5
    centers = [0, 1, 4, 7, 8]
    soft = aggregate_windows(maps, torch.tensor(centers), 9, sigma=0.8)
    expected = brute_force(maps.numpy().astype(float), centers, 9, slice_window_weights(7, 0.8).numpy().astype(float))
    np.testing.assert_allclose(soft.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert soft.min() >= 0 and soft.max() <= 1


def test_replicated_end_slice():
    weights = slice_window_weights().numpy()
    soft = aggregate_windows(torch.ones(1, 7, 1, 1), torch.tensor([0]), 10)[:, 0, 0].numpy()
    # slice 0 is channels 0-3 of window 0, channels 0-2 of window 1, 0-1 of window 2, 0 of window 3
    received = weights[:4].sum() + weights[:3].sum() + weights[:2].sum() + weights[:1].sum()
    assert soft[0] == pytest.approx(weights[:4].sum() / received, rel=1e-5)
    assert soft[0] > 0.5  # at the study end the own window carries more of the weight


def test_argument_errors():
    with pytest.raises(ValueError, match="centres"):
        aggregate_windows(torch.ones(2, 7, 1, 1), torch.tensor([0]), 5)
    with pytest.raises(ValueError, match="outside"):
        aggregate_windows(torch.ones(1, 7, 1, 1), torch.tensor([5]), 5)
    with pytest.raises(ValueError, match="odd"):
        window_slice_indices(5, 6)
