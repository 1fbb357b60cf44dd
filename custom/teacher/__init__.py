"""The iExplain teacher over a cohort: the bundle-level pieces around ``custom.explain`` (paper 3.2, 4.2).

Modules, one concept each:

- ``studies``: datalist splits, windowed images and reference masks.
- ``classifier``: the stage-1 classifier's weights and decision threshold.
- ``factory``: ``TeacherFactory``, the teacher of each study grid (paper settings scaled to it).
- ``outputs``: the output folder layout, written atomically, JSON last.
- ``cohort``: ``run_cohort``, resumable and sharded under ``torchrun``.
- ``calibration``: the hysteresis high threshold, calibrated on the validation split.
- ``evaluation``: per-round metrics, rounds histogram, Tables 2-3 and FROC.
- ``oracle``: the teacher's ceiling with an oracle classifier (synthetic cohorts, true masks).
"""

from custom.teacher.calibration import attribution_scale, calibrate_high_threshold, choose_candidate, read_high_threshold
from custom.teacher.classifier import load_classifier, read_classifier_threshold
from custom.teacher.cohort import STATUS_DONE, STATUS_FAILED, STATUS_SKIPPED, run_cohort
from custom.teacher.evaluation import evaluate_outputs, evaluate_teacher, masks_after_rounds
from custom.teacher.factory import IG_SETTING_KEYS, TeacherFactory
from custom.teacher.oracle import EmbolusOracle, OracleStudy, load_oracle_studies, teacher_ceiling
from custom.teacher.outputs import CLUSTERS, HEATMAPS, PSEUDO, PSEUDO_UNFILTERED, ROUND_MAPS, TeacherOutputs
from custom.teacher.studies import load_studies, read_reference_mask, read_windowed_image

__all__ = [
    "CLUSTERS",
    "EmbolusOracle",
    "HEATMAPS",
    "IG_SETTING_KEYS",
    "OracleStudy",
    "PSEUDO",
    "PSEUDO_UNFILTERED",
    "ROUND_MAPS",
    "STATUS_DONE",
    "STATUS_FAILED",
    "STATUS_SKIPPED",
    "TeacherFactory",
    "TeacherOutputs",
    "attribution_scale",
    "calibrate_high_threshold",
    "choose_candidate",
    "evaluate_outputs",
    "evaluate_teacher",
    "load_classifier",
    "load_oracle_studies",
    "load_studies",
    "masks_after_rounds",
    "read_classifier_threshold",
    "read_high_threshold",
    "read_reference_mask",
    "read_windowed_image",
    "run_cohort",
    "teacher_ceiling",
]
