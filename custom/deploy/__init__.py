"""The pieces of the MONAI Deploy app (``deploy/app.py``): student model loading and inference, DICOM SEG, findings."""

from custom.deploy.findings import FINDINGS_FORMAT, deploy_findings
from custom.deploy.model import StudentModel, load_student, predict_probability, resolve_model_path
from custom.deploy.seg import EMBOLUS_CATEGORY, EMBOLUS_TYPE, write_dicom_seg

__all__ = [
    "EMBOLUS_CATEGORY",
    "EMBOLUS_TYPE",
    "FINDINGS_FORMAT",
    "StudentModel",
    "deploy_findings",
    "load_student",
    "predict_probability",
    "resolve_model_path",
    "write_dicom_seg",
]
