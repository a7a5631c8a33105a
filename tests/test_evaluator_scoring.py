"""Per-case scoring: empty-organ conventions, protocol rules, label mapping, presence, baseline."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_LABELS
from evaluator.labelsets import (
    PRESETS,
    evaluation_ids,
    labelset_from_mapping,
    load_labelset,
    to_evaluation_labels,
)
from evaluator.presence import presence_summary
from evaluator.protocols import get_protocol
from evaluator.scoring import score_organs, worst_case_rows
from evaluator.summary import compare_to_baseline

IDS = {"liver": 1, "spleen": 3, "aorta": 5, "gallbladder": 9}


def _volume() -> np.ndarray:
    labels = np.zeros((20, 24, 24), np.uint8)
    labels[4:16, 4:14, 4:14] = 1  # liver
    labels[6:12, 16:22, 16:22] = 3  # spleen
    labels[2:18, 18:21, 5:8] = 5  # aorta, long tube
    return labels


def _rows(gt, pred, protocol="flare22"):
    rows = score_organs("c", gt, pred, (2.0, 1.0, 1.0), IDS, get_protocol(protocol))
    return {r.organ: r for r in rows}


def test_perfect_prediction_and_empty_conventions() -> None:
    gt = _volume()
    pred = gt.copy()
    pred[0:2, 0:3, 0:3] = 9  # hallucinated gallbladder
    pred[pred == 3] = 0  # missed spleen
    rows = _rows(gt, pred)
    assert rows["liver"].metrics["dsc"] == 1.0 and rows["liver"].metrics["nsd"] == 1.0
    assert rows["liver"].metrics["hd95"] == 0.0 and rows["liver"].presence == "TP"
    assert rows["gallbladder"].presence == "FP"
    assert rows["gallbladder"].metrics["dsc"] == 0.0 and rows["gallbladder"].metrics["nsd"] == 0
    assert rows["spleen"].presence == "FN" and rows["spleen"].metrics["dsc"] == 0.0
    assert rows["spleen"].metrics["hd95"] > 30  # worst case: the volume diagonal
    assert rows["spleen"].fn == 6 * 6 * 6
    no_gallbladder = _rows(gt, gt.copy())["gallbladder"]
    assert no_gallbladder.presence == "TN"
    assert no_gallbladder.metrics["dsc"] == 1.0 and no_gallbladder.metrics["nsd"] == 1.0


def test_threaded_scoring_gives_identical_rows() -> None:
    gt = _volume()
    pred = np.roll(gt, 1, axis=2)
    protocol = get_protocol("flare23")
    one = score_organs("c", gt, pred, (2.0, 1.0, 1.0), IDS, protocol, workers=1)
    two = score_organs("c", gt, pred, (2.0, 1.0, 1.0), IDS, protocol, workers=3)
    assert [(r.organ, r.metrics, r.tp, r.presence) for r in one] == [
        (r.organ, r.metrics, r.tp, r.presence) for r in two]


def test_voxel_counts_and_dice() -> None:
    gt = _volume()
    pred = gt.copy()
    pred[4:16, 4:14, 4:6] = 0  # remove 2 of 10 liver columns
    liver = _rows(gt, pred)["liver"]
    assert (liver.tp, liver.fp, liver.fn) == (12 * 10 * 8, 0, 12 * 10 * 2)
    assert liver.metrics["dsc"] == pytest.approx(2 * 960 / (1200 + 960))


def test_flare23_scores_tubes_on_ground_truth_slices_only() -> None:
    gt = _volume()
    gt[12:, gt.shape[1] - 6:, :] = 0  # aorta annotated on slices 2-11 only
    pred = gt.copy()
    pred[2:18, 18:21, 5:8] = 5  # predicted over its full length
    assert _rows(gt, pred, "flare22")["aorta"].metrics["dsc"] < 0.9
    assert _rows(gt, pred, "flare23")["aorta"].metrics["dsc"] == 1.0


def test_flare23_zeroes_nsd_below_dsc_0_2() -> None:
    gt = _volume()
    pred = gt.copy()
    pred[pred == 3] = 0
    pred[6:8, 16:22, 16:17] = 3  # a sliver of spleen: DSC < 0.2 but some surface within 3 mm
    flare22 = _rows(gt, pred, "flare22")["spleen"].metrics
    flare23 = _rows(gt, pred, "flare23")["spleen"].metrics
    assert flare22["dsc"] < 0.2 and flare22["nsd"] > 0
    assert flare23["nsd"] == 0.0


def test_missing_prediction_is_worst_case() -> None:
    rows = {r.organ: r for r in worst_case_rows("c", _volume(), (1, 1, 1), IDS,
                                                get_protocol("flare22"), "missing_prediction")}
    assert rows["liver"].metrics["dsc"] == 0 and rows["liver"].presence == "FN"
    assert rows["gallbladder"].presence == "FP"


def test_label_mapping_by_organ_name() -> None:
    flare = _volume()
    totalseg = np.zeros_like(flare)
    totalseg[flare == 1] = 5  # liver in TotalSegmentator numbering
    totalseg[flare == 3] = 1  # spleen
    totalseg[flare == 5] = 52  # aorta
    totalseg[0, 0, 0] = 90  # a structure outside the abdominal set: ignored
    ids = evaluation_ids(["liver", "spleen", "aorta"])
    mapped = to_evaluation_labels(totalseg, PRESETS["totalsegmentator"], ids, "ts")
    expected = flare.copy()
    expected[expected == 9] = 0
    np.testing.assert_array_equal(mapped, expected)


def test_unknown_label_value_is_an_error() -> None:
    labels = _volume()
    labels[0, 0, 0] = 77
    with pytest.raises(EvaluationError, match=r"unknown label value.*77"):
        to_evaluation_labels(labels, PRESETS["flare"], dict(FLARE_LABELS), "pred.nii.gz")


def test_chaos_mr_grey_value_ranges() -> None:
    grey = np.array([[[0, 63, 60, 126, 189, 252]]], np.uint8)
    ids = evaluation_ids(["liver", "kidney_right", "spleen", "kidney_left"])
    mapped = to_evaluation_labels(grey, PRESETS["chaos_mr"], ids, "mr")
    assert mapped.ravel().tolist() == [0, 1, 1, 2, 13, 3]
    with pytest.raises(EvaluationError, match="unknown label value"):
        to_evaluation_labels(np.full((1, 1, 1), 100, np.uint8), PRESETS["chaos_mr"], ids, "mr")


def test_label_json_forms(tmp_path) -> None:
    msd = labelset_from_mapping({"labels": {"0": "background", "1": "Liver", "2": "IVC"}}, "x")
    assert msd.ranges == {"liver": (1, 1), "inferior_vena_cava": (2, 2)}
    path = tmp_path / "labels.json"
    path.write_text('{"liver": 7, "spleen": [10, 12]}')
    assert load_labelset(str(path)).ranges == {"liver": (7, 7), "spleen": (10, 12)}
    path.write_text('{"liver": 1, "spleen": 1}')
    with pytest.raises(EvaluationError, match="share label values"):
        load_labelset(str(path))
    with pytest.raises(EvaluationError, match="unknown label set"):
        load_labelset("nnunet_magic")


def test_presence_summary_ratios() -> None:
    stats = presence_summary(["TP"] * 8 + ["FN"] * 2 + ["TN"] * 3 + ["FP"])
    assert stats["fpr"] == pytest.approx(1 / 4)
    assert stats["f1"] == pytest.approx(16 / (16 + 1 + 2))
    assert stats["balanced_accuracy"] == pytest.approx((0.8 + 0.75) / 2)
    assert presence_summary(["TP"])["fpr"] is None


def test_baseline_comparison_names_regressions() -> None:
    def summary(dsc: float, hd95: float) -> dict:
        block = {"metrics": {"dsc": {"mean": dsc}, "hd95": {"mean": hd95}},
                 "presence": {"fpr": 0.0}}
        return {"organs": {"liver": block}, "overall": block}

    assert compare_to_baseline(summary(0.90, 3.0), summary(0.903, 3.0), 0.005) == []
    found = compare_to_baseline(summary(0.89, 3.1), summary(0.90, 3.0), 0.005)
    assert {(r.scope, r.metric) for r in found} == {
        ("liver", "dsc"), ("liver", "hd95"), ("overall", "dsc"), ("overall", "hd95")}
