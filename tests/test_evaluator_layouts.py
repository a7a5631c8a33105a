"""``edgeseg evaluate`` on dataset layouts and options: CHAOS MR (T1DUAL and T2SPIR), MSD
``dataset.json`` label tables, and per-organ NSD tolerance overrides (``--nsd-tolerance``)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from edge_seg.cli import main
from evaluator.runner import EvaluationOptions, evaluate

CHAOS_MR_GREY = {"liver": 63, "kidney_right": 126, "kidney_left": 189, "spleen": 252}
MR_CASES = ["MR_1_T1DUAL", "MR_1_T2SPIR", "MR_2_T1DUAL", "MR_2_T2SPIR"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _rows(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["case"], r["organ"]): r for r in csv.DictReader((out / "cases.csv").open())}


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _ground(case_dir: Path) -> np.ndarray:
    """A CHAOS Ground/ folder as a (slices, rows, cols) array in file-name order."""
    files = sorted((case_dir / "Ground").glob("*.png"))
    return np.stack([np.asarray(Image.open(f)) for f in files])


# --- CHAOS MR ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chaos_mr(tmp_path_factory) -> Path:
    """Two synthetic CHAOS MR patients (T1DUAL in/opposed phase + T2SPIR), project generator."""
    out = tmp_path_factory.mktemp("chaos_mr") / "Train_Sets"
    result = subprocess.run(
        [sys.executable, "-m", "edge_seg", "synth", str(out), "--layout", "chaos",
         "--modality", "mr", "--cases", "2", "--slices", "12", "--size", "64", "--seed", "3",
         "-q"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_chaos_mr_ground_truth_against_itself_scores_both_sequences(chaos_mr) -> None:
    # A copy of the ground-truth tree is a valid prediction tree (PNGs found in Ground/).
    result = evaluate(chaos_mr, chaos_mr, EvaluationOptions(protocol="chaos"))
    assert result.format == "chaos"  # auto-detected
    assert result.cases == MR_CASES  # T1DUAL and T2SPIR are separate cases
    assert not result.failures and not result.missing_predictions
    assert {(r.case, r.organ) for r in result.rows} == {
        (case, organ) for case in MR_CASES for organ in CHAOS_MR_GREY
    }
    for row in result.rows:
        grey = _ground(chaos_mr / "MR" / row.case.split("_")[1] / row.case.split("_")[2])
        present = bool((grey == CHAOS_MR_GREY[row.organ]).any())
        assert row.label == CHAOS_MR_GREY[row.organ]  # reported in the CHAOS convention
        assert row.presence == ("TP" if present else "TN")
        assert row.metrics["dsc"] == 1.0 and row.metrics["nsd"] == 1.0
        assert row.metrics["chaos_score"] == pytest.approx(100.0)
        # Each sequence is scored against its own Ground/ (own slice count and voxels).
        assert row.tp == int((grey == CHAOS_MR_GREY[row.organ]).sum())
        assert row.fp == row.fn == 0
    t1 = _ground(chaos_mr / "MR/1/T1DUAL")
    t2 = _ground(chaos_mr / "MR/1/T2SPIR")
    assert t1.shape[0] == 12 and t2.shape[0] != t1.shape[0]


def test_chaos_mr_t1dual_geometry_comes_from_in_phase_only(chaos_mr, tmp_path) -> None:
    gt = tmp_path / "Train_Sets"
    shutil.copytree(chaos_mr, gt)
    reference = evaluate(chaos_mr, chaos_mr, EvaluationOptions(protocol="chaos")).rows
    # The opposed-phase echo is not read: without it nothing changes.
    for patient in ("1", "2"):
        shutil.rmtree(gt / "MR" / patient / "T1DUAL/DICOM_anon/OutPhase")
    assert evaluate(gt, gt, EvaluationOptions(protocol="chaos")).rows == reference
    # The in-phase series gives the grid: one DICOM too few no longer matches Ground/.
    in_phase = gt / "MR/1/T1DUAL/DICOM_anon/InPhase"
    sorted(in_phase.iterdir())[-1].unlink()
    result = evaluate(gt, gt, EvaluationOptions(protocol="chaos"))
    assert [(f.case, f.side) for f in result.failures] == [("MR_1_T1DUAL", "ground truth")]
    assert str(in_phase) in result.failures[0].message
    assert result.failures[0].message.count("\n") == 0
    assert {r.case for r in result.rows} == set(MR_CASES) - {"MR_1_T1DUAL"}


def test_chaos_mr_damaged_submission_through_cli(chaos_mr, tmp_path, capsys) -> None:
    # Predictions in the CHAOS submission layout: MR/<id>/<sequence>/Results/*.png.
    pred = tmp_path / "Task1"
    for case in MR_CASES:
        _, patient, sequence = case.split("_")
        shutil.copytree(chaos_mr / "MR" / patient / sequence / "Ground",
                        pred / "MR" / patient / sequence / "Results")
    # Erase the spleen from three slices of patient 1's T1DUAL prediction.
    results = pred / "MR/1/T1DUAL/Results"
    erased = 0
    with_spleen = [f for f in sorted(results.glob("*.png"))
                   if (np.asarray(Image.open(f)) == 252).any()]
    assert len(with_spleen) >= 3
    for file in with_spleen[:3]:
        plane = np.asarray(Image.open(file)).copy()
        erased += int((plane == 252).sum())
        plane[plane == 252] = 0
        Image.fromarray(plane).save(file)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(chaos_mr), "--format", "chaos",
                         "--protocol", "chaos", "--output", str(out), "-q"], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert set(rows) == {(case, organ) for case in MR_CASES for organ in CHAOS_MR_GREY}
    damaged = rows[("MR_1_T1DUAL", "spleen")]
    assert float(damaged["dsc"]) < 1.0 and float(damaged["ravd"]) > 0
    assert (int(damaged["fn"]), int(damaged["fp"])) == (erased, 0)
    assert float(damaged["chaos_score"]) < 100.0
    for key, row in rows.items():
        if key != ("MR_1_T1DUAL", "spleen"):
            assert float(row["dsc"]) == 1.0, key
            assert int(row["label"]) == CHAOS_MR_GREY[key[1]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "chaos"
    assert set(summary["organs"]) == set(CHAOS_MR_GREY)
    assert summary["organs"]["spleen"]["metrics"]["dsc"]["n"] == 4  # both sequences pooled
    assert summary["organs"]["spleen"]["metrics"]["dsc"]["mean"] < 1.0
    assert summary["organs"]["liver"]["metrics"]["dsc"]["mean"] == 1.0


# --- MSD ------------------------------------------------------------------------------------


def _abdomen(labels: dict[str, int]) -> np.ndarray:
    volume = np.zeros((10, 24, 24), np.uint8)
    volume[2:8, 3:12, 3:12] = labels["liver"]
    volume[3:7, 14:20, 14:20] = labels["spleen"]
    volume[3:7, 14:19, 3:8] = labels["kidney_right"]
    return volume


def _msd_dataset(root: Path) -> None:
    """An MSD-style task folder: numeric label keys -> names, imagesTr/labelsTr, training list."""
    msd = {"spleen": 1, "liver": 2, "kidney_right": 3}
    cases = ["abd_001", "abd_002"]
    for case in cases:
        _write(root / "imagesTr" / f"{case}.nii.gz", np.zeros((10, 24, 24), np.int16))
        _write(root / "labelsTr" / f"{case}.nii.gz", _abdomen(msd))
    # MSD tarballs ship macOS resource forks beside the label maps.
    (root / "labelsTr" / "._abd_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Synthetic", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen", "2": "liver", "3": "right kidney"},
        "numTraining": len(cases), "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                     for c in cases],
        "test": [],
    }))


def test_msd_dataset_is_detected_and_labels_mapped_by_name(tmp_path, capsys) -> None:
    gt, pred = tmp_path / "Task99_Abdomen", tmp_path / "pred"
    _msd_dataset(gt)
    flare = _abdomen({"liver": 1, "kidney_right": 2, "spleen": 3})  # spleen 3, not 1
    flare[0, 0:2, 0:2] = 9  # an organ the MSD task does not label is not scored
    for case in ("abd_001", "abd_002"):
        _write(pred / f"{case}.nii.gz", flare)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "msd"
    assert set(summary["organs"]) == {"liver", "kidney_right", "spleen"}
    rows = _rows(out)
    assert len(rows) == 2 * 3
    assert all(float(r["dsc"]) == 1.0 and float(r["nsd"]) == 1.0 for r in rows.values())
    assert int(rows[("abd_001", "spleen")]["label"]) == 1  # the ground truth's own number
    # The labels folder itself works too; taking the MSD numbers as FLARE numbers does not.
    result = evaluate(gt / "labelsTr", pred, EvaluationOptions())
    assert result.format == "msd" and {r.metrics["dsc"] for r in result.rows} == {1.0}
    wrong = evaluate(gt, pred, EvaluationOptions(gt_labels="flare"))
    assert {r.metrics["dsc"] for r in wrong.rows if r.organ == "liver"} == {0.0}


# --- NSD tolerance overrides -----------------------------------------------------------------


@pytest.fixture
def shifted_liver(tmp_path) -> tuple[Path, Path]:
    """A liver box and a prediction of it shifted by exactly 2 voxels of 1 mm along x."""
    gt = np.zeros((16, 24, 28), np.uint8)
    gt[4:12, 6:16, 6:16] = 1
    _write(tmp_path / "gt" / "case.nii.gz", gt)
    _write(tmp_path / "pred" / "case.nii.gz", np.roll(gt, 2, axis=2))
    return tmp_path / "pred", tmp_path / "gt"


def test_nsd_tolerance_override_changes_nsd(shifted_liver, tmp_path, capsys) -> None:
    pred, gt = shifted_liver
    scores = {}
    for tolerance in (None, "1", "2", "3"):
        out = tmp_path / f"tol_{tolerance}"
        extra = ["--nsd-tolerance", f"liver={tolerance}"] if tolerance else []
        code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q", *extra],
                            capsys)
        assert code == 0, err
        row = _rows(out)[("case", "liver")]
        scores[tolerance] = (float(row["dsc"]), float(row["nsd"]))
        summary = json.loads((out / "summary.json").read_text())
        recorded = summary["protocol"]["nsd_tolerance_mm"]
        assert recorded["liver"] == (float(tolerance) if tolerance else 5.0)  # FLARE: 5 mm
        assert recorded["spleen"] == 3.0  # other organs keep theirs
    assert len({dsc for dsc, _ in scores.values()}) == 1  # DSC does not depend on it
    assert 0.0 < scores["1"][1] < 1.0
    # Every surface point is at most 2 mm from the other surface (inclusive, as DeepMind's).
    assert scores["2"][1] == scores["3"][1] == scores[None][1] == 1.0
    # The API takes any organ spelling the CLI takes.
    result = evaluate(gt, pred, EvaluationOptions(nsd_tolerance_mm={"Liver": 1.0}))
    liver = next(r for r in result.rows if r.organ == "liver")
    assert liver.metrics["nsd"] == pytest.approx(scores["1"][1], abs=1e-6)  # CSV rounds


@pytest.mark.parametrize(("value", "message"), [
    ("liver=abc", "expected ORGAN=MM"),
    ("liver", "expected ORGAN=MM"),
    ("unknownorgan=2", "unknown organ 'unknownorgan'"),
    ("=2", "unknown organ ''"),
    ("liver=-1", "must be >= 0 mm"),
])
def test_malformed_nsd_tolerance_is_a_one_line_error(shifted_liver, tmp_path, capsys,
                                                     value, message) -> None:
    pred, gt = shifted_liver
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--nsd-tolerance", value,
                        "-o", str(out), "-q"], capsys)
    assert code == 2
    assert err.startswith("edgeseg: error:") and message in err and err.count("\n") == 1
    assert not out.exists()  # refused before anything is scored or written
