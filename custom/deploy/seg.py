"""The student's PE mask as a DICOM Segmentation (highdicom), lined up with the source CT series.

One binary segment, "Embolus" (SNOMED CT 55584005, category "Morphologically Altered Structure",
49755003), computed by an automatic algorithm (the iExplain DynUNet student). Frame ``k`` of the
mask is the source slice ``k`` of :class:`custom.io.dicom.CTSeries` (sorted along the slice
normal), so every frame references its source SOP instance and carries that slice's
``ImagePositionPatient``. Frames without embolus voxels are omitted (all frames are kept when the
mask is empty, so the SEG still documents a negative study).
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code

from custom.io.atomic import atomic_path
from custom.io.dicom import CTSeries
from custom.io.errors import InputError

__all__ = ["EMBOLUS_CATEGORY", "EMBOLUS_TYPE", "embolus_segment", "write_dicom_seg"]

EMBOLUS_CATEGORY = Code("49755003", "SCT", "Morphologically Altered Structure")
"""Segmented property category of the embolus segment."""

EMBOLUS_TYPE = Code("55584005", "SCT", "Embolus")
"""Segmented property type of the embolus segment."""

_MANUFACTURER = "iExplain PE project"
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "AccessionNumber", "StudyID")
_MODEL_NAME = "iExplain DynUNet student"


def embolus_segment(algorithm_version: str) -> hd.seg.SegmentDescription:
    """The description of segment 1, "Embolus", found by the student.

    Args:
        algorithm_version: the bundle version recorded as the algorithm version.

    Returns:
        The highdicom segment description.
    """
    algorithm = hd.AlgorithmIdentificationSequence(
        name=_MODEL_NAME, family=Code("123109", "DCM", "Artificial Intelligence"), version=algorithm_version or "unknown"
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Embolus",
        segmented_property_category=EMBOLUS_CATEGORY,
        segmented_property_type=EMBOLUS_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def _source_header(path: Path) -> pydicom.Dataset:
    """The header of a source slice, with absent Type 2 patient/study attributes present and empty.

    The SEG copies them from its source; DICOM allows them empty but highdicom needs them present
    (exports and the synthetic cohort often drop e.g. ``PatientBirthDate``).
    """
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2_COPIED:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def write_dicom_seg(
    mask_zyx: np.ndarray,
    series: CTSeries,
    path: str | os.PathLike,
    algorithm_version: str = "",
    series_number: int = 900,
) -> Path:
    """Write the mask of a series as a binary DICOM SEG (atomically).

    Args:
        mask_zyx: boolean/0-1 mask on the series grid, ``(Z, Y, X)`` in the series' sorted order.
        series: the source series (``custom.io.dicom.read_ct_series``); its files give the
            referenced instances, patient and study.
        path: the ``.dcm`` file to write.
        algorithm_version: recorded in the segment's algorithm identification and software versions.
        series_number: ``SeriesNumber`` of the new SEG series.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: the mask does not match the series grid.
    """
    mask = np.asarray(mask_zyx).astype(bool)
    if mask.shape != series.volume_zyx.shape:
        raise InputError(f"{series.series_uid}: mask shape {mask.shape} differs from the series grid {series.volume_zyx.shape}")
    sources = [_source_header(f) for f in series.source_files]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[embolus_segment(algorithm_version)],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MODEL_NAME,
        software_versions=algorithm_version or "unknown",
        device_serial_number="none",
        series_description="PE segmentation (iExplain student)",
        omit_empty_frames=bool(mask.any()),
    )
    final = Path(path)
    with atomic_path(final) as tmp:
        seg.save_as(tmp)
    return final
