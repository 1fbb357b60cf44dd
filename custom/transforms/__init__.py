"""Training-time transforms of the iExplain bundles that MONAI does not provide as-is."""

from custom.transforms.hard_negatives import IntrapulmonaryNegativesd, intrapulmonary_structures, mix_indices
from custom.transforms.mixup import MixUpPrepareBatch

__all__ = ["IntrapulmonaryNegativesd", "MixUpPrepareBatch", "intrapulmonary_structures", "mix_indices"]
