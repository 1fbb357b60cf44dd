"""A folder of CT DICOM files -> one sorted, checked HU volume with its affine.

Issue 2 item 4 and issue 12: the files of a study folder are grouped by ``SeriesInstanceUID``;
one CT series is chosen (the one the caller names, else the one with most slices); its slices
are sorted by ``ImagePositionPatient`` projected on the slice normal (never by file name,
``InstanceNumber`` or CSV order); the stored values become HU with ``RescaleSlope`` and
``RescaleIntercept``; ``PixelPaddingValue`` becomes air. Every inconsistency that would make the
volume or its geometry wrong raises :class:`~custom.io.errors.InputError` naming the file.

The affine comes from :func:`custom.io.geometry.affine_from_dicom` with the slice step measured
from the real sorted positions, so a tilted gantry (positions drifting in-plane) or a non-axial
orientation gives the affine of the real geometry.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.config import IGNORE, settings
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from custom.io.codecs import LOSSY_TRANSFER_SYNTAXES, check_decodable, decode_pixels
from custom.io.errors import InputError
from custom.io.geometry import affine_from_dicom, orientation_problem, pixel_spacing_problem, slice_normal

__all__ = ["CTSeries", "DicomSeriesInfo", "list_study_files", "peek_study_uid", "read_ct_series", "scan_dicom_folder"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DUPLICATE_TOLERANCE_MM = 0.01
_GAP_FACTOR = 1.5
_INT16 = np.iinfo(np.int16)
_DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True, eq=False)
class CTSeries:
    """One CT series read by :func:`read_ct_series`.

    Attributes:
        volume_zyx: float32 HU, shape ``(Z, Y, X)``, slices sorted along the slice normal.
        affine: RAS affine of the on-disk ``(X, Y, Z)`` array (``custom.io.geometry``).
        sop_uids: ``SOPInstanceUID`` of each slice, in sorted order (opaque strings).
        study_uid: ``StudyInstanceUID``.
        series_uid: ``SeriesInstanceUID``.
        spacing_zyx: mm per voxel step along ``(Z, Y, X)``: the length of the slice step vector
            (the distance between slice planes times ``1/cos(gantry tilt)``), row spacing,
            column spacing; these are the column norms of ``affine``.
        image_orientation: ``ImageOrientationPatient`` of the series.
        positions: ``ImagePositionPatient`` of each slice in sorted order, LPS mm, ``(Z, 3)``.
        source_files: the file of each slice, in sorted order.
        transfer_syntaxes: the transfer syntax UIDs found in the series.
        notes: what the reader decided or tolerated (series choice, ignored files, padding).
    """

    volume_zyx: np.ndarray
    affine: np.ndarray
    sop_uids: tuple[str, ...]
    study_uid: str
    series_uid: str
    spacing_zyx: tuple[float, float, float]
    image_orientation: tuple[float, ...]
    positions: np.ndarray
    source_files: tuple[Path, ...]
    transfer_syntaxes: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def n_slices(self) -> int:
        """Number of slices (``Z``)."""
        return int(self.volume_zyx.shape[0])


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder by :func:`scan_dicom_folder`.

    Attributes:
        series_uid: ``SeriesInstanceUID``.
        study_uid: ``StudyInstanceUID`` of its first file.
        modality: ``Modality`` of its first file ("" when absent).
        files: its image files, sorted by path.
    """

    series_uid: str
    study_uid: str
    modality: str
    files: tuple[Path, ...]


@contextlib.contextmanager
def _lenient_value_reading() -> Iterator[None]:
    """Read opaque UIDs (the RSPECT 12-character hex pseudo-UIDs) without a warning per element."""
    previous = settings._reading_validation_mode
    settings.reading_validation_mode = IGNORE
    try:
        yield
    finally:
        settings._reading_validation_mode = previous


def list_study_files(folder: str | os.PathLike) -> list[Path]:
    """The files :func:`read_ct_series` considers in ``folder``: recursive, hidden ones skipped, sorted.

    Args:
        folder: a study or series folder.

    Returns:
        The file paths (empty when ``folder`` is not a folder or holds no file). Nothing is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def peek_study_uid(files: Sequence[str | os.PathLike], max_reads: int = 10) -> tuple[str, Path] | None:
    """The ``StudyInstanceUID`` of the first readable DICOM image among ``files`` (headers only).

    Used to match a study folder to its CSV rows before the folder is read in full; the full
    read checks that the chosen series belongs to that study.

    Args:
        files: candidate files, e.g. :func:`list_study_files`.
        max_reads: give up after this many files that are not readable DICOM images.

    Returns:
        ``(StudyInstanceUID, file)``, or ``None`` when no file gave one; never raises.
    """
    with _lenient_value_reading():
        for path in list(files)[:max_reads]:
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - a peek: the full read reports bad files
                continue
            uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
            if uid and "Rows" in dataset:
                return uid, Path(path)
    return None


def _candidate_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = list_study_files(folder)
    if not files:
        raise InputError(f"{folder}: empty folder (no files)")
    return files


def _read_file(path: Path, stop_before_pixels: bool) -> Dataset | None:
    """Read one file; ``None`` for a file that is plainly not DICOM (no DICM prefix, no ``.dcm`` suffix)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if path.suffix.lower() == ".dcm":
            raise InputError(f"{path}: not a DICOM file (no 'DICM' prefix; truncated or corrupt)") from None
        return None
    except Exception as err:  # pydicom raises many types on a damaged file; all mean the same here
        raise InputError(f"{path}: truncated or corrupt DICOM file ({type(err).__name__}: {err})") from None


def _has_pixels(dataset: Dataset) -> bool:
    return any(keyword in dataset for keyword in _PIXEL_KEYWORDS)


def _sop_class_name(dataset: Dataset) -> str:
    sop_class = dataset.get("SOPClassUID") or getattr(dataset, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return UID(str(sop_class)).name if sop_class else ""


def _group_by_series(folder: Path, stop_before_pixels: bool, notes: list[str]) -> dict[str, list[tuple[Path, Dataset]]]:
    """Image files grouped by ``SeriesInstanceUID``; non-DICOM files and non-image objects are noted and skipped."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    not_dicom, not_image = [], []
    for path in _candidate_files(folder):
        dataset = _read_file(path, stop_before_pixels)
        if dataset is None:
            not_dicom.append(path.name)
            continue
        if not (("Rows" in dataset) if stop_before_pixels else _has_pixels(dataset)):
            if "Rows" in dataset or "Image Storage" in _sop_class_name(dataset):
                raise InputError(
                    f"{path}: truncated or corrupt file: an image ({_sop_class_name(dataset) or 'no SOP class'}) "
                    "without Pixel Data"
                )
            not_image.append(
                f"{path.name} ({_sop_class_name(dataset) or 'no SOP class'}, Modality "
                f"{dataset.get('Modality', 'missing')})"
            )
            continue
        series_uid = str(dataset.get("SeriesInstanceUID", "")).strip()
        if not series_uid:
            raise InputError(f"{path}: no SeriesInstanceUID (truncated or corrupt file?)")
        groups.setdefault(series_uid, []).append((path, dataset))
    if not_dicom:
        notes.append(f"{folder}: ignored {len(not_dicom)} non-DICOM file(s): {', '.join(not_dicom[:5])}")
    if not_image:
        notes.append(f"{folder}: ignored {len(not_image)} DICOM object(s) without an image: {', '.join(not_image[:5])}")
    if not groups:
        raise InputError(
            f"{folder}: no DICOM image files ({len(not_dicom)} non-DICOM files, {len(not_image)} objects without an "
            "image)"
        )
    return groups


def _describe(series_uid: str, items: list[tuple[Path, Dataset]]) -> DicomSeriesInfo:
    first = items[0][1]
    return DicomSeriesInfo(
        series_uid=series_uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        files=tuple(path for path, _ in items),
    )


def scan_dicom_folder(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """List the series of a folder (read recursively) from the file headers only.

    Args:
        folder: a study or series folder.

    Returns:
        One entry per ``SeriesInstanceUID`` of image files, most files first (objects without an
        image, such as structured reports, are left out).

    Raises:
        InputError: empty folder, or a file that is not readable DICOM.
    """
    with _lenient_value_reading():
        groups = _group_by_series(Path(folder), stop_before_pixels=True, notes=[])
        infos = [_describe(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda info: (-len(info.files), info.series_uid))


def read_ct_series(
    folder: str | os.PathLike,
    series_uid: str | None = None,
    padding_hu: float = -1024.0,
    spacing_tolerance: float = 0.1,
    dtype: np.dtype | type = np.float32,
) -> CTSeries:
    """Read one CT series of a folder (read recursively) into a sorted HU volume.

    Args:
        folder: a study folder (``<Study>/<Series>/*.dcm``) or a series folder.
        series_uid: the series to read (e.g. the one the label CSV names); default: the CT image
            series with most slices. Other series (scouts, second reconstructions, non-CT objects)
            are ignored with a note.
        padding_hu: HU given to pixels marked by ``PixelPaddingValue`` (and
            ``PixelPaddingRangeLimit``): air, so stored padding never shows as a bright artefact.
        spacing_tolerance: largest allowed deviation of a slice from the regular slice grid, as a
            fraction of the median slice spacing.
        dtype: ``numpy.float32`` (default) or ``numpy.int16``. ``int16`` is what ``prepare`` stores:
            the HU are rounded to integers while decoding (with a note when a non-integral rescale
            made rounding change a value) and a value outside the int16 range raises, so the
            volume is written without a float copy (issue 12 item 5: half the memory, one pass).

    Returns:
        The :class:`CTSeries`.

    Raises:
        InputError: empty folder; truncated or corrupt file; no CT series; an
            ``ImageOrientationPatient`` whose cosines are not finite, unit-length and orthogonal; a
            ``PixelSpacing`` (or single-slice step) not finite and > 0; Pixel Data longer or shorter
            than Rows x Columns says; mixed Rows/Columns,
            orientation, pixel spacing, modality or study within the series; two slices at one
            position; a missing slice (a gap over 1.5x the median spacing); inconsistent spacing;
            a transfer syntax no installed codec decodes; non-finite values; with ``dtype=int16``,
            HU outside the int16 range. The message names the file (or folder) and the problem.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.int16)):
        raise ValueError(f"dtype must be float32 or int16, got {dtype}")
    folder = Path(folder)
    notes: list[str] = []
    with _lenient_value_reading():
        groups = _group_by_series(folder, stop_before_pixels=False, notes=notes)
        chosen = _select_series(folder, groups, series_uid, notes)
        return _read_series(folder, chosen, groups[chosen], padding_hu, spacing_tolerance, notes, dtype)


def _select_series(
    folder: Path, groups: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None, notes: list[str]
) -> str:
    infos = {uid: _describe(uid, items) for uid, items in groups.items()}
    ct_series = sorted(
        (info for info in infos.values() if info.modality == "CT"), key=lambda info: (-len(info.files), info.series_uid)
    )
    if series_uid is not None:
        if series_uid not in infos:
            found = ", ".join(f"{uid} ({info.modality or '?'}, {len(info.files)} files)" for uid, info in infos.items())
            raise InputError(f"{folder}: the requested series {series_uid} is not in the folder; found: {found}")
        info = infos[series_uid]
        if info.modality != "CT":
            raise InputError(
                f"{info.files[0]}: series {series_uid} is not a CT image series (Modality {info.modality or 'missing'})"
            )
        reason = "requested"
    else:
        if not ct_series:
            found = "; ".join(f"{info.files[0]}: Modality {info.modality or 'missing'}" for info in infos.values())
            raise InputError(f"{folder}: no CT image series in the folder ({found})")
        info = ct_series[0]
        reason = "the only CT series" if len(ct_series) == 1 else f"most slices of {len(ct_series)} CT series"
    if len(infos) > 1:
        notes.append(f"{folder}: using series {info.series_uid} ({len(info.files)} slices; {reason})")
    for other in infos.values():
        if other.series_uid == info.series_uid:
            continue
        kind = "CT" if other.modality == "CT" else f"non-CT (Modality {other.modality or 'missing'})"
        notes.append(
            f"{folder}: ignored {kind} series {other.series_uid} ({len(other.files)} files, e.g. {other.files[0].name})"
        )
    return info.series_uid


def _floats(dataset: Dataset, keyword: str, path: Path, count: int) -> np.ndarray:
    value = dataset.get(keyword)
    if value is None:
        raise InputError(f"{path}: missing {keyword}")
    try:
        array = np.asarray(
            [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])],
            dtype=np.float64,
        )
    except (TypeError, ValueError):
        raise InputError(f"{path}: {keyword} is not numeric: {value!r}") from None
    if array.shape != (count,) or not np.isfinite(array).all():
        raise InputError(f"{path}: {keyword} must be {count} finite numbers, got {value!r}")
    return array


def _orientation(dataset: Dataset, path: Path) -> np.ndarray:
    """``ImageOrientationPatient``: six finite, unit-length, mutually orthogonal direction cosines."""
    orientation = _floats(dataset, "ImageOrientationPatient", path, 6)
    problem = orientation_problem(orientation)
    if problem is not None:
        raise InputError(f"{path}: invalid ImageOrientationPatient {orientation.tolist()}: {problem}")
    return orientation


def _pixel_spacing(dataset: Dataset, path: Path) -> np.ndarray:
    """``PixelSpacing``: two finite numbers > 0 (a negative spacing would silently mirror the image)."""
    spacing = _floats(dataset, "PixelSpacing", path, 2)
    problem = pixel_spacing_problem(spacing)
    if problem is not None:
        raise InputError(f"{path}: invalid PixelSpacing {spacing.tolist()}: {problem}")
    return spacing


def _read_series(
    folder: Path,
    series_uid: str,
    items: list[tuple[Path, Dataset]],
    padding_hu: float,
    spacing_tolerance: float,
    notes: list[str],
    dtype: np.dtype = np.dtype(np.float32),
) -> CTSeries:
    first_path, first = items[0]
    rows, cols = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    orientation = _orientation(first, first_path)
    pixel_spacing = _pixel_spacing(first, first_path)
    study_uid = str(first.get("StudyInstanceUID", "")).strip()
    positions = np.empty((len(items), 3))
    seen_sops: dict[str, Path] = {}
    for index, (path, ds) in enumerate(items):
        _check_single_frame_ct(path, ds)
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (rows, cols):
            raise InputError(
                f"{path}: {ds.get('Rows')}x{ds.get('Columns')} pixels but {first_path.name} has {rows}x{cols} (mixed "
                f"Rows/Columns in series {series_uid})"
            )
        iop = _orientation(ds, path)
        if np.abs(iop - orientation).max() > _DIRECTION_TOLERANCE:
            raise InputError(
                f"{path}: ImageOrientationPatient {iop.round(5).tolist()} differs from "
                f"{orientation.round(5).tolist()} of {first_path.name} "
                f"(mixed orientation in series {series_uid})"
            )
        spacing = _pixel_spacing(ds, path)
        if np.abs(spacing - pixel_spacing).max() > _DIRECTION_TOLERANCE * max(1.0, float(pixel_spacing.max())):
            raise InputError(
                f"{path}: PixelSpacing {spacing.tolist()} differs from {pixel_spacing.tolist()} of {first_path.name} "
                "(mixed pixel spacing)"
            )
        if str(ds.get("StudyInstanceUID", "")).strip() != study_uid:
            raise InputError(
                f"{path}: StudyInstanceUID {ds.get('StudyInstanceUID')} differs from {study_uid} of "
                f"{first_path.name} in series {series_uid}"
            )
        sop = str(ds.get("SOPInstanceUID", "")).strip()
        if not sop:
            raise InputError(f"{path}: missing SOPInstanceUID")
        if sop in seen_sops:
            raise InputError(f"{path}: SOPInstanceUID {sop} also in {seen_sops[sop]} (the same slice twice)")
        seen_sops[sop] = path
        positions[index] = _floats(ds, "ImagePositionPatient", path, 3)
    if rows <= 0 or cols <= 0:
        raise InputError(f"{first_path}: no image size (Rows {rows}, Columns {cols})")

    normal = slice_normal(orientation)
    order = np.argsort(positions @ normal, kind="stable")
    items = [items[i] for i in order]
    positions = positions[order]
    step = _slice_step(items, positions, normal, spacing_tolerance, series_uid, notes)

    syntaxes = sorted({check_decodable(ds, path) for path, ds in items})
    lossy = [s for s in syntaxes if s in LOSSY_TRANSFER_SYNTAXES]
    if lossy:
        notes.append(f"{folder}: lossy transfer syntax {', '.join(UID(s).name for s in lossy)}: HU are approximate")
    thicknesses = sorted({str(ds.get("SliceThickness", "")) for _, ds in items} - {""})
    if len(thicknesses) > 1:
        notes.append(
            f"{folder}: mixed SliceThickness {thicknesses} in series {series_uid}; the geometry follows "
            "ImagePositionPatient"
        )
    volume = _decode_volume(items, rows, cols, padding_hu, notes, folder, dtype)
    affine = affine_from_dicom(orientation, positions[0], pixel_spacing, step)
    return CTSeries(
        volume_zyx=volume,
        affine=affine,
        sop_uids=tuple(str(ds.SOPInstanceUID).strip() for _, ds in items),
        study_uid=study_uid,
        series_uid=series_uid,
        spacing_zyx=(float(np.linalg.norm(step)), float(pixel_spacing[0]), float(pixel_spacing[1])),
        image_orientation=tuple(float(v) for v in orientation),
        positions=positions,
        source_files=tuple(path for path, _ in items),
        transfer_syntaxes=tuple(syntaxes),
        notes=tuple(notes),
    )


def _check_single_frame_ct(path: Path, ds: Dataset) -> None:
    if str(ds.get("Modality", "")) != "CT":
        raise InputError(
            f"{path}: Modality {ds.get('Modality', 'missing')} in a CT series (a non-CT file mixed into the series)"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError(
            f"{path}: multi-frame image ({ds.NumberOfFrames} frames); only single-frame CT slices are supported"
        )
    if (
        int(ds.get("SamplesPerPixel", 1)) != 1
        or str(ds.get("PhotometricInterpretation", "MONOCHROME2")) != "MONOCHROME2"
    ):
        raise InputError(
            f"{path}: not a grayscale CT slice (SamplesPerPixel {ds.get('SamplesPerPixel')}, "
            f"PhotometricInterpretation {ds.get('PhotometricInterpretation')}); MONOCHROME2 expected"
        )


def _slice_step(
    items: list[tuple[Path, Dataset]],
    positions: np.ndarray,
    normal: np.ndarray,
    tolerance: float,
    series_uid: str,
    notes: list[str],
) -> np.ndarray:
    """The LPS step between consecutive sorted slices, after the duplicate, gap and spacing checks."""
    if len(items) == 1:
        path, ds = items[0]
        keyword = next((k for k in ("SpacingBetweenSlices", "SliceThickness") if ds.get(k) not in (None, "")), None)
        thickness = 1.0 if keyword is None else _header_float(ds, keyword, 1.0, path)
        if not (math.isfinite(thickness) and thickness > 0):
            raise InputError(
                f"{path}: invalid {keyword} {thickness:g} of a single-slice series: the slice step must be finite and "
                "> 0 mm"
            )
        notes.append(
            f"{path}: single-slice series; slice step {thickness:g} mm along the normal from the header "
            f"({keyword or 'no SpacingBetweenSlices or SliceThickness: 1 mm assumed'})"
        )
        return normal * thickness
    distances = np.diff(positions @ normal)
    for k in np.flatnonzero(distances < _DUPLICATE_TOLERANCE_MM):
        raise InputError(
            f"{items[k + 1][0]}: two slices at one position: it and {items[k][0].name} are both at "
            f"{float(positions[k] @ normal):.3f} mm along the slice normal (series {series_uid})"
        )
    median = float(np.median(distances))
    for k in np.flatnonzero(distances > _GAP_FACTOR * median):
        missing = max(1, round(distances[k] / median) - 1)
        raise InputError(
            f"{items[k + 1][0]}: missing slice(s) before this file: gap of {distances[k]:.3f} mm after "
            f"{items[k][0].name}, "
            f"median spacing {median:.3f} mm (about {missing} slice(s) missing in series {series_uid})"
        )
    for k in np.flatnonzero(np.abs(distances - median) > tolerance * median):
        raise InputError(
            f"{items[k + 1][0]}: inconsistent slice spacing: {distances[k]:.3f} mm after {items[k][0].name}, "
            f"median {median:.3f} mm (tolerance {tolerance:.0%}, series {series_uid})"
        )
    step = (positions[-1] - positions[0]) / (len(items) - 1)
    residual = np.linalg.norm(positions - (positions[0] + np.arange(len(items))[:, None] * step), axis=1)
    worst = int(np.argmax(residual))
    if residual[worst] > tolerance * median:
        raise InputError(
            f"{items[worst][0]}: inconsistent slice spacing: the slice is {residual[worst]:.3f} mm off the regular "
            "slice grid "
            f"of series {series_uid} (tolerance {tolerance:.0%} of {median:.3f} mm)"
        )
    tilt = math.degrees(math.acos(min(1.0, float(step @ normal) / float(np.linalg.norm(step)))))
    if tilt > 0.1:
        notes.append(
            f"series {series_uid}: slice step is {tilt:.2f} deg off the slice normal (gantry tilt); the affine is "
            "sheared to match"
        )
    return step


def _header_float(ds: Dataset, keyword: str, default: float, path: Path) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {keyword} is not a number: {value!r}") from None


def _padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    padding = ds.get("PixelPaddingValue")
    if padding is None or stored.dtype.kind not in "iu":
        return None
    values = np.array([int(padding), int(ds.get("PixelPaddingRangeLimit", padding))], dtype=np.int64).astype(
        stored.dtype
    )
    low, high = values.min(), values.max()
    return stored == low if low == high else (stored >= low) & (stored <= high)


def _decode_volume(
    items: list[tuple[Path, Dataset]],
    rows: int,
    cols: int,
    padding_hu: float,
    notes: list[str],
    folder: Path,
    dtype: np.dtype = np.dtype(np.float32),
) -> np.ndarray:
    """Decode, rescale to HU and pad every slice straight into the output volume (one pass per slice)."""
    volume = np.empty((len(items), rows, cols), dtype=dtype)
    to_int16 = dtype == np.dtype(np.int16)
    padded = rounded = 0
    for index, (path, ds) in enumerate(items):
        stored = decode_pixels(ds, path)
        if stored.shape != (rows, cols):
            raise InputError(f"{path}: decoded pixel data has shape {stored.shape}, header says {rows}x{cols}")
        slope = _header_float(ds, "RescaleSlope", 1.0, path)
        intercept = _header_float(ds, "RescaleIntercept", 0.0, path)
        if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0.0:
            raise InputError(f"{path}: invalid rescale (RescaleSlope {slope}, RescaleIntercept {intercept})")
        if stored.dtype.kind == "f" and not np.isfinite(stored).all():
            raise InputError(f"{path}: NaN or infinite pixel values")
        out = volume[index]
        mask = _padding_mask(stored, ds)
        if to_int16:
            rounded += _rescale_to_int16(stored, slope, intercept, out, path, ignore=mask)
        elif slope != 1.0:
            np.multiply(stored, np.float32(slope), out=out, dtype=np.float32)
            out += np.float32(intercept)
        else:
            np.add(stored, np.float32(intercept), out=out, dtype=np.float32)  # convert and shift in one pass
        if mask is not None:
            n_padded = int(np.count_nonzero(mask))
            if n_padded:
                np.copyto(out, np.asarray(padding_hu).astype(dtype), where=mask)
                padded += n_padded
    if rounded:
        notes.append(f"{folder}: {rounded} non-integral HU values (RescaleSlope/RescaleIntercept) rounded to integers")
    if padded:
        notes.append(f"{folder}: {padded} pixels marked by PixelPaddingValue set to {padding_hu:g} HU")
    return volume


def _rescale_to_int16(
    stored: np.ndarray, slope: float, intercept: float, out: np.ndarray, path: Path, ignore: np.ndarray | None = None
) -> int:
    """``out = rint(stored * slope + intercept)`` as int16; returns how many values rounding changed.

    The usual CT rescale (slope 1, integral intercept, integer pixels) is one integer pass after a
    range check on the stored extremes; anything else goes through float64. Pixels in ``ignore``
    (padding, overwritten by the caller) are left out of the range check.
    """
    if ignore is not None and ignore.all():
        out[...] = 0
        return 0
    if stored.dtype.kind in "iu" and slope == 1.0 and intercept == int(intercept):
        low, high = int(stored.min()) + int(intercept), int(stored.max()) + int(intercept)
        if not (_INT16.min <= low and high <= _INT16.max) and ignore is not None:
            checked = stored[~ignore]  # only when the whole slice does not fit: padding may be the outlier
            low, high = int(checked.min()) + int(intercept), int(checked.max()) + int(intercept)
        if _INT16.min <= low and high <= _INT16.max:
            np.add(stored, int(intercept), out=out, dtype=np.int16, casting="unsafe")
            return 0
        raise InputError(f"{path}: HU range [{low}, {high}] does not fit int16")
    hu = stored.astype(np.float64) * slope + intercept
    hu_checked = hu if ignore is None else hu[~ignore]
    low, high = float(hu_checked.min()), float(hu_checked.max())
    if low < _INT16.min or high > _INT16.max:
        raise InputError(f"{path}: HU range [{low:g}, {high:g}] does not fit int16")
    rounded = np.rint(hu)
    changed = rounded != hu
    if ignore is not None:
        changed &= ~ignore
    np.clip(rounded, _INT16.min, _INT16.max, out=rounded)  # only ignored (padding) pixels can be clipped
    out[...] = rounded
    return int(np.count_nonzero(changed))
