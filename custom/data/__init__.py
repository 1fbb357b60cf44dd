"""2.5D data for the slice classifier: mini-volumes, HU windows, balanced sampling."""

from custom.data.minivolume import MiniVolumeDataset, extract_minivolume, minivolume_indices, window_hu
from custom.data.sampling import balanced_slice_sampler, balanced_slice_weights

__all__ = [
    "MiniVolumeDataset",
    "balanced_slice_sampler",
    "balanced_slice_weights",
    "extract_minivolume",
    "minivolume_indices",
    "window_hu",
]
