"""iExplain PE segmentation app: a CTPA DICOM study in, a DICOM SEG and ``findings.json`` out.

Usage::

    python deploy/app.py -i DICOM_DIR -o OUT -m MODEL [--config OVERRIDE.json ...] [--series_uid UID]

``MODEL`` is a dynunet_student bundle folder (``configs/`` + ``models/model.pt``), its TorchScript
export (``.ts`` from ``python -m monai.bundle ckpt_export``), or a folder holding exactly one of
them. Without flags the paths come from the MONAI Application Package environment
(``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``).

The app is a chain of operators shaped like MONAI Deploy App SDK operators (the SDK itself is not a
dependency; see deploy/README.md)::

    DicomLoaderOperator -> CTSeriesSelectorOperator -> SeriesVolumeOperator -> StudentInferenceOperator
        -> DicomSegWriterOperator (OUT/pe_seg.dcm) + FindingsWriterOperator (OUT/findings.json)

Outputs are written into a hidden folder inside ``OUT`` and moved into ``OUT`` only when every
operator has succeeded: bad input (no CT series, a corrupt file, a mixed series) leaves no output
and exits with status 2 and a message naming the file and the problem.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.deploy import StudentModel, deploy_findings, load_student, predict_probability, write_dicom_seg
from custom.io.atomic import write_json_atomic
from custom.io.dicom import CTSeries, DicomSeriesInfo, read_ct_series, scan_dicom_folder
from custom.io.errors import InputError

__all__ = [
    "CTSeriesSelectorOperator",
    "DicomLoaderOperator",
    "DicomSegWriterOperator",
    "FindingsWriterOperator",
    "PESegmentationApp",
    "SeriesVolumeOperator",
    "StudentInferenceOperator",
    "main",
]

SEG_NAME = "pe_seg.dcm"
FINDINGS_NAME = "findings.json"


class DicomLoaderOperator:
    """Scan a DICOM folder (recursively, headers only) into its series."""

    def compute(self, dicom_dir: Path) -> list[DicomSeriesInfo]:
        """Return the series of ``dicom_dir``, most files first.

        Raises:
            InputError: empty folder, or a file that is not readable DICOM.
        """
        return scan_dicom_folder(dicom_dir)


class CTSeriesSelectorOperator:
    """Pick the CT series to segment: the one named, else the CT series with most slices.

    Args:
        series_uid: the series to use (``None``: choose).
    """

    def __init__(self, series_uid: str | None = None) -> None:
        self.series_uid = series_uid

    def compute(self, dicom_dir: Path, series: Sequence[DicomSeriesInfo]) -> DicomSeriesInfo:
        """Return the chosen series.

        Raises:
            InputError: no CT series, or the named series is missing or not CT.
        """
        found = "; ".join(f"{s.series_uid} (Modality {s.modality or 'missing'}, {len(s.files)} files)" for s in series)
        if self.series_uid is not None:
            chosen = [s for s in series if s.series_uid == self.series_uid]
            if not chosen:
                raise InputError(f"{dicom_dir}: series {self.series_uid} not found; found {found}")
            if chosen[0].modality != "CT":
                raise InputError(f"{chosen[0].files[0]}: series {self.series_uid} is not CT (Modality {chosen[0].modality})")
            return chosen[0]
        ct = [s for s in series if s.modality == "CT"]  # already sorted, most files first
        if not ct:
            raise InputError(f"{dicom_dir}: no CT image series; found {found}")
        return ct[0]


class SeriesVolumeOperator:
    """Read the chosen series into a sorted HU volume (``custom.io.dicom.read_ct_series``)."""

    def compute(self, dicom_dir: Path, series: DicomSeriesInfo) -> CTSeries:
        """Return the series volume, sorted by ``ImagePositionPatient`` along the slice normal, in HU.

        Raises:
            InputError: a corrupt or mixed series, missing slices, an undecodable transfer syntax.
        """
        return read_ct_series(dicom_dir, series_uid=series.series_uid)


class StudentInferenceOperator:
    """Gaussian sliding-window inference of the student on the volume.

    Args:
        model: the loaded student.
    """

    def __init__(self, model: StudentModel) -> None:
        self.model = model

    def compute(self, series: CTSeries) -> np.ndarray:
        """Return the PE probability, ``(Z, Y, X)`` on the series grid."""
        return predict_probability(self.model, series.volume_zyx)


class DicomSegWriterOperator:
    """Write the thresholded probability as a DICOM SEG referencing the source series.

    Args:
        threshold: a voxel is embolus when its probability is at least this value.
        algorithm_version: the model version recorded in the SEG.
    """

    def __init__(self, threshold: float, algorithm_version: str) -> None:
        self.threshold = threshold
        self.algorithm_version = algorithm_version

    def compute(self, probability: np.ndarray, series: CTSeries, out_dir: Path) -> Path:
        """Return the path of the written SEG."""
        return write_dicom_seg(probability >= self.threshold, series, out_dir / SEG_NAME, self.algorithm_version)


class FindingsWriterOperator:
    """Write ``findings.json``: per-PE clusters in patient coordinates and the study-level PE probability.

    Args:
        model: the loaded student (threshold, smallest cluster, identity).
    """

    def __init__(self, model: StudentModel) -> None:
        self.model = model

    def compute(self, probability: np.ndarray, series: CTSeries, out_dir: Path, extra: dict[str, Any]) -> Path:
        """Return the path of the written findings (``extra`` is merged into the document)."""
        document = deploy_findings(probability, series, self.model.threshold, self.model.min_voxels, self.model.describe())
        path = out_dir / FINDINGS_NAME
        write_json_atomic(path, {**document, **extra})
        return path


class PESegmentationApp:
    """The operator chain, run on one study.

    Args:
        model: a model path (see ``custom.deploy.resolve_model_path``).
        config_files: config files merged over the model's ``inference.json``.
        series_uid: the series to segment (default: the CT series with most slices).
    """

    def __init__(self, model: str | os.PathLike, config_files: Sequence[str] = (), series_uid: str | None = None) -> None:
        self.model_path = model
        self.config_files = tuple(config_files)
        self.series_uid = series_uid

    def run(self, dicom_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Segment the study of ``dicom_dir`` into ``out_dir``.

        Returns:
            ``{"seg": OUT/pe_seg.dcm, "findings": OUT/findings.json}``.

        Raises:
            InputError: bad input or model; ``out_dir`` is then left as it was (created folders removed).
        """
        start = time.perf_counter()
        dicom_dir, out = Path(dicom_dir), Path(out_dir)
        infos = DicomLoaderOperator().compute(dicom_dir)
        chosen = CTSeriesSelectorOperator(self.series_uid).compute(dicom_dir, infos)
        series = SeriesVolumeOperator().compute(dicom_dir, chosen)
        model = load_student(self.model_path, self.config_files)
        probability = StudentInferenceOperator(model).compute(series)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
        try:
            seg = DicomSegWriterOperator(model.threshold, model.version).compute(probability, series, staging)
            extra = {"seg_file": seg.name, "seconds": round(time.perf_counter() - start, 2)}
            findings = FindingsWriterOperator(model).compute(probability, series, staging, extra)
            os.replace(seg, out / seg.name)
            os.replace(findings, out / findings.name)  # last: findings.json marks a complete output
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created and not any(out.iterdir()):
                out.rmdir()
            raise
        staging.rmdir()
        return {"seg": out / SEG_NAME, "findings": out / FINDINGS_NAME}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="iExplain PE segmentation: DICOM CTPA -> DICOM SEG + findings.json")
    parser.add_argument("-i", "--input", default=os.environ.get("HOLOSCAN_INPUT_PATH"), help="DICOM study folder")
    parser.add_argument("-o", "--output", default=os.environ.get("HOLOSCAN_OUTPUT_PATH"), help="output folder")
    parser.add_argument("-m", "--model", default=os.environ.get("HOLOSCAN_MODEL_PATH"), help="bundle folder or .ts file")
    parser.add_argument("--config", action="append", default=[], help="config override file (repeatable)")
    parser.add_argument("--series_uid", default=None, help="series to segment (default: the CT series with most slices)")
    args = parser.parse_args(argv)
    missing = [flag for flag, value in (("-i", args.input), ("-o", args.output), ("-m", args.model)) if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)} (or the HOLOSCAN_*_PATH environment variables)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app from the command line; 0 on success, 2 on bad input (message on stderr)."""
    args = _parse(argv)
    try:
        outputs = PESegmentationApp(args.model, args.config, args.series_uid).run(args.input, args.output)
    except InputError as error:
        print(f"pe-app: {error}", file=sys.stderr)
        return 2
    for path in outputs.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
