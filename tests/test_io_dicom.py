"""Reading DICOM series folders: even slices only, broken slices named, several series noted.

ITK reads a series with a missing slice using the average step and only prints a warning, so
every slice after the gap would be misplaced; these tests hold edgeseg's own checks to that.
"""

from __future__ import annotations

import locale
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edge_seg.errors import EdgesegError
from edge_seg.io import read_volume

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.40"
STUDY_UID = "1.2.826.0.1.3680043.2.1125.9"


def write_dicom_series(
    folder: Path,
    slices: int = 40,
    step_mm: float = 5.0,
    shape: tuple[int, int] = (32, 32),
    uid: str = SERIES_UID,
    position: Callable[[int], tuple[float, float, float]] | None = None,
    description: str = "",
    seed: int = 0,
    pixels: np.ndarray | None = None,
) -> Path:
    """Write a CT series of axial int16 slices (0.8 mm pixels) as ``s000.dcm``, ... and return
    ``folder``.

    Parameters
    ----------
    position : callable, optional
        ImagePositionPatient of slice i (default ``(10, -20, i * step_mm)``).
    pixels : np.ndarray, optional
        Voxels (slices, rows, columns) to store instead of random ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # GDCM's writer sets the process locale to "C"; later subprocess output would then be
    # decoded as ASCII in this test process.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(folder, slices, step_mm, shape, uid, position, description, rng, pixels)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)
    return folder


def _write_slices(
    folder: Path,
    slices: int,
    step_mm: float,
    shape: tuple[int, int],
    uid: str,
    position: Callable[[int], tuple[float, float, float]] | None,
    description: str,
    rng: np.random.Generator,
    pixels: np.ndarray | None,
) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(slices):
        voxels = pixels[i] if pixels is not None else rng.integers(-1000, 1000, shape)
        image = sitk.GetImageFromArray(np.asarray(voxels, dtype=np.int16))
        image.SetSpacing((0.8, 0.8))
        x, y, z = position(i) if position else (10.0, -20.0, i * step_mm)
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT image storage
            "0008|0018": f"{uid}.{i + 1}",
            "0008|0060": "CT",
            "0008|103e": description,
            "0018|0050": str(step_mm),
            "0020|000d": STUDY_UID,
            "0020|000e": uid,
            "0020|0013": str(i + 1),
            "0020|0032": f"{x}\\{y}\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{i:03d}.dcm"))
        writer.Execute(image)


def test_even_series_is_read_with_its_geometry(tmp_path: Path, capfd) -> None:
    volume = read_volume(write_dicom_series(tmp_path / "ct"))
    assert volume.shape == (40, 32, 32)
    assert volume.spacing_mm == pytest.approx((5.0, 0.8, 0.8))
    assert volume.origin == pytest.approx((10.0, -20.0, 0.0))
    assert volume.notes == []
    assert capfd.readouterr().err == ""


def _delete(path: Path) -> None:
    path.unlink()


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(5).bytes(3000))


def _cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            _delete,
            r"ct: DICOM series has uneven slice positions \(step 5 mm, but 10 mm between "
            r"s024\.dcm and s026\.dcm, slices 25 and 26 of 39: a slice is missing\?\)",
        ),
        (_random_bytes, r"10 mm between s024\.dcm and s026\.dcm.*not readable as DICOM: s025"),
        (_cut_short, r"s025\.dcm: slice of the DICOM series in .*ct is unreadable \(cut short"),
    ],
    ids=["deleted", "random-bytes", "cut-short"],
)
def test_series_with_a_broken_slice_is_refused(
    tmp_path: Path, capfd, damage: Callable[[Path], None], message: str
) -> None:
    folder = write_dicom_series(tmp_path / "ct")
    damage(folder / "s025.dcm")
    with pytest.raises(EdgesegError, match=message) as info:
        read_volume(folder)
    assert "\n" not in str(info.value)
    assert capfd.readouterr().err == ""  # ITK's multi-line warning is silenced


def test_series_with_positions_shifted_after_a_slice_is_refused(tmp_path: Path) -> None:
    folder = write_dicom_series(
        tmp_path / "ct", position=lambda i: (10.0, -20.0, i * 5.0 + (5.0 if i > 25 else 0.0))
    )
    with pytest.raises(EdgesegError, match=r"10 mm between s025\.dcm and s026\.dcm"):
        read_volume(folder)


def test_series_with_a_slice_twice_at_one_position_is_refused(tmp_path: Path) -> None:
    folder = write_dicom_series(
        tmp_path / "ct", slices=12, position=lambda i: (10.0, -20.0, 5.0 * (i - (i == 6)))
    )
    with pytest.raises(EdgesegError, match=r"but 0 mm between .*a slice repeated or out of"):
        read_volume(folder)


def test_small_rounding_of_slice_positions_is_accepted(tmp_path: Path) -> None:
    # Scanners write positions as decimal strings: a few hundredths of a mm is not a gap.
    offsets = np.random.default_rng(2).uniform(-0.02, 0.02, 40)
    folder = write_dicom_series(
        tmp_path / "ct", position=lambda i: (10.0, -20.0, round(i * 5.0 + offsets[i], 3))
    )
    assert read_volume(folder).spacing_mm[0] == pytest.approx(5.0, abs=0.01)


def test_series_tilted_in_plane_is_refused(tmp_path: Path) -> None:
    # Gantry tilt: each slice shifted 0.5 mm in y; ITK would stack them straight.
    folder = write_dicom_series(
        tmp_path / "ct", slices=10, position=lambda i: (10.0, -20.0 + 0.5 * i, i * 5.0)
    )
    with pytest.raises(EdgesegError, match=r"not stacked along their normal .*gantry tilt"):
        read_volume(folder)


def test_folder_of_unreadable_dicom_files_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    message = r"ct: no readable DICOM series \(none of 1 DICOM file\(s\) can be read, e\.g\. a\.dcm"
    with pytest.raises(EdgesegError, match=message):
        read_volume(folder)


def test_largest_of_two_series_is_used_with_a_note(tmp_path: Path) -> None:
    folder = write_dicom_series(tmp_path / "ct", description="abdomen")
    scout = write_dicom_series(
        tmp_path / "scout", slices=30, step_mm=2.0, uid=SERIES_UID + ".2", seed=1
    )
    for path in scout.iterdir():
        shutil.move(path, folder / f"scout_{path.name}")
    volume = read_volume(folder)
    assert volume.shape == (40, 32, 32)
    assert volume.spacing_mm[0] == pytest.approx(5.0)
    assert volume.notes == [
        f'{folder}: holds 2 DICOM series; using the largest, {SERIES_UID} "abdomen" '
        f"(40 files); skipped {SERIES_UID}.2 (30 files)"
    ]


def test_non_image_dicom_beside_the_series_is_left_alone(tmp_path: Path) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = write_dicom_series(tmp_path / "ct", slices=6)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.77.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report = Dataset()
    report.file_meta = meta
    report.SOPClassUID, report.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
    )
    report.Modality, report.StudyInstanceUID = "SR", STUDY_UID
    report.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.77"
    pydicom.dcmwrite(folder / "report.dcm", report, enforce_file_format=True)
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    assert read_volume(folder).shape == (6, 32, 32)
