"""The DynUNet student of iExplain stage 3 (Condrea et al. 2025, section 3.3): data, outputs, findings."""

from custom.student.batching import studies_per_batch
from custom.student.calibration import calibrate_student_threshold, calibrate_threshold, load_calibration, read_threshold
from custom.student.checkpoint import check_pretrained_checkpoint
from custom.student.datalist import annotated_subset, attach_pseudo_labels, labelled_entries
from custom.student.evaluation_report import EvaluationReportWriter, study_uids_from_batch
from custom.student.findings import find_clusters, study_findings
from custom.student.froc_metric import FROCMetricHandler
from custom.student.outputs import SaveStudentOutputsd, entry_uid, pending_entries, student_output_paths
from custom.student.train_time import TrainingTimeWriter

__all__ = [
    "EvaluationReportWriter",
    "FROCMetricHandler",
    "SaveStudentOutputsd",
    "TrainingTimeWriter",
    "annotated_subset",
    "attach_pseudo_labels",
    "calibrate_student_threshold",
    "calibrate_threshold",
    "check_pretrained_checkpoint",
    "entry_uid",
    "find_clusters",
    "labelled_entries",
    "load_calibration",
    "pending_entries",
    "read_threshold",
    "student_output_paths",
    "studies_per_batch",
    "study_uids_from_batch",
    "study_findings",
]
