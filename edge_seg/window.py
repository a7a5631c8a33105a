"""Sliding-window inference with Gaussian importance weighting, streamed slab by slab.

Patch placement, padding and weighting follow nnU-Net v2 (``predict_sliding_window_return_logits``):
the image is padded (centred, zeros) to at least the patch size, patches start at evenly spaced
positions at most ``step * patch`` apart, and each patch's logits are weighted by a Gaussian
(sigma = patch / 8, peak 10, no zeros) before averaging.

Unlike nnU-Net, the averaged logits are never held for the whole volume: patches are run in
z order and every z-range that no later patch can touch is handed on at once, so memory holds
only one patch-depth of logits (classes x patch depth x padded height x width).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

#: A function that runs one patch: float32 (1, C, *patch) -> float32 logits (K, *patch).
PatchRunner = Callable[[np.ndarray], np.ndarray]

#: A function that runs patches in order: an iterable of float32 (1, C, *patch) tiles in,
#: their float32 logits (K, *patch) out, in the same order. It may pull tiles ahead of the
#: results it hands back, to keep several patches in flight (one per inference stream).
PatchStream = Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]]


def one_at_a_time(run_patch: PatchRunner) -> PatchStream:
    """A :data:`PatchStream` that runs each tile as it comes, with ``run_patch``."""

    def run_patches(tiles: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        return map(run_patch, tiles)

    return run_patches


@lru_cache(maxsize=4)
def gaussian_importance(patch_size: tuple[int, ...], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred on the patch, peak 10, zeros replaced.

    nnU-Net filters a unit impulse at the patch centre with ``scipy.ndimage.gaussian_filter``
    (``sigma = patch * sigma_scale``, zero outside, kernels cut at 4 sigma); for an impulse that
    is the outer product of the three normalised, truncated 1D kernels, built here directly
    (SciPy's ndimage takes longer to import than the whole map takes to build).
    """
    weights = np.ones((1,) * len(patch_size))
    for axis, size in enumerate(patch_size):
        sigma = size * sigma_scale
        radius = int(4.0 * sigma + 0.5)
        taps = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 / (sigma * sigma) * taps.astype(np.float64) ** 2)
        kernel /= kernel.sum()
        profile = np.zeros(size)
        centre = size // 2
        lo, hi = max(0, centre - radius), min(size, centre + radius + 1)
        profile[lo:hi] = kernel[lo - centre + radius : hi - centre + radius]
        shape = [1] * len(patch_size)
        shape[axis] = size
        weights = weights * profile.reshape(shape)
    weights = weights / weights.max() * 10
    weights[weights == 0] = weights[weights > 0].min()
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def window_starts(
    image_size: Sequence[int], patch_size: Sequence[int], step: float
) -> list[list[int]]:
    """Patch start positions per axis: evenly spaced, at most ``step * patch`` apart."""
    if not 0 < step <= 1:
        raise ValueError("step must be in (0, 1]")
    starts = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError("image must be padded to the patch size first")
        count = int(np.ceil((size - patch) / (patch * step))) + 1
        stride = (size - patch) / (count - 1) if count > 1 else 0.0
        starts.append([int(np.round(stride * i)) for i in range(count)])
    return starts


def padding_for(shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Centred zero padding up to the patch size (the extra voxel goes after the image)."""
    pads = []
    for size, patch in zip(shape, patch_size, strict=True):
        missing = max(patch - size, 0)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def count_patches(shape: Sequence[int], patch_size: Sequence[int], step: float) -> int:
    padded = [
        s + lo + hi for s, (lo, hi) in zip(shape, padding_for(shape, patch_size), strict=True)
    ]
    return int(np.prod([len(s) for s in window_starts(padded, patch_size, step)]))


def sliding_window(
    image: np.ndarray,
    patch_size: Sequence[int],
    step: float,
    run_patches: PatchStream,
    num_classes: int,
    threads: int | None = None,
    *,
    starts: Sequence[Sequence[int]] | None = None,
    box: Sequence[slice] | None = None,
    precomputed: Mapping[tuple[int, int, int], np.ndarray] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Run the network over ``image`` and yield averaged logits slab by slab.

    Parameters
    ----------
    image : np.ndarray
        float32 (C, Z, Y, X) network input.
    patch_size : sequence of int
        Network patch (Z, Y, X).
    step : float
        Patch spacing as a fraction of the patch (0.5 = half-overlapping, nnU-Net's default).
    run_patches : callable
        A :data:`PatchStream`: tiles float32 (1, C, *patch) in z, y, x order -> their logits
        float32 (num_classes, *patch), in the same order (:func:`one_at_a_time` makes one
        from a function of one patch).
    num_classes : int
        Number of logit channels.
    threads : int, optional
        Threads for weighting and adding patch logits (default: all cores).
    starts : sequence of sequence of int, optional
        Patch starts per axis in the padded image (default: nnU-Net's grid over all of it).
    box : sequence of slice, optional
        Part of the image (unpadded coordinates) to return logits for; the patches must cover
        it. Default: the whole image.
    precomputed : mapping, optional
        Logits (num_classes, *patch) already known for some patches, by start (z, y, x):
        these are not run again.

    Yields
    ------
    z0 : int
        First z index of the slab, counted from the box's first slice.
    logits : np.ndarray
        float32 (num_classes, dz, box height, box width); consecutive slabs tile the box's z
        range without gaps.
    """
    patch = tuple(int(p) for p in patch_size)
    pads = padding_for(image.shape[1:], patch)
    padded = np.pad(image, [(0, 0), *pads]) if any(lo or hi for lo, hi in pads) else image
    size = padded.shape[1:]
    if starts is None:
        starts = window_starts(size, patch, step)
    starts = [sorted(int(s) for s in axis) for axis in starts]
    if box is None:
        box = tuple(slice(0, n) for n in image.shape[1:])
    # The box in padded coordinates.
    bz, by, bx = (slice(b.start + lo, b.stop + lo) for b, (lo, _) in zip(box, pads, strict=True))
    _check_cover(starts, patch, size, (bz, by, bx))
    precomputed = precomputed or {}
    weights = gaussian_importance(patch)
    depth = patch[0]
    logits_sum = np.zeros((num_classes, depth, size[1], size[2]), dtype=np.float32)
    weight_sum = np.zeros((depth, size[1], size[2]), dtype=np.float32)
    # Weighting and adding a patch's logits is NumPy work that releases the GIL: it is split
    # over classes between threads, and overlaps the patches a stream keeps in flight.
    threads = max(1, min(threads or os.cpu_count() or 1, num_classes))
    groups = [range(c, num_classes, threads) for c in range(threads)]

    def accumulate(logits: np.ndarray, region: tuple[slice, ...], classes: range) -> None:
        for c in classes:
            logits_sum[(c, *region)] += logits[c] * weights

    def finished(origin: int, upto: int) -> Iterator[tuple[int, np.ndarray]]:
        # Padded z range [origin, upto) is final; hand on the part inside the box.
        lo = max(origin, bz.start)
        hi = min(upto, bz.stop)
        if hi > lo:
            rows = slice(lo - origin, hi - origin)
            slab = logits_sum[:, rows, by, bx] / weight_sum[rows, by, bx]
            yield lo - bz.start, slab

    positions = [(zs, ys, xs) for zs in starts[0] for ys in starts[1] for xs in starts[2]]
    to_run = [at for at in positions if at not in precomputed]
    tiles = (
        np.ascontiguousarray(
            padded[None, :, zs : zs + depth, ys : ys + patch[1], xs : xs + patch[2]]
        )
        for zs, ys, xs in to_run
    )
    results = iter(run_patches(tiles))
    origin = starts[0][0]  # padded z index of logits_sum[:, 0]
    with ThreadPoolExecutor(threads) as pool:
        for zs, ys, xs in positions:
            if zs > origin:
                yield from finished(origin, zs)
                n = zs - origin  # shift the window down by n slices
                logits_sum[:, : depth - n] = logits_sum[:, n:].copy()
                logits_sum[:, depth - n :] = 0
                weight_sum[: depth - n] = weight_sum[n:].copy()
                weight_sum[depth - n :] = 0
                origin = zs
            logits = precomputed.get((zs, ys, xs))
            if logits is None:
                logits = next(results)
            region = (slice(0, depth), slice(ys, ys + patch[1]), slice(xs, xs + patch[2]))
            for _ in pool.map(lambda g, lg=logits, r=region: accumulate(lg, r, g), groups):
                pass
            weight_sum[region] += weights
        yield from finished(origin, origin + depth)


def _check_cover(
    starts: Sequence[Sequence[int]],
    patch: Sequence[int],
    size: Sequence[int],
    box: Sequence[slice],
) -> None:
    """Every box voxel must lie in some patch, and every patch inside the padded image."""
    for axis, (s, p, n, b) in enumerate(zip(starts, patch, size, box, strict=True)):
        if not s or s[0] < 0 or s[-1] + p > n:
            raise ValueError(f"axis {axis}: patch starts {s} do not fit an image of {n}")
        gaps = [s[i + 1] - s[i] for i in range(len(s) - 1)]
        if s[0] > b.start or s[-1] + p < b.stop or any(g > p for g in gaps):
            raise ValueError(f"axis {axis}: patch starts {s} leave part of {b} uncovered")
