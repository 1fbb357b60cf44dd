"""iExplain PE segmentation app: a CTPA DICOM study in, a DICOM SEG and ``findings.json`` out.

Usage::

    python deploy/app.py -i DICOM_DIR -o OUT -m MODEL [--config OVERRIDE.json ...] [--series_uid UID]

``MODEL`` is a dynunet_student bundle folder (``configs/`` + ``models/model.pt``), its TorchScript
export (``.ts`` from ``python -m monai.bundle ckpt_export``), or a folder holding exactly one of
them. Without flags the paths come from the MONAI Application Package environment
(``MONAI_INPUTPATH``, ``MONAI_OUTPUTPATH``, ``MONAI_MODELPATH`` as the SDK's packager sets them, or
the Holoscan-era ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``).

The app is a MONAI Deploy App SDK application (``monai-deploy-app-sdk`` 0.5.1, the newest release
whose core is pure Python; see deploy/README.md): an ``Application`` whose ``compose`` chains
``Operator`` subclasses through typed in-memory ports, run by the SDK's single-process executor::

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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

with warnings.catch_warnings():  # the SDK imports pkg_resources (setuptools < 81), which warns on import
    warnings.simplefilter("ignore", UserWarning)
    from monai.deploy.core import (
        Application,
        DataPath,
        ExecutionContext,
        InputContext,
        IOType,
        Operator,
        OutputContext,
        env,
        input,
        output,
        resource,
    )

from custom.deploy import StudentModel, deploy_findings, load_student, predict_probability, write_dicom_seg
from custom.io.atomic import write_json_atomic
from custom.io.dicom import CTSeries, DicomSeriesInfo, read_ct_series, scan_dicom_folder
from custom.io.errors import InputError

__all__ = [
    "CTSeriesSelectorOperator",
    "DicomStudy",
    "DicomLoaderOperator",
    "DicomSegWriterOperator",
    "FindingsWriterOperator",
    "PESegmentationApp",
    "Prediction",
    "SeriesSelection",
    "SeriesVolumeOperator",
    "StudentInferenceOperator",
    "main",
]

SEG_NAME = "pe_seg.dcm"
FINDINGS_NAME = "findings.json"


@dataclass(frozen=True)
class DicomStudy:
    """A DICOM folder and the series found in it (most files first)."""

    folder: Path
    series: tuple[DicomSeriesInfo, ...]


@dataclass(frozen=True)
class SeriesSelection:
    """A DICOM folder and the series chosen for segmentation."""

    folder: Path
    series: DicomSeriesInfo


@dataclass(frozen=True, eq=False)
class Prediction:
    """The student's PE probability on the grid of ``series``, with the model that made it."""

    series: CTSeries
    probability: np.ndarray
    model: StudentModel


@input("dicom_dir", DataPath, IOType.DISK)
@output("study", DicomStudy, IOType.IN_MEMORY)
class DicomLoaderOperator(Operator):
    """Scan the app's input folder (recursively, headers only) into its series."""

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Read ``dicom_dir``; emit a :class:`DicomStudy`.

        Raises:
            InputError: empty folder, or a file that is not readable DICOM.
        """
        folder = Path(op_input.get("dicom_dir").path)
        op_output.set(DicomStudy(folder, tuple(scan_dicom_folder(folder))), "study")


@input("study", DicomStudy, IOType.IN_MEMORY)
@output("selection", SeriesSelection, IOType.IN_MEMORY)
class CTSeriesSelectorOperator(Operator):
    """Pick the CT series to segment: the one named, else the CT series with most slices.

    Args:
        series_uid: the series to use (``None``: choose).
    """

    def __init__(self, series_uid: str | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Emit the chosen series as a :class:`SeriesSelection`."""
        study: DicomStudy = op_input.get("study")
        op_output.set(SeriesSelection(study.folder, self.select(study.folder, study.series)), "selection")

    def select(self, dicom_dir: Path, series: Sequence[DicomSeriesInfo]) -> DicomSeriesInfo:
        """Return the chosen series of ``series`` (sorted most files first).

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


@input("selection", SeriesSelection, IOType.IN_MEMORY)
@output("series", CTSeries, IOType.IN_MEMORY)
class SeriesVolumeOperator(Operator):
    """Read the chosen series into a sorted HU volume (``custom.io.dicom.read_ct_series``)."""

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Emit the series volume, sorted by ``ImagePositionPatient`` along the slice normal, in HU.

        Raises:
            InputError: a corrupt or mixed series, missing slices, an undecodable transfer syntax.
        """
        selection: SeriesSelection = op_input.get("selection")
        op_output.set(read_ct_series(selection.folder, series_uid=selection.series.series_uid), "series")


@input("series", CTSeries, IOType.IN_MEMORY)
@output("prediction", Prediction, IOType.IN_MEMORY)
@env(pip_packages=["torch==2.14.1", "monai==1.6.1", "pytorch-ignite==0.5.5"])
class StudentInferenceOperator(Operator):
    """Gaussian sliding-window inference of the student on the volume.

    Args:
        model_path: a bundle folder or TorchScript file (``custom.deploy.resolve_model_path``).
        config_files: config files merged over the bundle's ``inference.json``.
    """

    def __init__(self, model_path: str | os.PathLike | None, config_files: Sequence[str] = ()) -> None:
        super().__init__()
        self.model_path = model_path
        self.config_files = tuple(config_files)

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Emit the PE probability, ``(Z, Y, X)`` on the series grid, as a :class:`Prediction`.

        Raises:
            InputError: the model cannot be loaded.
        """
        series: CTSeries = op_input.get("series")
        model = load_student(self.model_path, self.config_files)
        op_output.set(Prediction(series, predict_probability(model, series.volume_zyx), model), "prediction")


@input("prediction", Prediction, IOType.IN_MEMORY)
@output("seg", DataPath, IOType.DISK)
@env(pip_packages=["highdicom==0.28.2", "pydicom==3.0.2"])
class DicomSegWriterOperator(Operator):
    """Write the thresholded probability as a DICOM SEG (``pe_seg.dcm``) referencing the source series."""

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Write ``pe_seg.dcm`` into the operator's output folder (the app's output)."""
        prediction: Prediction = op_input.get("prediction")
        model = prediction.model
        out_dir = Path(op_output.get("seg").path)
        write_dicom_seg(prediction.probability >= model.threshold, prediction.series, out_dir / SEG_NAME, model.version)


@input("prediction", Prediction, IOType.IN_MEMORY)
@output("findings", DataPath, IOType.DISK)
class FindingsWriterOperator(Operator):
    """Write ``findings.json``: per-PE clusters in patient coordinates and the study-level PE probability.

    Args:
        start_time: ``time.perf_counter()`` when the app started (for the recorded run time).
    """

    def __init__(self, start_time: float) -> None:
        super().__init__()
        self.start_time = start_time

    def compute(self, op_input: InputContext, op_output: OutputContext, context: ExecutionContext) -> None:
        """Write ``findings.json`` into the operator's output folder (the app's output)."""
        prediction: Prediction = op_input.get("prediction")
        model = prediction.model
        document = deploy_findings(prediction.probability, prediction.series, model.threshold, model.min_voxels, model.describe())
        extra = {"seg_file": SEG_NAME, "seconds": round(time.perf_counter() - self.start_time, 2)}
        write_json_atomic(Path(op_output.get("findings").path) / FINDINGS_NAME, {**document, **extra})


@resource(cpu=2, memory="8Gi", gpu=1)
class PESegmentationApp(Application):
    """iExplain PE segmentation: a CTPA DICOM study in, a DICOM SEG and findings.json out.

    Args:
        model: a model path (see ``custom.deploy.resolve_model_path``).
        config_files: config files merged over the model's ``inference.json``.
        series_uid: the series to segment (default: the CT series with most slices).
    """

    name = "iexplain-pe-segmentation"
    version = "0.1.0"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        config_files: Sequence[str] = (),
        series_uid: str | None = None,
        *,
        do_run: bool = False,
        path: str | os.PathLike | None = None,
        runtime_env: Any = None,
    ) -> None:
        # ``do_run``/``path``/``runtime_env`` are the SDK's own arguments: its packager builds the app
        # as ``PESegmentationApp(do_run=False, path=...)`` to read the app's description and resources
        self.model_path = None if model is None else Path(model)
        self.config_files = tuple(config_files)
        self.series_uid = series_uid
        self.start_time = time.perf_counter()
        # a path: the SDK does not parse sys.argv (main() does, with the app's own flags)
        super().__init__(runtime_env=runtime_env, do_run=do_run, path=Path(path) if path else Path(__file__))

    def compose(self) -> None:
        """Chain the operators: loader -> selector -> volume -> inference -> SEG writer + findings writer."""
        loader = DicomLoaderOperator()
        selector = CTSeriesSelectorOperator(self.series_uid)
        volume = SeriesVolumeOperator()
        inference = StudentInferenceOperator(self.model_path, self.config_files)
        self.add_flow(loader, selector, {"study": "study"})
        self.add_flow(selector, volume, {"selection": "selection"})
        self.add_flow(volume, inference, {"series": "series"})
        self.add_flow(inference, DicomSegWriterOperator(), {"prediction": "prediction"})
        self.add_flow(inference, FindingsWriterOperator(self.start_time), {"prediction": "prediction"})

    def segment(self, dicom_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Run the SDK executor on the study of ``dicom_dir``; move the outputs into ``out_dir`` when all succeeded.

        Returns:
            ``{"seg": OUT/pe_seg.dcm, "findings": OUT/findings.json}``.

        Raises:
            InputError: bad input or model; ``out_dir`` is then left as it was (created folders removed).
        """
        dicom_dir, out = Path(dicom_dir), Path(out_dir)
        if self.model_path is None:
            raise InputError("no model: give -m MODEL (a bundle folder or a TorchScript file)")
        if not dicom_dir.is_dir():
            raise InputError(f"{dicom_dir}: not a folder")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
        workdir = Path(tempfile.mkdtemp(prefix=".monai_workdir-", dir=out))
        try:
            self.run(
                log_level="WARNING", input=str(dicom_dir), output=str(staging), model=str(self.model_path), workdir=str(workdir)
            )
            for name in (SEG_NAME, FINDINGS_NAME):  # findings.json last: it marks a complete output
                if not (staging / name).is_file():
                    raise InputError(f"{dicom_dir}: the app wrote no {name}")
                os.replace(staging / name, out / name)
        except BaseException:
            if created and not any(p for p in out.iterdir() if p not in (staging, workdir)):
                shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(workdir, ignore_errors=True)
        return {"seg": out / SEG_NAME, "findings": out / FINDINGS_NAME}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="iExplain PE segmentation: DICOM CTPA -> DICOM SEG + findings.json")
    environ = os.environ
    parser.add_argument("-i", "--input", default=environ.get("MONAI_INPUTPATH") or environ.get("HOLOSCAN_INPUT_PATH"), help="DICOM study folder")
    parser.add_argument("-o", "--output", default=environ.get("MONAI_OUTPUTPATH") or environ.get("HOLOSCAN_OUTPUT_PATH"), help="output folder")
    parser.add_argument("-m", "--model", default=environ.get("MONAI_MODELPATH") or environ.get("HOLOSCAN_MODEL_PATH"), help="bundle folder or .ts file")
    parser.add_argument("--config", action="append", default=[], help="config override file (repeatable)")
    parser.add_argument("--series_uid", default=None, help="series to segment (default: the CT series with most slices)")
    args = parser.parse_args(argv)
    missing = [flag for flag, value in (("-i", args.input), ("-o", args.output), ("-m", args.model)) if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)} (or the MONAI_*PATH / HOLOSCAN_*_PATH environment variables)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app from the command line; 0 on success, 2 on bad input (message on stderr)."""
    args = _parse(argv)
    try:
        outputs = PESegmentationApp(args.model, args.config, args.series_uid).segment(args.input, args.output)
    except InputError as error:
        print(f"pe-app: {error}", file=sys.stderr)
        return 2
    for path in outputs.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
