"""Transforms of the iExplain bundles that MONAI does not provide as-is."""

from custom.transforms.cutout import cutout
from custom.transforms.contrast_adjacency import ContrastAdjacencyFilterd, contrast_shares, remove_unenhanced_clusters
from custom.transforms.hard_negatives import IntrapulmonaryNegativesd, intrapulmonary_structures, mix_indices
from custom.transforms.mixup import MixUpPrepareBatch
from custom.transforms.window import hu_window_bounds

__all__ = [
    "ContrastAdjacencyFilterd",
    "IntrapulmonaryNegativesd",
    "MixUpPrepareBatch",
    "contrast_shares",
    "cutout",
    "hu_window_bounds",
    "intrapulmonary_structures",
    "mix_indices",
    "remove_unenhanced_clusters",
]
