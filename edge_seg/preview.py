"""A quick-look PNG: axial and coronal slices of the scan with the label map overlaid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from evaluator.atomic import atomic_path

#: Soft-tissue window for CT (HU); MR is scaled to its 1st-99th percentile instead.
CT_WINDOW = (-160.0, 240.0)


def _grey(image: np.ndarray, modality: str) -> np.ndarray:
    if modality.upper() == "CT":
        lo, hi = CT_WINDOW
    else:
        lo, hi = np.percentile(image, [1, 99])
    return np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def save_preview(
    volume: Volume,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    modality: str = "CT",
) -> Path:
    """Write a two-panel PNG (axial, coronal) through the centre of the segmented organs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    path = Path(path)
    if path.is_dir():
        raise EdgesegError(f"{path}: preview path is a folder; give a file name such as case.png")
    found = np.argwhere(labels > 0)
    z, y, _ = found.mean(axis=0).astype(int) if found.size else np.array(labels.shape) // 2
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    colours[:, 3] = 0.45
    cmap = ListedColormap(np.vstack([[0, 0, 0, 0], colours]))
    sz, sy, sx = volume.spacing_mm
    panels = [
        ("axial", volume.array[z], labels[z], sy / sx),
        ("coronal", volume.array[::-1, y, :], labels[::-1, y, :], sz / sx),
    ]
    figure, axes = plt.subplots(1, 2, figsize=(10, 5))
    for axis, (title, grey, overlay, aspect) in zip(axes, panels, strict=True):
        axis.imshow(_grey(grey, modality), cmap="gray", aspect=aspect, interpolation="nearest")
        masked = np.where(overlay > 0, (overlay.astype(int) - 1) % 20 + 1, 0)
        axis.imshow(masked, cmap=cmap, vmin=0, vmax=20, aspect=aspect, interpolation="nearest")
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=80)
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot write preview ({exc.strerror})") from exc
    finally:
        plt.close(figure)
    return path
