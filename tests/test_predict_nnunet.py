"""Preprocessing and resampling match nnU-Net v2's own functions (skipped without nnunetv2)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.bundle import Bundle
from edge_seg.io import Volume
from edge_seg.preprocess import preprocess
from edge_seg.resample import resample_image
from edge_seg.window import gaussian_importance, window_starts

resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
normalization = pytest.importorskip(
    "nnunetv2.preprocessing.normalization.default_normalization_schemes"
)
cropping = pytest.importorskip("nnunetv2.preprocessing.cropping.cropping")
sliding = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")


@pytest.mark.parametrize(
    ("shape", "spacing", "target"),
    [
        ((20, 33, 41), (1.0, 1.0, 1.0), (1.3, 0.7, 1.1)),  # 3D cubic
        ((12, 40, 40), (3.5, 0.8, 0.8), (2.5, 1.2, 1.2)),  # anisotropic: z separately
        ((30, 40, 40), (1.0, 1.0, 1.0), (4.0, 1.0, 1.0)),  # anisotropic target
    ],
)
def test_resample_image_matches_nnunet(shape, spacing, target) -> None:
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    new_shape = resampling.compute_new_shape(shape, spacing, target)
    for order in (3, 1):
        expected = resampling.resample_data_or_seg_to_shape(
            data[None],
            new_shape,
            spacing,
            target,
            is_seg=False,
            order=order,
            order_z=0,
            force_separate_z=None,
        )[0]
        got = resample_image(data, new_shape, spacing, target, order=order)
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_preprocess_matches_nnunet_ct_pipeline() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((14, 30, 34), np.int16)  # zero border: nnU-Net crops it away
    image[2:12, 3:27, 4:30] = rng.integers(-1000, 1500, (10, 24, 26))
    spacing, target = (3.0, 0.9, 0.9), (2.0, 1.3, 1.3)
    norm = {"scheme": "ct", "lower": -900.0, "upper": 1200.0, "mean": 80.0, "std": 250.0}
    bundle = Bundle(
        name="t",
        modality="CT",
        channels=["CT"],
        labels={"background": 0, "liver": 1},
        spacing_mm=[2.0, 1.3, 1.3],
        normalization=[norm],
        patch_size=[8, 8, 8],
        files={"fp32": "m.onnx"},
        transpose_forward=[0, 2, 1],
    )
    bundle.spacing_mm = [target[0], target[2], target[1]]  # transposed order, as plans store it
    got, geometry = preprocess(Volume(image, spacing), bundle)
    # nnU-Net: transpose -> crop to non-zero -> CTNormalization -> resample to shape.
    data = image.astype(np.float32)[None].transpose(0, 1, 3, 2)
    spacing_t = [spacing[0], spacing[2], spacing[1]]
    data, _, bbox = cropping.crop_to_nonzero(data)
    properties = {"mean": 80.0, "std": 250.0, "percentile_00_5": -900.0, "percentile_99_5": 1200.0}
    data[0] = normalization.CTNormalization(False, properties).run(data[0])
    new_shape = resampling.compute_new_shape(data.shape[1:], spacing_t, bundle.spacing_mm)
    expected = resampling.resample_data_or_seg_to_shape(
        data,
        new_shape,
        spacing_t,
        bundle.spacing_mm,
        is_seg=False,
        order=3,
        order_z=0,
        force_separate_z=None,
    )
    assert [tuple(b) for b in bbox] == list(geometry.bbox)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_window_matches_nnunet() -> None:
    torch = pytest.importorskip("torch")
    patch = (8, 12, 10)
    expected = sliding.compute_gaussian(patch, 1.0 / 8, 10, dtype=torch.float32, device="cpu")
    np.testing.assert_allclose(gaussian_importance(patch), expected.numpy(), rtol=1e-6)
    for size in [(8, 30, 47), (19, 12, 10), (40, 40, 41)]:
        assert window_starts(size, patch, 0.5) == sliding.compute_steps_for_sliding_window(
            size, patch, 0.5
        )


def test_predictor_agrees_with_nnunet_predictor_on_same_checkpoint(tmp_path) -> None:
    """A genuine (tiny, random) nnU-Net v2 results folder, exported to a bundle: edgeseg's
    labels match nnU-Net's own predictor (CPU, no TTA) on an image that needs resampling."""
    torch = pytest.importorskip("torch")
    predict_module = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from export_fixtures import make_results_folder, write_ct_image

    from edge_seg.io import read_volume
    from edge_seg.predict import PredictOptions, Predictor
    from export.bundle_writer import export_nnunet

    results = make_results_folder(tmp_path / "nnUNet_results", seed=5)
    export_nnunet(results, tmp_path / "bundle")
    scan = write_ct_image(
        tmp_path / "case_0000.nii.gz", seed=2, shape=(23, 45, 51), spacing_zyx=(3.1, 1.7, 1.6)
    )
    volume = read_volume(scan)

    nnunet = predict_module.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        device=torch.device("cpu"),
        perform_everything_on_device=False,
        verbose=False,
        allow_tqdm=False,
    )
    nnunet.initialize_from_trained_model_folder(str(results), use_folds=(0,))
    expected = nnunet.predict_single_npy_array(
        volume.array[None].astype(np.float32),
        {"spacing": list(volume.spacing_mm)},
        None,
        None,
        False,
    )
    options = PredictOptions(backend="onnxruntime", precision="fp32", crop="none", lcc=False,
                             min_component_ml=0.0)
    got = Predictor(tmp_path / "bundle", options).predict(volume).labels
    assert got.shape == expected.shape
    assert (got == expected).mean() > 0.995
    for value in np.unique(expected):
        a, b = got == value, expected == value
        if b.sum() >= 100:  # a random network leaves a few near-tie voxels in rare classes
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
