"""Label-map clean-up after the argmax: largest connected component per organ, organ volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cc3d
import numpy as np


def keep_largest_component(
    labels: np.ndarray, values: Sequence[int] | None = None, connectivity: int = 26
) -> np.ndarray:
    """Keep only the largest connected component of each organ label, in place.

    Each abdominal organ is one connected structure, so smaller islands of the same label are
    false positives; their voxels become background (0). Work is done inside each organ's
    bounding box, so cost scales with the organs, not the scan.

    Parameters
    ----------
    labels : np.ndarray
        uint8 label map (z, y, x); modified in place and returned.
    values : sequence of int, optional
        Labels to clean (default: every non-zero label present).
    connectivity : {6, 18, 26}
        Voxel neighbourhood defining "connected".
    """
    # Organ bounding boxes from one pass over the labelled part of the scan only.
    foreground = _foreground_box(labels)
    if foreground is None:
        return labels
    region = labels[foreground]
    stats = cc3d.statistics(region)
    boxes = stats["bounding_boxes"]
    counts = stats["voxel_counts"]
    wanted = range(1, len(boxes)) if values is None else values
    for value in wanted:
        if value <= 0 or value >= len(boxes) or counts[value] == 0:
            continue
        crop = region[boxes[value]]
        mask = crop == value
        largest = cc3d.largest_k(mask, k=1, connectivity=connectivity, binary_image=True)
        crop[mask & (largest == 0)] = 0
    return labels


def _foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    rows = np.flatnonzero(labels.any(axis=(1, 2)))
    if rows.size == 0:
        return None
    z = slice(int(rows[0]), int(rows[-1]) + 1)
    plane = labels[z].any(axis=0)
    ys, xs = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (z, slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))


def organ_volumes_ml(
    labels: np.ndarray, spacing_mm: Sequence[float], organs: Mapping[str, int]
) -> dict[str, float]:
    """Volume in ml of each organ (``{name: label}``) in a label map."""
    counts = np.bincount(labels.ravel(), minlength=max(organs.values(), default=0) + 1)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return {name: float(counts[value]) * voxel_ml for name, value in organs.items() if value > 0}
