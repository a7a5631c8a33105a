"""Segmentation metrics: pure functions on boolean masks with an explicit ``spacing_mm``.

All masks are 3D boolean arrays in the same (z, y, x) voxel grid; ``spacing_mm`` gives the voxel
size along those axes in millimetres. Nothing here reads files or knows about organs.

Volume overlap
--------------
With G the ground-truth voxels and P the predicted voxels:

* true positives ``TP = |G ∩ P|``, false positives ``FP = |P \\ G|``, false negatives
  ``FN = |G \\ P|``;
* Dice similarity coefficient ``DSC = 2 TP / (2 TP + FP + FN) = 2|G ∩ P| / (|G| + |P|)``;
* CHAOS relative absolute volume difference ``RAVD = 100 · ||G| - |P|| / |G|`` (percent).

Surfaces as DeepMind's ``surface-distance`` defines them (NSD, HD95)
--------------------------------------------------------------------
The voxel centres are corners of a lattice of cubes; cube ``q`` spans voxels ``q - 1`` to ``q``
along each axis (the volume is padded with background, so cubes straddling the image border
count). The in/out pattern of a cube's 8 corners is its neighbourhood code ``c ∈ [0, 255]``. A
cube is a *surface element* (surfel) when ``0 < c < 255``; its area ``A(c)`` in mm^2 is that of
its marching-cubes triangles (:mod:`evaluator.surfel_table`). Surfels sit at the cube centres,
i.e. shifted by half a voxel from the voxel centres; both masks share that lattice, so
distances are unaffected.

For every surfel ``s`` of G, ``d(s, P) = min_{t ∈ surfels(P)} ||s - t||`` in mm (and vice
versa). Then, with ``S_G``, ``S_P`` the surfel sets and ``A`` their areas:

* Normalised Surface Dice at tolerance τ:
  ``NSD_τ = (Σ_{s∈S_G, d(s,P)≤τ} A(s) + Σ_{t∈S_P, d(t,G)≤τ} A(t)) / (Σ_{S_G} A + Σ_{S_P} A)``;
* robust Hausdorff distance at percentile p (HD95: p = 95): for each direction, sort the
  surfels by (distance, area), take the first distance whose cumulative area fraction reaches
  ``p / 100``; HD_p is the larger of the two directed values;
* average surface distance per direction: ``Σ A(s) d(s, ·) / Σ A(s)``.

If one mask is empty its surfel set is empty and every distance from the other surface is
``inf`` (so NSD = 0 and HD = inf); if both are empty the quantities are undefined (NaN).
Conventions for empty organs (FLARE/HALOS) are applied by :mod:`evaluator.scoring`, not here.

Distances are exact nearest-neighbour distances between surfel centres: a k-d tree over the
surface points finds the nearest one (only surfaces are touched, no volume-sized distance
transform), and the distance is computed from the integer lattice offset exactly as SciPy's
float64 EDT does, so values - and ties with an NSD tolerance - agree with ``surface-distance``.
(A float32 distance transform such as ``edt`` differs by ~1e-7 relative, enough to flip
surfels that lie exactly at the tolerance.)

CHAOS surface distances (ASSD, MSSD)
------------------------------------
CHAOS uses border *voxels*: ``B(M) = M \\ erode(M)`` with a 6-connected erosion that treats
the outside of the image as foreground (so the image edge is not a border). With ``d`` the
nearest-neighbour distance between voxel centres in mm:

* ``ASSD = (Σ_{b∈B(G)} d(b, B(P)) + Σ_{b∈B(P)} d(b, B(G))) / (|B(G)| + |B(P)|)``;
* ``MSSD = max`` of all those distances.

The CHAOS score maps each metric linearly onto 0-100 points, 100 for a perfect result and 0
at the challenge threshold or beyond (DSC 0.8, RAVD 5 %, ASSD 15 mm, MSSD 60 mm); the case score
is the mean of the four.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from evaluator.surfel_table import surfel_area_table

# Corner offsets (dz, dy, dx) of a cube and the bit each contributes to the neighbourhood code.
_CORNER_BITS: tuple[tuple[tuple[int, int, int], int], ...] = tuple(
    ((dz, dy, dx), 1 << (7 - (4 * dz + 2 * dy + dx)))
    for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)
)

#: CHAOS thresholds at which a metric scores 0 points.
CHAOS_THRESHOLDS: dict[str, float] = {"dsc": 0.8, "ravd": 5.0, "assd": 15.0, "mssd": 60.0}


@dataclass(frozen=True)
class VoxelCounts:
    """Voxel-level confusion counts of one organ."""

    tp: int
    fp: int
    fn: int

    @property
    def gt_voxels(self) -> int:
        return self.tp + self.fn

    @property
    def pred_voxels(self) -> int:
        return self.tp + self.fp


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfel distances and areas in both directions (unsorted; areas in mm^2, distances mm)."""

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


def _check_pair(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm: Sequence[float]) -> None:
    if mask_gt.shape != mask_pred.shape:
        raise ValueError(f"mask shapes differ: {mask_gt.shape} vs {mask_pred.shape}")
    if mask_gt.ndim != 3 or len(spacing_mm) != 3:
        raise ValueError("masks must be 3D and spacing_mm must have 3 values")
    if mask_gt.dtype != bool or mask_pred.dtype != bool:
        raise ValueError("masks must be boolean arrays")


def voxel_counts(mask_gt: np.ndarray, mask_pred: np.ndarray) -> VoxelCounts:
    """True-positive, false-positive and false-negative voxel counts."""
    tp = int(np.count_nonzero(mask_gt & mask_pred))
    return VoxelCounts(
        tp=tp,
        fp=int(np.count_nonzero(mask_pred)) - tp,
        fn=int(np.count_nonzero(mask_gt)) - tp,
    )


def dice_from_counts(counts: VoxelCounts) -> float:
    """``2 TP / (2 TP + FP + FN)``; NaN when both masks are empty."""
    denominator = 2 * counts.tp + counts.fp + counts.fn
    return float("nan") if denominator == 0 else 2.0 * counts.tp / denominator


def dice(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    """Dice similarity coefficient; NaN when both masks are empty."""
    return dice_from_counts(voxel_counts(mask_gt, mask_pred))


def ravd_percent(mask_gt: np.ndarray, mask_pred: np.ndarray) -> float:
    """CHAOS relative absolute volume difference ``100 |V_G - V_P| / V_G``; inf if G is empty."""
    gt_volume = int(np.count_nonzero(mask_gt))
    pred_volume = int(np.count_nonzero(mask_pred))
    if gt_volume == 0:
        return 0.0 if pred_volume == 0 else float("inf")
    return 100.0 * abs(gt_volume - pred_volume) / gt_volume


def neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit neighbourhood code of every cube of the lattice (shape ``mask.shape + 1``).

    Cube ``q`` has corners at voxels ``q - 1 + (dz, dy, dx)``; voxels outside the array are
    background.
    """
    padded = np.pad(mask.astype(np.uint8, copy=False), 1)
    shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(shape, dtype=np.uint8)
    for (dz, dy, dx), bit in _CORNER_BITS:
        corner = padded[dz:dz + shape[0], dy:dy + shape[1], dx:dx + shape[2]]
        codes |= corner * np.uint8(bit)
    return codes


def surfels(mask: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Surfel cube indices ``(n, 3)`` (int) and their areas in mm^2 ``(n,)``, in C order."""
    codes = neighbourhood_codes(mask)
    on_surface = (codes != 0) & (codes != 255)
    index = np.nonzero(on_surface)
    areas = surfel_area_table(spacing_mm)[codes[index]]
    return np.stack(index, axis=1), areas


def _exact_distance(offsets: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    # Same arithmetic as SciPy's distance_transform_edt: integer offsets times spacing,
    # squared, summed axis by axis, square root - so ties with a tolerance resolve alike.
    scaled = offsets.astype(np.float64) * spacing_mm
    squared = scaled * scaled
    return np.sqrt((squared[:, 0] + squared[:, 1]) + squared[:, 2])


def _nearest_distances(
    from_index: np.ndarray, to_index: np.ndarray, spacing_mm: np.ndarray, workers: int
) -> np.ndarray:
    """Distance in mm from each lattice point in ``from_index`` to the nearest in ``to_index``.

    A k-d tree over the mm coordinates finds the nearest point; the distance is then
    recomputed from the integer index offset.
    """
    if len(from_index) == 0:
        return np.zeros(0, dtype=np.float64)
    if len(to_index) == 0:
        return np.full(len(from_index), np.inf)
    # An unbalanced tree without compacted nodes builds about twice as fast on surface points.
    tree = cKDTree(to_index * spacing_mm, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(from_index * spacing_mm, k=1, workers=workers)
    return _exact_distance(from_index - to_index[nearest], spacing_mm)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Smallest box holding every true voxel, grown by ``margin`` and clipped; None if empty."""
    boxes = ndimage.find_objects(mask.astype(np.uint8, copy=False), max_label=1)
    if not boxes or boxes[0] is None:
        return None
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(boxes[0], mask.shape, strict=True)
    )


def surface_distances(
    mask_gt: np.ndarray,
    mask_pred: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    workers: int = 1,
    crop: bool = True,
) -> SurfaceDistances:
    """Distances between the surfel sets of two masks (the DeepMind surface definition).

    With ``crop`` both masks are first cut to the bounding box of their union, which changes
    nothing because everything outside it is background on both sides (callers that already
    cropped pass ``crop=False``). A surfel cube that lies on both surfaces has distance 0 and
    skips the nearest-neighbour search.
    """
    _check_pair(mask_gt, mask_pred, spacing_mm)
    if crop:
        box = bounding_box(mask_gt | mask_pred)
        if box is None:
            empty = np.zeros(0, dtype=np.float64)
            return SurfaceDistances(empty, empty, empty, empty)
        mask_gt, mask_pred = mask_gt[box], mask_pred[box]
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    table = surfel_area_table(spacing_mm)
    codes_gt = neighbourhood_codes(mask_gt)
    codes_pred = neighbourhood_codes(mask_pred)
    on_gt = (codes_gt != 0) & (codes_gt != 255)
    on_pred = (codes_pred != 0) & (codes_pred != 255)
    shared = on_gt & on_pred
    index_gt = np.stack(np.nonzero(on_gt), axis=1)
    index_pred = np.stack(np.nonzero(on_pred), axis=1)

    def directed(index_from: np.ndarray, on_from: np.ndarray,
                 index_to: np.ndarray) -> np.ndarray:
        distances = np.zeros(len(index_from), dtype=np.float64)
        todo = ~shared[on_from]
        distances[todo] = _nearest_distances(index_from[todo], index_to, spacing, workers)
        return distances

    return SurfaceDistances(
        distances_gt_to_pred=directed(index_gt, on_gt, index_pred),
        distances_pred_to_gt=directed(index_pred, on_pred, index_gt),
        surfel_areas_gt=table[codes_gt[on_gt]],
        surfel_areas_pred=table[codes_pred[on_pred]],
    )


def normalised_surface_dice(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """NSD at ``tolerance_mm`` (see module docstring); NaN when both surfaces are empty."""
    total = distances.surfel_areas_gt.sum() + distances.surfel_areas_pred.sum()
    if total == 0:
        return float("nan")
    overlap = distances.surfel_areas_gt[distances.distances_gt_to_pred <= tolerance_mm].sum()
    overlap += distances.surfel_areas_pred[distances.distances_pred_to_gt <= tolerance_mm].sum()
    return float(overlap / total)


def _directed_percentile(values: np.ndarray, areas: np.ndarray, percent: float) -> float:
    if len(values) == 0:
        return float("inf")
    # Sort by (distance, area) so that the cumulative area runs as in surface-distance.
    order = np.lexsort((areas, values))
    values, areas = values[order], areas[order]
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(values[min(index, len(values) - 1)])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """Area-weighted ``percent``-th percentile Hausdorff distance in mm (HD95 by default).

    NaN when both surfaces are empty, inf when exactly one is.
    """
    if len(distances.surfel_areas_gt) == 0 and len(distances.surfel_areas_pred) == 0:
        return float("nan")
    return max(
        _directed_percentile(distances.distances_gt_to_pred, distances.surfel_areas_gt, percent),
        _directed_percentile(distances.distances_pred_to_gt, distances.surfel_areas_pred, percent),
    )


def average_surface_distance(distances: SurfaceDistances) -> tuple[float, float]:
    """Area-weighted mean distance (gt → pred, pred → gt) in mm."""

    def directed(values: np.ndarray, areas: np.ndarray) -> float:
        total = areas.sum()
        return float("nan") if total == 0 else float(np.sum(values * areas) / total)

    return (
        directed(distances.distances_gt_to_pred, distances.surfel_areas_gt),
        directed(distances.distances_pred_to_gt, distances.surfel_areas_pred),
    )


_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def chaos_border_voxels(mask: np.ndarray) -> np.ndarray:
    """CHAOS border voxels: the mask minus its 6-connected erosion (image edge as foreground)."""
    eroded = ndimage.binary_erosion(mask, structure=_SIX_CONNECTED, border_value=1)
    return mask & ~eroded


def chaos_surface_distances(
    mask_gt: np.ndarray,
    mask_pred: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    workers: int = 1,
) -> tuple[float, float]:
    """CHAOS ``(ASSD, MSSD)`` in mm from border voxels; ``(inf, inf)`` if one mask is empty.

    The caller may pass crops, provided each crop keeps one background voxel around the masks
    where it is not the image edge (the erosion treats the crop edge as the image edge).
    """
    _check_pair(mask_gt, mask_pred, spacing_mm)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    points_gt = np.argwhere(chaos_border_voxels(mask_gt))
    points_pred = np.argwhere(chaos_border_voxels(mask_pred))
    if len(points_gt) == 0 and len(points_pred) == 0:
        return float("nan"), float("nan")
    if len(points_gt) == 0 or len(points_pred) == 0:
        return float("inf"), float("inf")
    pred_to_gt = _nearest_distances(points_pred, points_gt, spacing, workers)
    gt_to_pred = _nearest_distances(points_gt, points_pred, spacing, workers)
    assd = (pred_to_gt.sum() + gt_to_pred.sum()) / (len(pred_to_gt) + len(gt_to_pred))
    mssd = max(pred_to_gt.max(), gt_to_pred.max())
    return float(assd), float(mssd)


def chaos_score(metric: str, value: float) -> float:
    """CHAOS points (0-100) for one metric value (``dsc``, ``ravd``, ``assd`` or ``mssd``)."""
    threshold = CHAOS_THRESHOLDS[metric]
    if np.isnan(value):
        return float("nan")
    if metric == "dsc":
        points = 100.0 * (value - threshold) / (1.0 - threshold)
    else:
        points = 100.0 * (1.0 - value / threshold)
    return float(min(100.0, max(0.0, points)))
