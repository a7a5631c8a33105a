"""Small genuine nnU-Net v2 results folders and images for the export and quantize tests.

The folder is written by :mod:`export.nnunet_writer` (plans.json, dataset.json and a checkpoint
dict with nnU-Net's keys) around a tiny randomly initialised ``PlainConvUNet`` (3 stages, 4-16
features, fixed seed), so the tests exercise the real nnU-Net reading path without waiting for
a trained model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

#: Labels of the tiny test model (FLARE numbering, a subset).
TINY_LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "spleen": 3}
TINY_PATCH = (16, 32, 32)
TINY_SPACING = (2.5, 2.0, 2.0)
CT_STATS = {
    "max": 300.0, "mean": 80.0, "median": 75.0, "min": -150.0,
    "percentile_00_5": -100.0, "percentile_99_5": 250.0, "std": 60.0,
}


def tiny_architecture() -> dict:
    from export.networks.plain_unet import nnunet_arch_kwargs

    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    kernels = [[3, 3, 3]] * 3
    return nnunet_arch_kwargs(strides, kernels, base_features=4, max_features=16)


def make_workspace(root: Path) -> dict[str, Path]:
    """A two-fold results folder and two real-looking CT images, as the export tests use."""
    results = make_results_folder(root / "nnUNet_results", seed=3, folds=(0, 1))
    images = root / "images"
    for i in range(2):
        write_ct_image(images / f"case{i}_0000.nii.gz", seed=i)
    return {"root": root, "results": results, "images": images}


def make_results_folder(root: Path, seed: int = 0, folds: tuple[int, ...] = (0,),
                        channels: int = 1) -> Path:
    """Write an nnU-Net v2 results folder (one checkpoint per fold) and return its path
    (``channels`` > 1: a model of that many CT input channels)."""
    import torch

    from export.networks.plain_unet import build_plain_unet
    from export.nnunet_writer import NnunetModelDescription, write_nnunet_results_folder

    description = NnunetModelDescription(
        dataset_id=901,
        dataset_name="TinyTest",
        labels=dict(TINY_LABELS),
        architecture=tiny_architecture(),
        spacing_mm=TINY_SPACING,
        patch_size=TINY_PATCH,
        intensity_properties=[dict(CT_STATS) for _ in range(channels)],
        training_spacings=[TINY_SPACING] * 2,
        training_shapes=[(24, 48, 48)] * 2,
        channel_names={str(c): "CT" if c == 0 else f"CT phase {c}" for c in range(channels)},
        normalization_schemes=["CTNormalization"] * channels,
    )
    folder = None
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = build_plain_unet(description.architecture, channels, len(TINY_LABELS))
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        log = {
            "mean_fg_dice": [np.float64(0.25)], "ema_fg_dice": [np.float64(0.25)],
            "dice_per_class_or_region": [[np.float64(0.2)] * 3], "train_losses": [0.9],
            "val_losses": [0.8], "lrs": [0.01], "epoch_start_timestamps": [0.0],
            "epoch_end_timestamps": [1.0],
        }
        if folder is None:
            folder = write_nnunet_results_folder(
                root, description, network.state_dict(), optimizer.state_dict(), log,
                current_epoch=1, fold=fold,
            )
        else:  # further folds go beside the first, as nnUNetv2_train leaves them
            staged = write_nnunet_results_folder(
                root / f"fold{fold}", description, network.state_dict(),
                optimizer.state_dict(), log, current_epoch=1, fold=fold,
            )
            (staged / f"fold_{fold}").rename(folder / f"fold_{fold}")
    assert folder is not None
    return folder


def write_ct_image(path: Path, seed: int, shape: tuple[int, int, int] = (20, 40, 44),
                   spacing_zyx: tuple[float, float, float] = (2.5, 2.0, 2.0)) -> Path:
    """A small CT-like volume (air, a body ellipse, brighter blobs) written as NIfTI."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    cy, cx = shape[1] / 2, shape[2] / 2
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = ((y - cy) / (0.42 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 < 1
    image[body] = 20.0
    for _ in range(4):
        oz, oy, ox = (rng.uniform(0.3, 0.7) * s for s in shape)
        radius = rng.uniform(3, 7)
        blob = (z - oz) ** 2 + ((y - oy) ** 2 + (x - ox) ** 2) < radius**2
        image[blob & body] = rng.uniform(60, 200)
    image += rng.normal(0, 12, shape).astype(np.float32)
    itk = sitk.GetImageFromArray(image.astype(np.int16))
    itk.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(itk, str(path))
    return path


def cli_without(module: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``edgeseg ARGS`` in a fresh interpreter where ``module`` cannot be imported (as if
    the extra that brings it were not installed)."""
    code = (f"import sys\nsys.modules[{module!r}] = None\n"
            f"from edge_seg.cli import main\nmain({args!r})\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def run_cli(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run ``edgeseg ARGS`` in this process; return (exit code, stdout, stderr)."""
    from edge_seg.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
