"""The DynUNet student of iExplain stage 3 (Condrea et al. 2025, section 3.3): data, outputs, findings."""

from custom.student.bundle_root import bundle_root_from_argv
from custom.student.checkpoint import LatestCheckpointSaver
from custom.student.datalist import annotated_subset, attach_pseudo_labels, labelled_entries
from custom.student.findings import find_clusters, study_findings
from custom.student.outputs import SaveStudentOutputsd, pending_entries, student_output_paths

__all__ = [
    "LatestCheckpointSaver",
    "SaveStudentOutputsd",
    "annotated_subset",
    "attach_pseudo_labels",
    "bundle_root_from_argv",
    "find_clusters",
    "labelled_entries",
    "pending_entries",
    "student_output_paths",
    "study_findings",
]
