"""Batch folders that mix scan files and DICOM series sub-folders (``edgeseg predict IN/ OUT/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom
from test_io_dicom import SERIES_UID, write_dicom_series
from test_predict_cli import edgeseg, write_scan

from edge_seg.batch import survey_folder
from edge_seg.io import read_volume


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _phantom_series(folder: Path, uid: str = SERIES_UID, slices: int = 20) -> Path:
    image, _ = make_phantom(shape=(slices, 32, 32), spacing_mm=(2.5, 0.8, 0.8))
    return write_dicom_series(folder, slices=slices, step_mm=2.5, uid=uid, pixels=image)


def test_series_sub_folders_beside_scan_files_are_all_segmented(
    bundle: Path, tmp_path: Path
) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_scan(inputs / "base.nii.gz")
    _phantom_series(inputs / "s1")
    (inputs / "notes").mkdir()
    (inputs / "notes" / "readme.txt").write_text("not a scan")
    (inputs / ".cache").mkdir()  # hidden: passed over without a word
    broken = inputs / "broken"
    broken.mkdir()
    (broken / "a.dcm").write_bytes(b"not DICOM at all")
    result = edgeseg(inputs, outputs, "--model", bundle)
    assert result.returncode == 2, result.stderr
    # The series is a case of its own; the folder of DICOM-named junk is a failed case, not
    # silently dropped; the folder without DICOM files is named once.
    assert sorted(p.name for p in outputs.iterdir()) == ["base.nii.gz", "s1.nii.gz"]
    assert "2 segmented, 0 already done, 1 failed" in result.stdout
    assert "broken: no readable DICOM series" in result.stdout
    assert f"note: {inputs}: skipped sub-folders without DICOM files: notes" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "edgeseg: error: 1 of 3 cases failed: broken"
    )
    labels = read_volume(outputs / "s1.nii.gz")
    assert labels.shape == (20, 32, 32)
    assert labels.spacing_mm == pytest.approx((2.5, 0.8, 0.8))
    assert set(np.unique(labels.array)) > {0}


def test_series_folder_and_scan_file_of_one_name_both_fail(tmp_path: Path) -> None:
    from edge_seg.batch import run_batch
    from edge_seg.options import PredictOptions

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_scan(inputs / "s1.nii.gz")
    _phantom_series(inputs / "s1")
    scans = survey_folder(inputs).scans
    assert [p.name for p in scans] == ["s1", "s1.nii.gz"]
    # The clash is found before the bundle is opened (there is none here).
    report = run_batch(scans, tmp_path / "out", tmp_path / "no-bundle", PredictOptions())
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert "s1, s1.nii.gz would all be written as s1.nii.gz" in report.results[0].message


def test_batch_prints_the_note_of_a_folder_with_two_series(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    case = _phantom_series(inputs / "case")
    scout = _phantom_series(tmp_path / "scout", uid=SERIES_UID + ".2", slices=12)
    for path in scout.iterdir():
        path.rename(case / f"scout_{path.name}")
    write_scan(inputs / "other.nii.gz")  # two cases: the note comes back from a worker process
    result = edgeseg(inputs, outputs, "--model", bundle, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert (
        f"note: {case}: holds 2 DICOM series; using the largest, {SERIES_UID} (20 files); "
        f"skipped {SERIES_UID}.2 (12 files)"
    ) in result.stdout.replace("\n", "")
    assert read_volume(outputs / "case.nii.gz").shape == (20, 32, 32)
