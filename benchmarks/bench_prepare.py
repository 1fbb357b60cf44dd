"""Speed of the DICOM reader and of ``prepare`` against a plain ``pydicom.dcmread`` + ``numpy.stack`` loop.

Issue 12 item 5. Builds a small cohort from a real 512x512 CT slice (pydicom-data ``693_UNCR.dcm``,
each slice shifted so no two are equal), once uncompressed and once re-encoded as JPEG 2000
lossless with the installed pylibjpeg-openjpeg encoder, then measures slices per second of:

- ``plain``: ``numpy.stack([pydicom.dcmread(f).pixel_array for f in files])`` per study;
- ``plain + nib.save``: the plain loop plus ``nibabel.save`` of each stacked study as ``.nii.gz``
  (nibabel's own zlib writer at its default level 1): the plain *conversion*, the baseline of
  ``prepare``;
- ``reader``: :func:`custom.io.dicom.read_ct_series` (grouping, sorting, checks, HU float32), and
  with ``dtype=int16`` (what ``prepare`` reads: HU rounded and range-checked while decoding);
- ``prepare``: :func:`custom.io.prepare.prepare_cohort` (int16 reader + ``.nii.gz`` writes through
  ISA-L + records + datalist), with 1 and 2 worker processes; and the plain loop over 2 processes.

Each number is the best of ``repeats`` interleaved runs, as wall time and as CPU time of this
process (the 1-process ratios use CPU time, which other load on a shared machine disturbs less).
``--codecs`` also times every installed decoding plugin per transfer syntax (the table behind
``custom.io.codecs.PREFERRED_PLUGINS``).

Usage:
    python benchmarks/bench_prepare.py [--studies 4] [--slices 48] [--repeats 3] [--codecs True]
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from custom.io.dicom import read_ct_series
from custom.io.prepare import prepare_cohort


def _template() -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    stored = ds.pixel_array.copy()
    ds.BitsStored, ds.HighBit = 16, 15
    return ds, stored


def build_cohort(root: Path, n_studies: int, n_slices: int, transfer_syntax: str) -> int:
    """Write ``n_studies`` studies of ``n_slices`` 512x512 slices in the RSPECT layout; returns the slice count."""
    template, stored = _template()
    for s in range(n_studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = root / "train" / study_uid / series_uid
        folder.mkdir(parents=True)
        for k in range(n_slices):
            ds = copy.deepcopy(template)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImagePositionPatient = [-122.5, -112.4, 47.0 + 1.25 * k]
            ds.InstanceNumber = k + 1
            arr = np.roll(stored, shift=(3 * k + s, 2 * k), axis=(0, 1))
            ds.PixelData = arr.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            if transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(transfer_syntax, arr, generate_instance_uid=False)
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return n_studies * n_slices


def plain_study(series_dir: Path) -> np.ndarray:
    """The baseline: read every file and stack the decoded pixels, nothing else."""
    return np.stack([pydicom.dcmread(f).pixel_array for f in sorted(series_dir.iterdir())])


def plain_convert(series_dir: Path, out: Path) -> None:
    """The baseline conversion: the plain loop, then nibabel's own ``.nii.gz`` writer (zlib, level 1)."""
    stored = plain_study(series_dir)
    nib.save(nib.Nifti1Image(stored.transpose(2, 1, 0), np.eye(4)), str(out / f"{series_dir.name}.nii.gz"))


def _plain_convert(root: Path) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench_prepare_plain_"))
    try:
        for d in _series_dirs(root):
            plain_convert(d, out)
    finally:
        shutil.rmtree(out)


def _series_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train").glob("*/*") if p.is_dir())


def _plain(root: Path, workers: int) -> None:
    dirs = _series_dirs(root)
    if workers <= 1:
        for d in dirs:
            plain_study(d)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(plain_study, dirs))


def _import_probe(_: int) -> int:
    import custom.io.prepare  # noqa: F401  (what a prepare worker imports)

    return os.getpid()


def _pool_startup(workers: int) -> None:
    """Start a spawn pool like prepare's and import the reader in every worker: the fixed cost of ``workers > 1``."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_import_probe, range(workers)))


def _reader(root: Path, dtype: type = np.float32) -> None:
    for d in sorted((root / "train").iterdir()):
        read_ct_series(d, dtype=dtype)


def _prepare(root: Path, workers: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench_prepare_out_"))
    try:
        report = prepare_cohort(root, out, workers=workers)
        assert report.ok, report.failures
    finally:
        shutil.rmtree(out)


def _measure(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and CPU (this process) seconds of each run; the runs are interleaved per repeat so
    that a burst of load from other processes does not fall on one of them only."""
    best = {name: (np.inf, np.inf) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def bench_codecs(repeats: int = 5) -> None:
    """Decode time of one real 512x512 CT slice per transfer syntax and installed plugin."""
    template, stored = _template()
    print(
        "codec benchmark: 693_UNCR.dcm (512x512 int16 CT) re-encoded; ms per slice decode (best of 3 x mean of repeats)"
    )
    for syntax in (
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        DeflatedExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ):
        ds = copy.deepcopy(template)
        if syntax in (DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax, stored, generate_instance_uid=False)
        path = Path(tempfile.mkstemp(suffix=".dcm")[1])
        ds.save_as(path, enforce_file_format=True)
        decoder = get_decoder(syntax)
        for plugin in sorted(decoder.available_plugins) or [""]:
            best = np.inf
            for _ in range(3):
                loaded = pydicom.dcmread(path)
                start = time.perf_counter()
                for _ in range(repeats):
                    out = pixel_array(loaded, decoding_plugin=plugin)
                best = min(best, (time.perf_counter() - start) / repeats)
            assert np.array_equal(out, stored)
            print(
                f"  {syntax.name:<45s} {plugin or 'pydicom (native)':<18s} {1000 * best:7.2f} ms  "
                f"{path.stat().st_size / 1024:7.0f} KiB"
            )
        path.unlink()


def _speedup(before: float, after: float) -> str:
    return f"{before / after:.2f}" if after > 0 else "n/a (start-up dominates)"


def main(studies: int = 4, slices: int = 48, repeats: int = 3, codecs: bool = True) -> None:
    """Run the benchmark and print slices/s and the ratios (last lines)."""
    if codecs:
        bench_codecs()
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    ratios = []
    try:
        for label, syntax in (("uncompressed", ExplicitVRLittleEndian), ("jpeg2000", JPEG2000Lossless)):
            root = work / label
            start = time.perf_counter()
            n = build_cohort(root, studies, slices, syntax)
            print(
                f"\n{label}: {studies} studies x {slices} slices of 512x512 written in "
                f"{time.perf_counter() - start:.1f} s"
            )
            _plain(root, 1)  # warm the page cache and imports
            one = _measure(
                {
                    "plain": lambda: _plain(root, 1),
                    "plain_convert": lambda: _plain_convert(root),
                    "reader": lambda: _reader(root),
                    "reader16": lambda: _reader(root, np.int16),
                    "prepare": lambda: _prepare(root, 1),
                },
                repeats,
            )
            two = _measure(
                {
                    "plain": lambda: _plain(root, 2),
                    "prepare": lambda: _prepare(root, 2),
                    "startup": lambda: _pool_startup(2),
                },
                max(1, repeats - 1),
            )
            startup = two["startup"][0]
            rows = [
                ("plain loop (dcmread + stack), 1 process", *one["plain"]),
                ("plain loop + nib.save .nii.gz, 1 process", *one["plain_convert"]),
                ("reader (read_ct_series), 1 process", *one["reader"]),
                ("reader, dtype int16, 1 process", *one["reader16"]),
                ("prepare (reader + .nii.gz), 1 process", *one["prepare"]),
                ("plain loop, 2 processes", two["plain"][0], None),
                ("prepare, 2 processes", two["prepare"][0], None),
                ("prepare, 2 processes, minus pool start-up", two["prepare"][0] - startup, None),
            ]
            for name, wall, cpu in rows:
                if wall <= 0:
                    print(f"  {name:<44s} n/a (the start-up is longer than the run)")
                    continue
                cpu_text = "" if cpu is None else f"   CPU {n / cpu:8.1f} slices/s"
                print(f"  {name:<44s} wall {n / wall:8.1f} slices/s ({wall:6.2f} s){cpu_text}")
            print(
                f"  (start-up of a 2-process spawn pool importing the reader: {startup:.2f} s, included in the "
                "2-process rows)"
            )
            ratios += [
                f"{label}: reader / plain loop, 1 process: CPU time ratio {one['reader'][1] / one['plain'][1]:.2f}, "
                f"wall {one['reader'][0] / one['plain'][0]:.2f}",
                f"{label}: reader int16 / plain loop, 1 process: CPU time ratio "
                f"{one['reader16'][1] / one['plain'][1]:.2f}, wall {one['reader16'][0] / one['plain'][0]:.2f}",
                f"{label}: prepare / plain loop, 1 process: CPU time ratio "
                f"{one['prepare'][1] / one['plain'][1]:.2f}, wall {one['prepare'][0] / one['plain'][0]:.2f}",
                f"{label}: prepare / (plain loop + nib.save), 1 process: CPU time ratio "
                f"{one['prepare'][1] / one['plain_convert'][1]:.2f}, "
                f"wall {one['prepare'][0] / one['plain_convert'][0]:.2f}",
                f"{label}: 2 vs 1 processes, wall speed-up: prepare {one['prepare'][0] / two['prepare'][0]:.2f} "
                f"({_speedup(one['prepare'][0], two['prepare'][0] - startup)} without the {startup:.1f} s pool "
                "start-up), "
                f"plain loop {one['plain'][0] / two['plain'][0]:.2f}",
            ]
    finally:
        shutil.rmtree(work)
    print(
        f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes share them)"
    )
    for line in ratios:
        print(line)


if __name__ == "__main__":
    fire.Fire(main)
