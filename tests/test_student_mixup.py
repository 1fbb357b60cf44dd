"""Batch-level Mixup in the trainer's prepare_batch (custom.transforms.mixup)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from custom.transforms.mixup import MixUpPrepareBatch


def _batch(n: int = 4) -> dict:
    image = MetaTensor(torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1, 1).expand(n, 1, 2, 2, 2).clone())
    label = torch.zeros(n, 2, 2, 2, 2)
    label[:, 0] = 1.0
    label[0, :, 0, 0, 0] = torch.tensor([0.0, 1.0])
    return {"image": image, "label": MetaTensor(label)}


def test_images_and_labels_are_mixed_with_the_same_weights() -> None:
    prepare = MixUpPrepareBatch(alpha=1.0, seed=3)
    batch = _batch()
    images, labels = prepare(batch, device="cpu")
    assert not isinstance(images, MetaTensor) and images.shape == (4, 1, 2, 2, 2)
    weights, perm, _ = prepare._mixer._params  # MONAI MixUp's draw for this batch
    x, y = batch["image"].as_tensor(), batch["label"].as_tensor()
    lam = weights.reshape(4, 1, 1, 1, 1)
    assert torch.allclose(images, lam * x + (1 - lam) * x[perm])
    assert torch.allclose(labels, lam * y + (1 - lam) * y[perm])
    assert torch.allclose(labels.sum(dim=1), torch.ones(4, 2, 2, 2))  # soft labels stay a distribution
    # the batch really is mixed (the formula above would also hold for an identity permutation or weights of 1)
    assert not torch.allclose(images, x) and not torch.allclose(labels, y)
    assert (torch.as_tensor(perm) != torch.arange(4)).any() and (weights < 0.99).any()


def test_seed_makes_mixing_reproducible() -> None:
    first = MixUpPrepareBatch(alpha=0.4, seed=7)(_batch())
    second = MixUpPrepareBatch(alpha=0.4, seed=7)(_batch())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_single_sample_passes_through_and_bad_labels_fail() -> None:
    images, labels = MixUpPrepareBatch(alpha=0.4)(_batch(1))
    assert torch.equal(images, _batch(1)["image"]) and torch.equal(labels, _batch(1)["label"])
    batch = _batch()
    batch["label"] = batch["label"].long()
    with pytest.raises(ValueError, match="floating-point"):
        MixUpPrepareBatch(alpha=0.4)(batch)
    with pytest.raises(ValueError, match="positive"):
        MixUpPrepareBatch(alpha=0.0)
