"""Resampling between the scan's voxel grid and the network's, as nnU-Net v2 does it.

nnU-Net resizes images with scikit-image's ``resize`` (``mode="edge"``, no anti-aliasing), i.e.
``scipy.ndimage.zoom`` with ``grid_mode=True`` (voxel centres at ``(j + 0.5) * n_in / n_out
- 0.5``), clipped to the input's value range; cubic B-splines (order 3) for images, linear
(order 1) for logits. When the voxels are strongly anisotropic (max/min spacing above 3) the
out-of-plane axis is resampled separately with nearest neighbour (order 0), slice by slice.

Here the same interpolation is computed axis by axis (B-spline interpolation is separable),
which gives the same numbers as ``zoom`` at a fraction of its time and memory, and lets the
logits be mapped back one output slab at a time. Along one axis, prefilter and taps together
are a linear map from ``n_in`` samples to ``n_out``: where that matrix is small (a 512-voxel
axis shrunk to 137) it is built once and applied as a matrix product, which BLAS runs several
times faster than the recursive prefilter; larger (upsampling) axes keep the filter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from functools import lru_cache

import numpy as np

#: nnU-Net's ``ANISO_THRESHOLD``: above this max/min spacing ratio the low-resolution axis is
#: resampled separately with nearest neighbour.
ANISOTROPY_THRESHOLD = 3.0

#: ``scipy.ndimage.zoom`` pads by this many edge voxels before the spline prefilter in
#: ``mode="nearest"``; doing the same reproduces its boundary values exactly.
_SPLINE_PAD = 12

#: Rows of the other axes processed at once (bounds temporary memory on large scans).
_CHUNK_VOXELS = 8_000_000

#: Bytes of float32 slices converted and resized at once along a separately resampled axis.
_RUN_BYTES = 4 << 20

#: Largest ``n_in * n_out`` for which cubic resizing along an axis is a dense matrix product
#: (512 x 512: a FLARE CT in-plane axis shrunk to any coarser spacing). Beyond it the cost of
#: the product grows with ``n_out`` while the prefilter's does not.
DENSE_CUBIC_MAX_ENTRIES = 512 * 512


def compute_new_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], new_spacing_mm: Sequence[float]
) -> tuple[int, ...]:
    """Voxel counts after resampling: ``round(n * spacing / new_spacing)`` per axis."""
    return tuple(
        round(s / t * n) for s, t, n in zip(spacing_mm, new_spacing_mm, shape, strict=True)
    )


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    spacing = np.asarray(spacing, dtype=float)
    axes = np.where(spacing.max() / spacing == 1)[0]
    # Two or three equally coarse axes (e.g. 0.24, 1.25, 1.25): no single out-of-plane axis.
    return int(axes[0]) if len(axes) == 1 else None


def separate_axis(
    spacing_mm: Sequence[float],
    new_spacing_mm: Sequence[float],
    threshold: float = ANISOTROPY_THRESHOLD,
    force: bool | None = None,
) -> int | None:
    """The axis nnU-Net resamples separately (order 0), or None.

    ``force`` is the plans' ``force_separate_z``: None decides from the spacings (the current
    spacing first; if it is not anisotropic, the new one), False never separates, True
    separates the current spacing's coarsest axis.
    """
    if force is False:
        return None
    if force is True:
        return _lowres_axis(spacing_mm)
    for spacing in (spacing_mm, new_spacing_mm):
        if max(spacing) / min(spacing) > threshold:
            return _lowres_axis(spacing)
    return None


def grid_positions(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each output voxel centre (``grid_mode=True``, float64)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Order-0 source index per output voxel (SciPy rounds halves up, clamps at the edges)."""
    c = grid_positions(n_in, n_out)
    return np.clip(np.floor(c + 0.5), 0, n_in - 1).astype(np.intp)


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order-1 taps ``(i0, i1, w1)``: value = ``(1 - w1) * a[i0] + w1 * a[i1]``.

    Coordinates outside the grid are clamped (``mode="nearest"``).
    """
    c = np.clip(grid_positions(n_in, n_out), 0, n_in - 1)
    i0 = np.floor(c).astype(np.intp)
    w1 = (c - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, w1


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights for taps at floor(c) - 1 .. floor(c) + 2; shape (4, n)."""
    t2 = t * t
    t3 = t2 * t
    return np.stack(
        [
            (1.0 - t) ** 3 / 6.0,
            (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
            (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
            t3 / 6.0,
        ]
    )


def _chunks(shape: Sequence[int], axis: int) -> list[tuple[int, slice]]:
    """Split along the first axis other than ``axis`` so each piece holds ~_CHUNK_VOXELS."""
    other = 0 if axis != 0 else 1
    per_row = int(np.prod(shape)) // max(int(shape[other]), 1)
    rows = max(1, _CHUNK_VOXELS // max(per_row, 1))
    return [(other, slice(s, min(s + rows, shape[other]))) for s in range(0, shape[other], rows)]


def _index(axis: int, sl: slice | np.ndarray, ndim: int) -> tuple:
    return tuple(sl if a == axis else slice(None) for a in range(ndim))


def _cubic_along(
    data: np.ndarray, axis: int, n_out: int, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Cubic B-spline resize of ``data`` along one axis (float32 result)."""
    n_in = data.shape[axis]
    if n_in == n_out:
        return data
    if n_in * n_out <= DENSE_CUBIC_MAX_ENTRIES:
        return _matrix_along(data, axis, cubic_matrix(n_in, n_out), pool)
    return _spline_along(data, axis, n_out, pool)


@lru_cache(maxsize=16)
def cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float32 matrix of cubic resizing along one axis.

    ``resized = M @ samples``. The steps are all linear: pad ``_SPLINE_PAD`` edge samples at
    each end (``E``), solve for the B-spline coefficients ``c`` of the padded samples
    (``(c[i-1] + 4 c[i] + c[i+1]) / 6 = s[i]``, the tridiagonal system ``T`` that SciPy's
    prefilter solves recursively), and weight four coefficients per output voxel (``W``):
    ``M = W T^-1 E``. How the coefficients continue past the padded ends changes values
    ``_SPLINE_PAD`` samples inside by a factor ``(2 - sqrt 3) ** 12``, about 1e-7: below
    float32 resolution, so the matrix matches SciPy without depending on its boundary code.

    Examples
    --------
    >>> m = cubic_matrix(8, 3)
    >>> m.shape, bool(np.allclose(m.sum(axis=1), 1.0))  # constants stay constant
    ((3, 8), True)
    """
    padded = n_in + 2 * _SPLINE_PAD
    source = np.clip(np.arange(padded) - _SPLINE_PAD, 0, n_in - 1)
    extend = np.zeros((padded, n_in))
    extend[np.arange(padded), source] = 1.0
    system = (
        np.diag(np.full(padded, 4.0))
        + np.diag(np.ones(padded - 1), 1)
        + np.diag(np.ones(padded - 1), -1)
    ) / 6.0
    # Coefficients continue as the edge coefficient (c[-1] = c[0]).
    system[0, 0] = system[-1, -1] = 5.0 / 6.0
    coefficients = np.linalg.solve(system, extend)
    c = grid_positions(n_in, n_out) + _SPLINE_PAD
    floor = np.floor(c)
    weights = _cubic_weights(c - floor)
    start = floor.astype(np.intp) - 1
    taps = np.zeros((n_out, padded))
    rows = np.arange(n_out)
    for k in range(4):
        np.add.at(taps, (rows, start + k), weights[k])
    matrix = (taps @ coefficients).astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _resize_in_chunks(
    data: np.ndarray,
    axis: int,
    n_out: int,
    resize: Callable[[np.ndarray], np.ndarray],
    pool: ThreadPoolExecutor | None,
) -> np.ndarray:
    """``resize`` (one piece along ``axis`` to ``n_out``) over pieces of the other axes, into
    one float32 array; the pieces run on ``pool`` where given (the resizing below is NumPy,
    BLAS and SciPy work that releases the GIL, so threads scale)."""
    out_shape = list(data.shape)
    out_shape[axis] = n_out
    out = np.empty(out_shape, dtype=np.float32)

    def work(chunk: tuple[int, slice]) -> None:
        other, sl = chunk
        region = _index(other, sl, data.ndim)
        out[region] = resize(data[region])

    chunks = _chunks(data.shape, axis)
    for _ in pool.map(work, chunks) if pool else map(work, chunks):
        pass
    return out


def _matrix_along(
    data: np.ndarray, axis: int, matrix: np.ndarray, pool: ThreadPoolExecutor | None
) -> np.ndarray:
    n_out, n_in = matrix.shape

    def resize(piece: np.ndarray) -> np.ndarray:
        piece = np.asarray(piece, dtype=np.float32)
        if axis == piece.ndim - 1:
            return (piece.reshape(-1, n_in) @ matrix.T).reshape(*piece.shape[:-1], n_out)
        # (..., n_in, rest) -> (..., n_out, rest): a batched product over leading axes.
        lead = int(np.prod(piece.shape[:axis]))
        rest = int(np.prod(piece.shape[axis + 1 :]))
        res = np.matmul(matrix, piece.reshape(lead, n_in, rest))
        return res.reshape(*piece.shape[:axis], n_out, *piece.shape[axis + 1 :])

    return _resize_in_chunks(data, axis, n_out, resize, pool)


def _spline_along(
    data: np.ndarray, axis: int, n_out: int, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Cubic resize by prefiltering each line (O(n) per line, any size)."""
    # Imported here: 0.4 s of start-up that a scan of usual size never needs.
    from scipy import ndimage

    n_in = data.shape[axis]
    c = grid_positions(n_in, n_out) + _SPLINE_PAD
    floor = np.floor(c)
    weights = _cubic_weights(c - floor).astype(np.float32)
    start = floor.astype(np.intp) - 1
    bshape = [1] * data.ndim
    bshape[axis] = n_out
    pad = [(_SPLINE_PAD, _SPLINE_PAD) if a == axis else (0, 0) for a in range(data.ndim)]

    def resize(piece: np.ndarray) -> np.ndarray:
        coef = ndimage.spline_filter1d(
            np.pad(piece, pad, mode="edge"), 3, axis=axis, output=np.float32, mode="nearest"
        )
        acc = np.take(coef, start, axis=axis)
        acc *= weights[0].reshape(bshape)
        for k in range(1, 4):
            acc += np.take(coef, start + k, axis=axis) * weights[k].reshape(bshape)
        return acc

    return _resize_in_chunks(data, axis, n_out, resize, pool)


def _one_blas_thread() -> AbstractContextManager:
    """BLAS on one thread while Python threads share the work (no oversubscription)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def _linear_along(
    data: np.ndarray, axis: int, n_out: int, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    n_in = data.shape[axis]
    if n_in == n_out:
        return data
    i0, i1, w1 = linear_taps(n_in, n_out)
    bshape = [1] * data.ndim
    bshape[axis] = n_out
    w1 = w1.reshape(bshape)
    a0 = np.take(data, i0, axis=axis).astype(np.float32, copy=False)
    a1 = np.take(data, i1, axis=axis)
    a0 += (a1 - a0) * w1
    return a0


def _resize(
    data: np.ndarray,
    new_shape: Sequence[int],
    order: int,
    axes: Sequence[int],
    pool: ThreadPoolExecutor | None = None,
) -> np.ndarray:
    along = _cubic_along if order == 3 else _linear_along
    out = data
    # Shrinking axes first keeps the intermediate arrays small; on ties the contiguous last
    # axis goes first (its filter runs on unit-stride lines).
    ratios = sorted(axes, key=lambda a: (new_shape[a] / data.shape[a], -a))
    for axis in ratios:
        out = along(out, axis, int(new_shape[axis]), pool)
    return out


#: A pointwise intensity transform (e.g. CT normalisation) applied in place to float32 data.
Pointwise = Callable[[np.ndarray], object]


def resample_image(
    data: np.ndarray,
    new_shape: Sequence[int],
    spacing_mm: Sequence[float],
    new_spacing_mm: Sequence[float],
    order: int = 3,
    order_z: int = 0,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
    pointwise: Pointwise | None = None,
    threads: int | None = None,
    force_separate: bool | None = None,
) -> np.ndarray:
    """Resample one 3D channel the way nnU-Net's ``resample_data_or_seg_to_shape`` does.

    Parameters
    ----------
    data : np.ndarray
        One channel, 3D, any numeric dtype (not modified).
    new_shape : sequence of int
        Output voxel counts.
    spacing_mm, new_spacing_mm : sequence of float
        Current and target spacing (decide whether one axis is resampled separately).
    order : {1, 3}
        In-plane spline order (3 for images, 1 for probabilities).
    order_z : {0}
        Order along a separately resampled axis (nnU-Net uses nearest neighbour).
    pointwise : callable, optional
        Voxel-wise transform applied (in place, float32) before resampling, such as CT
        normalisation. With a separately resampled axis it runs only on the slices that the
        nearest-neighbour step keeps, which gives the same result for less work.
    threads : int, optional
        Worker threads (default: all cores).
    force_separate : bool or None
        The plans' ``force_separate_z`` (see :func:`separate_axis`).

    Returns
    -------
    np.ndarray
        float32 array of ``new_shape``; values clipped to the input range (per slice when one
        axis is resampled separately), as scikit-image's ``resize`` does.
    """
    if order not in (1, 3) or order_z != 0:
        raise ValueError("only order 1 or 3 with order_z 0 are implemented (nnU-Net's defaults)")
    new_shape = tuple(int(s) for s in new_shape)
    threads = max(1, threads or os.cpu_count() or 1)
    axis = separate_axis(spacing_mm, new_spacing_mm, anisotropy_threshold, force_separate)
    if tuple(data.shape) == new_shape or axis is None:
        work = np.array(data, dtype=np.float32)  # a copy: the caller's array stays untouched
        if pointwise is not None:
            pointwise(work)
        if tuple(data.shape) == new_shape:
            return work
        with ThreadPoolExecutor(threads) as pool, _one_blas_thread():
            out = _resize(work, new_shape, order, range(3), pool)
        if order > 1:
            np.clip(out, work.min(), work.max(), out=out)
        return np.ascontiguousarray(out, dtype=np.float32)
    # Separate axis: nearest neighbour along it, so only the source slices actually picked
    # need converting and in-plane resampling; each slice is independent, so threads take
    # runs of slices end to end.
    moved = np.moveaxis(data, axis, 0)
    picks = nearest_indices(moved.shape[0], new_shape[axis])
    unique, inverse = np.unique(picks, return_inverse=True)
    plane_shape = [new_shape[a] for a in range(3) if a != axis]
    planes = np.empty((len(unique), *plane_shape), dtype=np.float32)
    # Runs of a few MB: the float32 copy of a run is then memory the allocator hands out
    # again, where runs of 30 MB each took fresh pages from the kernel (0.1 s of page
    # faults for a 512x512x300 CT).
    slice_bytes = 4 * int(np.prod(moved.shape[1:]))
    per_run = max(1, min(int(np.ceil(len(unique) / (threads * 4))), _RUN_BYTES // slice_bytes))

    def work_on(start: int) -> None:
        index = unique[start : start + per_run]
        slices = np.array(moved[index], dtype=np.float32)
        if pointwise is not None:
            pointwise(slices)
        resized = _resize(slices, (len(index), *plane_shape), order, (1, 2))
        if order > 1:
            lo = slices.min(axis=(1, 2))[:, None, None]
            hi = slices.max(axis=(1, 2))[:, None, None]
            np.clip(resized, lo, hi, out=resized)
        planes[start : start + len(index)] = resized

    with ThreadPoolExecutor(threads) as pool, _one_blas_thread():
        for _ in pool.map(work_on, range(0, len(unique), per_run)):
            pass
    out = planes[inverse]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Network logits -> label map on the scan grid, one output slice at a time.
#
# nnU-Net resamples every class's logits to the scan grid (linear; nearest along a separate
# axis) and takes the argmax: for a 512x512x300 CT with 14 classes that is 4.4 GB of floats.
# Here each output slice is computed on its own, and only where it matters: an interpolated
# logit vector is a convex combination of its (up to 8) source vectors, so where all sources
# share one argmax the result has that argmax too. Only voxels whose source cell mixes labels
# (organ borders) are interpolated in full.
# --------------------------------------------------------------------------------------------

_MIXED = 255


def _axis_taps(n_in: int, n_out: int, nearest: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if nearest:
        idx = nearest_indices(n_in, n_out)
        return idx, idx, np.zeros(n_out, dtype=np.float32)
    return linear_taps(n_in, n_out)


def _uniform_cells(labels: np.ndarray) -> np.ndarray:
    """Per 2x2 cell (edge-clamped) its label where all four corners agree, else _MIXED."""
    ext = np.pad(labels, ((0, 1), (0, 1)), mode="edge")
    corner = ext[:-1, :-1]
    same = (corner == ext[1:, :-1]) & (corner == ext[:-1, 1:]) & (corner == ext[1:, 1:])
    return np.where(same, corner, np.uint8(_MIXED)).astype(np.uint8)


def logits_to_labels(
    slabs: Iterator[tuple[int, np.ndarray]],
    network_shape: Sequence[int],
    output_shape: Sequence[int],
    network_spacing_mm: Sequence[float],
    output_spacing_mm: Sequence[float],
    class_values: Sequence[int] | np.ndarray,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
    force_separate: bool | None = None,
    box: Sequence[slice] | None = None,
) -> np.ndarray:
    """Resample streamed logits to ``output_shape`` and take the argmax, slice by slice.

    Equivalent to nnU-Net's ``resampling_fn_probabilities`` (order 1, nearest along a separate
    axis) followed by ``argmax``, without ever holding all classes at output resolution.

    Parameters
    ----------
    slabs : iterator of (z0, logits)
        float32 (K, dz, Y, X) slabs covering the box's z range in order (z0 counted from the
        box's first slice; Y, X the box's height and width).
    network_shape, output_shape : sequence of int
        (Z, Y, X) of the logits and of the wanted label map.
    network_spacing_mm, output_spacing_mm : sequence of float
        Decide, as in nnU-Net, whether one axis is resampled with nearest neighbour.
    class_values : sequence of int
        Label value of each logit channel (channels may have been dropped, e.g. for organs
        declared absent).
    box : sequence of slice, optional
        Part of the network grid the logits cover (default: all of it). Output voxels whose
        interpolation reaches outside it are background (label 0), and cost nothing.

    Returns
    -------
    np.ndarray
        uint8 labels of ``output_shape``.
    """
    values = np.asarray(class_values, dtype=np.uint8)
    identity = np.array_equal(values, np.arange(len(values)))
    separate = separate_axis(
        network_spacing_mm, output_spacing_mm, anisotropy_threshold, force_separate
    )
    if box is None:
        box = tuple(slice(0, int(n)) for n in network_shape)
    out = np.zeros(tuple(int(s) for s in output_shape), dtype=np.uint8)
    taps = []
    reach = []  # per axis, the output voxels whose taps all lie inside the box
    for axis, (n_in, n_out) in enumerate(zip(network_shape, output_shape, strict=True)):
        i0, i1, w1 = _axis_taps(int(n_in), int(n_out), separate == axis)
        i1 = np.where(w1 == 0, i0, i1)  # a tap of weight 0 may lie outside the box
        inside = np.flatnonzero((i0 >= box[axis].start) & (i1 < box[axis].stop))
        if inside.size == 0:
            for _ in slabs:  # nothing to label; still run the stream to its end
                pass
            return out
        reach.append(slice(int(inside[0]), int(inside[-1]) + 1))
        if axis == 0:
            taps.append((i0, i1, w1))
        else:  # in-plane taps in the box's own coordinates
            sl = reach[axis]
            taps.append((i0[sl] - box[axis].start, i1[sl] - box[axis].start, w1[sl]))
    (z0s, z1s, wzs), ytaps, xtaps = taps
    y0, x0 = ytaps[0], xtaps[0]
    width = box[2].stop - box[2].start
    plane_out = (reach[1], reach[2])
    logits_at: dict[int, np.ndarray] = {}
    argmax_at: dict[int, np.ndarray] = {}
    cells_key: tuple[int, int] | None = None
    cells = np.empty(0, dtype=np.uint8)
    j, j_end = reach[0].start, reach[0].stop
    for z_start, slab in slabs:
        z_first = box[0].start + z_start  # network z of the slab's first slice
        for k in range(slab.shape[1]):
            logits_at[z_first + k] = slab[:, k]
            argmax_at[z_first + k] = np.argmax(slab[:, k], axis=0).astype(np.uint8)
        available = z_first + slab.shape[1]
        while j < j_end and z1s[j] < available:
            i0, i1, wz = int(z0s[j]), int(z1s[j]), float(wzs[j])
            if cells_key != (i0, i1):
                pair = argmax_at[i0]
                if i1 != i0:
                    pair = np.where(pair == argmax_at[i1], pair, np.uint8(_MIXED))
                cells = _uniform_cells(pair)
                cells_key = (i0, i1)
            plane = cells.take(y0, axis=0).take(x0, axis=1)
            mixed = np.flatnonzero(plane == _MIXED)
            if mixed.size:
                ys, xs = np.divmod(mixed, plane.shape[1])
                plane.ravel()[mixed] = _interpolate_argmax(
                    logits_at[i0], logits_at[i1], wz, ys, xs, ytaps, xtaps, width
                )
            out[(j, *plane_out)] = plane if identity else values[plane]
            j += 1
        if j < j_end:
            keep_from = int(z0s[j])
            for index in [i for i in logits_at if i < keep_from]:
                del logits_at[index], argmax_at[index]
    if j != j_end:
        raise RuntimeError(
            f"logit stream ended early: {j - reach[0].start} of {j_end - reach[0].start} "
            "output slices computed"
        )
    return out


def _interpolate_argmax(
    lower: np.ndarray,
    upper: np.ndarray,
    wz: float,
    ys: np.ndarray,
    xs: np.ndarray,
    ytaps: tuple[np.ndarray, np.ndarray, np.ndarray],
    xtaps: tuple[np.ndarray, np.ndarray, np.ndarray],
    width: int,
) -> np.ndarray:
    """Argmax channel index of the trilinear logits at output voxels (ys, xs) of one slice."""
    y0, y1, wy = (t[ys] for t in ytaps)
    x0, x1, wx = (t[xs] for t in xtaps)
    flat_lower = lower.reshape(lower.shape[0], -1)
    flat_upper = upper.reshape(upper.shape[0], -1)
    total = None
    corners = (
        (y0, x0, (1 - wy) * (1 - wx)),
        (y0, x1, (1 - wy) * wx),
        (y1, x0, wy * (1 - wx)),
        (y1, x1, wy * wx),
    )
    for yy, xx, w in corners:
        flat = yy * width + xx
        value = np.take(flat_lower, flat, axis=1)
        if wz:
            value = value * (1 - wz) + np.take(flat_upper, flat, axis=1) * wz
        value *= w
        total = value if total is None else total + value
    return np.argmax(total, axis=0).astype(np.uint8)
