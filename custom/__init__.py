"""The Python package that the iExplain bundle configs import (``$import custom``).

One concept per module, grouped by pipeline stage (see ``docs/conventions.md``):

- ``custom.io``: RSPECT layout, DICOM series reading, NIfTI writing.
- ``custom.synth``: the synthetic CTPA cohort.
- ``custom.data``: 2.5D mini-volumes and balanced slice sampling.
- ``custom.networks``: the 2.5D slice classifier.
- ``custom.explain``: Integrated Gradients, hysteresis clustering, Algorithm 1.
- ``custom.metrics``: per-PE cluster matching and FROC.
- ``custom.report``: tables and figures of the pipeline report.
- ``custom.packaging``: Model Zoo bundle zips with weights and sha256 ``large_files.yml``.
- ``custom.deploy``: the deploy app's model loading, DICOM SEG and findings.
- ``custom.precision``: the autocast dtype chosen by measurement on the machine at hand.
- ``custom.compilation``: ``torch.compile`` of a frozen network, with an eager fallback.
- ``custom.resume``: the random streams of a training run resumed from a checkpoint.
"""

__version__ = "0.1.0"

from custom.bundle import bundle_root

__all__ = ["__version__", "bundle_root"]
