"""Pointing game (custom.explain.pointing_game): hits when the top IG pixel lies on or near an embolus."""

import numpy as np
import pytest
import torch
from torch import nn

from custom.explain import IntegratedGradientsExplainer
from custom.explain.pointing_game import pointing_game


class DarkSpotDetector(nn.Module):
    """Fires on dark voxels of the centre slice: a stand-in classifier that looks at the 'embolus'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 - x[:, 3]).pow(4).flatten(1).sum(1, keepdim=True)


def _study(spot_rc, shape=(9, 32, 32)):
    volume = np.full(shape, 0.9, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    r, c = spot_rc
    volume[3:6, r : r + 2, c : c + 2] = 0.1
    mask[3:6, r : r + 2, c : c + 2] = 1
    return volume, mask


def test_detector_that_looks_at_the_embolus_scores_all_hits():
    explainer = IntegratedGradientsExplainer(DarkSpotDetector(), n_steps=8, references=("fill",), fill_value=1.0, channels_last=False)
    result = pointing_game(explainer, [_study((10, 20)), _study((5, 5))])
    assert result.total == 6 and result.hits == 6 and result.hit_rate == 1.0
    assert max(result.distances_px) == 0.0


def test_top_pixel_away_from_the_embolus_is_a_miss_beyond_the_tolerance():
    volume, mask = _study((10, 20))
    wrong_mask = np.zeros_like(mask)
    wrong_mask[3:6, 10:12, 26:28] = 1  # 6 px right of the dark spot: a miss at 3 px, a hit at 6 px
    explainer = IntegratedGradientsExplainer(DarkSpotDetector(), n_steps=8, references=("fill",), fill_value=1.0, channels_last=False)
    assert pointing_game(explainer, [(volume, wrong_mask)], tolerance_px=3.0).hit_rate == 0.0
    assert pointing_game(explainer, [(volume, wrong_mask)], tolerance_px=6.0).hit_rate == 1.0
    assert pointing_game(explainer, [(volume, wrong_mask)], max_slices_per_study=1).total == 1
    with pytest.raises(ValueError, match="differ in shape"):
        pointing_game(explainer, [(volume, wrong_mask[:, :5])])
