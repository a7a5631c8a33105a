"""The runtime pipeline on small real bundles (genuine ONNX / OpenVINO / ORT sessions)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import LABELS, make_bundle, make_phantom

from edge_seg.backends.base import choose_model
from edge_seg.bundle import load_bundle
from edge_seg.crop import (
    coarse_foreground,
    first_pass_starts,
    main_organ_cluster,
    organ_box,
    parse_crop,
    plan_tiles,
)
from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from edge_seg.postprocess import (
    keep_largest_component,
    min_component_voxels,
    remove_small_components,
)
from edge_seg.predict import PredictOptions, Predictor
from edge_seg.resample import logits_to_labels
from edge_seg.window import (
    gaussian_importance,
    one_at_a_time,
    padding_for,
    sliding_window,
    window_starts,
)

SPACING = (2.5, 1.2, 1.2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("plain"), int8=True, validated=("fp32", "int8"))


@pytest.fixture(scope="module")
def halos_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("halos"), presence_input=True, presence_output=True)


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, np.ndarray]:
    image, labels = make_phantom(spacing_mm=SPACING)
    return Volume(image, SPACING, path=Path("phantom.nii.gz")), labels


# -- pieces against straightforward references ---------------------------------------------


def test_window_starts_cover_image_with_requested_overlap() -> None:
    assert window_starts([110], [64], 0.5) == [[0, 23, 46]]
    assert window_starts([64, 100], [64, 50], 0.5) == [[0], [0, 25, 50]]
    assert window_starts([64, 100], [64, 50], 1.0) == [[0], [0, 50]]


def test_gaussian_importance_peaks_at_centre_without_zeros() -> None:
    weights = gaussian_importance((8, 16, 16))
    assert weights.max() == pytest.approx(10.0)
    assert weights[4, 8, 8] == weights.max()
    assert weights.min() > 0


def test_streamed_sliding_window_equals_whole_volume_average() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 13, 21, 18)).astype(np.float32)
    patch, classes = (6, 8, 10), 3
    mixing = rng.normal(size=(classes, 1)).astype(np.float32)

    def run(tile: np.ndarray) -> np.ndarray:  # depends on the patch position through the data
        return (mixing[:, :, None, None] * tile[0]).reshape(classes, *patch) + tile[0].mean()

    slabs = list(sliding_window(image, patch, 0.5, one_at_a_time(run), classes))
    streamed = np.concatenate([s for _, s in slabs], axis=1)
    assert [z for z, _ in slabs] == sorted(z for z, _ in slabs)
    # Reference: one accumulator for the whole volume.
    weights = gaussian_importance(patch)
    total = np.zeros((classes, *image.shape[1:]), np.float32)
    norm = np.zeros(image.shape[1:], np.float32)
    for zs in window_starts(image.shape[1:], patch, 0.5)[0]:
        for ys in window_starts(image.shape[1:], patch, 0.5)[1]:
            for xs in window_starts(image.shape[1:], patch, 0.5)[2]:
                region = (slice(zs, zs + 6), slice(ys, ys + 8), slice(xs, xs + 10))
                total[(slice(None), *region)] += run(image[(slice(None), *region)][None]) * weights
                norm[region] += weights
    np.testing.assert_allclose(streamed, total / norm, rtol=1e-5, atol=1e-5)


def test_logits_to_labels_equals_full_resampling_then_argmax() -> None:
    rng = np.random.default_rng(1)
    net_shape, out_shape = (9, 14, 16), (23, 30, 35)
    logits = ndimage.gaussian_filter(rng.normal(size=(4, *net_shape)), (0, 1, 1, 1)).astype(
        np.float32
    )
    # Reference: every class resampled to the output grid (linear, edge-clamped), then argmax.
    zoom = [o / n for o, n in zip(out_shape, net_shape, strict=True)]
    full = np.stack(
        [ndimage.zoom(c, zoom, order=1, mode="nearest", grid_mode=True) for c in logits]
    )
    slabs = ((z, logits[:, z : z + 2]) for z in range(0, net_shape[0], 2))
    labels = logits_to_labels(slabs, net_shape, out_shape, (1, 1, 1), (0.4, 0.47, 0.46), range(4))
    np.testing.assert_array_equal(labels, full.argmax(0))


def test_logits_to_labels_over_a_box_is_background_wherever_interpolation_leaves_it() -> None:
    rng = np.random.default_rng(5)
    net_shape, out_shape = (12, 14, 16), (30, 33, 37)
    box = (slice(2, 9), slice(3, 12), slice(0, 11))
    inner = ndimage.gaussian_filter(rng.normal(size=(4, 7, 9, 11)), (0, 1, 1, 1))
    inner = inner.astype(np.float32)
    # Reference: the box embedded in a grid whose outside no organ can win anywhere its weight
    # is not zero, then resampled in full.
    full = np.full((4, *net_shape), -1e30, np.float32)
    full[0] = 0.0
    full[(slice(None), *box)] = inner
    for spacing in [(0.4, 0.47, 0.46), (1.6, 0.47, 0.46)]:  # the second: nearest along z
        whole = ((z, full[:, z : z + 3]) for z in range(0, net_shape[0], 3))
        expected = logits_to_labels(whole, net_shape, out_shape, (1, 1, 1), spacing, range(4))
        slabs = ((z, inner[:, z : z + 2]) for z in range(0, 7, 2))
        labels = logits_to_labels(
            slabs, net_shape, out_shape, (1, 1, 1), spacing, range(4), box=box
        )
        np.testing.assert_array_equal(labels, expected)
        assert labels.any() and not labels[0].any()


def test_coarse_foreground_is_argmax_not_background_including_ties() -> None:
    rng = np.random.default_rng(4)
    image = rng.standard_normal((1, 20, 30, 30)).astype(np.float32)
    tiles: list[np.ndarray] = []

    def run_patch(tile: np.ndarray) -> np.ndarray:
        # Logits with ties between background and an organ on a coarse grid of values.
        logits = np.round(rng.standard_normal((4, *tile.shape[2:])), 0).astype(np.float32)
        tiles.append(logits)
        return logits

    first = coarse_foreground(image, (8, 16, 16), one_at_a_time(run_patch))
    found = first.found
    assert found.shape == image.shape[1:]
    expected = np.zeros_like(found)
    # Rebuild the same map with a plain argmax from the logits the patches returned.
    starts_z, starts_y, starts_x = first.starts
    assert first.starts == first_pass_starts((20, 30, 30), (8, 16, 16), 0.5)
    assert len(starts_y) == 2  # 30 > 1.5 patches: no single centred in-plane patch
    tile_iter = iter(tiles)
    for zs in starts_z:
        for ys in starts_y:
            for xs in starts_x:
                region = (slice(zs, zs + 8), slice(ys, ys + 16), slice(xs, xs + 16))
                expected[region] |= np.argmax(next(tile_iter), axis=0) != 0
    assert next(tile_iter, None) is None
    np.testing.assert_array_equal(found, expected)
    assert first.tiles == {}  # kept only when asked for


def test_coarse_foreground_keeps_copies_of_the_tiles_that_found_an_organ() -> None:
    """Results may be one reused engine buffer; kept tiles must not change with it, and a
    tile where nothing beat background is not kept (the main pass would run it again)."""
    image = np.zeros((1, 32, 16, 16), np.float32)
    buffer = np.zeros((3, 8, 16, 16), np.float32)  # one buffer, overwritten for every tile
    organ_at = {8, 24}  # z starts of the tiles that see an organ

    def run_patches(tiles):
        for tile_index, _ in enumerate(tiles):
            buffer[...] = 0.0
            buffer[0] = 1.0  # background wins ...
            if tile_index * 8 in organ_at:
                buffer[2, 4] = 2.0  # ... except on one slice of an organ
            buffer[1] = -1.0 - tile_index  # a mark that tells the tiles apart, never an organ
            yield buffer

    first = coarse_foreground(image, (8, 16, 16), run_patches, step=1.0, keep_tiles=True)
    assert sorted(at[0] for at in first.tiles) == sorted(organ_at)
    for (zs, _, _), logits in first.tiles.items():
        assert logits is not buffer
        assert np.all(logits[1] == -1.0 - zs // 8) and logits[2, 4].max() == 2.0
    assert first.found.sum() == 2 * 16 * 16


@pytest.mark.parametrize("shape", [(3, 8, 16, 16), (14, 8, 64, 64)])  # 24 kB and 1.8 MB
def test_prefaulted_copy_is_an_independent_writable_copy(shape: tuple[int, ...]) -> None:
    from edge_seg.memory import prefaulted_copy

    source = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    copy = prefaulted_copy(source)
    expected = source.copy()
    source[...] = 0.0  # the engine reuses its buffer for the next tile
    np.testing.assert_array_equal(copy, expected)
    assert copy.dtype == np.float32 and copy.shape == shape and copy.flags.writeable
    copy[0] += 1.0
    assert np.all(source == 0.0)


@pytest.mark.parametrize("step", [0.25, 0.33, 0.5, 0.7])
@pytest.mark.parametrize("size", [16, 23, 24, 30, 47, 64, 100, 137])
def test_first_pass_tiles_cover_the_image_and_belong_to_the_full_grid(
    size: int, step: float
) -> None:
    patch = 16
    full = window_starts([size], [patch], step)[0]
    first = first_pass_starts([size, size, size], [patch] * 3, step)
    covered = np.zeros(size, bool)
    for start in first[0]:
        covered[start : start + patch] = True
    assert covered.all()
    if step <= 0.5:  # reusable by the main pass
        assert set(first[0]) <= set(full)
    # As many patches as a step-1 grid where 1 / step is a whole number, else one more at most.
    extra = 0 if float(1 / step).is_integer() else 1
    assert len(first[0]) <= len(window_starts([size], [patch], 1.0)[0]) + extra
    if size <= 1.5 * patch:  # in-plane: one centred patch
        assert first[1] == [(size - patch) // 2]


def _mixing_runner(classes: int, patch: tuple[int, ...], seed: int = 0):
    mixing = np.random.default_rng(seed).normal(size=(classes, 1)).astype(np.float32)
    calls: list[tuple[float, ...]] = []

    def run(tile: np.ndarray) -> np.ndarray:  # depends on the patch position through the data
        calls.append(tuple(tile[0, 0, 0, 0, :2]))
        return (mixing[:, :, None, None] * tile[0]).reshape(classes, *patch) + tile[0].mean()

    return run, calls


def test_full_grid_tiles_over_a_box_give_the_uncropped_logits_there() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(1, 40, 30, 26)).astype(np.float32)
    patch, classes = (8, 12, 10), 3
    run, calls = _mixing_runner(classes, patch)
    whole = np.concatenate(
        [s for _, s in sliding_window(image, patch, 0.5, one_at_a_time(run), classes)], 1
    )
    box = (slice(9, 27), slice(4, 20), slice(3, 11))
    grid = window_starts(image.shape[1:], patch, 0.5)
    starts = [
        [g for g in axis if g < b.stop and g + p > b.start]
        for axis, b, p in zip(grid, box, patch, strict=True)
    ]
    # Logits of some tiles known beforehand, as the localisation pass keeps them.
    known = {}
    for zs in starts[0][::2]:
        at = (zs, starts[1][0], starts[2][0])
        region = tuple(slice(a, a + p) for a, p in zip(at, patch, strict=True))
        known[at] = run(image[(slice(None), *region)][None])
    calls.clear()
    slabs = list(
        sliding_window(
            image,
            patch,
            0.5,
            one_at_a_time(run),
            classes,
            starts=starts,
            box=box,
            precomputed=known,
        )
    )
    assert len(calls) == int(np.prod([len(s) for s in starts])) - len(known)
    assert next(z for z, _ in slabs) == 0
    cropped = np.concatenate([s for _, s in slabs], axis=1)
    np.testing.assert_allclose(cropped, whole[(slice(None), *box)], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uncovered"):
        list(
            sliding_window(
                image, patch, 0.5, one_at_a_time(run), classes, starts=[[16], *starts[1:]], box=box
            )
        )


def test_plan_tiles_covers_any_box_with_no_more_runs_than_a_box_grid() -> None:
    rng = np.random.default_rng(3)
    patch, step = (48, 128, 128), 0.5
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers([60, 100, 100], [400, 300, 300]))
        lo = [int(rng.integers(0, n - 1)) for n in shape]
        box = tuple(
            slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, shape, strict=True)
        )
        pads = padding_for(shape, patch)
        padded = [n + a + b for n, (a, b) in zip(shape, pads, strict=True)]
        first = first_pass_starts(padded, patch, step)
        plan = plan_tiles(box, shape, patch, step, first)
        full = window_starts(padded, patch, step)
        for axis, starts in enumerate(plan.starts):  # every box voxel is in some patch
            b = box[axis]
            lo, hi = b.start + pads[axis][0], b.stop + pads[axis][0]
            if plan.exact_axes[axis]:
                assert starts == [g for g in full[axis] if g < hi and g + patch[axis] > lo]
            covered = np.zeros(padded[axis], bool)
            for s in starts:
                covered[s : s + patch[axis]] = True
            assert covered[lo:hi].all()
        # A grid of the box's own (widened to one patch), no reuse: never cheaper.
        box_grid = 1
        for b, p in zip(box, patch, strict=True):
            box_grid *= len(window_starts([max(b.stop - b.start, p)], [p], step)[0])
        assert plan.runs <= box_grid


def test_keep_largest_component_removes_islands_only() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[8, 8, 8] = 1  # island
    labels[6:9, 1:3, 1:3] = 2
    kept = keep_largest_component(labels.copy())
    assert kept[8, 8, 8] == 0
    assert (kept == 1).sum() == 64 and (kept == 2).sum() == 12


@pytest.mark.parametrize("scale", [1, 6])
def test_keep_largest_component_matches_organ_by_organ(scale: int) -> None:
    # Stray islands all over, of every label, some touching an organ of another label. At
    # scale 6 (1.9M voxels) the labelled box is counted in two slabs that organs straddle.
    rng = np.random.default_rng(3)
    labels = np.zeros((20 * scale, 30 * scale, 30 * scale), np.uint8)
    for value, box in (
        (1, (2, 9, 3, 12, 3, 12)),
        (2, (10, 18, 15, 25, 4, 10)),
        (3, (4, 15, 18, 28, 16, 27)),
    ):
        z0, z1, y0, y1, x0, x1 = (scale * b for b in box)
        labels[z0:z1, y0:y1, x0:x1] = value
    spots = rng.integers(0, labels.size, 300 * scale)
    labels.ravel()[spots] = rng.integers(1, 4, 300 * scale)
    expected = labels.copy()
    for value in (1, 2, 3):
        mask = expected == value
        largest = cc3d.largest_k(mask, k=1, connectivity=26, binary_image=True)
        expected[mask & (largest == 0)] = 0
    np.testing.assert_array_equal(keep_largest_component(labels.copy()), expected)
    only_two = labels.copy()
    keep_largest_component(only_two, values=[2])
    assert (only_two == 1).sum() == (labels == 1).sum()  # label 1 untouched


def _specked_labels() -> np.ndarray:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # 64 voxels
    labels[7:10, 7:10, 7:10] = 1  # a second component of 27
    labels[1:3, 8:10, 8:11] = 2  # 12 voxels: the whole of label 2
    labels[11, 0, 11] = 3  # a one-voxel speck, touching nothing
    return labels


def test_remove_small_components_keeps_every_component_at_or_above_the_size() -> None:
    labels = _specked_labels()
    cleaned = remove_small_components(labels.copy(), min_voxels=12)
    assert (cleaned == 1).sum() == 64 + 27  # both components of 1 stay: no LCC here
    assert (cleaned == 2).sum() == 12  # exactly at the size: kept
    assert (cleaned == 3).sum() == 0
    assert (remove_small_components(labels.copy(), 28) == 1).sum() == 64
    np.testing.assert_array_equal(remove_small_components(labels.copy(), 0), labels)


def test_keep_largest_component_with_a_minimum_drops_an_organ_that_is_all_speck() -> None:
    labels = _specked_labels()
    cleaned = keep_largest_component(labels.copy(), min_voxels=13)
    assert (cleaned == 1).sum() == 64  # the island goes (LCC), the organ stays
    assert not np.isin(cleaned, (2, 3)).any()  # the largest component alone is too small
    only_three = keep_largest_component(labels.copy(), values=[3], min_voxels=2)
    assert (only_three == 1).sum() == 64 + 27 and (only_three == 2).sum() == 12


def test_min_component_voxels_converts_millilitres_at_the_spacing() -> None:
    assert min_component_voxels(0.0, (3.0, 3.0, 3.0)) == 0
    assert min_component_voxels(0.027, (3.0, 3.0, 3.0)) == 1  # one 27 mm3 voxel, not 2
    assert min_component_voxels(0.5, (3.0, 3.0, 3.0)) == 19  # 18.5 voxels round up
    assert min_component_voxels(0.5, (1.0, 0.5, 0.5)) == 2000


# -- the Predictor ---------------------------------------------------------------------------


def test_predict_segments_phantom_in_input_geometry(plain_bundle: Path, phantom) -> None:
    volume, truth = phantom
    prediction = Predictor(plain_bundle, PredictOptions(precision="fp32", crop="none")).predict(
        volume
    )
    assert prediction.labels.dtype == np.uint8
    assert prediction.labels.shape == volume.shape
    assert prediction.precision == "fp32"
    for value in (1, 2, 3):
        assert dice(prediction.labels == value, truth == value) > 0.6
    assert set(prediction.timings) >= {"preprocess", "network", "total"}


def test_backends_agree_and_int8_stays_close(plain_bundle: Path, phantom) -> None:
    volume, _ = phantom
    results = {}
    for backend in ("openvino", "onnxruntime"):
        for precision in ("fp32", "int8"):
            options = PredictOptions(backend=backend, precision=precision, crop="none")
            results[backend, precision] = Predictor(plain_bundle, options).predict(volume).labels
    reference = results["onnxruntime", "fp32"]
    assert (results["openvino", "fp32"] == reference).mean() > 0.999
    for key, labels in results.items():
        for value in (1, 2, 3):
            assert dice(labels == value, reference == value) > 0.9, key


def test_precision_auto_picks_fastest_validated(plain_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(plain_bundle)
    assert choose_model(bundle, "openvino", "auto").file_key == "int8_openvino"
    assert choose_model(bundle, "onnxruntime", "auto").file_key == "int8_onnx"
    # A validated INT8 model the fidelity report timed slower than fp32 is not "fastest".
    bundle.fidelity = {
        "variants": {
            "int8_onnx": {
                "shipped_as": "int8_onnx",
                "passed": True,
                "latency_ratio_int8_vs_fp32": 2.7,
            }
        }
    }
    assert choose_model(bundle, "onnxruntime", "auto").precision == "fp32"
    assert choose_model(bundle, "onnxruntime", "int8").file_key == "int8_onnx"
    assert choose_model(bundle, "openvino", "auto").file_key == "int8_openvino"
    bundle.validated_precisions = ["fp32"]
    assert choose_model(bundle, "openvino", "auto").precision == "fp32"
    with pytest.raises(EdgesegError, match="not available with the onnxruntime"):
        choose_model(bundle, "onnxruntime", "bf16")


def test_auto_crop_keeps_accuracy_middle_crop_loses_organs(plain_bundle: Path) -> None:
    # A long scan with the organs well off-centre, towards the first slices.
    image, truth = make_phantom(shape=(24, 40, 44), spacing_mm=SPACING)
    long_image = np.full((70, 40, 44), -1000, np.int16)
    long_truth = np.zeros((70, 40, 44), np.uint8)
    long_image[2:26], long_truth[2:26] = image, truth
    volume = Volume(long_image, SPACING)
    labels = {}
    for crop in ("none", "auto", "middle:30"):
        options = PredictOptions(precision="fp32", crop=crop)
        labels[crop] = Predictor(plain_bundle, options).predict(volume).labels
    for value in (1, 2, 3):
        full = dice(labels["none"] == value, long_truth == value)
        assert dice(labels["auto"] == value, long_truth == value) == pytest.approx(full, abs=0.02)
    assert (labels["middle:30"][:20] > 0).sum() == 0
    assert dice(labels["middle:30"] > 0, long_truth > 0) < 0.5


def test_organ_box_ignores_small_detections_far_from_the_organs() -> None:
    found = np.zeros((80, 80, 80), bool)
    found[20:40, 20:40, 20:40] = True  # liver-like block
    found[20:30, 20:30, 46:52] = True  # a neighbour 18 mm away: same cluster
    found[75:78, 0:3, 76:79] = True  # 27 voxels in a far corner: a false positive
    kept = main_organ_cluster(found, (3.0, 3.0, 3.0))
    assert kept[20:40, 20:40, 20:40].all() and kept[20:30, 20:30, 46:52].all()
    assert not kept[75:78, 0:3, 76:79].any()
    box = organ_box(found, (3.0, 3.0, 3.0), (16, 16, 16))
    assert box is not None
    margin = 7  # 20 mm at 3 mm
    assert box == (
        slice(20 - margin, 40 + margin),
        slice(20 - margin, 40 + margin),
        slice(20 - margin, 52 + margin),
    )
    # A far detection that is not small (>= 5 % of the main cluster) is an organ: kept.
    found[60:80, 0:10, 70:80] = True
    assert main_organ_cluster(found, (3.0, 3.0, 3.0))[60:80, 0:10, 70:80].all()


def test_auto_crop_drops_stray_detection_far_from_the_organs(plain_bundle: Path) -> None:
    image, truth = make_phantom(shape=(24, 40, 44), spacing_mm=SPACING)
    wide = np.full((24, 120, 120), -1000, np.int16)
    wide_truth = np.zeros(wide.shape, np.uint8)
    wide[:, :40, :44], wide_truth[:, :40, :44] = image, truth
    wide[10:13, 112:116, 112:116] = 300  # a spleen-bright speck in the far corner
    volume = Volume(wide, SPACING)
    labels = {}
    for crop in ("none", "auto"):  # no LCC, no speck removal: either would remove it by itself
        options = PredictOptions(precision="fp32", crop=crop, lcc=False, min_component_ml=0.0)
        labels[crop] = Predictor(plain_bundle, options).predict(volume).labels
    none, auto = labels["none"], labels["auto"]
    assert (none[10:13, 112:116, 112:116] > 0).any()  # crop none labels the speck
    assert not (auto[:, 100:, 100:] > 0).any()
    for value in (1, 2, 3):
        assert dice(auto == value, wide_truth == value) == pytest.approx(
            dice(none == value, wide_truth == value), abs=0.02
        )


def test_predictor_removes_specks_below_the_minimum_volume(plain_bundle: Path) -> None:
    image, _ = make_phantom(shape=(24, 40, 44), spacing_mm=SPACING)
    wide = np.full((24, 120, 120), -1000, np.int16)
    wide[:, :40, :44] = image
    wide[10:13, 112:116, 112:116] = 300  # a spleen-bright speck, 0.17 ml at most
    volume = Volume(wide, SPACING)
    labels = {}
    for min_ml in (0.0, 0.5):  # no LCC, which would remove the speck by itself
        options = PredictOptions(precision="fp32", crop="none", lcc=False, min_component_ml=min_ml)
        labels[min_ml] = Predictor(plain_bundle, options).predict(volume).labels
    assert (labels[0.0][:, 100:, 100:] > 0).any()
    assert not (labels[0.5][:, 100:, 100:] > 0).any()
    # Islands of a few voxels near the organs go too; each organ's body stays.
    expected = remove_small_components(labels[0.0].copy(), min_component_voxels(0.5, SPACING))
    np.testing.assert_array_equal(labels[0.5], expected)
    for value in (1, 2, 3):
        assert (labels[0.5] == value).sum() > 0.95 * (labels[0.0] == value).sum()
    everything = PredictOptions(precision="fp32", crop="none", min_component_ml=1e6)
    assert not Predictor(plain_bundle, everything).predict(volume).labels.any()


def test_absent_organ_is_excluded_before_argmax_without_holes(plain_bundle: Path, phantom) -> None:
    volume, truth = phantom
    options = PredictOptions(precision="fp32", crop="none", absent_organs=("spleen",))
    labels = Predictor(plain_bundle, options).predict(volume).labels
    assert not (labels == LABELS["spleen"]).any()
    # The spleen's voxels go to the next most likely class (kidney, closest intensity).
    inside = ndimage.binary_erosion(truth == LABELS["spleen"], iterations=2)
    assert (labels[inside] == LABELS["kidney_right"]).mean() > 0.9


def test_absent_organ_goes_through_presence_input(halos_bundle: Path, phantom) -> None:
    volume, truth = phantom
    options = PredictOptions(crop="none", absent_organs=("3",))  # label number of spleen
    prediction = Predictor(halos_bundle, options).predict(volume)
    assert not (prediction.labels == LABELS["spleen"]).any()
    assert dice(prediction.labels == 1, truth == 1) > 0.6


def test_presence_prior_values_follow_halos_convention(halos_bundle: Path) -> None:
    options = PredictOptions(absent_organs=("spleen",), present_organs=("liver",))
    predictor = Predictor(halos_bundle, options)
    assert predictor.bundle.presence_input == ["liver", "kidney_right", "spleen"]
    np.testing.assert_array_equal(predictor._prior(), [[1.0, 0.5, 0.0]])
    with pytest.raises(EdgesegError, match="both absent and present"):
        Predictor(halos_bundle, PredictOptions(absent_organs=("liver",), present_organs=("1",)))


def test_absent_organ_outside_presence_vector_is_excluded(tmp_path: Path, phantom) -> None:
    # A presence input that covers the spleen only: an absent liver must still disappear.
    bundle_dir = make_bundle(tmp_path / "partial", presence_input=["spleen"])
    volume, _ = phantom
    options = PredictOptions(crop="none", absent_organs=("liver", "spleen"))
    labels = Predictor(bundle_dir, options).predict(volume).labels
    assert not np.isin(labels, [LABELS["liver"], LABELS["spleen"]]).any()
    assert (labels == LABELS["kidney_right"]).any()


def test_presence_auto_uses_presence_head(halos_bundle: Path) -> None:
    # Liver only: the threshold "network" sees no spleen-bright voxel anywhere.
    image, _truth = make_phantom(spacing_mm=SPACING, organs=("liver",))
    volume = Volume(image, SPACING)
    prediction = Predictor(halos_bundle, PredictOptions(presence="auto")).predict(volume)
    assert prediction.presence is not None
    assert prediction.presence["liver"] > 0.5
    assert prediction.presence["spleen"] < 0.5
    assert not (prediction.labels == LABELS["spleen"]).any()


def test_bad_options_and_bundles_are_one_line_errors(plain_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="unknown organ 'pancreas'; this label set has: liver"):
        Predictor(plain_bundle, PredictOptions(absent_organs=("pancreas",)))
    with pytest.raises(EdgesegError, match="--crop"):
        parse_crop("middle:abc")
    with pytest.raises(EdgesegError, match="--backend"):
        Predictor(plain_bundle, PredictOptions(backend="tensorrt"))
    newer = make_bundle(tmp_path / "newer")
    manifest = json.loads((newer / "edgeseg.json").read_text())
    manifest["format_version"] = 99
    (newer / "edgeseg.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgesegError, match="newer than this edgeseg supports"):
        Predictor(newer)
    broken = make_bundle(tmp_path / "broken")
    (broken / "model.onnx").unlink()
    with pytest.raises(EdgesegError, match="model file for 'fp32' is missing"):
        Predictor(broken)


def test_min_component_volume_must_be_finite(plain_bundle: Path) -> None:
    # inf overflowed converting to voxels (a traceback); NaN and negatives stay refused.
    for value in (float("inf"), float("nan"), -1.0):
        with pytest.raises(EdgesegError, match=r"--min-component-ml: .* is not a volume >= 0"):
            Predictor(plain_bundle, PredictOptions(min_component_ml=value))
    PredictOptions(min_component_ml=0.0).check()


def _validated_only(bundle_dir: Path, folder: Path, precisions: list[str]) -> Path:
    shutil.copytree(bundle_dir, folder)
    manifest = json.loads((folder / "edgeseg.json").read_text())
    manifest["validated_precisions"] = precisions
    (folder / "edgeseg.json").write_text(json.dumps(manifest))
    return folder


def test_unvalidated_int8_request_runs_with_a_note(plain_bundle: Path, tmp_path: Path, phantom):
    volume, _ = phantom
    unvalidated = _validated_only(plain_bundle, tmp_path / "fp32_only", ["fp32"])
    for backend, key in (("openvino", "int8_openvino"), ("onnxruntime", "int8_onnx")):
        options = PredictOptions(backend=backend, precision="int8", crop="none")
        prediction = Predictor(unvalidated, options).predict(volume)
        assert prediction.precision == "int8"
        assert any(
            f"--precision int8: this bundle's {key} model was not validated" in note
            for note in prediction.notes
        ), prediction.notes
        # Validated INT8, or auto (which only picks validated models): nothing to say.
        for bundle, precision in ((plain_bundle, "int8"), (unvalidated, "auto")):
            options = PredictOptions(backend=backend, precision=precision, crop="none")
            assert not Predictor(bundle, options).notes


def test_present_organs_the_model_cannot_take_are_noted(
    plain_bundle: Path, tmp_path: Path
) -> None:
    plain = Predictor(plain_bundle, PredictOptions(present_organs=("liver",)))
    assert plain.notes == [
        "--present liver: this model has no presence input, so --present changes nothing "
        "(every organ is segmented where the model finds it)"
    ]
    partial = make_bundle(tmp_path / "partial", presence_input=["spleen"])
    covered = Predictor(partial, PredictOptions(present_organs=("liver", "spleen")))
    assert covered.notes == [
        "--present liver: the model's presence input covers only spleen; ignored for liver"
    ]
    np.testing.assert_array_equal(covered._prior(), [[1.0]])
    assert not Predictor(partial, PredictOptions(present_organs=("spleen",))).notes


@pytest.mark.parametrize("value", [0, -1024])
def test_a_scan_of_one_intensity_is_segmented_with_a_note(plain_bundle: Path, value: int) -> None:
    volume = Volume(np.full((24, 40, 44), value, np.int16), SPACING, path=Path("blank.nii.gz"))
    prediction = Predictor(plain_bundle, PredictOptions(precision="fp32")).predict(volume)
    assert prediction.labels.shape == volume.shape
    assert (
        f"blank.nii.gz: every voxel has the intensity {value}; there is no contrast to "
        "segment, so any organ in the label map is not real"
    ) in prediction.notes


def test_single_intensity_looks_at_every_slab() -> None:
    from edge_seg.predict import single_intensity

    blank = np.full((30, 8, 8), -1024, np.int16)
    assert single_intensity(blank, slab_voxels=64) == -1024.0
    blank[29, 7, 7] = -1000  # the one different voxel is in the last slab
    assert single_intensity(blank, slab_voxels=64) is None
    assert single_intensity(np.zeros((0, 4, 4))) is None


def test_openvino_compiled_models_are_cached_where_asked(
    plain_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phantom
) -> None:
    from edge_seg.backends.openvino import model_cache_dir

    image, _ = phantom
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(cache))
    assert model_cache_dir() == cache
    first = Predictor(plain_bundle, PredictOptions(precision="fp32")).predict(image).labels
    blobs = {blob.name: blob.stat().st_mtime_ns for blob in cache.iterdir()}
    assert blobs  # the compiled model was stored
    again = Predictor(plain_bundle, PredictOptions(precision="fp32")).predict(image).labels
    np.testing.assert_array_equal(again, first)  # and the cached one segments the same
    # Loaded, not compiled and written anew.
    assert {blob.name: blob.stat().st_mtime_ns for blob in cache.iterdir()} == blobs
    monkeypatch.setenv("EDGESEG_CACHE_DIR", "off")
    assert model_cache_dir() is None
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(blocker / "cache"))
    assert model_cache_dir() is None  # not creatable: no cache, no error


@pytest.mark.parametrize(("n_in", "n_out"), [(40, 13), (13, 40), (7, 2), (64, 64 - 1)])
def test_cubic_matrix_resize_equals_spline_prefilter(n_in: int, n_out: int) -> None:
    from edge_seg.resample import _cubic_along, _spline_along

    data = np.random.default_rng(n_in).normal(size=(n_in, 6, n_in)).astype(np.float32)
    for axis in (0, 2):
        dense = _cubic_along(data, axis, n_out)
        spline = _spline_along(data, axis, n_out)
        np.testing.assert_allclose(dense, spline, atol=2e-6)


def test_gaussian_importance_equals_scipy_filtered_impulse() -> None:
    from scipy.ndimage import gaussian_filter

    for patch in ((5, 12, 9), (48, 128, 128)):
        delta = np.zeros(patch)
        delta[tuple(s // 2 for s in patch)] = 1
        expected = gaussian_filter(delta, [s / 8 for s in patch], 0, mode="constant", cval=0)
        expected = expected / expected.max() * 10
        expected[expected == 0] = expected[expected > 0].min()
        np.testing.assert_allclose(gaussian_importance(patch), expected, rtol=1e-6)


def test_dilate_box_equals_scipy_binary_dilation() -> None:
    from scipy.ndimage import binary_dilation

    from edge_seg.crop import dilate_box

    mask = np.random.default_rng(5).random((11, 9, 14)) > 0.97
    for radius in ((1, 1, 1), (2, 0, 3), (0, 0, 0)):
        structure = np.ones([2 * r + 1 for r in radius], bool)
        np.testing.assert_array_equal(
            dilate_box(mask, radius), binary_dilation(mask, structure=structure)
        )


def test_predict_path_does_not_import_scipy() -> None:
    """SciPy's ndimage takes about 0.4 s to import: one scan's start-up must not pay it."""
    import subprocess
    import sys

    code = (
        "import sys, edge_seg.predict, edge_seg.cli, edge_seg.backends.openvino\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_openvino_session_leaves_the_conversion_api_unloaded_until_used(
    plain_bundle: Path,
) -> None:
    """Opening a session skips openvino.tools.ovc (0.18 s of start-up with its telemetry);
    openvino.convert_model still works afterwards in the same process."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edge_seg.predict import Predictor\n"
        "from edge_seg.options import PredictOptions\n"
        f"Predictor({str(plain_bundle)!r}, PredictOptions(precision='fp32', threads=1))\n"
        "print('openvino.tools.ovc' in sys.modules)\n"
        "import openvino\n"
        f"model = openvino.convert_model({str(plain_bundle / 'model.onnx')!r})\n"
        "print('openvino.tools.ovc' in sys.modules, len(model.inputs))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "1"]


def test_nonzero_bbox_equals_brute_force() -> None:
    from edge_seg.preprocess import nonzero_bbox

    rng = np.random.default_rng(8)
    for trial in range(30):
        image = np.zeros((9, 10, 11), np.int16)
        lo = rng.integers(0, 3, 3) * (trial % 3 != 0)  # a third touch every face
        hi = np.array(image.shape) - rng.integers(0, 3, 3) * (trial % 3 != 0)
        block = image[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        block[...] = rng.integers(-3, 3, block.shape) * (rng.random(block.shape) < 0.3)
        other = np.zeros_like(image)
        other[0, 0, 0] = trial % 2  # a second channel may widen the box to the corner
        for channels in ([image], [image, other]):
            nonzero = np.any([c != 0 for c in channels], axis=0)
            want = []
            for axis in range(3):
                hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
                full = (0, image.shape[axis])
                want.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else full)
            assert nonzero_bbox(channels) == tuple(want)
