"""Algorithm 1 of iExplain, iterative explain-cluster-mask, batched over mini-volumes (Condrea et al. 2025).

Per mini-volume (paper, Algorithm 1)::

    while clf(curr) > clf_thresh and iter < iter_limit and masked >= min_voxels:
        iter += 1
        heatmap = explain(clf, curr)            # IG, see integrated_gradients.py
        seg = clustering(heatmap)               # hysteresis, see hysteresis.py
        masked = |seg \\ segs found before|     # the round's *new* voxels ("new segmentations")
        curr = where(seg, fill_value, curr)     # masked like the classifier's Cutout holes
        segs.append(seg)
    result = union(segs)

Many mini-volumes run in lockstep: each round explains the windows that are still active in one
call of the explainer (whose IG passes are folded into large batches), and a window leaves the loop
as soon as one of the three stop conditions holds for it.

The paper's text says the loop stops when "new segmentations have a volume under 50 voxels";
Algorithm 1 writes ``sum(seg)``. They coincide when the reference is the fill (a masked voxel then has
zero attribution); with other references IG can light up a masked hole again, so the new voxels are
counted, which keeps the condition meaningful.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from custom.explain.hysteresis import hysteresis_threshold

__all__ = ["STOP_FEW_VOXELS", "STOP_MAX_ROUNDS", "STOP_NEGATIVE", "MiniVolumeExplanation", "iexplain_minivolumes", "predict_probabilities"]

STOP_NEGATIVE = "negative"
STOP_MAX_ROUNDS = "max_rounds"
STOP_FEW_VOXELS = "few_voxels"


def predict_probabilities(
    classifier: nn.Module,
    minivolumes: torch.Tensor,
    max_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    target: int = 0,
) -> torch.Tensor:
    """PE probabilities ``sigmoid(logit)`` of ``(B, 7, H, W)`` mini-volumes, in chunks of ``max_batch``.

    Returns:
        ``(B,)`` float32 on the mini-volumes' device.
    """
    probabilities = []
    device_type = minivolumes.device.type
    autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, minivolumes.shape[0], max_batch):
            output = classifier(minivolumes[start : start + max_batch])
            probabilities.append(torch.sigmoid(output.reshape(output.shape[0], -1)[:, target].float()))
    if not probabilities:
        return torch.zeros(0, device=minivolumes.device)
    return torch.cat(probabilities)


@dataclass
class MiniVolumeExplanation:
    """What Algorithm 1 found in each of ``B`` mini-volumes.

    Attributes:
        round_map: ``(B, D, H, W)`` uint8, the round in which each voxel was first clustered (0: never).
        probabilities: ``(B, max_rounds + 1)`` float32; column ``r`` is the classifier probability of the
            input after ``r`` rounds of masking (column 0: the original input); NaN where not evaluated.
        new_voxels: ``(B, max_rounds)`` int64, voxels first found in each round (0 after the last round).
        rounds: ``(B,)`` int64, rounds run (0: the classifier called the window negative).
        stop_reasons: per window, why the loop stopped: ``"negative"``, ``"max_rounds"`` or ``"few_voxels"``.
    """

    round_map: torch.Tensor
    probabilities: torch.Tensor
    new_voxels: torch.Tensor
    rounds: torch.Tensor
    stop_reasons: list[str]

    @property
    def mask(self) -> torch.Tensor:
        """The union of all rounds' clusters, ``(B, D, H, W)`` bool."""
        return self.round_map > 0

    def mask_after(self, round_index: int) -> torch.Tensor:
        """The union of the clusters of rounds ``1..round_index``, ``(B, D, H, W)`` bool."""
        return (self.round_map > 0) & (self.round_map <= round_index)


def iexplain_minivolumes(
    minivolumes: torch.Tensor,
    classifier: nn.Module,
    explainer: Callable[[torch.Tensor], torch.Tensor],
    high_threshold: float,
    low_threshold: float | None = None,
    clf_threshold: float = 0.5,
    neighbourhood: Sequence[int] = (5, 15, 15),
    max_rounds: int = 10,
    min_voxels: int = 50,
    fill_value: float = 0.0,
    max_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    initial_probabilities: torch.Tensor | None = None,
) -> MiniVolumeExplanation:
    """Run Algorithm 1 on a batch of mini-volumes in lockstep.

    Args:
        minivolumes: ``(B, 7, H, W)`` windowed mini-volumes (not modified).
        classifier: ``(B, 7, H, W)`` -> ``(B, 1)`` PE logits, in eval mode.
        explainer: ``(B, 7, H, W)`` -> attributions of the same shape, e.g.
            ``custom.explain.IntegratedGradientsExplainer``.
        high_threshold: hysteresis seed threshold on the attributions (calibrated, paper 3.2).
        low_threshold: hysteresis candidate threshold (default ``high_threshold / 2``).
        clf_threshold: a window keeps going while its probability is strictly above this.
        neighbourhood: hysteresis box ``(Z, Y, X)`` (paper: 5 x 15 x 15).
        max_rounds: iteration limit (paper: 10).
        min_voxels: a window stops after a round that found fewer new voxels than this (paper: 50).
        fill_value: value written into clustered voxels (the Cutout fill, windowed units).
        max_batch: mini-volumes per classifier forward pass.
        autocast_dtype: autocast dtype of the classifier forward passes (``None``: float32).
        initial_probabilities: ``(B,)`` probabilities of the unmasked inputs if already known (the
            whole-study sliding window computes them for every slice first).

    Returns:
        A :class:`MiniVolumeExplanation`.
    """
    if minivolumes.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) mini-volumes, got shape {tuple(minivolumes.shape)}")
    if max_rounds < 1 or max_rounds > 255:
        raise ValueError(f"max_rounds must be in 1..255 (uint8 round map), got {max_rounds}")
    device = minivolumes.device
    batch = minivolumes.shape[0]
    current = minivolumes.float().clone()
    round_map = torch.zeros(current.shape, dtype=torch.uint8, device=device)
    probabilities = torch.full((batch, max_rounds + 1), float("nan"), device=device)
    new_voxels = torch.zeros((batch, max_rounds), dtype=torch.int64, device=device)
    rounds = torch.zeros(batch, dtype=torch.int64, device=device)
    stop_reasons = [STOP_NEGATIVE] * batch
    if initial_probabilities is None:
        probabilities[:, 0] = predict_probabilities(classifier, current, max_batch, autocast_dtype)
    else:
        probabilities[:, 0] = initial_probabilities.to(device=device, dtype=torch.float32).reshape(batch)
    active = torch.arange(batch, device=device)[probabilities[:, 0] > clf_threshold]
    for round_index in range(1, max_rounds + 1):
        if active.numel() == 0:
            break
        heatmap = explainer(current[active])
        clusters = hysteresis_threshold(heatmap, high_threshold, low_threshold, neighbourhood)
        found_before = round_map[active] > 0
        new = clusters & ~found_before
        round_map[active] = torch.where(new, torch.tensor(round_index, dtype=torch.uint8, device=device), round_map[active])
        current[active] = torch.where(clusters, torch.tensor(fill_value, device=device), current[active])
        count = new.flatten(1).sum(dim=1)
        new_voxels[active, round_index - 1] = count
        rounds[active] = round_index
        probability = predict_probabilities(classifier, current[active], max_batch, autocast_dtype)
        probabilities[active, round_index] = probability
        keep = (probability > clf_threshold) & (count >= min_voxels) & (round_index < max_rounds)
        # the first failing condition of the while loop, in the order Algorithm 1 tests them
        for window, window_probability, window_count in zip(active.tolist(), probability.tolist(), count.tolist()):
            if window_probability <= clf_threshold:
                stop_reasons[window] = STOP_NEGATIVE
            elif round_index >= max_rounds:
                stop_reasons[window] = STOP_MAX_ROUNDS
            elif window_count < min_voxels:
                stop_reasons[window] = STOP_FEW_VOXELS
        active = active[keep]
    return MiniVolumeExplanation(round_map, probabilities, new_voxels, rounds, stop_reasons)
