"""custom.io.dicom and custom.io.codecs: sorting, HU, geometry, codecs, bad inputs, real pydicom-data files."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import hu_volume, uid_counter, write_ct_series
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from custom.io.codecs import PREFERRED_PLUGINS, decode_pixels, decoding_plugin
from custom.io.dicom import read_ct_series, scan_dicom_folder
from custom.io.errors import InputError
from custom.io.geometry import LPS_TO_RAS

ALL_LOSSLESS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]


def _voxel_to_lps(positions, orientation, pixel_spacing, i, j, k):
    iop = np.asarray(orientation, dtype=float)
    return positions[k] + i * pixel_spacing[1] * iop[:3] + j * pixel_spacing[0] * iop[3:]


def _check_affine(series, positions, orientation, pixel_spacing):
    """Every corner voxel of the affine lands on the DICOM position of that pixel."""
    n, rows, cols = series.volume_zyx.shape
    for i, j, k in [(0, 0, 0), (cols - 1, 0, 0), (0, rows - 1, n - 1), (cols - 1, rows - 1, n // 2)]:
        expected = LPS_TO_RAS[:3, :3] @ _voxel_to_lps(positions, orientation, pixel_spacing, i, j, k)
        np.testing.assert_allclose(series.affine @ [i, j, k, 1.0], [*expected, 1.0], atol=1e-3)


def test_hu_round_trip_and_affine(tmp_path):
    hu = hu_volume(7)
    info = write_ct_series(tmp_path / "s", hu, pixel_spacing=(0.7, 0.9))
    series = read_ct_series(tmp_path / "s")
    assert series.volume_zyx.dtype == np.float32
    np.testing.assert_array_equal(series.volume_zyx, hu)
    assert list(series.sop_uids) == info["sop_uids"]
    assert series.study_uid == info["study_uid"] and series.series_uid == info["series_uid"]
    assert series.spacing_zyx == pytest.approx((1.25, 0.7, 0.9))
    _check_affine(series, info["positions"], (1, 0, 0, 0, 1, 0), (0.7, 0.9))
    assert series.notes == ()


def test_rescale_slope_and_intercept(tmp_path):
    hu = np.rint(hu_volume(3) / 2) * 2 + 24  # even stored steps: HU = 2 * stored - 1000
    write_ct_series(tmp_path / "s", hu, slope=2.0, intercept=-1000.0)
    np.testing.assert_array_equal(read_ct_series(tmp_path / "s").volume_zyx, hu)


def test_order_is_geometric_not_names_nor_instance_numbers(tmp_path):
    hu = hu_volume(9, seed=1)
    n = hu.shape[0]
    # file names sort the opposite way to z; InstanceNumber runs against z and is scrambled
    names = [f"{chr(ord('z') - k)}.dcm" for k in range(n)]
    instance = list(np.random.default_rng(3).permutation(n) + 1)[::-1]
    info = write_ct_series(tmp_path / "s", hu, file_names=names, instance_numbers=instance, origin=(0, 0, -300.0))
    series = read_ct_series(tmp_path / "s")
    np.testing.assert_array_equal(series.volume_zyx, hu)
    assert list(series.sop_uids) == info["sop_uids"]
    assert [p.name for p in series.source_files] == names
    assert np.all(np.diff(series.positions[:, 2]) > 0)


def test_descending_positions_are_sorted_along_the_normal(tmp_path):
    hu = hu_volume(5, seed=2)
    positions = np.array([[0, 0, 50.0 - 2 * k] for k in range(5)])  # written top-down
    write_ct_series(tmp_path / "s", hu, positions=positions)
    series = read_ct_series(tmp_path / "s")
    np.testing.assert_array_equal(series.volume_zyx, hu[::-1])
    assert series.affine[2, 2] == pytest.approx(2.0)


def test_tilted_gantry_and_oblique_orientation_affine(tmp_path):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # oblique, non-axial (rows along x/y, columns down -z)
    iop = np.asarray(orientation)
    normal = np.cross(iop[:3], iop[3:])
    hu = hu_volume(6, seed=4)
    tilt_shift = 0.4 * iop[3:]  # positions drift in-plane each slice: a tilted gantry
    positions = np.array([[10.0, -20.0, 30.0] + k * (1.5 * normal + tilt_shift) for k in range(6)])
    write_ct_series(tmp_path / "s", hu, positions=positions, orientation=orientation, pixel_spacing=(0.6, 0.8))
    series = read_ct_series(tmp_path / "s")
    np.testing.assert_array_equal(series.volume_zyx, hu)
    _check_affine(series, positions, orientation, (0.6, 0.8))
    assert series.spacing_zyx[0] == pytest.approx(np.linalg.norm(1.5 * normal + tilt_shift), abs=1e-3)
    assert any("gantry tilt" in note for note in series.notes)


def test_mixed_transfer_syntaxes_decode_exactly(tmp_path):
    hu = hu_volume(len(ALL_LOSSLESS), seed=5)
    write_ct_series(tmp_path / "s", hu, transfer_syntax=ALL_LOSSLESS)
    series = read_ct_series(tmp_path / "s")
    np.testing.assert_array_equal(series.volume_zyx, hu)
    assert set(series.transfer_syntaxes) == set(ALL_LOSSLESS)


def test_plugin_preferences_are_installed():
    assert decoding_plugin(RLELossless) == "pylibjpeg"
    assert decoding_plugin(JPEG2000Lossless) == "pylibjpeg"
    assert decoding_plugin(JPEGLSLossless) == "pyjpegls"
    assert decoding_plugin("1.2.840.10008.1.2.4.70") == "pylibjpeg"
    assert decoding_plugin(ExplicitVRLittleEndian) == ""
    assert "pylibjpeg" in PREFERRED_PLUGINS["1.2.840.10008.1.2.4.70"]


def test_pixel_padding_value_becomes_air(tmp_path):
    hu = hu_volume(3, seed=6)
    hu[:, :4, :] = -3024.0  # stored -2000 with intercept -1024: the padding value
    write_ct_series(tmp_path / "s", hu, padding_value=-2000)
    series = read_ct_series(tmp_path / "s")
    assert np.all(series.volume_zyx[:, :4, :] == -1024.0)
    np.testing.assert_array_equal(series.volume_zyx[:, 4:, :], hu[:, 4:, :])
    assert any("PixelPaddingValue" in note for note in series.notes)


def test_unsigned_wrapped_padding_value_is_not_a_bright_artefact(tmp_path):
    hu = hu_volume(2, seed=7)
    hu[:, :, :3] = -3024.0
    info = write_ct_series(tmp_path / "s", hu)
    for path in info["files"]:  # a padding value written as the unsigned twin of -2000 (63536)
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 63536)
        ds.save_as(path)
    volume = read_ct_series(tmp_path / "s").volume_zyx
    assert volume.max() == hu[:, :, 3:].max() and np.all(volume[:, :, :3] == -1024.0)


def test_pixel_padding_range_becomes_air(tmp_path):
    hu = hu_volume(2, seed=13)
    hu[:, 0, :] = -3024.0  # stored -2000
    hu[:, 1, :] = -2524.0  # stored -1500: inside the padding range [-2000, -1500]
    hu[:, 2, :] = -2523.0  # stored -1499: outside, kept
    info = write_ct_series(tmp_path / "s", hu, padding_value=-2000)
    for path in info["files"]:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280121, "SS", -1500)  # PixelPaddingRangeLimit
        ds.save_as(path)
    volume = read_ct_series(tmp_path / "s").volume_zyx
    assert np.all(volume[:, :2, :] == -1024.0)
    np.testing.assert_array_equal(volume[:, 2:, :], hu[:, 2:, :])


def test_mixed_slice_thickness_is_noted_and_geometry_follows_positions(tmp_path):
    hu = hu_volume(4, seed=8)
    write_ct_series(tmp_path / "s", hu, slice_thickness=[1.25, 2.5, 1.25, 5.0])
    series = read_ct_series(tmp_path / "s")
    assert series.spacing_zyx[0] == pytest.approx(1.25)
    assert any("mixed SliceThickness" in note for note in series.notes)


def test_several_series_pick_most_slices_or_the_named_one(tmp_path):
    study = tmp_path / "study"
    study_uid = uid_counter()
    scout = write_ct_series(study / "scout", hu_volume(2, seed=9), study_uid=study_uid, orientation=(1, 0, 0, 0, 0, -1))
    main = write_ct_series(study / "main", hu_volume(6, seed=10), study_uid=study_uid)
    recon = write_ct_series(study / "recon", hu_volume(4, seed=11), study_uid=study_uid, slice_spacing=2.5)
    write_ct_series(study / "mr", hu_volume(8, seed=12), study_uid=study_uid, modality="MR")
    series = read_ct_series(study)
    assert series.series_uid == main["series_uid"] and series.n_slices == 6
    joined = "\n".join(series.notes)
    assert f"using series {main['series_uid']}" in joined and "most slices of 3 CT series" in joined
    assert scout["series_uid"] in joined and "non-CT (Modality MR" in joined
    named = read_ct_series(study, series_uid=recon["series_uid"])
    assert named.n_slices == 4 and f"using series {recon['series_uid']} (4 slices; requested)" in "\n".join(named.notes)
    with pytest.raises(InputError, match="not in the folder"):
        read_ct_series(study, series_uid="abcdef123456")
    listed = scan_dicom_folder(study)
    assert [(info.modality, len(info.files)) for info in listed] == [("MR", 8), ("CT", 6), ("CT", 4), ("CT", 2)]


def test_objects_without_image_and_non_dicom_files_are_skipped_with_a_note(tmp_path):
    info = write_ct_series(tmp_path / "study" / "ct", hu_volume(3))
    report = pydicom.Dataset()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID = uid_counter()
    report.StudyInstanceUID, report.SeriesInstanceUID, report.Modality = info["study_uid"], uid_counter(), "SR"
    (tmp_path / "study" / "sr").mkdir()
    report.save_as(tmp_path / "study" / "sr" / "report.dcm", enforce_file_format=True)
    (tmp_path / "study" / "README.txt").write_text("notes")
    series = read_ct_series(tmp_path / "study")
    assert series.n_slices == 3
    joined = "\n".join(series.notes)
    assert "ignored 1 non-DICOM file(s): README.txt" in joined
    assert "ignored 1 DICOM object(s) without an image: report.dcm (Basic Text SR Storage, Modality SR)" in joined
    assert [i.modality for i in scan_dicom_folder(tmp_path / "study")] == ["CT"]
    shutil.rmtree(tmp_path / "study" / "ct")
    with pytest.raises(
        InputError, match=r"study: no DICOM image files \(1 non-DICOM files, 1 objects without an image\)"
    ):
        read_ct_series(tmp_path / "study")


def test_hex_pseudo_uids_are_opaque_strings(tmp_path):
    sops = ["00000000e123", "0a1b2c3d4e5f", "000000000001"]
    write_ct_series(tmp_path / "s", hu_volume(3), study_uid="6897fa9de148", series_uid="0e5bd8e2b5b4", sop_uids=sops)
    series = read_ct_series(tmp_path / "s")
    assert series.study_uid == "6897fa9de148" and series.series_uid == "0e5bd8e2b5b4"
    assert list(series.sop_uids) == sops


# ---- bad inputs: each names the file and the problem -------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
def test_truncated_pixel_data(tmp_path, syntax):
    info = write_ct_series(tmp_path / "s", hu_volume(4), transfer_syntax=syntax)
    bad = info["files"][2]
    bad.write_bytes(bad.read_bytes()[:-100])
    # pydicom itself warns when an encapsulated Pixel Data ends early; the reader still names the file
    warns = (
        contextlib.nullcontext()
        if syntax == ExplicitVRLittleEndian
        else pytest.warns(UserWarning, match="End of file reached")
    )
    with warns, pytest.raises(InputError, match=rf"{bad.name}.*(truncated|corrupt)"):
        read_ct_series(tmp_path / "s")


def test_truncated_header(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(4))
    bad = info["files"][1]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(InputError, match=rf"{bad.name}.*(truncated|corrupt)"):
        read_ct_series(tmp_path / "s")


def test_not_dicom_dcm_file(tmp_path):
    write_ct_series(tmp_path / "s", hu_volume(3))
    (tmp_path / "s" / "junk.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(InputError, match=r"junk\.dcm: not a DICOM file"):
        read_ct_series(tmp_path / "s")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty.*empty folder"):
        read_ct_series(tmp_path / "empty")


def test_only_non_ct_series(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(3), modality="MR")
    with pytest.raises(InputError, match=rf"no CT image series.*{info['files'][0].name}: Modality MR"):
        read_ct_series(tmp_path / "s")


def test_non_ct_file_inside_the_ct_series(tmp_path):
    study_uid, series_uid = uid_counter(), uid_counter()
    write_ct_series(tmp_path / "s", hu_volume(4), study_uid=study_uid, series_uid=series_uid)
    odd = write_ct_series(
        tmp_path / "s",
        hu_volume(1),
        study_uid=study_uid,
        series_uid=series_uid,
        modality="MR",
        origin=(-60, -45, 200.0),
    )
    with pytest.raises(InputError, match=rf"{odd['files'][0].name}: Modality MR in a CT series"):
        read_ct_series(tmp_path / "s")


def test_missing_slice(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(6))
    info["files"][3].unlink()
    with pytest.raises(InputError, match=rf"{info['files'][4].name}: missing slice.*gap of 2.500 mm"):
        read_ct_series(tmp_path / "s")


def test_two_slices_at_one_position(tmp_path):
    positions = np.array([[0, 0, z] for z in (0.0, 1.0, 2.0, 2.0, 3.0)])
    info = write_ct_series(tmp_path / "s", hu_volume(5), positions=positions)
    with pytest.raises(InputError, match=r"two slices at one position") as caught:
        read_ct_series(tmp_path / "s")
    assert info["files"][2].name in str(caught.value) and info["files"][3].name in str(caught.value)


def test_inconsistent_spacing(tmp_path):
    positions = np.array([[0, 0, z] for z in (0.0, 1.0, 2.0, 3.3, 4.3, 5.3)])
    info = write_ct_series(tmp_path / "s", hu_volume(6), positions=positions)
    with pytest.raises(InputError, match=rf"{info['files'][3].name}: inconsistent slice spacing"):
        read_ct_series(tmp_path / "s")


def test_drifting_spacing_off_the_grid(tmp_path):
    z = np.concatenate([np.arange(10) * 0.95, 9 * 0.95 + np.arange(1, 11) * 1.05])
    write_ct_series(tmp_path / "s", hu_volume(20), positions=np.stack([np.zeros(20), np.zeros(20), z], axis=1))
    with pytest.raises(InputError, match=r"off the regular slice grid"):
        read_ct_series(tmp_path / "s")


def test_mixed_rows_columns(tmp_path):
    study_uid, series_uid = uid_counter(), uid_counter()
    write_ct_series(tmp_path / "s", hu_volume(3), study_uid=study_uid, series_uid=series_uid)
    odd = write_ct_series(
        tmp_path / "s", hu_volume(1, rows=40), study_uid=study_uid, series_uid=series_uid, origin=(-60, -45, 110.0)
    )
    with pytest.raises(InputError, match=r"mixed Rows/Columns") as caught:
        read_ct_series(tmp_path / "s")
    assert "40x40" in str(caught.value) and odd["files"][0].name in str(caught.value)


def test_mixed_orientation(tmp_path):
    study_uid, series_uid = uid_counter(), uid_counter()
    write_ct_series(tmp_path / "s", hu_volume(3), study_uid=study_uid, series_uid=series_uid)
    odd = write_ct_series(
        tmp_path / "s",
        hu_volume(1),
        study_uid=study_uid,
        series_uid=series_uid,
        orientation=(1, 0, 0, 0, 0.995, 0.0998749),
        origin=(0, 0, 120.0),
    )
    with pytest.raises(InputError, match=r"mixed orientation") as caught:
        read_ct_series(tmp_path / "s")
    assert odd["files"][0].name in str(caught.value)


def test_transfer_syntax_without_codec_is_named(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(3), transfer_syntax=JPEG2000Lossless)
    bad = info["files"][1]
    ds = pydicom.dcmread(bad)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no installed image codec
    ds.save_as(bad)
    with pytest.raises(
        InputError,
        match=rf"{bad.name}: transfer syntax 'MPEG2 Main Profile / Main Level' \(1\.2\.840\.10008\.1\.2\.4\.100\)",
    ):
        read_ct_series(tmp_path / "s")


def test_nan_rescale(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(3))
    bad = info["files"][0]
    ds = pydicom.dcmread(bad)
    with pytest.warns(UserWarning, match="NaN"):
        ds.RescaleSlope = "NaN"
    ds.save_as(bad)
    with pytest.raises(InputError, match=rf"{bad.name}: invalid rescale"):
        read_ct_series(tmp_path / "s")


# ---- real files nobody here wrote (pydicom-data, pydicom test files) ---------------------------


def _single(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    shutil.copy(get_testdata_file(name), folder / name)
    return folder


def test_real_693_j2kr_equals_uncompressed_twin(tmp_path):
    j2kr, uncr = get_testdata_file("693_J2KR.dcm"), get_testdata_file("693_UNCR.dcm")
    stored_j2k = decode_pixels(pydicom.dcmread(j2kr), j2kr)
    stored_raw = decode_pixels(pydicom.dcmread(uncr), uncr)
    np.testing.assert_array_equal(stored_j2k, stored_raw)
    hu_j2k = read_ct_series(_single(tmp_path, "693_J2KR.dcm")).volume_zyx
    hu_raw = read_ct_series(_single(tmp_path, "693_UNCR.dcm")).volume_zyx
    np.testing.assert_array_equal(hu_j2k, hu_raw)
    expected = stored_raw.astype(np.float32) - 1024.0  # RescaleSlope 1, RescaleIntercept -1024
    expected[stored_raw == -2000] = -1024.0  # PixelPaddingValue -2000: air, not -3024
    np.testing.assert_array_equal(hu_raw[0], expected)


def test_real_jpeg_lossless_process14_decodes():
    path = get_testdata_file("JPEG-LL.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    stored = decode_pixels(ds, path)
    assert stored.shape == (1024, 256) and stored.dtype == np.int16
    # reference values from pydicom's own pixel tests for this file
    assert tuple(stored[400, 124:132]) == (60, 58, 61, 68, 59, 65, 64, 67)
    assert tuple(stored[600, 124:132]) == (3, 1, 2, 0, 2, 1, 2, 0)


def test_real_ct_small_hu(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = np.frombuffer(ds.PixelData, dtype="<i2").reshape(ds.Rows, ds.Columns)  # independent of any decoder
    series = read_ct_series(_single(tmp_path, "CT_small.dcm"))
    np.testing.assert_array_equal(
        series.volume_zyx[0], raw.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    )
    assert float(ds.RescaleIntercept) == -1024.0 and series.volume_zyx.min() > -1024.0
    _check_affine(
        series,
        np.array([[float(v) for v in ds.ImagePositionPatient]]),
        [float(v) for v in ds.ImageOrientationPatient],
        [float(v) for v in ds.PixelSpacing],
    )


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm"]
)
def test_real_lossless_twins_decode_exactly(name):
    reference_path = get_testdata_file("MR_small.dcm")
    reference = np.frombuffer(pydicom.dcmread(reference_path).PixelData, dtype="<i2").reshape(64, 64)
    path = get_testdata_file(name)
    np.testing.assert_array_equal(decode_pixels(pydicom.dcmread(path), path), reference)


def test_real_deflated_file_decodes():
    path = get_testdata_file("image_dfl.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    stored = decode_pixels(ds, path)
    assert stored.shape == (ds.Rows, ds.Columns) and stored.size == len(ds.PixelData) * 8 // ds.BitsAllocated


def test_int16_reading_equals_the_float_reading(tmp_path):
    hu = hu_volume(5, seed=11)
    write_ct_series(tmp_path / "s", hu)
    as_float, as_int = read_ct_series(tmp_path / "s"), read_ct_series(tmp_path / "s", dtype=np.int16)
    assert as_int.volume_zyx.dtype == np.int16
    np.testing.assert_array_equal(as_int.volume_zyx, as_float.volume_zyx)
    np.testing.assert_array_equal(as_int.affine, as_float.affine)
    assert as_int.notes == ()


def test_int16_reading_rounds_a_non_integral_rescale_with_a_note(tmp_path):
    hu = hu_volume(3, seed=12)
    hu[:, ::2, :] += 0.5  # half-HU steps: stored = 2 * (HU + 1024)
    write_ct_series(tmp_path / "s", hu, slope=0.5, intercept=-1024.0)
    series = read_ct_series(tmp_path / "s", dtype=np.int16)
    np.testing.assert_array_equal(series.volume_zyx, np.rint(hu))
    halves = int(np.count_nonzero(np.rint(hu) != hu))
    assert halves > 0
    assert any(f"{halves} non-integral HU values" in note for note in series.notes)


def test_int16_reading_rejects_hu_outside_int16_and_names_the_file(tmp_path):
    hu = np.rint((hu_volume(3, seed=13) + 1024.0) / 2) * 2 - 1024.0  # even steps: stored = (HU + 1024) / 2
    hu[1, 2, 3] = 30000.0 * 2 - 1024.0  # stored 30000 with slope 2: 58976 HU
    info = write_ct_series(tmp_path / "s", hu, slope=2.0, intercept=-1024.0)
    assert read_ct_series(tmp_path / "s").volume_zyx.max() == pytest.approx(58976.0)  # float32 holds it
    with pytest.raises(InputError, match="does not fit int16") as err:
        read_ct_series(tmp_path / "s", dtype=np.int16)
    assert str(info["files"][1]) in str(err.value)


def test_int16_reading_ignores_padding_outside_the_int16_range(tmp_path):
    hu = hu_volume(3, seed=14)
    hu[:, :3, :] = -32768.0 - 1024.0  # stored -32768 (the int16 minimum) as padding, intercept -1024
    write_ct_series(tmp_path / "s", hu, padding_value=-32768)
    as_int = read_ct_series(tmp_path / "s", dtype=np.int16)
    assert np.all(as_int.volume_zyx[:, :3, :] == -1024)
    np.testing.assert_array_equal(as_int.volume_zyx[:, 3:, :], hu[:, 3:, :])
    np.testing.assert_array_equal(as_int.volume_zyx, read_ct_series(tmp_path / "s").volume_zyx)


def test_reader_dtype_must_be_float32_or_int16(tmp_path):
    write_ct_series(tmp_path / "s", hu_volume(2))
    with pytest.raises(ValueError, match="float32 or int16"):
        read_ct_series(tmp_path / "s", dtype=np.float64)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("signed", [0, 1])
@pytest.mark.parametrize("bits_stored", [16, 12, 10])
def test_native_fast_path_equals_pydicom_decoder(tmp_path, syntax, signed, bits_stored):
    """Uncompressed 16-bit slices skip pydicom's decoder; the values must be what pydicom gives,
    including garbage in the unused high bits (cleared, or sign-extended for signed pixels)."""
    from pydicom.pixels import pixel_array

    path = get_testdata_file("693_UNCR.dcm")
    ds = pydicom.dcmread(path)
    raw = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    raw[::7] |= np.uint16(0xF000 if bits_stored < 16 else 0)  # set unused bits (overlay remnants)
    raw[1::5] = np.uint16((1 << bits_stored) - 1)  # the stored extreme: -1 when signed
    ds.PixelData = raw.tobytes()
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
    ds.file_meta.TransferSyntaxUID = syntax
    out = tmp_path / "slice.dcm"
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    reread = pydicom.dcmread(out)
    ours = decode_pixels(reread, out)
    theirs = pixel_array(pydicom.dcmread(out))
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)
    if signed and bits_stored < 16:
        assert ours.min() < 0  # the sign bit of the stored value was extended


# ---- geometry and pixel-data length checked per file ---------------------------------------------


def _first_file(info: dict) -> Path:
    return min(info["files"])  # the reader reports a series-wide problem on its first file (sorted by path)


@pytest.mark.parametrize(
    ("orientation", "problem"),
    [
        ((1, 0, 0, 1, 0, 0), r"not orthogonal: dot product 1 \(parallel: no slice normal\)"),
        ((0, 0, 0, 0, 0, 0), r"must be unit vectors, their lengths are 0 and 0"),
        ((1, 0, 0, 0, 2, 0), r"must be unit vectors, their lengths are 1 and 2"),
        ((1, 0, 0, 0.5, 0.866025, 0), r"not orthogonal: dot product 0\.5"),
    ],
)
def test_degenerate_image_orientation_names_the_file_and_tag(tmp_path, orientation, problem):
    info = write_ct_series(tmp_path / "s", hu_volume(4), orientation=orientation)
    with pytest.raises(InputError, match=rf"{_first_file(info).name}: invalid ImageOrientationPatient .*{problem}"):
        read_ct_series(tmp_path / "s")


def test_degenerate_orientation_of_one_file_names_that_file(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(4))
    bad = max(info["files"])
    ds = pydicom.dcmread(bad)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0]  # within no tolerance of a unit vector
    ds.save_as(bad)
    with pytest.raises(InputError, match=rf"{bad.name}: invalid ImageOrientationPatient .*lengths are 1 and 0\.9"):
        read_ct_series(tmp_path / "s")


@pytest.mark.parametrize("spacing", [(0, 0), (-0.7, -0.7), (0.7, 0)])
def test_pixel_spacing_not_positive_names_the_file_and_tag(tmp_path, spacing):
    info = write_ct_series(tmp_path / "s", hu_volume(4), pixel_spacing=spacing)
    with pytest.raises(InputError, match=rf"{_first_file(info).name}: invalid PixelSpacing .*finite and > 0"):
        read_ct_series(tmp_path / "s")  # negative spacing used to mirror the affine silently


@pytest.mark.parametrize("thickness", [0.0, -2.0])
def test_single_slice_step_must_be_positive(tmp_path, thickness):
    info = write_ct_series(tmp_path / "s", hu_volume(1), slice_thickness=thickness)
    with pytest.raises(InputError, match=rf"{info['files'][0].name}: invalid SliceThickness .*finite and > 0"):
        read_ct_series(tmp_path / "s")
    write_ct_series(tmp_path / "ok", hu_volume(1), slice_thickness=2.5)
    series = read_ct_series(tmp_path / "ok")
    assert series.spacing_zyx[0] == pytest.approx(2.5) and "slice step 2.5 mm" in series.notes[0]


def test_pixel_data_longer_than_rows_times_columns_is_rejected(tmp_path):
    info = write_ct_series(tmp_path / "s", hu_volume(4))
    bad = info["files"][2]
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData * 2  # Rows/Columns unchanged: the first half used to be read silently
    ds.save_as(bad)
    expected = 32 * 40 * 2
    with pytest.raises(
        InputError, match=rf"{bad.name}: Pixel Data has {2 * expected} bytes, {expected} expected .*extra data"
    ):
        read_ct_series(tmp_path / "s")


def test_native_length_allows_only_the_odd_length_padding_byte():
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(9)) + b"\0"  # 9 bytes expected, padded to even length
    np.testing.assert_array_equal(decode_pixels(ds, "odd.dcm"), np.arange(9).reshape(3, 3))
    ds.PixelData = bytes(range(12))
    with pytest.raises(InputError, match=r"odd\.dcm: Pixel Data has 12 bytes, 9 expected"):
        decode_pixels(ds, "odd.dcm")
