"""Test-time cropping: segment only the part of the scan that holds the organs.

``auto``: a cheap first pass runs the network once over about non-overlapping patches (every
other patch of the full sliding-window grid: about 1/8 of the patches in 3D; one centred patch
in-plane when the plane is at most 1.5 patches wide), the box around everything it calls an
organ is widened by a margin, and the overlapping sliding window runs on that box only. Outside
it the label is background. The box is drawn around the main cluster of organs: small
detections far from it (a network's false positives in the air at the image corners, say)
would otherwise stretch the box to the whole scan and make the crop pointless.

The main pass places its patches on the full image's grid where that costs no more than a
grid of the box's own (:func:`plan_tiles`): the first-pass tiles inside the box are then
patches of the main pass too and are not run again, and inside the box the logits are exactly
those of ``--crop none`` along those axes.

``middle:N`` keeps the middle N slices of the scan (as one FLARE23 entry did); it is kept for
comparison and loses organs in long scans. ``none`` segments everything.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_seg.errors import EdgesegError
from edge_seg.memory import prefaulted_copy
from edge_seg.window import PatchStream, padding_for, window_starts

#: Margin added around the organs found by the first pass, in mm, on every side.
DEFAULT_MARGIN_MM = 20.0


@dataclass(frozen=True)
class CropSpec:
    """Parsed ``--crop`` value."""

    mode: str  # "auto" | "none" | "middle"
    slices: int = 0

    @property
    def text(self) -> str:
        return f"middle:{self.slices}" if self.mode == "middle" else self.mode


def parse_crop(text: str) -> CropSpec:
    """Parse ``auto``, ``none`` or ``middle:N``."""
    value = text.strip().lower()
    if value in ("auto", "none"):
        return CropSpec(value)
    if value.startswith("middle:"):
        count = value.split(":", 1)[1]
        if count.isdigit() and int(count) > 0:
            return CropSpec("middle", int(count))
    raise EdgesegError(f"--crop: {text!r} is not one of auto, none, middle:N (N > 0 slices)")


def middle_slices(n_slices: int, keep: int) -> slice:
    """The middle ``keep`` of ``n_slices`` (all of them when the scan is shorter)."""
    if keep >= n_slices:
        return slice(0, n_slices)
    start = (n_slices - keep) // 2
    return slice(start, start + keep)


@dataclass
class FirstPass:
    """What the localisation pass found.

    Attributes
    ----------
    found : np.ndarray
        Boolean (Z, Y, X) map of voxels the network labels as an organ.
    starts : list of list of int
        Patch starts per axis that the pass ran (padded image coordinates).
    tiles : dict
        Logits (K, *patch) of the tiles kept for reuse, by start (z, y, x) in padded
        coordinates; empty unless asked for.
    """

    found: np.ndarray
    starts: list[list[int]]
    tiles: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)


#: Memory the first pass may hold in tile logits kept for the main pass to reuse.
TILE_CACHE_BYTES = 512 * 2**20


def first_pass_starts(
    padded_shape: Sequence[int], patch_size: Sequence[int], step: float
) -> list[list[int]]:
    """Patch starts of the first pass: every k-th start of the full sliding-window grid.

    That grid places patches at most ``step * patch`` apart, so every k-th one with
    ``k = floor(1 / step)`` (and the last) is at most a patch apart and still covers the image
    without gaps; each such tile is also a tile of the full grid, so the main pass can reuse
    its logits. Where ``k`` would be 1 (``step > 0.5``) the full grid is no cheaper than
    overlapping patches, and the first pass takes non-overlapping ones of its own instead.
    Where the plane is at most 1.5 patches wide, one centred patch sees the organs (they sit
    mid-plane) and the first pass costs half or a quarter as much.
    """
    grid = window_starts(padded_shape, patch_size, step)
    every = int(np.floor(1.0 / step + 1e-9))
    starts = []
    for axis, (size, patch) in enumerate(zip(padded_shape, patch_size, strict=True)):
        if axis > 0 and len(grid[axis]) > 1 and size <= 1.5 * patch:
            starts.append([(size - patch) // 2])
        elif every < 2:
            starts.append(window_starts([size], [patch], 1.0)[0])
        else:
            picked = grid[axis][::every]
            if picked[-1] != grid[axis][-1]:
                picked.append(grid[axis][-1])
            starts.append(picked)
    return starts


def coarse_foreground(
    image: np.ndarray,
    patch_size: Sequence[int],
    run_patches: PatchStream,
    step: float = 0.5,
    keep_tiles: bool = False,
) -> FirstPass:
    """Run the network once over (about) non-overlapping patches and map what it calls organ.

    No Gaussian averaging: a voxel is organ where any tile covering it says so.
    ``keep_tiles`` keeps a copy of the logits of each tile that found some organ (up to
    :data:`TILE_CACHE_BYTES`) for the main pass. A tile that found none rarely lies inside the
    organ box, and if it does the main pass simply runs it again; skipping it spares a copy of
    every class's logits (44 MB for the reference model) per tile of chest or legs. Each result
    of ``run_patches`` is read before the next is asked for, so it may be an engine buffer.
    """
    patch = tuple(int(p) for p in patch_size)
    pads = padding_for(image.shape[1:], patch)
    padded = np.pad(image, [(0, 0), *pads]) if any(lo or hi for lo, hi in pads) else image
    found = np.zeros(padded.shape[1:], dtype=bool)
    starts = first_pass_starts(padded.shape[1:], patch, step)
    tiles_kept: dict[tuple[int, int, int], np.ndarray] = {}
    kept_bytes = 0
    regions = [
        (slice(zs, zs + patch[0]), slice(ys, ys + patch[1]), slice(xs, xs + patch[2]))
        for zs in starts[0]
        for ys in starts[1]
        for xs in starts[2]
    ]
    tiles = (np.ascontiguousarray(padded[(slice(None), *region)][None]) for region in regions)
    for region, logits in zip(regions, run_patches(tiles), strict=True):
        # argmax != background, without the argmax: some organ beats background
        # strictly (argmax breaks ties towards class 0). Ten times cheaper per tile.
        organ = logits[1:].max(axis=0) > logits[0]
        found[region] |= organ
        at = tuple(r.start for r in region)
        if keep_tiles and kept_bytes + logits.nbytes <= TILE_CACHE_BYTES and organ.any():
            tiles_kept[at] = prefaulted_copy(logits)
            kept_bytes += logits.nbytes
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, image.shape[1:], strict=True))
    return FirstPass(found[inner], starts, tiles_kept)


#: A detection cluster smaller than this share of the largest one does not shape the box.
MIN_CLUSTER_SHARE = 0.05

#: Cell size (voxels per axis) of the grid on which detections are clustered.
_CLUSTER_CELL = 4


def main_organ_cluster(
    found: np.ndarray,
    spacing_mm: Sequence[float],
    margin_mm: float = DEFAULT_MARGIN_MM,
    min_share: float = MIN_CLUSTER_SHARE,
) -> np.ndarray:
    """``found`` without the detections that lie apart from the organs and are small.

    Abdominal organs touch or lie within a few centimetres of each other, so detections
    closer than twice ``margin_mm`` are grouped into one cluster (on a coarse grid of
    ``_CLUSTER_CELL``-voxel cells, dilated by the margin; cheap). Clusters holding fewer than
    ``min_share`` of the largest cluster's voxels are dropped.

    Examples
    --------
    >>> found = np.zeros((60, 60, 60), bool)
    >>> found[10:30, 10:30, 10:30] = True  # the organs
    >>> found[59, 59, 59] = True           # a stray voxel in a corner, 9 cm away
    >>> kept = main_organ_cluster(found, (3.0, 3.0, 3.0))
    >>> bool(kept[59, 59, 59]), int(kept.sum())
    (False, 8000)
    """
    import cc3d

    if not found.any():
        return found
    cell = _CLUSTER_CELL
    padded = np.pad(found, [(0, -n % cell) for n in found.shape])
    shape = [n // cell for n in padded.shape]
    counts = padded.reshape(shape[0], cell, shape[1], cell, shape[2], cell).sum(axis=(1, 3, 5))
    occupied = counts > 0
    reach = [max(1, int(np.ceil(margin_mm / (float(s) * cell)))) for s in spacing_mm]
    grown = dilate_box(occupied, reach)
    clusters = cc3d.connected_components(grown, connectivity=26)
    sizes = np.bincount(clusters.ravel(), weights=counts.ravel())
    sizes[0] = 0
    kept = sizes >= min_share * sizes.max()
    keep_cells = kept[clusters]
    keep = np.repeat(np.repeat(np.repeat(keep_cells, cell, 0), cell, 1), cell, 2)
    return found & keep[tuple(slice(0, n) for n in found.shape)]


def dilate_box(mask: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """Binary dilation by a box of ``2 * radius + 1`` voxels per axis (outside is False).

    The same as ``scipy.ndimage.binary_dilation`` with an all-ones structure; a box is
    separable, so it is one running OR per axis.

    Examples
    --------
    >>> dilate_box(np.eye(1, 5, 2, dtype=bool), (0, 1)).astype(int)
    array([[0, 1, 1, 1, 0]])
    """
    grown = np.asarray(mask, dtype=bool)
    for axis, r in enumerate(radius):
        if r <= 0:
            continue
        pad = [(r, r) if a == axis else (0, 0) for a in range(grown.ndim)]
        windows = np.lib.stride_tricks.sliding_window_view(
            np.pad(grown, pad), 2 * r + 1, axis=axis
        )
        grown = windows.any(axis=-1)
    return grown


def organ_extent(
    found: np.ndarray, spacing_mm: Sequence[float], margin_mm: float = DEFAULT_MARGIN_MM
) -> tuple[slice, ...] | None:
    """Box (network grid) around the main organ cluster plus ``margin_mm``, inside the image.

    Returns None when nothing was found (the caller then segments the whole image).
    """
    if not found.any():
        return None
    found = main_organ_cluster(found, spacing_mm, margin_mm)
    box = []
    for axis in range(found.ndim):
        other = tuple(a for a in range(found.ndim) if a != axis)
        hits = np.flatnonzero(found.any(axis=other))
        margin = int(np.ceil(margin_mm / float(spacing_mm[axis])))
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, found.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def _widened(lo: int, hi: int, patch: int, size: int) -> tuple[int, int]:
    """[lo, hi) widened to one patch where shorter, staying inside [0, size) where possible."""
    short = patch - (hi - lo)
    if short > 0:
        lo = max(lo - short // 2, 0)
        hi = min(lo + patch, size)
        lo = max(hi - patch, 0)
    return lo, hi


def organ_box(
    found: np.ndarray,
    spacing_mm: Sequence[float],
    patch_size: Sequence[int],
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> tuple[slice, ...] | None:
    """:func:`organ_extent`, widened to at least one patch on every axis."""
    extent = organ_extent(found, spacing_mm, margin_mm)
    if extent is None:
        return None
    return tuple(
        slice(*_widened(s.start, s.stop, int(p), n))
        for s, p, n in zip(extent, patch_size, found.shape, strict=True)
    )


@dataclass(frozen=True)
class TilePlan:
    """The patches the main pass runs over a box.

    Attributes
    ----------
    starts : list of list of int
        Patch starts per axis, padded image coordinates (as :func:`sliding_window` takes them).
    reused : list of tuple of int
        First-pass tiles among them, whose logits need not be computed again.
    exact_axes : tuple of bool
        Per axis, whether the starts are those of the full-image grid: along such axes the
        averaged logits inside the box equal those of ``--crop none``.
    """

    starts: list[list[int]]
    reused: list[tuple[int, ...]]
    exact_axes: tuple[bool, ...]

    @property
    def runs(self) -> int:
        """Patches the network still has to run."""
        return int(np.prod([len(s) for s in self.starts])) - len(self.reused)


def plan_tiles(
    box: Sequence[slice],
    image_shape: Sequence[int],
    patch_size: Sequence[int],
    step: float,
    first_pass: Sequence[Sequence[int]] | None = None,
) -> TilePlan:
    """Choose the sliding-window patches that cover ``box`` with the fewest network runs.

    Per axis there are up to three ways to place the patches:

    - *full grid*: the patches of the whole image's grid that reach into the box (inside the
      box the result is then the same as without cropping);
    - *box grid*: a grid of its own over the box, widened to one patch (often one patch fewer);
    - *first-pass tile*: one patch of the first pass that holds the box on its own.

    The cost of a choice is the number of patches minus those the first pass already ran
    (``first_pass``: its starts per axis; their logits are reused). Ties go to the full grid.

    Examples
    --------
    >>> plan = plan_tiles((slice(30, 90), slice(0, 64), slice(0, 64)), (200, 64, 64),
    ...                   (48, 64, 64), 0.5, first_pass=[[0, 43, 87, 130, 152], [0], [0]])
    >>> plan.starts[0], plan.runs, plan.exact_axes
    ([0, 22, 43, 65, 87], 2, (True, True, True))
    """
    patch = [int(p) for p in patch_size]
    pads = padding_for(image_shape, patch)
    padded = [int(n) + lo + hi for n, (lo, hi) in zip(image_shape, pads, strict=True)]
    grid = window_starts(padded, patch, step)
    choices: list[list[tuple[list[int], bool]]] = []
    for axis in range(3):
        lo = box[axis].start + pads[axis][0]
        hi = box[axis].stop + pads[axis][0]
        size, p = padded[axis], patch[axis]
        options = [([g for g in grid[axis] if g < hi and g + p > lo], True)]
        if size == int(image_shape[axis]):  # no padding: a grid of the box's own fits
            wlo, whi = _widened(lo, hi, p, size)
            local = [wlo + s for s in window_starts([whi - wlo], [p], step)[0]]
            options.append((local, local == options[0][0]))
        for c in first_pass[axis] if first_pass else ():
            if c <= lo and c + p >= hi:
                options.append(([c], [c] == options[0][0]))
        choices.append(options)
    fp_sets = [set(s) for s in first_pass] if first_pass else None
    best: tuple[int, int] | None = None
    plan = None
    for rank, combo in enumerate(itertools.product(*choices)):
        starts = [list(c[0]) for c in combo]
        reused: list[tuple[int, ...]] = []
        if fp_sets is not None:
            shared = [[v for v in s if v in f] for s, f in zip(starts, fp_sets, strict=True)]
            reused = list(itertools.product(*shared))
        cost = int(np.prod([len(s) for s in starts])) - len(reused)
        if best is None or (cost, rank) < best:
            best = (cost, rank)
            plan = TilePlan(starts, reused, tuple(c[1] for c in combo))
    assert plan is not None
    return plan
