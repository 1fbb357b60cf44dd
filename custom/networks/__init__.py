"""Networks of the iExplain bundles."""

from custom.networks.batchnorm_folding import fold_batchnorm
from custom.networks.dynunet_patch import check_dynunet_patch_size
from custom.networks.output_prior import set_foreground_prior
from custom.networks.slice_classifier import SliceClassifier

__all__ = ["SliceClassifier", "check_dynunet_patch_size", "fold_batchnorm", "set_foreground_prior"]
