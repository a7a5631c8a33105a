"""CHAOS metrics and the CHAOS adapter reproduce the official evaluation on the real case."""

from __future__ import annotations

import numpy as np
import pytest

from evaluator import metrics
from evaluator.adapters.base import load_volume
from evaluator.adapters.chaos import discover
from evaluator.labelsets import PRESETS, evaluation_ids, to_evaluation_labels
from evaluator.protocols import get_protocol
from evaluator.scoring import score_organs


def test_chaos_border_is_six_connected_and_ignores_image_edge() -> None:
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    border = metrics.chaos_border_voxels(mask)
    assert border.sum() == 26 and not border[2, 2, 2]
    full = np.ones((4, 4, 4), bool)
    assert not metrics.chaos_border_voxels(full).any()  # the image edge is not a border


def test_chaos_distances_of_a_shifted_block() -> None:
    gt = np.zeros((10, 10, 10), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = np.roll(gt, 2, axis=2)
    assd, mssd = metrics.chaos_surface_distances(gt, pred, (1.0, 1.0, 0.5))
    assert mssd == pytest.approx(1.0)  # 2 voxels of 0.5 mm
    assert 0 < assd < 1.0
    assert metrics.ravd_percent(gt, pred) == 0.0
    assert metrics.chaos_score("dsc", 0.9) == pytest.approx(50.0)
    assert metrics.chaos_score("mssd", 90.0) == 0.0
    assert metrics.chaos_score("assd", 0.0) == 100.0


def test_official_values_on_real_chaos_ct_case(shared_data) -> None:
    root = shared_data / "chaos_ct_sample"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    (case,) = discover(root, root / "Segmentation")
    gt_volume = load_volume(case.gt)
    pred_volume = load_volume(case.pred)
    # Slice step from ImagePositionPatient (2.0), not SliceThickness (3.2).
    assert gt_volume.spacing_mm == pytest.approx((2.0, 0.7265625, 0.7265625))
    ids = evaluation_ids(["liver"])
    gt = to_evaluation_labels(gt_volume.array, PRESETS["chaos_ct"], ids, "gt")
    pred = to_evaluation_labels(pred_volume.array, PRESETS["chaos_ct"], ids, "pred")
    (row,) = score_organs(case.case_id, gt, pred, gt_volume.spacing_mm, ids,
                          get_protocol("chaos"))
    assert round(row.metrics["dsc"], 3) == 0.978
    assert round(row.metrics["ravd"], 3) == 0.665
    assert round(row.metrics["assd"], 3) == 0.734
    assert round(row.metrics["mssd"], 3) == 14.000
