"""Scan -> network input, reproducing nnU-Net v2's preprocessing as the bundle records it.

nnU-Net's order of operations (``DefaultPreprocessor.run_case_npy``) is kept exactly:

1. cast to float32 and apply the plans' ``transpose_forward`` (no reorientation: arrays stay in
   SimpleITK order);
2. crop to the bounding box of non-zero voxels (for CT usually the whole image);
3. normalise (CT: clip to the training foreground's 0.5/99.5 percentiles, then z-score with its
   mean and std; MR: per-image z-score) - before resampling, as nnU-Net does;
4. resample to the bundle spacing (cubic B-spline; nearest neighbour along a strongly
   anisotropic axis), see :mod:`edge_seg.resample`.

:class:`Geometry` records what is needed to map the network's output back onto the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from edge_seg.resample import compute_new_shape, resample_image


@dataclass(frozen=True)
class Geometry:
    """How the network grid relates to the scan grid.

    Attributes
    ----------
    transpose_forward : tuple of int
        Axis permutation applied to the (z, y, x) scan array.
    shape_before_cropping : tuple of int
        Scan shape after the transpose.
    bbox : tuple of (int, int)
        Non-zero bounding box (half-open) in transposed scan coordinates.
    spacing_mm : tuple of float
        Scan spacing in transposed order.
    target_spacing_mm : tuple of float
        Network spacing (bundle), transposed order.
    network_shape : tuple of int
        Shape of the preprocessed image (without channels).
    """

    transpose_forward: tuple[int, ...]
    shape_before_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    spacing_mm: tuple[float, ...]
    target_spacing_mm: tuple[float, ...]
    network_shape: tuple[int, ...]

    @property
    def shape_after_cropping(self) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.bbox)

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def to_scan(self, cropped: np.ndarray, fill: int = 0) -> np.ndarray:
        """Place an array of ``shape_after_cropping`` back into the (z, y, x) scan grid."""
        full = np.full(self.shape_before_cropping, fill, dtype=cropped.dtype)
        full[tuple(slice(lo, hi) for lo, hi in self.bbox)] = cropped
        return np.ascontiguousarray(full.transpose(self.transpose_backward))


def nonzero_bbox(channels: Sequence[np.ndarray]) -> tuple[tuple[int, int], ...]:
    """Half-open bounding box of voxels that are non-zero in any channel.

    nnU-Net fills holes in the non-zero mask first; holes lie inside the box, so the box is the
    same without that (costly) step. An all-zero image keeps its full extent.

    The box is the whole image exactly when each of its six faces holds a non-zero voxel,
    which is the rule for CT (air is -1000 HU, not 0): checking the faces first spares
    reading every voxel.

    Examples
    --------
    >>> image = np.zeros((4, 5, 6), np.int16)
    >>> image[1:3, 2, 1:4] = 7
    >>> nonzero_bbox([image])
    ((1, 3), (2, 3), (1, 4))
    """
    shape = channels[0].shape
    faces = [
        tuple(slice(i, i + 1) if a == axis else slice(None) for a in range(len(shape)))
        for axis, n in enumerate(shape)
        for i in (0, n - 1)
    ]
    if all(any(np.any(c[face]) for c in channels) for face in faces):
        return tuple((0, int(n)) for n in shape)
    mask = channels[0] != 0
    for channel in channels[1:]:
        mask |= channel != 0
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def _nonzero_mask_filled(channel: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(channel != 0)


def normalize(image: np.ndarray, scheme: dict[str, Any], where: str = "bundle") -> np.ndarray:
    """Normalise one channel in place (float32), as nnU-Net's normalisation classes do.

    ``scheme`` is one entry of the bundle's ``normalization`` list: ``{"scheme": "ct", "lower",
    "upper", "mean", "std"}``, ``{"scheme": "zscore"}`` (optionally ``"use_mask": true``, for
    plans with ``use_mask_for_norm``) or ``{"scheme": "none"}``.
    """
    name = str(scheme.get("scheme", "")).lower()
    if name == "ct":
        np.clip(image, scheme["lower"], scheme["upper"], out=image)
        image -= np.float32(scheme["mean"])
        image /= np.float32(max(float(scheme["std"]), 1e-8))
    elif name == "zscore":
        if scheme.get("use_mask"):
            mask = _nonzero_mask_filled(image)
            values = image[mask]
            mean, std = values.mean(), values.std()
            image[mask] = (values - mean) / max(float(std), 1e-8)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(float(std), 1e-8)
    elif name != "none":
        raise EdgesegError(f"{where}: unknown normalization scheme {scheme.get('scheme')!r}")
    return image


def resampling_settings(bundle: Bundle) -> tuple[float, bool | None]:
    """Anisotropy threshold and ``force_separate_z`` from the bundle's ``resampling`` entry.

    Only nnU-Net's default image resampling (cubic in-plane, nearest out-of-plane) is
    implemented; a bundle asking for other spline orders is refused rather than approximated.
    """
    settings = bundle.resampling or {}
    order, order_z = settings.get("order", 3), settings.get("order_z", 0)
    if order != 3 or order_z != 0:
        raise EdgesegError(
            f"{bundle.root}: image resampling order {order}/{order_z} is not supported "
            "(edgeseg implements nnU-Net's default, order 3 with order_z 0)"
        )
    force = settings.get("force_separate_z")
    return float(settings.get("anisotropy_threshold", 3.0)), (
        None if force is None else bool(force)
    )


def preprocess(
    volume: Volume | Sequence[Volume], bundle: Bundle, threads: int | None = None
) -> tuple[np.ndarray, Geometry]:
    """Turn a scan into the network's input, exactly as the bundle's source model saw it.

    Parameters
    ----------
    volume : Volume or sequence of Volume
        One volume per network input channel (same grid).
    bundle : Bundle
        Supplies ``transpose_forward``, ``normalization``, ``spacing_mm`` and the anisotropy
        threshold.
    threads : int, optional
        Worker threads for resampling (default: all cores).
    threads : int, optional
        Worker threads for resampling (default: all cores).

    Returns
    -------
    image : np.ndarray
        float32, shape (C, Z, Y, X) at the bundle spacing (transposed axis order).
    geometry : Geometry
        Everything needed to map network-grid output back onto the scan.
    """
    volumes = [volume] if isinstance(volume, Volume) else list(volume)
    where = str(volumes[0].path) if volumes[0].path else "volume"
    if len(volumes) != len(bundle.channels):
        raise EdgesegError(
            f"{where}: model expects {len(bundle.channels)} input channel(s) "
            f"({', '.join(bundle.channels)}), got {len(volumes)}"
        )
    if len(bundle.normalization) != len(volumes):
        raise EdgesegError(f"{bundle.root}: normalization has no entry per input channel")
    shape = volumes[0].array.shape
    if any(v.array.shape != shape for v in volumes):
        raise EdgesegError(f"{where}: input channels differ in shape")
    transpose = tuple(int(i) for i in bundle.transpose_forward)
    arrays = [v.array.transpose(transpose) for v in volumes]
    spacing = tuple(float(volumes[0].spacing_mm[i]) for i in transpose)
    target = tuple(float(s) for s in bundle.spacing_mm)
    bbox = nonzero_bbox(arrays)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    cropped_shape = tuple(hi - lo for lo, hi in bbox)
    new_shape = compute_new_shape(cropped_shape, spacing, target)
    threshold, force_separate = resampling_settings(bundle)
    out = np.empty((len(arrays), *new_shape), dtype=np.float32)
    for c, array in enumerate(arrays):
        scheme = bundle.normalization[c]
        cropped = array[crop]
        pointwise = None
        if str(scheme.get("scheme", "")).lower() in ("ct", "none"):
            # Voxel-wise: may run after the nearest-neighbour slice pick (same result).
            def pointwise(x: np.ndarray, scheme: dict = scheme) -> None:
                normalize(x, scheme, where=str(bundle.root))
        else:
            # Needs whole-image statistics: normalise first, as nnU-Net does.
            cropped = normalize(np.array(cropped, dtype=np.float32), scheme, str(bundle.root))
        out[c] = resample_image(
            cropped,
            new_shape,
            spacing,
            target,
            3,
            0,
            threshold,
            pointwise,
            threads,
            force_separate,
        )
        del cropped
    geometry = Geometry(
        transpose_forward=transpose,
        shape_before_cropping=tuple(int(s) for s in arrays[0].shape),
        bbox=bbox,
        spacing_mm=spacing,
        target_spacing_mm=target,
        network_shape=tuple(int(s) for s in new_shape),
    )
    return out, geometry
