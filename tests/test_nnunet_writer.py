"""The nnU-Net results folder we write must load and run in nnU-Net v2's own predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from export.networks import build_plain_unet, nnunet_arch_kwargs, plain_unet_topology  # noqa: E402
from export.nnunet_writer import (  # noqa: E402
    NnunetModelDescription,
    ct_normalize,
    foreground_intensity_properties,
    write_nnunet_results_folder,
)

CHECKPOINT_KEYS = {
    "network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
    "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes",
}
LABELS = {"background": 0, "liver": 1, "kidney_right": 2}
SPACING = (3.0, 2.0, 2.0)
PATCH = (16, 32, 32)


def _tiny_model(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    strides, kernels, patch = plain_unet_topology(SPACING, PATCH, max_stages=3)
    architecture = nnunet_arch_kwargs(strides, kernels, base_features=4, max_features=16)
    network = build_plain_unet(architecture, input_channels=1, num_classes=len(LABELS))
    rng = np.random.default_rng(seed)
    image = rng.normal(40.0, 30.0, size=PATCH).astype(np.float32)
    label = np.zeros(PATCH, np.uint8)
    label[4:10, 8:20, 8:20] = 1
    props = foreground_intensity_properties([image], [label])
    model = NnunetModelDescription(
        dataset_id=901, dataset_name="TinyTest", labels=LABELS, architecture=architecture,
        spacing_mm=SPACING, patch_size=patch, intensity_properties=[props],
        training_spacings=[SPACING], training_shapes=[PATCH],
    )
    folder = write_nnunet_results_folder(tmp_path / "results", model, network.state_dict())
    return network, model, folder, image, props


def test_folder_layout_and_checkpoint_keys(tmp_path):
    _, model, folder, _, props = _tiny_model(tmp_path)
    assert folder == (tmp_path / "results" / "Dataset901_TinyTest"
                      / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json",
                 "fold_0/checkpoint_final.pth"):
        assert (folder / name).is_file(), name
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert set(checkpoint) == CHECKPOINT_KEYS
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert checkpoint["init_args"]["configuration"] == "3d_fullres"
    plans = json.loads((folder / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["network_class_name"].endswith("PlainConvUNet")
    assert config["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"] == props
    # A second write without overwrite is refused; with overwrite it replaces the folder.
    with pytest.raises(FileExistsError):
        write_nnunet_results_folder(tmp_path / "results", model, {})
    assert not list(folder.parent.glob("*.new"))


def test_nnunet_predictor_loads_and_matches_network(tmp_path):
    """nnU-Net's own predictor loads the folder and predicts what the network predicts."""
    predict_module = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    network, _, folder, image, props = _tiny_model(tmp_path, seed=3)

    predictor = predict_module.nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
        perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
        verbose_preprocessing=False, allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    # The image is already at the target spacing and exactly one patch, so nnU-Net neither
    # resamples nor tiles: its answer must equal our network's argmax on CT-normalised input.
    properties = {"spacing": list(SPACING)}
    labels, probabilities = predictor.predict_single_npy_array(
        image[None], properties, None, None, True
    )

    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(ct_normalize(image, props))[None, None])
    expected = logits[0].argmax(0).numpy()
    assert labels.shape == image.shape
    # nnU-Net accumulates window logits in float16 and weights them with a Gaussian that is
    # tiny at the patch border, so agreement is near-exact inside and slightly lower at edges.
    softmax = torch.softmax(logits[0], 0).numpy()
    assert np.abs(probabilities - softmax).mean() < 0.01
    inner = (slice(4, -4), slice(8, -8), slice(8, -8))
    assert (labels[inner] == expected[inner]).mean() > 0.995
    assert (labels == expected).mean() > 0.98
    assert len(np.unique(expected)) > 1  # a random net that predicts one class tests little
