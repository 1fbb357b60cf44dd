"""How many studies make one training batch of the student (paper section 3.3: batch 32 patches).

``batch_size`` counts patches and every study gives ``samples_per_study`` of them (balanced positive
and negative crops), so the data loader takes ``batch_size / samples_per_study`` studies. A
``batch_size`` that is not a multiple had been rounded silently (5 patches with 2 per study gave
batches of 4; 1 gave 2).
"""

from __future__ import annotations

from custom.settings import integer_at_least

__all__ = ["studies_per_batch"]


def studies_per_batch(batch_size: int, samples_per_study: int) -> int:
    """The data loader's batch size in studies.

    Args:
        batch_size: patches per training batch (paper: 32).
        samples_per_study: patches cropped from each study.

    Returns:
        ``batch_size // samples_per_study``.

    Raises:
        ValueError: either is not a positive integer, or ``batch_size`` is not a multiple of
            ``samples_per_study``.
    """
    batch = integer_at_least(batch_size, "batch_size", 1)
    samples = integer_at_least(samples_per_study, "samples_per_study", 1)
    if batch % samples:
        raise ValueError(
            f"batch_size ({batch} patches) must be a multiple of samples_per_study ({samples}): each study "
            f"gives {samples} patches, so a batch holds {samples} x k patches (e.g. {max(samples, batch - batch % samples)})"
        )
    return batch // samples
