"""Small CT DICOM series written with plain pydicom, for the reader and ``prepare`` tests.

Independent of ``custom.synth`` on purpose: these tests pin the reader against files whose
every header value the test chose.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from pydicom.config import IGNORE, settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

__all__ = ["hu_volume", "write_ct_series", "uid_counter"]

_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
_counter = itertools.count(1)


def uid_counter(prefix: str = "1.2.826.0.1.3680043.10.1.") -> str:
    """A fresh DICOM-style UID."""
    return f"{prefix}{next(_counter)}"


def hu_volume(n_slices: int, rows: int = 32, cols: int = 40, seed: int = 0) -> np.ndarray:
    """Integer HU in [-1024, 1500] as float32, different on every slice.

    32 pixels a side at least: the smallest image the JPEG 2000 encoder takes.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=(n_slices, rows, cols)).astype(np.float32)


@contextlib.contextmanager
def _lenient_writing() -> Iterator[None]:
    previous = settings._writing_validation_mode, settings._reading_validation_mode
    settings.writing_validation_mode = IGNORE
    settings.reading_validation_mode = IGNORE
    try:
        yield
    finally:
        settings._writing_validation_mode, settings._reading_validation_mode = previous


def write_ct_series(
    folder: str | Path,
    hu_zyx: np.ndarray,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uids: Sequence[str] | None = None,
    positions: np.ndarray | None = None,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing: Sequence[float] = (0.75, 0.8),
    slice_spacing: float = 1.25,
    origin: Sequence[float] = (-60.0, -45.0, 100.0),
    instance_numbers: Sequence[int] | None = None,
    transfer_syntax: str | Sequence[str] = ExplicitVRLittleEndian,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding_value: int | None = None,
    slice_thickness: float | Sequence[float] | None = None,
    file_names: Sequence[str] | None = None,
) -> dict:
    """Write one single-frame CT series (int16 stored values, rescale to HU) into ``folder``.

    Args:
        hu_zyx: HU per slice in geometric order; ``(hu - intercept) / slope`` must be integral.
        positions: ``ImagePositionPatient`` per slice (default: ``origin + k * slice_spacing * normal``).
        transfer_syntax: one syntax for all slices, or one per slice.
        padding_value: ``PixelPaddingValue`` (stored value), written to every slice.
        file_names: file name per slice (default ``<SOPInstanceUID>.dcm``).

    Returns:
        ``{"study_uid", "series_uid", "sop_uids", "files", "positions"}``, all in geometric order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = hu_zyx.shape[0]
    study_uid = study_uid or uid_counter()
    series_uid = series_uid or uid_counter()
    sop_uids = list(sop_uids) if sop_uids is not None else [uid_counter() for _ in range(n)]
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    if positions is None:
        positions = np.asarray(origin, dtype=np.float64) + np.arange(n)[:, None] * slice_spacing * normal
    instance_numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))
    syntaxes = [transfer_syntax] * n if isinstance(transfer_syntax, str) else list(transfer_syntax)
    thickness = (
        [slice_spacing] * n
        if slice_thickness is None
        else ([slice_thickness] * n if np.isscalar(slice_thickness) else list(slice_thickness))
    )
    files = []
    with _lenient_writing():
        for k in range(n):
            stored = np.rint((hu_zyx[k].astype(np.float64) - intercept) / slope)
            assert np.abs(stored * slope + intercept - hu_zyx[k]).max() < 1e-6, "HU not representable with this rescale"
            ds = _slice_dataset(
                stored.astype(np.int16),
                study_uid,
                series_uid,
                sop_uids[k],
                modality,
                iop,
                positions[k],
                pixel_spacing,
                instance_numbers[k],
                slope,
                intercept,
                padding_value,
                thickness[k],
            )
            _encode(ds, stored.astype(np.int16), syntaxes[k])
            path = folder / (file_names[k] if file_names is not None else f"{sop_uids[k]}.dcm")
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uids": sop_uids,
        "files": files,
        "positions": np.asarray(positions),
    }


def _slice_dataset(
    stored,
    study_uid,
    series_uid,
    sop_uid,
    modality,
    iop,
    position,
    pixel_spacing,
    instance_number,
    slope,
    intercept,
    padding_value,
    thickness,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.InstanceNumber = int(instance_number)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    ds.SliceThickness = f"{thickness:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if padding_value is not None:
        ds.PixelPaddingValue = int(padding_value)
    ds.PixelData = stored.tobytes()
    return ds


def _encode(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    if transfer_syntax in _NATIVE:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.compress(transfer_syntax, stored, generate_instance_uid=False)
