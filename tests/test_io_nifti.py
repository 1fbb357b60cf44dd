"""custom.io.nifti: (Z, Y, X) <-> NIfTI (X, Y, Z), ISA-L gzip that every gzip reader accepts, atomic writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from custom.io.nifti import read_volume, write_volume


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_round_trip_and_on_disk_orientation(tmp_path, name, dtype):
    rng = np.random.default_rng(0)
    volume = (rng.normal(size=(5, 6, 7)) * 100).astype(dtype)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 30.0]
    write_volume(tmp_path / name, volume, affine)
    back, back_affine = read_volume(tmp_path / name)
    np.testing.assert_array_equal(back, volume)
    np.testing.assert_allclose(back_affine, affine)
    image = nib.load(str(tmp_path / name))
    assert image.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume.transpose(2, 1, 0))  # (X, Y, Z) on disk
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_gzip_stream_is_standard_and_equals_nibabels_own_file(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    write_volume(tmp_path / "ours.nii.gz", volume, np.eye(4))
    ours = gzip.decompress((tmp_path / "ours.nii.gz").read_bytes())  # the stdlib reads the ISA-L stream
    reference = nib.Nifti1Image(volume.transpose(2, 1, 0), np.eye(4))
    reference.set_qform(reference.affine, code=1)
    reference.set_sform(reference.affine, code=1)
    nib.save(reference, str(tmp_path / "nibabel.nii"))
    assert ours == (tmp_path / "nibabel.nii").read_bytes()  # same header and voxels, byte for byte


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    write_volume(tmp_path / "v.nii.gz", np.zeros((2, 3, 4), np.int16), np.eye(4))
    before = (tmp_path / "v.nii.gz").read_bytes()

    def half_then_fail(self, file_map, *args, **kwargs):
        file_map["image"].fileobj.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_volume(tmp_path / "v.nii.gz", np.ones((2, 3, 4), np.int16), np.eye(4))
    assert (tmp_path / "v.nii.gz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]


def test_read_checked_volume_names_the_file_and_the_problem(tmp_path):
    from custom.io.errors import InputError
    from custom.io.nifti import read_checked_volume

    volume = np.zeros((3, 4, 5), np.float32)
    write_volume(tmp_path / "ok.nii.gz", volume, np.eye(4))
    read_back, affine = read_checked_volume(tmp_path / "ok.nii.gz", "image")
    assert read_back.shape == (3, 4, 5) and np.array_equal(affine, np.eye(4))
    volume[0, 0, :2] = np.nan
    volume[1, 1, 1] = np.inf
    write_volume(tmp_path / "nan.nii.gz", volume, np.eye(4))
    with pytest.raises(InputError, match=r"nan\.nii\.gz: the reference mask contains NaN or infinite values \(3 of 60 voxels: 2 NaN, 1 infinite\)"):
        read_checked_volume(tmp_path / "nan.nii.gz", "reference mask")
    data = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read the image \("):
        read_checked_volume(tmp_path / "cut.nii.gz")
    with pytest.raises(InputError, match=r"missing\.nii\.gz: cannot read the image \("):
        read_checked_volume(tmp_path / "missing.nii.gz")
