"""Training-time transforms of the iExplain bundles that MONAI does not provide as-is."""

from custom.transforms.mixup import MixUpPrepareBatch

__all__ = ["MixUpPrepareBatch"]
