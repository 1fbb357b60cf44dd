"""Networks of the iExplain bundles."""

from custom.networks.slice_classifier import SliceClassifier

__all__ = ["SliceClassifier"]
