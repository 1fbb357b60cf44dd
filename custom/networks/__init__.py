"""Networks of the iExplain bundles."""

from custom.networks.batchnorm_folding import fold_batchnorm
from custom.networks.output_prior import set_foreground_prior
from custom.networks.slice_classifier import SliceClassifier

__all__ = ["SliceClassifier", "fold_batchnorm", "set_foreground_prior"]
