"""``edgeseg predict`` end to end in real subprocesses: outputs, batch resume, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom

SPACING_XYZ = (1.2, 1.2, 2.5)


def edgeseg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_seg", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_scan(path: Path, seed: int = 0) -> Path:
    image, _ = make_phantom(seed=seed)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(SPACING_XYZ)
    itk.SetOrigin((5.0, -3.0, 12.0))
    sitk.WriteImage(itk, str(path))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def test_single_scan_default_output_preview_and_summary(bundle: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "case_0000.nii.gz")
    result = edgeseg(scan, "--model", bundle, "--preview", tmp_path / "case.png")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "case_0000_seg.nii.gz"
    assert "liver" in result.stdout and str(out) in result.stdout
    written = sitk.ReadImage(str(out))
    assert written.GetOrigin() == pytest.approx((5.0, -3.0, 12.0))
    assert written.GetSpacing() == pytest.approx(SPACING_XYZ)
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1, 2, 3}
    assert (tmp_path / "case.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_line_error_without_output(bundle: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "scan.nii.gz")
    plane = tmp_path / "plane.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(plane))
    cases = [
        ((plane, "--model", bundle), "2D image"),
        ((scan, "--model", bundle, "--absent", "pancreas"), "unknown organ 'pancreas'"),
        ((scan, "--model", bundle, "-o", scan), "overwrite the input"),
        ((scan, "--model", tmp_path), "not a model bundle"),
        ((scan, "--model", bundle, "--min-component-ml", "-1"), "not a volume >= 0"),
    ]
    for args, message in cases:
        result = edgeseg(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plane.nii.gz", "scan.nii.gz"]


def test_batch_continues_past_bad_case_and_resumes(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(2):
        write_scan(inputs / f"case{i}_0000.nii.gz", seed=i)
    (inputs / "broken_0000.nii.gz").write_bytes(b"not a scan")
    first = edgeseg(inputs, outputs, "--model", bundle, "--workers", "2", "--quiet")
    assert first.returncode == 2
    assert "1 of 3 cases failed: broken" in first.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["case0.nii.gz", "case1.nii.gz"]
    stamp = (outputs / "case0.nii.gz").stat().st_mtime_ns
    (inputs / "broken_0000.nii.gz").unlink()
    second = edgeseg(inputs, outputs, "--model", bundle)
    assert second.returncode == 0, second.stderr
    assert "0 segmented, 2 already done, 0 failed" in second.stdout
    assert (outputs / "case0.nii.gz").stat().st_mtime_ns == stamp


def test_real_ct_scan_keeps_geometry(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    scan = shared_data / "totalseg_examples" / "example_ct.nii.gz"
    if not scan.is_file():
        pytest.skip(f"{scan} not found")
    from edge_seg.predict import DEFAULT_BUNDLE

    # The embedded default bundle where this installation has one (no --model: the
    # "works right after install" path), else the small test bundle.
    has_default = (DEFAULT_BUNDLE / "edgeseg.json").is_file()
    out = tmp_path / "example_seg.nii.gz"
    result = edgeseg(scan, "-o", out, *([] if has_default else ["--model", bundle]))
    assert result.returncode == 0, result.stderr
    reference, written = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out))
    assert written.GetSize() == reference.GetSize()
    assert written.GetSpacing() == pytest.approx(reference.GetSpacing())
    assert written.GetOrigin() == pytest.approx(reference.GetOrigin())
    assert written.GetDirection() == pytest.approx(reference.GetDirection())


def test_batch_refuses_scans_that_share_an_output_name(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_scan(inputs / "a.nii", seed=0)
    write_scan(inputs / "a.nii.gz", seed=1)
    write_scan(inputs / "b_0000.nii.gz", seed=2)
    write_scan(inputs / "c.nii.gz", seed=3)
    result = edgeseg(inputs, outputs, "--model", bundle, "--quiet")
    assert result.returncode == 2, result.stderr
    # Neither of a clashing pair is segmented; the others are.
    assert sorted(p.name for p in outputs.iterdir()) == ["b.nii.gz", "c.nii.gz"]
    assert "a.nii, a.nii.gz would all be written as a.nii.gz" in result.stdout + result.stderr
    assert result.stderr.strip() == "edgeseg: error: 2 of 4 cases failed: a"


def test_folder_without_scans_names_the_folder(bundle: Path, tmp_path: Path) -> None:
    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("no scans here")
    for folder in (empty, notes):
        result = edgeseg(folder, tmp_path / "out", "--model", bundle)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"edgeseg: error: {folder}: folder holds no scans (no NIfTI, MHA/MHD or NRRD "
            "files, no DICOM series, no sub-folders with one)"
        )
    assert not (tmp_path / "out").exists()


def test_unwritable_preview_is_refused_before_any_output(bundle: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "scan.nii.gz")
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "scan_seg.nii.gz"
    result = edgeseg(scan, "--model", bundle, "-o", out, "--preview", tmp_path / "notes.txt/p.png")
    assert result.returncode == 2
    assert "notes.txt is a file, not a folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_batch_preview_keeps_the_case_name(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs, previews = tmp_path / "in", tmp_path / "out", tmp_path / "previews"
    inputs.mkdir()
    write_scan(inputs / "case_0000_0000.nii.gz")
    result = edgeseg(inputs, outputs, "--model", bundle, "--preview", previews, "--quiet")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in outputs.iterdir()] == ["case_0000.nii.gz"]
    assert [p.name for p in previews.iterdir()] == ["case_0000.png"]


def test_output_format_is_checked_in_any_letter_case(bundle: Path, tmp_path: Path) -> None:
    from edge_seg.io import read_volume

    scan = write_scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    # A two-file format is refused before anything else: the missing bundle is not reached.
    for name, single in (("x.mhd", ".mha"), ("x.NHDR", ".nrrd")):
        result = edgeseg(scan, "--model", tmp_path / "missing", "-o", out / name)
        assert result.returncode == 2
        assert result.stderr.startswith(f"edgeseg: error: {out / name}: ")
        assert f"use {single} (the same format in one file)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
    result = edgeseg(scan, "--model", bundle, "-o", out / "x.MHA", "-q")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["x.MHA"]  # no hidden temporaries beside it
    assert read_volume(out / "x.MHA").shape == read_volume(scan).shape


def test_dicom_series_with_a_missing_slice_is_refused(bundle: Path, tmp_path: Path) -> None:
    from test_io_dicom import write_dicom_series

    folder = write_dicom_series(tmp_path / "ct", slices=30)
    (folder / "s012.dcm").unlink()
    result = edgeseg(folder, "--model", bundle)
    assert result.returncode == 2
    assert result.stderr == (
        f"edgeseg: error: {folder}: DICOM series has uneven slice positions (step 5 mm, but "
        "10 mm between s011.dcm and s013.dcm, slices 12 and 13 of 29: a slice is missing?)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_dicom_folder_with_two_series_notes_the_one_used(bundle: Path, tmp_path: Path) -> None:
    from test_io_dicom import SERIES_UID, write_dicom_series

    folder = write_dicom_series(tmp_path / "ct", slices=20)
    localiser = write_dicom_series(tmp_path / "localiser", slices=8, uid=SERIES_UID + ".9")
    for path in localiser.iterdir():
        path.rename(folder / f"loc_{path.name}")
    result = edgeseg(folder, "--model", bundle, "-o", tmp_path / "seg.nii.gz")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {folder}: holds 2 DICOM series; using the largest, {SERIES_UID} (20 files); "
        f"skipped {SERIES_UID}.9 (8 files)"
    ]


def test_folder_of_unreadable_dicom_files_is_named(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"not DICOM at all")
    result = edgeseg(folder, "--model", bundle)
    assert result.returncode == 2
    assert result.stderr == (
        f"edgeseg: error: {folder}: no readable DICOM series (none of 1 DICOM file(s) can be "
        "read, e.g. a.dcm)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]
