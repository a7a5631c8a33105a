"""``edgeseg evaluate`` reporting incomplete datasets instead of dropping data silently.

CHAOS case folders without ``Ground/`` or ``DICOM_anon/``, MSD ``dataset.json`` label names no
table knows, ``training`` lists of the wrong type or naming missing label maps, and a
``labels`` list instead of an object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_evaluator_cli import _run, _write

from evaluator.runner import EvaluationOptions, evaluate


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _synth_chaos(root: Path, modality: str, cases: int) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "edge_seg", "synth", str(root), "--layout", "chaos",
         "--modality", modality, "--cases", str(cases), "--slices", "8", "--size", "32",
         "--seed", "1", "-q"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def chaos_ct(tmp_path_factory) -> Path:
    """Two synthetic CHAOS CT cases (``CT/1``, ``CT/2``)."""
    return _synth_chaos(tmp_path_factory.mktemp("chaos_ct") / "Train_Sets", "ct", 2)


# --- CHAOS: incomplete case folders --------------------------------------------------------------


@pytest.mark.parametrize("part", ["Ground", "DICOM_anon"])
def test_chaos_case_without_a_part_is_reported(chaos_ct, tmp_path, capsys, part) -> None:
    gt = tmp_path / "gt"
    shutil.copytree(chaos_ct, gt)
    pred = tmp_path / "pred"
    shutil.copytree(chaos_ct / "CT", pred / "CT")  # predictions of both cases exist
    shutil.rmtree(gt / "CT/2" / part)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2, err  # as for other unreadable ground truth
    assert (f"edgeseg: warning: {gt / 'CT/2'}: CHAOS case folder has no {part}/, so its "
            "ground truth cannot be read; case CT_2 not scored") in err
    assert "Traceback" not in err
    cases = _summary(out)["cases"]
    assert cases["n"] == 2 and cases["voxel"] == 1  # CT_1 is still scored
    assert [(f["case"], f["side"]) for f in cases["failed"]] == [("CT_2", "ground truth")]
    assert cases["missing_predictions"] == []  # not scored, so not a worst-case "missing"


def test_chaos_mr_incomplete_sequence_and_patient_are_reported(tmp_path) -> None:
    gt = _synth_chaos(tmp_path / "Train_Sets", "mr", 1)
    shutil.rmtree(gt / "MR/1/T2SPIR/DICOM_anon")
    shutil.rmtree(gt / "MR/1/T2SPIR/Ground")
    (gt / "MR/2").mkdir()  # a patient folder without sequence folders
    (gt / "MR/.hidden").mkdir()  # not a case
    result = evaluate(gt, gt, EvaluationOptions(protocol="chaos"))
    assert result.cases == ["MR_1_T1DUAL", "MR_1_T2SPIR", "MR_2"]
    failed = {f.case: f.message for f in result.failures}
    assert set(failed) == {"MR_1_T2SPIR", "MR_2"}
    assert "T2SPIR: CHAOS case folder has neither DICOM_anon/ nor Ground/" in failed["MR_1_T2SPIR"]
    assert "MR/2: CHAOS case folder has no T1DUAL/ or T2SPIR/" in failed["MR_2"]
    assert {r.case for r in result.rows} == {"MR_1_T1DUAL"}


# --- MSD dataset.json -------------------------------------------------------------------------


def _msd(root: Path, labels: object, training: object) -> Path:
    """An MSD task folder with labelsTr/abd_001, abd_002 (spleen 1, second label 2)."""
    volume = np.zeros((10, 24, 24), np.uint8)
    volume[2:8, 3:12, 3:12] = 1
    volume[3:7, 14:20, 14:20] = 2
    for case in ("abd_001", "abd_002"):
        _write(root / "labelsTr" / f"{case}.nii.gz", volume)
    (root / "dataset.json").write_text(json.dumps({
        "name": "Synthetic", "modality": {"0": "CT"}, "labels": labels, "training": training}))
    return root


def _listed(*cases: str) -> list[dict[str, str]]:
    return [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in cases]


def _flare_pred(folder: Path, second: int) -> Path:
    """Perfect FLARE-numbered predictions: spleen 3, the second structure as ``second``."""
    volume = np.zeros((10, 24, 24), np.uint8)
    volume[2:8, 3:12, 3:12] = 3
    volume[3:7, 14:20, 14:20] = second
    for case in ("abd_001", "abd_002"):
        _write(folder / f"{case}.nii.gz", volume)
    return folder


def test_msd_label_nobody_knows_is_a_warning_naming_it(tmp_path, capsys) -> None:
    gt = _msd(tmp_path / "Task", {"0": "background", "1": "spleen", "2": "hepar"},
              _listed("abd_001", "abd_002"))
    pred = _flare_pred(tmp_path / "pred", 1)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    warning = (f"{gt / 'dataset.json'}: label 'hepar' (value 2) is not scored: no label table "
               "knows that name")
    assert f"edgeseg: warning: {warning}" in err and err.count("\n") == 1
    assert set(_summary(out)["organs"]) == {"spleen"}
    assert _summary(out)["warnings"][0].startswith(warning)  # recorded, not only printed


def test_msd_label_alias_is_scored_without_warning(tmp_path, capsys) -> None:
    gt = _msd(tmp_path / "Task", {"0": "background", "1": "spleen", "2": "Right Kidney"},
              _listed("abd_001", "abd_002"))
    pred = _flare_pred(tmp_path / "pred", 2)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 0 and err == ""
    assert set(_summary(out)["organs"]) == {"spleen", "kidney_right"}
    assert _summary(out)["warnings"] == []


def test_known_structure_the_prediction_lacks_is_named(tmp_path) -> None:
    gt = _msd(tmp_path / "Task", {"0": "background", "1": "spleen", "2": "lesion"},
              _listed("abd_001", "abd_002"))
    result = evaluate(gt, _flare_pred(tmp_path / "pred", 0), EvaluationOptions())
    assert result.warnings == [f"{gt / 'dataset.json'}: label 'lesion' (value 2) is not "
                               "scored: the prediction label set 'flare' has no 'lesion'"]
    only = evaluate(gt, tmp_path / "pred", EvaluationOptions(organs=("spleen",)))
    assert only.warnings == []  # left out on purpose with --organ


def test_msd_listed_case_without_label_map_is_reported(tmp_path, capsys) -> None:
    gt = _msd(tmp_path / "Task", {"0": "background", "1": "spleen", "2": "liver"},
              _listed("abd_001", "abd_002", "abd_003"))
    pred = _flare_pred(tmp_path / "pred", 1)
    _write(pred / "abd_003.nii.gz", np.zeros((10, 24, 24), np.uint8))
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2, err
    assert (f"edgeseg: warning: {gt / 'dataset.json'}: training lists abd_003 "
            f"(./labelsTr/abd_003.nii.gz), but {gt / 'labelsTr'} has no label map of it") in err
    cases = _summary(out)["cases"]
    assert [(f["case"], f["side"]) for f in cases["failed"]] == [("abd_003", "ground truth")]
    assert cases["voxel"] == 2 and cases["ignored_predictions"] == 0
    # labelsTs is not what the training list describes: nothing is reported there.
    (gt / "labelsTr").rename(gt / "labelsTs")
    assert evaluate(gt, pred, EvaluationOptions(format="msd")).failures == []


@pytest.mark.parametrize(("training", "message"), [
    ("abc", "'training' must be a list of {\"image\": ..., \"label\": ...} objects, got str"),
    ({"a": 1}, "'training' must be a list"),
    ([1], "training entry 0 must be an object with a 'label' path, got 1"),
    ([{"image": "x.nii.gz"}], "training entry 0 must be an object with a 'label' path"),
    ([{"label": "./labelsTr/a.txt"}], "training entry 0: './labelsTr/a.txt' is not a"),
])
def test_msd_training_of_the_wrong_type_is_refused(tmp_path, capsys, training,
                                                   message) -> None:
    gt = _msd(tmp_path / "Task", {"0": "background", "1": "spleen"}, training)
    pred = _flare_pred(tmp_path / "pred", 0)
    out = tmp_path / "out"
    code, _, err = _run(["evaluate", str(pred), str(gt), "-o", str(out), "-q"], capsys)
    assert code == 2 and err.startswith("edgeseg: error:") and err.count("\n") == 1, err
    assert f"{gt / 'dataset.json'}: {message}" in err
    assert not out.exists()


def test_labels_list_says_what_labels_must_be(tmp_path, capsys) -> None:
    gt = _msd(tmp_path / "Task", ["background", "spleen"], _listed("abd_001", "abd_002"))
    pred = _flare_pred(tmp_path / "pred", 0)
    code, _, err = _run(["evaluate", str(pred), str(gt), "-q"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert (f"{gt / 'dataset.json'}: 'labels' must be an object mapping names to values "
            '({"liver": 1}) or values to names ({"1": "liver"}), got list') in err
    assert "unsupported value" not in err
