"""Models of several input channels: ``<case>_0000``, ``_0001``, ... read together, as nnU-Net.

The test bundle's channel 1 makes the spleen win where it is bright, so a label map shows that
the second file was found, put on the grid of the first and fed to the network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import LABELS, make_bundle
from test_predict_cli import edgeseg, write_scan

from edge_seg.channels import channel_of, first_channel_scans
from edge_seg.io import read_volume

BOX = (slice(4, 10), slice(4, 12), slice(4, 12))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("two_channels"), channels=2)


def _second_channel(first: Path, bright: bool = True, spacing: float | None = None) -> Path:
    """Channel 1 beside ``first``: air, with a bright box where the spleen must then win."""
    reference = sitk.ReadImage(str(first))
    array = np.zeros(sitk.GetArrayFromImage(reference).shape, np.int16)
    if bright:
        array[BOX] = 1000
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    if spacing is not None:
        image.SetSpacing((spacing, spacing, spacing))
    head, _, tail = first.name.rpartition("_0000")
    path = first.with_name(f"{head}_0001{tail}")
    sitk.WriteImage(image, str(path))
    return path


def test_the_second_channel_is_found_and_used(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "bright").mkdir()
    (tmp_path / "dark").mkdir()
    first = write_scan(tmp_path / "bright" / "case_0000.nii.gz")
    _second_channel(first)
    dark = write_scan(tmp_path / "dark" / "case_0000.nii.gz")
    _second_channel(dark, bright=False)
    for scan in (first, dark):
        result = edgeseg(scan, "--model", bundle, "-o", scan.parent / "seg.nii.gz",
                         "--crop", "none", "--no-lcc", "--min-component-ml", "0")
        assert result.returncode == 0, result.stderr
    bright = read_volume(first.parent / "seg.nii.gz").array
    plain = read_volume(dark.parent / "seg.nii.gz").array
    assert (bright[BOX] == LABELS["spleen"]).mean() > 0.9
    assert (plain[BOX] == LABELS["spleen"]).mean() < 0.5  # the box is not spleen in channel 0
    # Away from the box (and its resampling margin) channel 1 changes nothing.
    margin = np.ones(bright.shape, bool)
    margin[2:12, 2:14, 2:14] = False
    assert np.array_equal(bright[margin], plain[margin])


def test_a_missing_or_misplaced_channel_is_refused(bundle: Path, tmp_path: Path) -> None:
    first = write_scan(tmp_path / "case_0000.nii.gz")
    out = tmp_path / "seg.nii.gz"
    result = edgeseg(first, "--model", bundle, "-o", out)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"edgeseg: error: {first}: the model takes 2 input channels; case_0001.nii.gz missing "
        "beside it")
    _second_channel(first, spacing=3.0)
    result = edgeseg(first, "--model", bundle, "-o", out)
    assert result.returncode == 2
    assert "case_0001.nii.gz: not on the grid of case_0000.nii.gz (spacing" in result.stderr
    plain = write_scan(tmp_path / "scan.nii.gz")
    result = edgeseg(plain, "--model", bundle, "-o", out)
    assert result.returncode == 2 and "give the _0000 file" in result.stderr
    assert not out.exists()


def test_batch_groups_the_channel_files_of_a_case(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _second_channel(write_scan(inputs / "a_0000.nii.gz"))
    write_scan(inputs / "b_0000.nii.gz", seed=1)  # its _0001 is missing
    result = edgeseg(inputs, outputs, "--model", bundle)
    assert result.returncode == 2
    assert "1 segmented, 0 already done, 1 failed" in result.stdout
    assert "b_0001.nii.gz missing beside it" in result.stdout
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz"]


def test_channel_numbers_and_case_files() -> None:
    assert [channel_of(Path(n)) for n in ("c_0000.nii.gz", "c_0012.mha", "c.nii", "c_01.nrrd")] \
        == [0, 12, None, None]
    scans = [Path(n) for n in ("a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz", "x.nii.gz")]
    assert first_channel_scans(scans, 2) == [scans[0], scans[2], scans[3]]
    assert first_channel_scans(scans, 3) == [scans[0], scans[3]]
    assert first_channel_scans(scans, 1) == scans


def test_upper_case_suffixes_and_python_run_batch(bundle: Path, tmp_path: Path) -> None:
    from edge_seg.batch import run_batch
    from edge_seg.options import PredictOptions

    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b"):  # ITK writes no upper-case NIfTI suffix, but reads one
        first = write_scan(inputs / f"{case}_0000.nii.gz")
        for path in (first, _second_channel(first)):
            path.rename(path.with_name(path.name.replace(".nii.gz", ".NII.GZ")))
    scans = first_channel_scans(sorted(inputs.iterdir()), 2)
    # The channel count comes from the bundle, for the first case as for the others.
    report = run_batch(scans, tmp_path / "out", bundle, PredictOptions(threads=1))
    assert [(r.name, r.status) for r in report.results] == [("a", "done"), ("b", "done")]


def test_a_case_without_its_channel_0_file_fails_by_name(bundle: Path, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _second_channel(write_scan(inputs / "a_0000.nii.gz"))
    _second_channel(write_scan(inputs / "b_0000.nii.gz", seed=1))
    (inputs / "b_0000.nii.gz").unlink()
    result = edgeseg(inputs, outputs, "--model", bundle)
    assert result.returncode == 2
    assert "b_0000.nii.gz: channel 0 of case b is missing" in result.stdout
    assert "1 segmented, 0 already done, 1 failed" in result.stdout


def test_a_one_channel_model_does_not_take_other_channel_files_as_scans(tmp_path: Path) -> None:
    # nnU-Net groups <case>_XXXX files into one case; segmenting a_0001 as a CT of its own
    # would write an a_0001.nii.gz nobody asked for.
    one = make_bundle(tmp_path / "one")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _second_channel(write_scan(inputs / "a_0000.nii.gz"))
    write_scan(inputs / "c_0000.nii.gz", seed=2)
    result = edgeseg(inputs, outputs, "--model", one)
    assert result.returncode == 2
    assert ("a_0001.nii.gz: channel 1 of the case of a_0000.nii.gz, but the model takes 1 "
            "input channel(s); not segmented") in result.stdout
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "c.nii.gz"]


def test_a_two_channel_nnunet_model_exports_and_runs(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("dynamic_network_architectures")
    from export_fixtures import make_results_folder, run_cli, write_ct_image

    results = make_results_folder(tmp_path / "nnUNet_results", seed=1, channels=2)
    images = tmp_path / "images"
    first = write_ct_image(images / "c_0000.nii.gz", seed=0)
    _second_channel(first)
    for extra in ([], ["--images", str(images)]):  # the phantom check, then a real case
        out = tmp_path / f"bundle{len(extra)}"
        code, stdout, err = run_cli(["export", "nnunet", str(results), "-o", str(out),
                                     *extra], capsys)
        assert code == 0, err
        assert "ONNX checker passed" in stdout
    result = edgeseg(first, "--model", out, "-o", tmp_path / "seg.nii.gz")
    assert result.returncode == 0, result.stderr
    assert read_volume(tmp_path / "seg.nii.gz").shape == read_volume(first).shape


def test_quantize_takes_a_case_with_all_its_channels(tmp_path: Path) -> None:
    # One entry per case: channel files are neither images of their own nor split between
    # the calibration and the held-out sets.
    import subprocess

    bundle = make_bundle(tmp_path / "b", channels=2)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _second_channel(write_scan(images / f"c{i}_0000.nii.gz", seed=i))
    result = subprocess.run([sys.executable, "-m", "edge_seg", "quantize", str(bundle),
                             "--calib", str(images), "--backend", "onnxruntime"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "from 2 images; held out: 1 images" in result.stdout


def test_benchmark_counts_cases_not_channel_files(tmp_path: Path) -> None:
    from edge_seg.benchmark import discover_cases

    for i in range(2):
        _second_channel(write_scan(tmp_path / f"case_{i:04d}_0000.nii.gz", seed=i))
    cases = discover_cases(tmp_path, channels=2)
    assert [(c.case_id, c.image.name) for c in cases] == [
        ("case_0000", "case_0000_0000.nii.gz"), ("case_0001", "case_0001_0000.nii.gz")]
    assert len(discover_cases(tmp_path)) == 4  # a one-channel model: every file


def test_three_channels_are_read_in_their_order(tmp_path: Path) -> None:
    # Channel 1 votes for the spleen, channel 2 for the right kidney: bright boxes in
    # different places tell whether the files went to the right channels.
    bundle = make_bundle(tmp_path / "b", channels=3)
    first = write_scan(tmp_path / "case_0000.nii.gz")
    _second_channel(first)  # bright BOX in channel 1
    reference = sitk.ReadImage(str(first))
    array = np.zeros(sitk.GetArrayFromImage(reference).shape, np.int16)
    other = (slice(12, 18), slice(20, 28), slice(20, 28))
    array[other] = 1000
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(tmp_path / "case_0002.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    result = edgeseg(first, "--model", bundle, "-o", out, "--crop", "none", "--no-lcc",
                     "--min-component-ml", "0")
    assert result.returncode == 0, result.stderr
    labels = read_volume(out).array
    assert (labels[BOX] == LABELS["spleen"]).mean() > 0.9
    assert (labels[other] == LABELS["kidney_right"]).mean() > 0.9
