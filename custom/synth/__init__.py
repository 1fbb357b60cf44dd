"""The synthetic CTPA cohort: a seeded chest phantom with pulmonary emboli, written in the RSPECT layout.

- :func:`generate_study` -> :class:`SyntheticStudy` (HU volume, instance mask, slice labels, emboli,
  mimics) for tests and tools that need no files;
- :func:`write_cohort` writes ``train/<study>/<series>/<sop>.dcm``, ``train.csv``, ``boxes.csv``,
  ``masks/<study>.nii.gz`` and ``cohort.json`` (see docs/conventions.md);
- :func:`summarize_cohort` gives the statistics of a written cohort;
- :mod:`custom.synth.sites` (imported on its own: it needs the metrics) says what a model's detections lie on
  (mimics, lumen, lung, tissue), regenerating the studies of a written cohort.
"""

from custom.synth.phantom import (
    EMBOLUS_KINDS,
    IMAGE_ORIENTATION,
    Embolus,
    EmbolusBox,
    PhantomConfig,
    SyntheticStudy,
    embolus_boxes,
    generate_study,
)
from custom.synth.summary import summarize_cohort
from custom.synth.writer import BOX_COLUMNS, RESCALE_INTERCEPT, TRAIN_COLUMNS, UID_STYLES, exam_labels, study_uids, write_cohort, write_study

__all__ = [
    "BOX_COLUMNS",
    "EMBOLUS_KINDS",
    "IMAGE_ORIENTATION",
    "RESCALE_INTERCEPT",
    "TRAIN_COLUMNS",
    "UID_STYLES",
    "Embolus",
    "EmbolusBox",
    "PhantomConfig",
    "SyntheticStudy",
    "embolus_boxes",
    "exam_labels",
    "generate_study",
    "study_uids",
    "summarize_cohort",
    "write_cohort",
    "write_study",
]
