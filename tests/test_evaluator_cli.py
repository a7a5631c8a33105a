"""``edgeseg evaluate`` end to end on small NIfTI folders: outputs, exit codes, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edge_seg.cli import main

SPACING_XYZ = (1.0, 1.0, 2.0)


def _labels(shift: int = 0, gallbladder: bool = True) -> np.ndarray:
    labels = np.zeros((12, 20, 20), np.uint8)
    labels[2:10, 3:12, 3:12] = 1  # liver
    labels[3:8, 13:18, 13:18] = 3  # spleen
    if gallbladder:
        labels[4:6, 8:11, 14:17] = 9
    return np.roll(labels, shift, axis=2)


def _write(path: Path, labels: np.ndarray, spacing=SPACING_XYZ) -> None:
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt / "case_a.nii.gz", _labels())
    _write(gt / "case_b.nii.gz", _labels(gallbladder=False))
    _write(gt / "case_c.nii.gz", _labels())
    _write(pred / "case_a.nii.gz", _labels(shift=1))
    _write(pred / "case_b.nii.gz", _labels())  # hallucinated gallbladder
    return pred, gt  # case_c has no prediction


def test_outputs_and_worst_case_for_missing(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "out"
    code, stdout, stderr = _run(["evaluate", str(pred), str(gt), "-o", str(out), "--junit"],
                                capsys)
    assert code == 0, stderr
    assert "liver" in stdout and "case_c" in stderr  # table, and the missing case named
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert {"case", "organ", "label", "dsc", "nsd", "hd95", "tp", "fp", "fn",
            "presence"} <= set(rows[0])
    by_key = {(r["case"], r["organ"]): r for r in rows}
    assert len(rows) == 3 * 13
    assert by_key[("case_b", "gallbladder")]["presence"] == "FP"
    assert float(by_key[("case_b", "gallbladder")]["dsc"]) == 0.0
    assert by_key[("case_b", "pancreas")]["presence"] == "TN"
    assert float(by_key[("case_b", "pancreas")]["nsd"]) == 1.0
    assert by_key[("case_c", "liver")]["status"] == "missing_prediction"
    assert float(by_key[("case_c", "liver")]["dsc"]) == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "edgeseg-evaluation/1"
    assert summary["cases"]["missing_predictions"] == ["case_c"]
    liver = summary["organs"]["liver"]["metrics"]["dsc"]
    assert liver["n"] == 3 and 0 < liver["mean"] < 1
    gallbladder = summary["organs"]["gallbladder"]["presence"]
    # case_a found, case_b hallucinated, case_c missing (worst case: a false negative)
    assert (gallbladder["tp"], gallbladder["fp"], gallbladder["fn"]) == (1, 1, 1)
    assert 'failures="1"' in (out / "junit.xml").read_text()


def test_baseline_gate_exit_codes(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "run1"
    assert _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)[0] == 0
    baseline = out / "summary.json"
    same = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline), "-q"], capsys)
    assert same[0] == 0
    _write(pred / "case_a.nii.gz", _labels(shift=3))  # worse liver and spleen
    code, _, stderr = _run(["evaluate", str(pred), str(gt), "--baseline", str(baseline),
                            "--max-drop", "0.005", "-q"], capsys)
    assert code == 1
    assert "liver dsc" in stderr and "spleen dsc" in stderr


def test_parallel_workers_match_serial(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    _run(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "s"), "-q"], capsys)
    _run(["evaluate", str(pred), str(gt), "-o", str(tmp_path / "p"), "-q", "--workers", "2"],
         capsys)
    assert (tmp_path / "s/cases.csv").read_text() == (tmp_path / "p/cases.csv").read_text()


def test_bad_inputs_give_one_line_errors(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["evaluate", str(empty), str(gt)], capsys)
    assert code == 2 and "prediction folder is empty" in err and err.count("\n") == 1
    other = tmp_path / "other"
    _write(other / "unrelated.nii.gz", _labels())
    code, _, err = _run(["evaluate", str(other), str(gt)], capsys)
    assert code == 2 and "no prediction matches" in err
    code, _, err = _run(["evaluate", str(pred), str(gt), "--protocol", "brats"], capsys)
    assert code == 2 and "unknown protocol" in err


def test_broken_and_mismatched_predictions_are_reported(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    data = (pred / "case_a.nii.gz").read_bytes()
    (pred / "case_a.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    _write(pred / "case_b.nii.gz", _labels(), spacing=(1.0, 1.0, 3.0))  # wrong spacing
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2
    assert "case_a.nii.gz" in err and "geometry does not match" in err
    summary = json.loads((out / "summary.json").read_text())
    assert {f["case"] for f in summary["cases"]["failed"]} == {"case_a", "case_b"}
    # With resampling the spacing mismatch is accepted (case_a stays broken).
    code, _, err = _run(["evaluate", str(pred), str(gt), "--resample-pred", "-q"], capsys)
    assert "geometry" not in err and "case_a" in err


def test_unknown_label_values_and_label_mapping(folders, tmp_path, capsys) -> None:
    pred, gt = folders
    labels = _labels()
    labels[0, 0, 0] = 42
    _write(pred / "case_a.nii.gz", labels)
    code, _, err = _run(["evaluate", str(pred), str(gt), "-q"], capsys)
    assert code == 2 and "unknown label value(s) 42" in err
    # The same scan labelled with TotalSegmentator numbers scores perfectly by organ name.
    ts_pred = tmp_path / "ts"
    flare = _labels()
    ts = np.zeros_like(flare)
    ts[flare == 1], ts[flare == 3], ts[flare == 9] = 5, 1, 4
    _write(ts_pred / "case_a.nii.gz", ts)
    out = tmp_path / "o"
    code, _, _ = _run(["evaluate", str(ts_pred), str(gt), "--pred-labels", "totalsegmentator",
                       "-o", str(out), "-q"], capsys)
    rows = [r for r in csv.DictReader((out / "cases.csv").open()) if r["case"] == "case_a"]
    assert rows and all(float(r["dsc"]) == 1.0 for r in rows)


def test_presence_csv_cohort(tmp_path, capsys) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt / "1001.nii.gz", _labels())
    _write(pred / "1001.nii.gz", _labels())
    _write(pred / "1002.nii.gz", _labels())  # gallbladder predicted, but resected
    _write(pred / "1003.nii.gz", _labels(gallbladder=False))
    csv_path = tmp_path / "presence.csv"
    csv_path.write_text("eid,gallbladder,liver\n1002,0,1\n1003,0,1\n")
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "--presence-csv", str(csv_path),
                         "-o", str(out), "-q"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "ukb" and summary["cases"]["presence_only"] == 2
    gallbladder = summary["organs"]["gallbladder"]
    assert gallbladder["presence"]["fp"] == 1 and gallbladder["presence"]["tn"] == 1
    assert gallbladder["presence"]["fpr"] == pytest.approx(0.5)
    assert gallbladder["metrics"]["dsc"]["n"] == 1  # presence-only cases carry no DSC
    csv_path.write_text("eid,gallbladder\n1002,0\n9999,1\n")
    code, _, err = _run(["evaluate", str(pred), str(gt), "--presence-csv", str(csv_path)],
                        capsys)
    assert code == 2 and "9999" in err


def test_chaos_layout_through_subprocess(shared_data, tmp_path) -> None:
    root = shared_data / "chaos_ct_sample"
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "edge_seg", "evaluate", str(root / "Segmentation"), str(root),
         "--protocol", "chaos", "-o", str(out), "-q"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader((out / "cases.csv").open()))
    assert (row["organ"], row["presence"]) == ("liver", "TP")
    assert round(float(row["dsc"]), 3) == 0.978 and round(float(row["mssd"]), 3) == 14.0
