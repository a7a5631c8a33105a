"""Write a genuine nnU-Net v2 results folder for a network trained outside nnU-Net.

The folder is laid out and filled exactly as ``nnUNetv2_train`` leaves it, so nnU-Net v2's own
tools (``nnUNetv2_predict``, ``nnUNetPredictor.initialize_from_trained_model_folder``) load it
unchanged::

    <results>/Dataset<ID>_<Name>/nnUNetTrainer__nnUNetPlans__3d_fullres/
        dataset.json                 channel names, labels, numTraining, file ending
        plans.json                   nnU-Net v2 plans (3d_fullres configuration only)
        dataset_fingerprint.json     spacings, shapes, foreground intensity statistics
        fold_0/checkpoint_final.pth  the checkpoint dictionary nnUNetTrainer.save_checkpoint writes

The plans describe the default nnU-Net preprocessing (``DefaultPreprocessor``: crop to
non-zero, resample with ``resample_data_or_seg_to_shape``, ``CTNormalization`` with the
training foreground statistics), so whoever trains the network must feed it data preprocessed
the same way (see :func:`ct_normalize`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluator.atomic import atomic_dir, atomic_path

TRAINER_NAME = "nnUNetTrainer"
PLANS_NAME = "nnUNetPlans"
CONFIGURATION = "3d_fullres"

#: Foreground voxels nnU-Net's fingerprint extractor samples per case (and its seed).
FOREGROUND_SAMPLES_PER_CASE = 10000
FOREGROUND_SAMPLE_SEED = 1234


def trainer_folder_name(configuration: str = CONFIGURATION) -> str:
    """``nnUNetTrainer__nnUNetPlans__3d_fullres``: trainer, plans and configuration names."""
    return f"{TRAINER_NAME}__{PLANS_NAME}__{configuration}"


def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    """``Dataset<ID>_<Name>`` with the three-digit id nnU-Net requires."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{dataset_name}"


def foreground_intensity_properties(
    images: Iterable[np.ndarray], labels: Iterable[np.ndarray]
) -> dict[str, float]:
    """Foreground intensity statistics of one channel, computed the way nnU-Net does.

    nnU-Net's fingerprint extractor draws up to 10,000 labelled (non-background) voxels per
    training case with a fixed seed, pools them and records mean, median, std, min, max and
    the 0.5th/99.5th percentiles; ``CTNormalization`` later clips to the percentiles and
    z-scores with mean and std.
    """
    rng = np.random.RandomState(FOREGROUND_SAMPLE_SEED)
    pooled: list[np.ndarray] = []
    for image, label in zip(images, labels, strict=True):
        values = image[label > 0]
        if values.size > FOREGROUND_SAMPLES_PER_CASE:
            values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=True)
        pooled.append(values.astype(np.float64))
    if not pooled or sum(v.size for v in pooled) == 0:
        raise ValueError("no labelled foreground voxels to compute intensity statistics from")
    voxels = np.concatenate(pooled)
    p005, median, p995 = np.percentile(voxels, (0.5, 50.0, 99.5))
    return {
        "max": float(voxels.max()),
        "mean": float(voxels.mean()),
        "median": float(median),
        "min": float(voxels.min()),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
        "std": float(voxels.std()),
    }


def ct_normalize(image: np.ndarray, properties: dict[str, float]) -> np.ndarray:
    """nnU-Net's ``CTNormalization``: clip to the foreground percentiles, z-score (float32)."""
    out = np.clip(
        image.astype(np.float32), properties["percentile_00_5"], properties["percentile_99_5"]
    )
    out -= np.float32(properties["mean"])
    out /= np.float32(max(properties["std"], 1e-8))
    return out


@dataclass
class NnunetModelDescription:
    """Everything nnU-Net's plans and dataset.json need to know about a trained 3d_fullres model.

    ``spacing_mm``, ``patch_size`` and the fingerprint shapes are in nnU-Net's (transposed)
    axis order, which is NumPy/SimpleITK z, y, x with the identity transpose used here.
    """

    dataset_id: int
    dataset_name: str
    labels: dict[str, int]
    architecture: dict[str, Any]
    spacing_mm: Sequence[float]
    patch_size: Sequence[int]
    intensity_properties: list[dict[str, float]]
    training_spacings: list[Sequence[float]]
    training_shapes: list[Sequence[int]]
    channel_names: dict[str, str] = field(default_factory=lambda: {"0": "CT"})
    normalization_schemes: list[str] = field(default_factory=lambda: ["CTNormalization"])
    batch_size: int = 2
    file_ending: str = ".nii.gz"
    mirror_axes: tuple[int, ...] | None = (0, 1, 2)
    description: str = ""

    def dataset_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "channel_names": dict(self.channel_names),
            "labels": dict(sorted(self.labels.items(), key=lambda kv: kv[1])),
            "numTraining": len(self.training_shapes),
            "file_ending": self.file_ending,
        }
        if self.description:
            data["description"] = self.description
        return data

    def fingerprint_json(self) -> dict[str, Any]:
        return {
            "foreground_intensity_properties_per_channel": {
                str(i): props for i, props in enumerate(self.intensity_properties)
            },
            "median_relative_size_after_cropping": 1.0,
            "shapes_after_crop": [[int(s) for s in shape] for shape in self.training_shapes],
            "spacings": [[float(s) for s in sp] for sp in self.training_spacings],
        }

    def plans_json(self) -> dict[str, Any]:
        median_spacing = [float(s) for s in np.median(np.array(self.training_spacings), 0)]
        median_shape = [round(float(s)) for s in np.median(np.array(self.training_shapes), 0)]
        # Shape of the median case once resampled to the target spacing (what nnU-Net records).
        resampled_shape = [
            round(shape * sp / target)
            for shape, sp, target in zip(median_shape, median_spacing, self.spacing_mm, strict=True)
        ]
        n_channels = len(self.channel_names)
        configuration = {
            "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": int(self.batch_size),
            "patch_size": [int(p) for p in self.patch_size],
            "median_image_size_in_voxels": [float(s) for s in resampled_shape],
            "spacing": [float(s) for s in self.spacing_mm],
            "normalization_schemes": list(self.normalization_schemes),
            "use_mask_for_norm": [False] * n_channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {
                "is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None,
            },
            "resampling_fn_seg_kwargs": {
                "is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None,
            },
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {
                "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
            },
            "architecture": self.architecture,
            "batch_dice": False,
        }
        return {
            "dataset_name": dataset_folder_name(self.dataset_id, self.dataset_name),
            "plans_name": PLANS_NAME,
            "original_median_spacing_after_transp": median_spacing,
            "original_median_shape_after_transp": median_shape,
            "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {
                str(i): props for i, props in enumerate(self.intensity_properties)
            },
        }


def empty_training_log() -> dict[str, list[Any]]:
    """The per-epoch lists ``nnUNetLogger`` keeps (and stores under ``logging``)."""
    return {
        "mean_fg_dice": [],
        "ema_fg_dice": [],
        "dice_per_class_or_region": [],
        "train_losses": [],
        "val_losses": [],
        "lrs": [],
        "epoch_start_timestamps": [],
        "epoch_end_timestamps": [],
    }


def nnunet_checkpoint(
    model: NnunetModelDescription,
    network_weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    training_log: dict[str, list[Any]],
    current_epoch: int,
    fold: int = 0,
) -> dict[str, Any]:
    """The dictionary ``nnUNetTrainer.save_checkpoint`` writes, key for key.

    ``init_args`` holds the trainer's constructor arguments (plans, configuration, fold,
    dataset_json, device): nnU-Net's predictor reads the configuration name from it.
    ``grad_scaler_state`` is None, as nnU-Net writes it when no fp16 gradient scaler is used.
    """
    ema = training_log.get("ema_fg_dice") or []
    return {
        # No clone: PlainConvUNet's decoder holds the encoder too, so its state_dict names each
        # encoder tensor twice; sharing storage keeps torch.save from writing them twice.
        "network_weights": {k: v.detach().cpu() for k, v in network_weights.items()},
        "optimizer_state": optimizer_state,
        "grad_scaler_state": None,
        "logging": training_log,
        "_best_ema": max(ema) if ema else None,
        "current_epoch": int(current_epoch),
        "init_args": {
            "plans": model.plans_json(),
            "configuration": CONFIGURATION,
            "fold": fold,
            "dataset_json": model.dataset_json(),
            "device": torch.device("cpu"),
        },
        "trainer_name": TRAINER_NAME,
        "inference_allowed_mirroring_axes": (
            tuple(model.mirror_axes) if model.mirror_axes is not None else None
        ),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=4, sort_keys=False) + "\n")


def write_nnunet_results_folder(
    results_root: str | Path,
    model: NnunetModelDescription,
    network_weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None = None,
    training_log: dict[str, list[Any]] | None = None,
    current_epoch: int = 0,
    fold: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write (atomically) an nnU-Net v2 results folder and return the trainer folder.

    Parameters
    ----------
    results_root
        The ``nnUNet_results`` folder; ``Dataset<ID>_<Name>/<trainer folder>`` goes inside.
    model
        Plans, labels and fingerprint of the trained model.
    network_weights
        ``state_dict()`` of the ``PlainConvUNet`` that ``model.architecture`` describes.
    optimizer_state, training_log, current_epoch
        Stored as nnU-Net stores them (for continuing training; inference ignores them).
    fold
        Fold number of the checkpoint (``fold_<n>/checkpoint_final.pth``).
    overwrite
        Replace an existing trainer folder; without it an existing one is an error.
    """
    trainer_dir = (
        Path(results_root)
        / dataset_folder_name(model.dataset_id, model.dataset_name)
        / trainer_folder_name()
    )
    if trainer_dir.exists() and not overwrite:
        raise FileExistsError(f"{trainer_dir}: nnU-Net results folder exists already")
    checkpoint = nnunet_checkpoint(
        model, network_weights, optimizer_state, training_log or empty_training_log(),
        current_epoch, fold,
    )
    staged = trainer_dir.with_name(trainer_dir.name + ".new")
    if staged.exists():
        shutil.rmtree(staged)  # left over from an interrupted earlier write
    with atomic_dir(staged) as tmp:
        _write_json(tmp / "dataset.json", model.dataset_json())
        _write_json(tmp / "plans.json", model.plans_json())
        _write_json(tmp / "dataset_fingerprint.json", model.fingerprint_json())
        (tmp / f"fold_{fold}").mkdir()
        torch.save(checkpoint, tmp / f"fold_{fold}" / "checkpoint_final.pth")
    if trainer_dir.exists():
        shutil.rmtree(trainer_dir)
    staged.rename(trainer_dir)
    return trainer_dir
