"""``edgeseg synth`` end to end: every layout read back by SimpleITK / pydicom / nnU-Net /
the evaluator, reproducibility, and one-line errors that leave nothing behind."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from edge_seg.synth import generate_phantom
from evaluator.labels import FLARE_LABELS

TINY = ["--size", "48", "--slices", "12", "-q"]


def synth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_seg", "synth", *args], capture_output=True, text=True
    )


def manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "synth_cases.csv") as handle:
        return list(csv.DictReader(handle))


def regenerate(row: dict[str, str], modality: str):
    """The phantom a manifest row describes, through the public API."""
    return generate_phantom(
        int(row["seed"]),
        modality,
        n_slices=int(row["slices"]),
        spacing_mm=tuple(float(row[f"spacing_{a}_mm"]) for a in "zyx"),
        shape_yx=(int(row["rows"]), int(row["columns"])),
        resected=[r for r in row["resected"].split(";") if r],
        protocol=row["protocol"],
    )


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture(scope="module")
def flare_ct(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "flare"
    result = synth(str(out), "--cases", "3", "--resection-rate", "1", "--seed", "4", *TINY)
    assert result.returncode == 0, result.stderr
    return out


def test_flare_layout_is_a_valid_nnunet_v2_raw_dataset(flare_ct: Path) -> None:
    meta = json.loads((flare_ct / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 3
    assert meta["labels"] == {"background": 0, **FLARE_LABELS}
    rows = manifest(flare_ct)
    assert [r["case_id"] for r in rows] == ["case_0000", "case_0001", "case_0002"]
    for row in rows:
        image = sitk.ReadImage(str(flare_ct / "imagesTr" / f"{row['case_id']}_0000.nii.gz"))
        labels = sitk.ReadImage(str(flare_ct / "labelsTr" / f"{row['case_id']}.nii.gz"))
        assert image.GetSize() == labels.GetSize() == (48, 48, 12)
        assert image.GetSpacing() == pytest.approx(labels.GetSpacing())
        assert image.GetOrigin() == pytest.approx(labels.GetOrigin())
        assert image.GetDirection() == labels.GetDirection()
        assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
        lab = sitk.GetArrayFromImage(labels)
        assert set(np.unique(lab).tolist()) <= {0, *FLARE_LABELS.values()}
        # resection rate 1: every case lacks one resectable organ
        assert row["resected"] in ("gallbladder", "kidney_left", "kidney_right")
        assert not (lab == FLARE_LABELS[row["resected"]]).any()
        expected = regenerate(row, "ct")
        assert np.array_equal(sitk.GetArrayFromImage(image), expected.image)
        assert np.array_equal(lab, expected.labels)


def test_flare_layout_passes_nnunet_dataset_verification(flare_ct: Path) -> None:
    if importlib.util.find_spec("nnunetv2") is None:  # not imported here: it pulls in torch
        pytest.skip("nnunetv2 is not installed (the nnunet extra)")
    code = (
        "from nnunetv2.experiment_planning.verify_dataset_integrity import "
        f"verify_dataset_integrity; verify_dataset_integrity({str(flare_ct)!r}, 1)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_same_seed_gives_identical_arrays(flare_ct: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert (
        synth(str(again), "--cases", "3", "--resection-rate", "1", "--seed", "4", *TINY).returncode
        == 0
    )
    other = tmp_path / "other"
    assert synth(str(other), "--cases", "1", "--seed", "5", *TINY).returncode == 0
    for sub in ("imagesTr/case_0000_0000.nii.gz", "labelsTr/case_0002.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(flare_ct / sub)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(again / sub)))
        assert a.tobytes() == b.tobytes()
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(flare_ct / "imagesTr/case_0000_0000.nii.gz")))
    differs = sitk.GetArrayFromImage(sitk.ReadImage(str(other / "imagesTr/case_0000_0000.nii.gz")))
    assert not np.array_equal(first, differs)


def test_chaos_ct_layout_dicom_and_png_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    result = synth(str(out), "--layout", "chaos", "--cases", "1", *TINY)
    assert result.returncode == 0, result.stderr
    case = out / "CT" / "1"
    files = sorted((case / "DICOM_anon").iterdir())
    pngs = sorted((case / "Ground").iterdir())
    assert [f.name for f in files[:2]] == ["i0000,0000b.dcm", "i0001,0000b.dcm"]
    assert [p.name for p in pngs[:2]] == ["liver_GT_000.png", "liver_GT_001.png"]
    assert len(files) == len(pngs) == 12
    datasets = [pydicom.dcmread(f) for f in files]
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert z == sorted(z, reverse=True)  # CHAOS: file-name order runs from the top down
    assert [float(v) for v in datasets[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert datasets[0].Modality == "CT" and datasets[0].pixel_array.shape == (48, 48)
    image = read_series(case / "DICOM_anon")
    assert image.GetSize() == (48, 48, 12)
    assert image.GetSpacing()[2] == pytest.approx(abs(z[0] - z[1]), abs=1e-3)
    assert image.GetSpacing()[:2] == pytest.approx([float(v) for v in datasets[0].PixelSpacing])
    expected = regenerate(manifest(out)[0], "ct")
    assert np.array_equal(sitk.GetArrayFromImage(image), expected.image)  # HU after rescale
    assert image.GetOrigin() == pytest.approx(expected.origin, abs=1e-3)
    ground = np.stack([np.asarray(Image.open(p)) for p in pngs])[::-1] > 0
    assert np.array_equal(ground, expected.labels == FLARE_LABELS["liver"])
    assert ground.any()


def test_chaos_mr_layout_sequences_and_grey_values(tmp_path: Path) -> None:
    out = tmp_path / "chaos_mr"
    result = synth(str(out), "--layout", "chaos", "--modality", "mr", "--cases", "1", *TINY)
    assert result.returncode == 0, result.stderr
    case = out / "MR" / "1"
    from edge_seg.synth.layout_chaos import t2_phantom

    t1 = regenerate(manifest(out)[0], "mr")
    t2 = t2_phantom(t1)
    assert t2.spacing_mm[0] != t1.spacing_mm[0]  # T2 SPIR is its own acquisition
    assert t2.spacing_mm[1:] == t1.spacing_mm[1:]
    for folder, key, expected in (
        ("T1DUAL/DICOM_anon/InPhase", "t1_in_phase", t1),
        ("T1DUAL/DICOM_anon/OutPhase", "t1_opposed_phase", t1),
        ("T2SPIR/DICOM_anon", "t2", t2),
    ):
        image = read_series(case / folder)
        assert image.GetSize() == (48, 48, expected.labels.shape[0])
        assert image.GetSpacing()[2] == pytest.approx(expected.spacing_mm[0], abs=1e-3)
        assert image.GetOrigin() == pytest.approx(expected.origin, abs=1e-3)
        array = sitk.GetArrayFromImage(image)
        assert np.array_equal(array, np.clip(np.rint(expected.channels[key]), 0, 65535))
        assert all(pydicom.dcmread(f).Modality == "MR" for f in (case / folder).iterdir())
    echo = {
        name: float(pydicom.dcmread(next((case / "T1DUAL/DICOM_anon" / name).iterdir())).EchoTime)
        for name in ("InPhase", "OutPhase")
    }
    assert echo["InPhase"] > echo["OutPhase"]
    for ground_dir, expected in (("T1DUAL/Ground", t1), ("T2SPIR/Ground", t2)):
        pngs = sorted((case / ground_dir).iterdir())
        grey = np.stack([np.asarray(Image.open(p)) for p in pngs])[::-1]
        assert set(np.unique(grey).tolist()) <= {0, 63, 126, 189, 252}
        for organ, value in (
            ("liver", 63),
            ("kidney_right", 126),
            ("kidney_left", 189),
            ("spleen", 252),
        ):
            assert np.array_equal(grey == value, expected.labels == FLARE_LABELS[organ])
    # Both sequences image the same patient: liver volumes agree within partial-volume error.
    ml = [(p.labels == 1).sum() * np.prod(p.spacing_mm) for p in (t1, t2)]
    assert 0.8 < ml[0] / ml[1] < 1.25


def test_chaos_output_reads_through_the_evaluator_adapter(tmp_path: Path) -> None:
    from evaluator.adapters.base import load_volume
    from evaluator.adapters.chaos import discover

    out = tmp_path / "chaos"
    assert synth(str(out), "--layout", "chaos", "--cases", "1", *TINY).returncode == 0
    specs = discover(out, tmp_path / "no_predictions")
    assert len(specs) == 1
    volume = load_volume(specs[0].gt)
    assert volume.array.shape == (12, 48, 48)


def test_ukb_layout_presence_csv_and_optional_labels(tmp_path: Path) -> None:
    from evaluator.presence import read_presence_csv

    out = tmp_path / "ukb"
    result = synth(str(out), "--layout", "ukb", "--cases", "3", "--resection-rate", "1", *TINY)
    assert result.returncode == 0, result.stderr
    assert not (out / "labels").exists()
    presence = read_presence_csv(out / "organ_presence.csv", FLARE_LABELS)
    rows = {r["case_id"]: r for r in manifest(out)}
    assert sorted(presence) == sorted(rows) == ["1000001", "1000002", "1000003"]
    for eid, organs in presence.items():
        assert organs[rows[eid]["resected"]] is False
        assert sum(organs.values()) == 12
        image = sitk.ReadImage(str(out / "images" / f"{eid}.nii.gz"))
        assert image.GetSize() == (48, 48, 12)
        expected = regenerate(rows[eid], "mr")
        assert np.array_equal(sitk.GetArrayFromImage(image), expected.channels["t1_opposed_phase"])

    labelled = tmp_path / "ukb_labels"
    assert (
        synth(str(labelled), "--layout", "ukb", "--cases", "1", "--labels", *TINY).returncode == 0
    )
    lab = sitk.ReadImage(str(labelled / "labels" / "1000001.nii.gz"))
    img = sitk.ReadImage(str(labelled / "images" / "1000001.nii.gz"))
    assert lab.GetSize() == img.GetSize() and lab.GetOrigin() == pytest.approx(img.GetOrigin())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "nifti"], "--layout"),
        (["--modality", "pet"], "--modality"),
        (["--layout", "ukb", "--modality", "ct"], "Dixon MR only"),
        (["--cases", "0"], "--cases"),
        (["--cases", "abc"], "--cases"),
        (["--seed", "-1"], "--seed"),
        (["--resection-rate", "nan"], "--resection-rate"),
        (["--cases", "100000"], "--cases"),
        (["--slices", "5"], "--slices"),
        (["--slices", "5000"], "--slices"),
        (["--resection-rate", "1.5"], "--resection-rate"),
        (["--resection-rate", "-0.1"], "--resection-rate"),
        (["--size", "4"], "--size"),
        (["--size", "ab"], "--size"),
        (["--labels"], "--labels"),
    ],
)
def test_bad_options_fail_in_one_line_and_write_nothing(tmp_path: Path, args, message) -> None:
    out = tmp_path / "out"
    result = synth(str(out), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:") and message in lines[0]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    result = synth(str(out), "--cases", "1", *TINY)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "previous run"
    result = synth(str(out), "--cases", "1", "--overwrite", *TINY)
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_output_path_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for out in (blocker / "out", blocker):
        result = synth(str(out), "--cases", "1", *TINY)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_ctrl_c_gives_one_line_and_exit_130(tmp_path, monkeypatch, capsys) -> None:
    # typer turns KeyboardInterrupt into a silent exit 130; the CLI says what happened.
    import edge_seg.synth.writer as writer
    from edge_seg.cli import main

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_dataset", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "out"), "--cases", "1", "-q"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "edgeseg: error: interrupted\n"
