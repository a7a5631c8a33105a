"""The committed plain reference model is a genuine nnU-Net v2 folder: nnU-Net predicts with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
predict_module = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")

REPO = Path(__file__).resolve().parents[1]
FOLDER = (REPO / "reference_models" / "nnunet_results" / "Dataset900_EdgesegPhantomCT"
          / "nnUNetTrainer__nnUNetPlans__3d_fullres")
CHECKPOINT_KEYS = {
    "network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
    "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
}


@pytest.fixture(scope="module")
def folder() -> Path:
    if not (FOLDER / "fold_0" / "checkpoint_final.pth").is_file():
        pytest.skip(f"reference model not trained yet: {FOLDER}")
    return FOLDER


def test_checkpoint_has_nnunet_keys(folder):
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert set(checkpoint) == CHECKPOINT_KEYS
    plans = json.loads((folder / "plans.json").read_text())
    assert checkpoint["init_args"]["plans"] == plans


def test_nnunet_predictor_segments_a_held_out_phantom(folder):
    from edge_seg.synth import generate_phantom

    plans = json.loads((folder / "plans.json").read_text())
    spacing = plans["configurations"]["3d_fullres"]["spacing"]
    phantom = generate_phantom(9100, modality="ct", n_slices=48, spacing_mm=tuple(spacing),
                               shape_yx=(128, 128), z_center_mm=60.0)
    predictor = predict_module.nnUNetPredictor(
        use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    labels = predictor.predict_single_npy_array(
        phantom.image.astype(np.float32)[None], {"spacing": list(spacing)}, None, None, False
    )
    assert labels.shape == phantom.labels.shape
    liver = phantom.labels == 1
    assert liver.sum() > 1000  # the slab covers the liver
    overlap = 2 * (liver & (labels == 1)).sum() / (liver.sum() + (labels == 1).sum())
    assert overlap > 0.5
