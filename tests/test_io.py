"""edge_seg.io: reading scans in every supported format, geometry, and refusing bad input."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edge_seg.errors import EdgesegError
from edge_seg.io import Volume, read_volume, write_label_map

DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _write(
    path: Path, array: np.ndarray, spacing_xyz=(0.8, 0.7, 2.5), origin=(10.0, -20.0, 30.0)
) -> Path:
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing_xyz)
        image.SetOrigin(origin)
        image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_read_volume_keeps_simpleitk_order_and_geometry(tmp_path: Path, suffix: str) -> None:
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = read_volume(_write(tmp_path / f"scan{suffix}", array))
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.8))  # z, y, x
    assert volume.origin == pytest.approx((10.0, -20.0, 30.0))
    assert volume.direction == pytest.approx(DIRECTION)
    assert volume.name == "scan"


def test_write_label_map_copies_geometry_exactly(tmp_path: Path) -> None:
    scan = read_volume(_write(tmp_path / "scan.nii.gz", np.zeros((4, 5, 6), np.int16)))
    labels = np.zeros((4, 5, 6), dtype=np.int64)
    labels[1:3, 2:4, 1:5] = 9
    out = write_label_map(labels, scan, tmp_path / "out" / "seg.nii.gz")
    written = sitk.ReadImage(str(out))
    assert written.GetPixelID() == sitk.sitkUInt8
    reference = sitk.ReadImage(str(tmp_path / "scan.nii.gz"))
    assert written.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert written.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert written.GetDirection() == pytest.approx(reference.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert [p.name for p in out.parent.iterdir()] == ["seg.nii.gz"]  # no temporary left


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_label_map_keeps_the_scans_nifti_geometry_fields(
    tmp_path: Path, endianness: str, suffix: str
) -> None:
    import nibabel as nib

    # An oblique scan whose sform (code 2, aligned) and qform (code 1) differ, as scanners
    # write them: every reader must place the labels as it places the scan, whichever it uses.
    angle = np.deg2rad(12.0)
    affine = np.array(
        [
            [0.8 * np.cos(angle), -0.7 * np.sin(angle), 0.0, 4.0],
            [0.8 * np.sin(angle), 0.7 * np.cos(angle), 0.0, -3.0],
            [0.0, 0.0, 2.5, 12.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    image = nib.Nifti1Image(
        np.zeros((6, 5, 4), np.int16), affine, header=nib.Nifti1Header(endianness=endianness)
    )
    image.set_qform(affine, code=1)
    shifted = affine.copy()
    shifted[:3, 3] += 0.5
    image.set_sform(shifted, code=2)
    source = tmp_path / "scan.nii.gz"
    image.to_filename(source)
    scan = read_volume(source)
    assert scan.nifti_header is not None  # read by the fast path, header kept
    labels = np.zeros(scan.shape, np.uint8)
    labels[1:3, 1:4, 2:5] = 13
    out = write_label_map(labels, scan, tmp_path / f"seg{suffix}")

    written, original = nib.load(out), nib.load(source)
    assert written.header.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(written.get_qform(), original.get_qform())
    np.testing.assert_array_equal(written.get_sform(), original.get_sform())
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels.transpose(2, 1, 0))
    itk_written, itk_scan = sitk.ReadImage(str(out)), sitk.ReadImage(str(source))
    assert itk_written.GetPixelID() == sitk.sitkUInt8
    assert itk_written.GetOrigin() == itk_scan.GetOrigin()
    assert itk_written.GetDirection() == itk_scan.GetDirection()
    assert itk_written.GetSpacing() == itk_scan.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk_written), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["scan.nii.gz", out.name])


def test_label_map_of_a_nifti_scan_in_another_format_goes_through_itk(tmp_path: Path) -> None:
    scan = read_volume(_write(tmp_path / "scan.nii.gz", np.zeros((4, 5, 6), np.int16)))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[2, 3, 4] = 5
    out = write_label_map(labels, scan, tmp_path / "seg.mha")
    written = sitk.ReadImage(str(out))
    assert written.GetDirection() == pytest.approx(DIRECTION)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)


def test_write_label_map_refuses_folder_shape_mismatch_and_bad_values(tmp_path: Path) -> None:
    scan = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(EdgesegError, match="is a folder"):
        write_label_map(np.zeros((3, 4, 5), np.uint8), scan, tmp_path)
    with pytest.raises(EdgesegError, match="differs from the scan shape"):
        write_label_map(np.zeros((3, 4, 4), np.uint8), scan, tmp_path / "a.nii.gz")
    with pytest.raises(EdgesegError, match=r"outside 0\.\.255"):
        write_label_map(np.full((3, 4, 5), 300), scan, tmp_path / "b.nii.gz")
    with pytest.raises(EdgesegError, match="unknown output format"):
        write_label_map(np.zeros((3, 4, 5), np.uint8), scan, tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(EdgesegError, match=r"file\.txt is a file, not a folder"):
        write_label_map(np.zeros((3, 4, 5), np.uint8), scan, blocker / "seg.nii.gz")
    assert list(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_write_label_map_refuses_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    scan = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    try:
        with pytest.raises(EdgesegError, match="not writable"):
            write_label_map(np.zeros((3, 4, 5), np.uint8), scan, locked / "seg.nii.gz")
    finally:
        locked.chmod(0o700)


def test_read_volume_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    with pytest.raises(EdgesegError, match="unreadable"):
        read_volume(garbage)
    flat = _write(tmp_path / "flat.nii.gz", np.zeros((1, 8, 8), np.int16))
    with pytest.raises(EdgesegError, match="single slice"):
        read_volume(flat)
    plane = tmp_path / "plane.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(plane))
    with pytest.raises(EdgesegError, match="2D image"):
        read_volume(plane)
    series = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))] * 2)
    sitk.WriteImage(series, str(tmp_path / "time.nii.gz"))
    with pytest.raises(EdgesegError, match="4D image"):
        read_volume(tmp_path / "time.nii.gz")
    bad = np.zeros((3, 4, 5), np.float32)
    bad[1, 2, 3] = np.nan
    bad[0, 0, 0] = np.inf
    with pytest.raises(EdgesegError, match="2 voxels are NaN or infinite"):
        read_volume(_write(tmp_path / "nan.mha", bad))
    with pytest.raises(EdgesegError, match="no DICOM series"):
        read_volume(tmp_path)


def test_read_volume_refuses_image_larger_than_memory(tmp_path: Path) -> None:
    # A MetaImage header claiming 40000^3 voxels: refused from the header, before reading data.
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    header = tmp_path / "huge.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 40000 40000 40000\n"
        "ElementType = MET_SHORT\nElementSpacing = 1 1 1\nElementDataFile = huge.raw\n"
    )
    with pytest.raises(EdgesegError, match=r"40000x40000x40000 voxels needs about .* GiB"):
        read_volume(header)


def test_read_dicom_series_folder(shared_data: Path) -> None:
    folder = shared_data / "chaos_ct_sample" / "DICOM_anon"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    volume = read_volume(folder)
    assert volume.shape == (78, 512, 512)
    assert volume.spacing_mm[0] == pytest.approx(2.0)
    assert volume.spacing_mm[1] == pytest.approx(0.7265625)


def _read_with_itk(path: Path) -> tuple[np.ndarray, tuple, tuple, tuple]:
    image = sitk.ReadImage(str(path))
    return (
        sitk.GetArrayFromImage(image),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
    )


def _assert_reads_as_itk_does(path: Path) -> None:
    volume = read_volume(path)
    array, spacing, origin, direction = _read_with_itk(path)
    assert volume.array.dtype == array.dtype
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing_mm == tuple(reversed(spacing))
    assert volume.origin == origin
    assert volume.direction == direction


@pytest.mark.parametrize(
    "dtype", ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64"]
)
def test_fast_nifti_gz_reader_gives_itks_voxels_and_geometry(tmp_path: Path, dtype: str) -> None:
    from edge_seg.io import _file_reader
    from edge_seg.nifti import read_nifti_gz_voxels

    rng = np.random.default_rng(0)
    array = (rng.normal(size=(7, 9, 11)) * 50).astype(dtype)
    path = _write(tmp_path / "scan.nii.gz", array)
    assert read_nifti_gz_voxels(path, _file_reader(path)) is not None  # the fast path ran
    _assert_reads_as_itk_does(path)


def test_fast_nifti_gz_reader_handles_big_endian_and_leaves_scaling_to_itk(
    tmp_path: Path,
) -> None:
    import nibabel as nib

    from edge_seg.io import _file_reader
    from edge_seg.nifti import read_nifti_gz_voxels

    array_xyz = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = (4.0, -3.0, 12.0)
    header = nib.Nifti1Header(endianness=">")
    big = tmp_path / "big.nii.gz"
    nib.Nifti1Image(array_xyz, affine, header=header).to_filename(big)
    assert read_nifti_gz_voxels(big, _file_reader(big)) is not None
    _assert_reads_as_itk_does(big)
    assert read_volume(big).array.dtype.isnative
    scaled = tmp_path / "scaled.nii.gz"
    image = nib.Nifti1Image(array_xyz, affine)
    image.header.set_slope_inter(2.0, -5.0)
    image.to_filename(scaled)
    assert read_nifti_gz_voxels(scaled, _file_reader(scaled)) is None  # ITK applies the scaling
    _assert_reads_as_itk_does(scaled)


@pytest.mark.parametrize(
    ("suffix", "dtype", "message"),
    [
        (".nii.gz", "int16", r"cut\.nii\.gz: unreadable image file"),
        # ITK zero-fills the voxels a .nii lacks: the size check must come from the header.
        (".nii", "int16", r"cut\.nii: truncated NIfTI: header needs"),
        (".nii", "float32", r"cut\.nii: truncated NIfTI: header needs"),
    ],
)
def test_nifti_cut_short_is_a_one_line_error(
    tmp_path: Path, suffix: str, dtype: str, message: str
) -> None:
    rng = np.random.default_rng(1)
    voxels = rng.integers(-1000, 1000, (20, 32, 32)).astype(dtype)
    path = _write(tmp_path / f"scan{suffix}", voxels)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgesegError, match=message) as info:
        read_volume(cut)
    assert "\n" not in str(info.value)
    assert read_volume(path).array.shape == (20, 32, 32)


def test_metaimage_cut_short_or_without_its_data_file_is_refused(tmp_path: Path) -> None:
    voxels = np.ones((20, 32, 32), np.int16)
    local = _write(tmp_path / "scan.mha", voxels)
    cut = tmp_path / "cut.mha"
    cut.write_bytes(local.read_bytes()[:-1000])
    with pytest.raises(EdgesegError, match=r"cut\.mha: truncated MetaImage: header needs 40960 "
                       r"bytes of voxel data, file holds 39960"):
        read_volume(cut)
    detached = _write(tmp_path / "scan.mhd", voxels)
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(EdgesegError, match=r"truncated MetaImage: .* scan\.raw holds 100"):
        read_volume(detached)
    raw.unlink()
    with pytest.raises(EdgesegError, match=r"scan\.mhd: its voxel data file .*scan\.raw does"):
        read_volume(detached)
    assert read_volume(local).array.shape == (20, 32, 32)


def test_uncompressed_nifti_with_nan_voxels_is_refused(tmp_path: Path) -> None:
    # ITK reads NaN in a .nii as 0, so the check cannot be made on the array it returns.
    voxels = np.zeros((20, 32, 32), np.float32)
    voxels[3, 4, 5] = np.nan
    path = _write(tmp_path / "nan.nii", voxels)
    with pytest.raises(EdgesegError, match=r"nan\.nii: scan contains NaN or infinite values"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_without_voxel_size_is_refused(tmp_path: Path, suffix: str) -> None:
    # ITK reads pixdim 0 as 1 mm; resampling from a made-up spacing segments at a wrong scale.
    path = _write(tmp_path / f"scan{suffix}", np.ones((20, 32, 32), np.int16))
    raw = path.read_bytes() if suffix == ".nii" else gzip.decompress(path.read_bytes())
    raw = raw[:80] + np.array([0.8, 0.0, 2.5], "<f4").tobytes() + raw[92:]
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(raw if suffix == ".nii" else gzip.compress(raw))
    with pytest.raises(EdgesegError, match=r"gives no usable voxel size \(pixdim 0\.8, 0, 2\.5\)"):
        read_volume(bad)
    assert read_volume(path).spacing_mm == pytest.approx((2.5, 0.7, 0.8))


def test_fast_reader_matches_itk_on_real_ct(shared_data: Path) -> None:
    path = shared_data / "totalseg_examples" / "example_ct_sm.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    _assert_reads_as_itk_does(path)


@pytest.mark.parametrize("chunk", [97, 512 * 1024])
def test_fast_reader_reads_many_gzip_members_and_small_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """bgzip and ``pigz -i`` write several gzip members; zero padding may follow the last."""
    import gzip

    import edge_seg.io as io
    import edge_seg.nifti as nifti

    monkeypatch.setattr(nifti, "_INFLATE_CHUNK", chunk)
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1000, (9, 20, 24), np.int16)
    single = _write(tmp_path / "one.nii", array)
    raw = single.read_bytes()
    members = b"".join(gzip.compress(raw[i : i + 700]) for i in range(0, len(raw), 700))
    many = tmp_path / "many.nii.gz"
    many.write_bytes(members + b"\0" * 64)
    assert nifti.read_nifti_gz_voxels(many, io._file_reader(many)) is not None
    np.testing.assert_array_equal(read_volume(many).array, array)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(members[: len(members) - 40])  # the last member loses its end
    with pytest.raises(EdgesegError, match=r"cut\.nii\.gz: unreadable image file"):
        read_volume(cut)


def test_available_memory_is_what_psutil_reports() -> None:
    import psutil

    from edge_seg.io import available_memory_bytes

    ours, theirs = available_memory_bytes(), psutil.virtual_memory().available
    assert ours > 0
    assert abs(ours - theirs) <= 0.05 * theirs  # read a moment apart


@pytest.mark.parametrize("name", ["seg.MHA", "seg.Nrrd", "seg.NII.GZ", "seg.NII"])
@pytest.mark.parametrize("source", ["scan.nii.gz", "scan.mha"])
def test_label_map_suffix_in_any_case_gives_one_readable_file(
    tmp_path: Path, name: str, source: str
) -> None:
    # ITK picks writers by a case-sensitive match: x.MHA came out as an empty file beside a
    # hidden .mhd + .zraw pair, and NIfTI refused upper-case names.
    scan = read_volume(_write(tmp_path / source, np.zeros((4, 5, 6), np.int16)))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 7
    out = write_label_map(labels, scan, tmp_path / "out" / name)
    assert [p.name for p in out.parent.iterdir()] == [name]  # no temporary left
    written = read_volume(out)
    np.testing.assert_array_equal(written.array, labels)
    assert written.spacing_mm == pytest.approx(scan.spacing_mm)
    assert written.direction == pytest.approx(DIRECTION)


@pytest.mark.parametrize(("name", "instead"), [("seg.mhd", ".mha"), ("seg.NHDR", ".nrrd")])
def test_two_file_output_formats_are_refused(tmp_path: Path, name: str, instead: str) -> None:
    from edge_seg.io import check_output_path

    scan = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    message = rf"{name}: \.\w+ keeps the voxels in a second file.*use \{instead} "
    with pytest.raises(EdgesegError, match=message):
        check_output_path(tmp_path / name)
    with pytest.raises(EdgesegError, match=message):
        write_label_map(np.zeros((3, 4, 5), np.uint8), scan, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["SCAN.MHA", "scan.NRRD", "Scan.NII", "SCAN.NII.GZ"])
def test_scan_suffix_in_any_case_is_read(tmp_path: Path, name: str) -> None:
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    lower = _write(tmp_path / name.lower(), array)
    volume = read_volume(lower.rename(tmp_path / name))
    np.testing.assert_array_equal(volume.array, array)
    assert volume.direction == pytest.approx(DIRECTION)
    assert volume.name.lower() == "scan"


def test_mixed_case_nifti_suffix_is_refused_without_itk_noise(tmp_path: Path, capfd) -> None:
    # ITK's NIfTI library rejects ".Nii" with a raw stderr line per probe.
    scan = _write(tmp_path / "scan.nii", np.ones((4, 5, 6), np.int16))
    with pytest.raises(EdgesegError, match=r"Scan\.Nii: mixed-case NIfTI suffix \.Nii"):
        read_volume(scan.rename(tmp_path / "Scan.Nii"))
    volume = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0))
    with pytest.raises(EdgesegError, match=r"seg\.Nii\.gz: mixed-case NIfTI suffix"):
        write_label_map(np.zeros((3, 4, 5), np.uint8), volume, tmp_path / "seg.Nii.gz")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("matrix", ["0 0 0 0 0 0 0 0 0", "1 0 0 1 0 0 0 0 1"])
def test_degenerate_direction_matrix_is_named(tmp_path: Path, matrix: str) -> None:
    path = _write(tmp_path / "scan.mha", np.ones((20, 32, 32), np.int16))
    data = path.read_bytes()
    start = data.index(b"TransformMatrix = ")
    end = data.index(b"\n", start)
    bad = tmp_path / "bad.mha"
    bad.write_bytes(data[:start] + f"TransformMatrix = {matrix}".encode() + data[end:])
    with pytest.raises(EdgesegError, match=r"bad\.mha: the header's direction matrix is "
                       r"degenerate \(.*not invertible\)"):
        read_volume(bad)
