"""Algorithm 1: the three stop conditions, masking with the fill value, the union of rounds, lockstep batching."""

from __future__ import annotations

import torch
from torch import nn

from custom.explain.iexplain import iexplain_minivolumes, predict_probabilities

FILL = 0.25


class ConstantClassifier(nn.Module):
    """Always the same logit: only the round limit or the voxel count can stop Algorithm 1."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), self.logit)


class BrightClassifier(nn.Module):
    """Positive while any voxel is brighter than 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x.flatten(1).amax(dim=1, keepdim=True) - 0.5)


class BrightestExplainer:
    """Heatmap = 1 on the brightest voxels of each mini-volume (one blob per round), and records its inputs."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.clone())
        peak = x.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        return (x >= peak).float() * (peak > 0.5).float()


def blobs_volume(levels: list[float], size: int = 4) -> torch.Tensor:
    """A (7, 32, 32) mini-volume at 0.1 with cubes of the given brightness, 8 px apart along the diagonal."""
    volume = torch.full((7, 32, 32), 0.1)
    for i, level in enumerate(levels):
        volume[1 : 1 + size, 8 * i : 8 * i + size, 8 * i : 8 * i + size] = level
    return volume


def run(minivolumes, classifier, explainer, **kwargs):
    settings = dict(high_threshold=0.5, neighbourhood=(1, 3, 3), max_rounds=10, min_voxels=50, fill_value=FILL)
    settings.update(kwargs)
    return iexplain_minivolumes(minivolumes, classifier, explainer, **settings)


def test_stops_when_the_classifier_turns_negative():
    x = blobs_volume([0.9, 0.8, 0.7]).unsqueeze(0)  # three 64-voxel cubes
    explainer = BrightestExplainer()
    result = run(x, BrightClassifier(), explainer)
    assert result.rounds.tolist() == [3]
    assert result.stop_reasons == ["negative"]
    assert result.new_voxels[0, :4].tolist() == [64, 64, 64, 0]
    probabilities = result.probabilities[0]
    assert (probabilities[:3] > 0.5).all() and probabilities[3] < 0.5 and torch.isnan(probabilities[4:]).all()
    for round_index, level in enumerate([0.9, 0.8, 0.7], start=1):
        assert torch.equal(result.round_map[0] == round_index, x[0] == level)


def test_stops_at_the_round_limit():
    x = blobs_volume([0.9, 0.8, 0.7]).unsqueeze(0)
    result = run(x, ConstantClassifier(3.0), BrightestExplainer(), max_rounds=2)
    assert result.rounds.tolist() == [2]
    assert result.stop_reasons == ["max_rounds"]
    assert sorted(result.round_map.unique().tolist()) == [0, 1, 2]
    assert result.probabilities.shape == (1, 3) and not torch.isnan(result.probabilities).any()


def test_stops_after_a_round_with_few_new_voxels():
    x = blobs_volume([0.9, 0.8, 0.7], size=3).unsqueeze(0)  # 27-voxel cubes
    result = run(x, ConstantClassifier(3.0), BrightestExplainer(), min_voxels=28)
    assert result.rounds.tolist() == [1] and result.stop_reasons == ["few_voxels"]
    result = run(x, ConstantClassifier(3.0), BrightestExplainer(), min_voxels=27)  # >= min_voxels goes on
    assert result.rounds.tolist() == [4] and result.stop_reasons == ["few_voxels"]  # round 4 finds nothing new


def test_masking_uses_the_fill_value_and_the_union_is_kept():
    x = blobs_volume([0.9, 0.8]).unsqueeze(0)
    explainer = BrightestExplainer()
    result = run(x, BrightClassifier(), explainer)
    assert len(explainer.calls) == 2
    first, second = explainer.calls
    assert torch.equal(first, x)
    expected = torch.where(x == 0.9, torch.tensor(FILL), x)
    assert torch.equal(second, expected)
    assert torch.equal(result.mask, (x == 0.9) | (x == 0.8))
    assert torch.equal(result.mask_after(1), x == 0.9)
    assert torch.equal(x, blobs_volume([0.9, 0.8]).unsqueeze(0))  # the input is not modified


def test_windows_run_in_lockstep_and_negatives_are_not_explained():
    x = torch.stack([blobs_volume([0.9]), blobs_volume([0.9, 0.8, 0.7]), blobs_volume([]), blobs_volume([0.9, 0.8])])
    explainer = BrightestExplainer()
    result = run(x, BrightClassifier(), explainer)
    assert result.rounds.tolist() == [1, 3, 0, 2]
    assert result.stop_reasons == ["negative"] * 4
    assert [call.shape[0] for call in explainer.calls] == [3, 2, 1]  # window 2 never explained
    assert not result.mask[2].any()


def test_initial_probabilities_decide_which_windows_start():
    x = torch.stack([blobs_volume([0.9]), blobs_volume([0.9])])
    explainer = BrightestExplainer()
    result = run(x, BrightClassifier(), explainer, initial_probabilities=torch.tensor([0.2, 0.9]))
    assert result.rounds.tolist() == [0, 1]
    assert [call.shape[0] for call in explainer.calls] == [1]
    torch.testing.assert_close(result.probabilities[:, 0], torch.tensor([0.2, 0.9]))


def test_predict_probabilities_chunks():
    x = torch.rand(10, 7, 8, 8)
    whole = predict_probabilities(BrightClassifier(), x, max_batch=100)
    chunked = predict_probabilities(BrightClassifier(), x, max_batch=3)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(whole, torch.sigmoid(20.0 * (x.flatten(1).amax(dim=1) - 0.5)))


class FixedCubeExplainer:
    """Heatmap = 1 on the same 64-voxel cube every round, whatever the input (IG lighting up a masked hole again)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        heatmap = torch.zeros_like(x)
        heatmap[:, 1:5, 4:8, 4:8] = 1.0
        return heatmap


def test_a_round_counts_only_new_voxels():
    x = blobs_volume([]).unsqueeze(0)
    explainer = FixedCubeExplainer()
    result = run(x, ConstantClassifier(3.0), explainer, min_voxels=50)
    assert result.rounds.tolist() == [2]  # counting the whole cluster (64 >= 50) would run to the round limit
    assert result.stop_reasons == ["few_voxels"]
    assert result.new_voxels[0, :2].tolist() == [64, 0]
    assert explainer.calls == 2
    cube = torch.zeros_like(result.round_map[0], dtype=torch.bool)
    cube[1:5, 4:8, 4:8] = True
    assert torch.equal(result.round_map[0] == 1, cube)  # round 2 does not relabel the voxels found in round 1
    assert torch.equal(result.mask[0], cube)


def test_negative_is_reported_before_the_round_limit():
    x = blobs_volume([0.9]).unsqueeze(0)  # masking the only bright cube turns the classifier negative in round 1
    result = run(x, BrightClassifier(), BrightestExplainer(), max_rounds=1, min_voxels=65)  # all three conditions hold
    assert result.rounds.tolist() == [1]
    assert result.stop_reasons == ["negative"]


def test_round_limit_is_reported_before_few_voxels():
    x = blobs_volume([0.9, 0.8], size=3).unsqueeze(0)  # 27 new voxels < 28 and the round limit both hold
    result = run(x, ConstantClassifier(3.0), BrightestExplainer(), max_rounds=1, min_voxels=28)
    assert result.rounds.tolist() == [1]
    assert result.stop_reasons == ["max_rounds"]


def test_probability_exactly_at_the_threshold_is_negative():
    explainer = BrightestExplainer()
    result = run(blobs_volume([0.9]).unsqueeze(0), ConstantClassifier(0.0), explainer)  # sigmoid(0) == 0.5
    assert result.probabilities[0, 0].item() == 0.5
    assert result.rounds.tolist() == [0]
    assert result.stop_reasons == ["negative"]
    assert explainer.calls == []
    assert not result.mask.any()


def test_a_custom_classifier_threshold_is_used():
    x = blobs_volume([0.9]).unsqueeze(0)
    explainer = BrightestExplainer()
    result = run(x, ConstantClassifier(2.0), explainer, clf_threshold=0.9)  # p = 0.88: positive only at 0.5
    assert result.rounds.tolist() == [0] and result.stop_reasons == ["negative"]
    assert explainer.calls == []
    result = run(x, ConstantClassifier(2.0), BrightestExplainer(), clf_threshold=0.85, max_rounds=2)
    assert result.rounds.tolist() == [2] and result.stop_reasons == ["max_rounds"]
