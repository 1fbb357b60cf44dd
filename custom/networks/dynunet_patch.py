"""The patch sizes a DynUNet can take: each side a multiple of the product of that axis's strides.

DynUNet downsamples by its ``strides`` and concatenates the upsampled decoder features with the
encoder's skips; a side not divisible by the product of its strides leaves the two a voxel apart and
fails deep in the forward pass (``Sizes of tensors must match except in dimension 1``), after the
data is loaded. The student's training patches and its sliding-window ROI are ``patch_size``
(paper: 128x128x64; the bundle's strides multiply to 32x32x16), so the configs check it when they
build the network, naming the setting and the sizes that would work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.networks.nets import DynUNet

__all__ = ["check_dynunet_patch_size"]


def check_dynunet_patch_size(network: DynUNet, patch_size: Sequence[int]) -> DynUNet:
    """Return ``network`` unchanged when it can take patches of ``patch_size``; raise otherwise.

    Args:
        network: the DynUNet (its ``strides`` and ``spatial_dims`` are read).
        patch_size: the training patch and sliding-window ROI size, one int per spatial axis.

    Returns:
        ``network``, so that a config can build and check in one expression.

    Raises:
        ValueError: ``patch_size`` has the wrong length, a size that is not a positive integer, or a
            size that is not a multiple of its axis's total stride (the message gives the multiples).
    """
    dims = int(network.spatial_dims)
    sizes = list(patch_size) if isinstance(patch_size, Sequence) and not isinstance(patch_size, str) else None
    if sizes is None or len(sizes) != dims or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"patch_size must be {dims} positive integers, got {patch_size!r}")
    strides = [[s] * dims if isinstance(s, int) else list(s) for s in network.strides]
    multiples = [math.prod(int(stride[axis]) for stride in strides) for axis in range(dims)]
    if any(size % multiple for size, multiple in zip(sizes, multiples)):
        suggestion = [math.ceil(size / multiple) * multiple for size, multiple in zip(sizes, multiples)]
        raise ValueError(
            f"patch_size {sizes} does not fit the DynUNet: each side must be a multiple of its total stride "
            f"{multiples} (the product of the network's strides per axis), e.g. {suggestion}"
        )
    return network
