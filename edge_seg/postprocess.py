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
    stats = cc3d.statistics(labels)
    boxes = stats["bounding_boxes"]
    counts = stats["voxel_counts"]
    wanted = range(1, len(boxes)) if values is None else values
    for value in wanted:
        if value <= 0 or value >= len(boxes) or counts[value] == 0:
            continue
        box = boxes[value]
        crop = labels[box]
        mask = crop == value
        largest = cc3d.largest_k(mask, k=1, connectivity=connectivity, binary_image=True)
        crop[mask & (largest == 0)] = 0
    return labels


def organ_volumes_ml(
    labels: np.ndarray, spacing_mm: Sequence[float], organs: Mapping[str, int]
) -> dict[str, float]:
    """Volume in ml of each organ (``{name: label}``) in a label map."""
    counts = np.bincount(labels.ravel(), minlength=max(organs.values(), default=0) + 1)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return {name: float(counts[value]) * voxel_ml for name, value in organs.items() if value > 0}
