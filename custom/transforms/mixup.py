"""Batch-level Mixup for the student's training iterations (Condrea et al. 2025, section 3.3).

The paper adds Mixup (Zhang et al. 2018, ref. 56) to make the student robust to the noise of the
teacher's pseudo-labels. Mixup mixes *pairs of samples of a batch*, so it cannot be a per-sample
dataset transform; it runs where the batch is formed, in the trainer's ``prepare_batch``. The
mixing itself is MONAI's ``monai.transforms.MixUp`` (weights from ``Beta(alpha, alpha)``, partners
from a random permutation of the batch), applied with the same weights to the images and to the
one-hot labels, which become soft labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.transforms import MixUp

__all__ = ["MixUpPrepareBatch"]


class MixUpPrepareBatch(PrepareBatch):
    """``prepare_batch`` of a ``SupervisedTrainer`` that returns Mixup-mixed images and labels.

    Args:
        alpha: Mixup concentration; weights are drawn from ``Beta(alpha, alpha)``. Must be positive.
        seed: seed of the mixing weights and pairings (``None``: not seeded; MONAI's
            ``set_determinism`` does not reach this generator).

    The labels must be floating point and one-hot (or probabilities) so that mixing them is
    meaningful: a label ``(B, C, ...)`` becomes ``lambda * y + (1 - lambda) * y[perm]``. A batch of
    one sample is returned unchanged.
    """

    def __init__(self, alpha: float, seed: int | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)
        self._mixer = MixUp(batch_size=1, alpha=self.alpha)
        if seed is not None:
            self._mixer.set_random_state(seed=seed)

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor] | torch.Tensor | Sequence[torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Move the batch to ``device`` (``default_prepare_batch``), then mix it.

        Returns:
            ``(images, labels)`` after Mixup as plain tensors, same shapes and dtypes as given.
        """
        images, labels = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if labels is None:
            raise ValueError("MixUpPrepareBatch needs a 'label' in every batch")
        if not torch.is_floating_point(labels):
            raise ValueError(f"Mixup needs floating-point one-hot labels, got dtype {labels.dtype}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in batch size: {images.shape[0]} vs {labels.shape[0]}")
        if images.shape[0] < 2:
            return images, labels
        # plain tensors: MONAI 1.6's MixUp indexes with a numpy permutation, which batched MetaTensor
        # metadata handling rejects; the network needs no metadata
        images, labels = _plain(images), _plain(labels)
        self._mixer.batch_size = images.shape[0]
        mixed_images, mixed_labels = self._mixer(images, labels)
        return mixed_images, mixed_labels


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
