"""Label-map clean-up after the argmax: largest component per organ, specks, organ volumes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cc3d
import numpy as np


def keep_largest_component(
    labels: np.ndarray,
    values: Sequence[int] | None = None,
    connectivity: int = 26,
    min_voxels: int = 0,
) -> np.ndarray:
    """Keep only the largest connected component of each organ label, in place.

    Each abdominal organ is one connected structure, so smaller islands of the same label are
    false positives; their voxels become background (0). One multi-label labelling of the
    scan's labelled box finds the components of all organs at once; a component is removed
    when another component of its label is larger, or when it has fewer than ``min_voxels``
    voxels (see :func:`min_component_voxels`).

    Parameters
    ----------
    labels : np.ndarray
        uint8 label map (z, y, x); modified in place and returned.
    values : sequence of int, optional
        Labels to clean (default: every non-zero label present).
    connectivity : {6, 18, 26}
        Voxel neighbourhood defining "connected".
    min_voxels : int
        Components smaller than this are removed too, the largest included (0: none).

    Examples
    --------
    >>> labels = np.zeros((8, 8, 8), np.uint8)
    >>> labels[1:4, 1:4, 1:4] = 1  # the liver
    >>> labels[6, 6, 6] = 1        # an island of "liver" elsewhere
    >>> int(keep_largest_component(labels).sum())
    27
    """
    return _remove_components(labels, values, connectivity, True, min_voxels)


def keep_largest_component_of_union(
    labels: np.ndarray,
    values: Sequence[int],
    connectivity: int = 26,
) -> np.ndarray:
    """Keep only the largest connected component of the union of ``values``, in place.

    This is nnU-Net v2's post-processing step (``remove_all_but_largest_component_from_
    segmentation``), which ``nnUNetv2_find_best_configuration`` keeps per class or for the
    whole foreground where it raised the cross-validation Dice: the voxels of ``values``
    form one mask; every component of that mask but the largest becomes background. Several
    components of exactly the largest size are all kept, as nnU-Net keeps them. With a single
    value this is :func:`keep_largest_component` for that organ.

    Parameters
    ----------
    labels : np.ndarray
        uint8 label map (z, y, x); modified in place and returned.
    values : sequence of int
        The labels whose union is cleaned (all foreground labels: nnU-Net's "keep the
        largest foreground region").
    connectivity : {6, 18, 26}
        Voxel neighbourhood; 26, as nnU-Net's ``skimage.measure.label`` default in 3D.

    Examples
    --------
    >>> labels = np.zeros((8, 8, 8), np.uint8)
    >>> labels[1:4, 1:4, 1:3] = 1   # liver ...
    >>> labels[1:4, 1:4, 3] = 2     # ... touching the right kidney
    >>> labels[6, 6, 6] = 2         # a kidney island away from both
    >>> _ = keep_largest_component_of_union(labels, [1, 2])
    >>> int((labels == 2).sum()), int((labels == 1).sum())  # the island is gone
    (9, 18)
    """
    foreground = _foreground_box(labels)
    if foreground is None:
        return labels
    region = labels[foreground]
    mask = np.isin(region, list(values))
    components, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    del mask
    if n < 2:
        return labels
    # Slab by slab, as in _remove_components: whole-box index arrays would be int64.
    slabs = _slabs(region.shape)
    sizes = np.zeros(n + 1, dtype=np.int64)
    for rows in slabs:
        sizes += np.bincount(components[rows].reshape(-1), minlength=n + 1)
    sizes[0] = 0
    remove = sizes < sizes.max()
    remove[0] = False
    for rows in slabs:
        np.copyto(region[rows], 0, where=remove[components[rows]])
    return labels


def apply_component_groups(
    labels: np.ndarray,
    groups: Sequence[Sequence[int]],
    connectivity: int = 26,
) -> np.ndarray:
    """Run nnU-Net's largest-component steps in order, in place (see
    :func:`keep_largest_component_of_union`).

    A step of a single label only removes voxels of that label, so steps of different single
    labels cannot change each other's outcome: consecutive ones are run as one multi-label
    pass (equal largest components all kept, as nnU-Net keeps them) instead of one labelling
    of the scan each.

    Examples
    --------
    >>> labels = np.zeros((4, 4, 12), np.uint8)
    >>> labels[1:3, 1:3, 0:2] = 1; labels[1:3, 1:3, 5] = 1; labels[1:3, 1:3, 9:11] = 2
    >>> int((apply_component_groups(labels, [[1], [2]]) == 1).sum())
    8
    """
    singles: list[int] = []
    for group in groups:
        if len(set(group)) == 1:
            singles.append(group[0])
            continue
        if singles:
            _remove_components(labels, singles, connectivity, True, 0, keep_ties=True)
            singles = []
        keep_largest_component_of_union(labels, group, connectivity)
    if singles:
        _remove_components(labels, singles, connectivity, True, 0, keep_ties=True)
    return labels


def remove_small_components(
    labels: np.ndarray,
    min_voxels: int,
    values: Sequence[int] | None = None,
    connectivity: int = 26,
) -> np.ndarray:
    """Remove, in place, every organ component with fewer than ``min_voxels`` voxels.

    The clean-up for runs that keep every component (``--no-lcc``); parameters as in
    :func:`keep_largest_component`.

    Examples
    --------
    >>> labels = np.zeros((8, 8, 8), np.uint8)
    >>> labels[1:4, 1:4, 1:4] = 1  # a kidney
    >>> labels[5:8, 5:8, 5:8] = 1  # the other kidney, same label in this example
    >>> labels[0, 7, 0] = 2        # a one-voxel speck
    >>> cleaned = remove_small_components(labels, min_voxels=2)
    >>> int((cleaned == 1).sum()), int((cleaned == 2).sum())
    (54, 0)
    """
    return _remove_components(labels, values, connectivity, False, min_voxels)


def min_component_voxels(min_ml: float, spacing_mm: Sequence[float]) -> int:
    """The voxel count of ``min_ml`` millilitres at ``spacing_mm`` (rounded up; 0 for 0 ml).

    >>> min_component_voxels(0.5, (1.5, 1.5, 2.0))  # 4.5 mm3 voxels
    112
    """
    if min_ml <= 0:
        return 0
    voxel_mm3 = float(np.prod(spacing_mm))
    return int(np.ceil(min_ml * 1000.0 / voxel_mm3 - 1e-9))


def _remove_components(
    labels: np.ndarray,
    values: Sequence[int] | None,
    connectivity: int,
    largest_only: bool,
    min_voxels: int,
    keep_ties: bool = False,
) -> np.ndarray:
    foreground = _foreground_box(labels)
    if foreground is None:
        return labels
    region = labels[foreground]
    # One labelling of all organs costs less than finding each organ's box (cc3d.statistics)
    # and labelling organ by organ: 0.2 s against 0.4 s for the box of a 512x512x300 CT.
    components, n = cc3d.connected_components(region, connectivity=connectivity, return_N=True)
    sizes = np.zeros(n + 1, dtype=np.int64)
    label_of = np.zeros(n + 1, dtype=np.uint8)
    slabs = _slabs(region.shape)
    for rows in slabs:
        ids = components[rows].reshape(-1)
        sizes += np.bincount(ids, minlength=n + 1)
        # Every voxel of a component has the component's label, so scattering the labels
        # by component id records each component's label.
        label_of[ids] = region[rows].reshape(-1)
    order = np.lexsort((-sizes[1:], label_of[1:])) + 1  # by label, biggest first
    ordered = label_of[order]
    cleaned = ordered > 0 if values is None else np.isin(ordered, list(values))
    drop = sizes[order] < min_voxels
    if largest_only:
        biggest = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each label's run
        if keep_ties:  # every component as large as its label's largest, as nnU-Net keeps
            first = np.maximum.accumulate(np.where(biggest, np.arange(len(order)), 0))
            biggest = sizes[order] == sizes[order][first]
        drop |= ~biggest
    remove = np.zeros(n + 1, dtype=bool)
    remove[order] = cleaned & drop
    if remove.any():
        for rows in slabs:
            np.copyto(region[rows], 0, where=remove[components[rows]])
    return labels


def _slabs(shape: tuple[int, ...], voxels: int = 1 << 20) -> list[slice]:
    """Runs of whole z-slices of about ``voxels`` voxels each.

    Indexing and bincount turn their index arrays into int64, 8 bytes per voxel: slab by
    slab that is a few MB used again and again instead of fresh memory for a whole CT, whose
    page faults cost more than the counting itself.
    """
    rows = max(1, voxels // max(1, int(np.prod(shape[1:]))))
    return [slice(start, start + rows) for start in range(0, shape[0], rows)]


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
    top = max(organs.values(), default=0) + 1
    counts = np.zeros(top, dtype=np.int64)
    box = _foreground_box(labels)
    if box is None:
        return {name: 0.0 for name, value in organs.items() if value > 0}
    # Organs fill a tenth of a CT: counting in their box alone is 7x faster (50 ms).
    labels = labels[box]
    # Labels above the table's are no organ and are dropped slab by slab, so no pass is
    # needed to find the largest label.
    for rows in _slabs(labels.shape, 1 << 22):
        counts += np.bincount(labels[rows].ravel(), minlength=top)[:top]
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    return {name: float(counts[value]) * voxel_ml for name, value in organs.items() if value > 0}
