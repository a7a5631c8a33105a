"""NSD and HD95 agree with DeepMind's surface-distance on random anisotropic masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from evaluator import metrics
from evaluator.surfel_table import surfel_area_table


@pytest.fixture(scope="module")
def deepmind():
    # surface-distance 0.1 uses np.Inf / np.NaN, removed in NumPy 2: restore the aliases here
    # (test-only shim; site-packages stays untouched).
    for alias, value in (("Inf", np.inf), ("NaN", np.nan)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    return pytest.importorskip("surface_distance")


def _random_blob(rng: np.random.Generator, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 2.5))
    return noise > np.quantile(noise, 1.0 - fill)


def _cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float], str]]:
    rng = np.random.default_rng(20240611)
    cases = []
    for i in range(10):
        shape = tuple(int(v) for v in rng.integers(12, 30, size=3))
        spacing = tuple(float(v) for v in rng.uniform(0.4, 3.5, size=3))
        gt = _random_blob(rng, shape, rng.uniform(0.05, 0.4))
        pred = gt.copy()
        if i % 2:
            pred = ndimage.binary_dilation(pred, iterations=int(rng.integers(1, 3)))
        pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 3)))
        pred ^= rng.random(shape) < 0.02
        cases.append((gt, pred, spacing, f"random-{i}"))
    # Objects touching every face of the volume.
    shape = (15, 18, 21)
    gt = np.zeros(shape, bool)
    gt[:, :9, :] = True
    pred = np.zeros(shape, bool)
    pred[:8, :, 4:] = True
    cases.append((gt, pred, (2.5, 0.7, 1.3), "touching-border"))
    # Tiny objects: single voxels and a two-voxel prediction far away.
    gt = np.zeros((9, 11, 13), bool)
    gt[4, 5, 6] = True
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = pred[0, 0, 1] = True
    cases.append((gt, pred, (3.0, 0.8, 0.8), "tiny"))
    full = np.ones((6, 7, 8), bool)
    cases.append((full, full.copy(), (1.5, 1.0, 0.6), "whole-volume"))
    return cases


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CASES = _cases()


def test_surfel_areas_match_deepmind_table(deepmind) -> None:
    from surface_distance import lookup_tables

    rng = np.random.default_rng(3)
    for _ in range(10):
        spacing = tuple(float(v) for v in rng.uniform(0.2, 5.0, 3))
        reference = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(surfel_area_table(spacing), reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("gt", "pred", "spacing", "name"), CASES, ids=[c[3] for c in CASES])
def test_nsd_and_hd95_match_surface_distance(deepmind, gt, pred, spacing, name) -> None:
    reference = deepmind.compute_surface_distances(gt, pred, spacing)
    ours = metrics.surface_distances(gt, pred, spacing)
    for tolerance in (0.0, 1.0, 2.0, 3.0, 5.0):
        expected = deepmind.compute_surface_dice_at_tolerance(reference, tolerance)
        assert metrics.normalised_surface_dice(ours, tolerance) == pytest.approx(
            expected, abs=1e-6
        ), (name, tolerance)
    for percent in (95.0, 100.0, 50.0):
        expected = deepmind.compute_robust_hausdorff(reference, percent)
        assert metrics.robust_hausdorff(ours, percent) == pytest.approx(expected, abs=1e-6)
    expected_avg = deepmind.compute_average_surface_distance(reference)
    np.testing.assert_allclose(metrics.average_surface_distance(ours), expected_avg, atol=1e-6)
    # Same surfels: the total areas agree too.
    assert ours.surfel_areas_gt.sum() == pytest.approx(reference["surfel_areas_gt"].sum())


def test_empty_prediction_gives_inf_hd_and_zero_nsd() -> None:
    gt = np.zeros((5, 5, 5), bool)
    gt[2, 2, 2] = True
    distances = metrics.surface_distances(gt, np.zeros_like(gt), (1.0, 1.0, 1.0))
    assert metrics.normalised_surface_dice(distances, 2.0) == 0.0
    assert metrics.robust_hausdorff(distances) == float("inf")
    both_empty = metrics.surface_distances(np.zeros_like(gt), np.zeros_like(gt), (1, 1, 1))
    assert np.isnan(metrics.normalised_surface_dice(both_empty, 2.0))


def test_shifted_cube_hd_is_the_shift() -> None:
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    pred = np.roll(gt, 3, axis=0)
    distances = metrics.surface_distances(gt, pred, (2.0, 1.0, 1.0))
    assert metrics.robust_hausdorff(distances, 100.0) == pytest.approx(6.0)
    assert metrics.normalised_surface_dice(distances, 6.0) == pytest.approx(1.0)
    assert metrics.normalised_surface_dice(distances, 5.9) < 1.0
