"""Rasterise an :class:`~edge_seg.synth.anatomy.Anatomy` onto a voxel grid.

The volume is filled a few slices at a time (small temporaries stay in cache and are reused by
the allocator), layer by layer: body outline with skin, subcutaneous fat, muscle wall and ribs,
then the abdominal cavity (bowel loops in mesenteric fat) or the lungs above the diaphragm, then
every structure in painting order, each only inside its bounding box. Edges are blended over
about one voxel from the approximate signed distance, which gives partial-volume voxels without
a separate blur pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_seg.synth.anatomy import Anatomy, Structure
from edge_seg.synth.geometry import Tube
from edge_seg.synth.intensity import CaseIntensities

CHUNK_SLICES = 8


@dataclass(frozen=True)
class Grid:
    """A voxel grid in the patient frame: ``shape`` (z, y, x), ``spacing_mm`` (z, y, x) and
    ``first_voxel_mm`` (x, y, z), the patient-frame centre of voxel [0, 0, 0]."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    first_voxel_mm: tuple[float, float, float]

    def axis(self, k: int) -> np.ndarray:
        """Voxel-centre coordinates in mm along x (k=0), y (k=1) or z (k=2)."""
        n = self.shape[2 - k]
        return (self.first_voxel_mm[k] + np.arange(n) * self.spacing_mm[2 - k]).astype(np.float32)

    def index_range(self, k: int, low_mm: float, high_mm: float) -> tuple[int, int]:
        """Half-open index range of voxels whose centres lie within [low_mm, high_mm] on axis k."""
        step, first, n = self.spacing_mm[2 - k], self.first_voxel_mm[k], self.shape[2 - k]
        lo = int(np.ceil((low_mm - first) / step))
        hi = int(np.floor((high_mm - first) / step)) + 1
        return max(lo, 0), min(hi, n)


def _sub_window(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray], low: np.ndarray, high: np.ndarray
) -> tuple[slice, slice, slice] | None:
    """(z, y, x) slices of a box whose voxel centres (``axes`` x, y, z) lie in [low, high] mm."""
    slices = []
    for k in (2, 1, 0):
        a = axes[k]
        i0 = int(np.searchsorted(a, low[k], side="left"))
        i1 = int(np.searchsorted(a, high[k], side="right"))
        if i0 >= i1:
            return None
        slices.append(slice(i0, i1))
    return tuple(slices)  # type: ignore[return-value]


def _take(array: np.ndarray, window: tuple[slice, slice, slice]) -> np.ndarray:
    """``array[window]`` for a broadcastable array (axes of length 1 are kept whole)."""
    return array[
        tuple(w if n > 1 else slice(None) for w, n in zip(window, array.shape, strict=True))
    ]


def _clip01(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0, out=a)


def _weight(distance: np.ndarray, edge_mm: float) -> np.ndarray:
    """Fractional occupancy from a signed distance (1 inside, 0 outside, linear over the edge)."""
    w = distance * np.float32(-1.0 / edge_mm)
    w += np.float32(0.5)
    return _clip01(w)


def _paint(image: np.ndarray, weight: np.ndarray, value: np.ndarray) -> None:
    """Blend ``value`` (per channel, or an array shaped like ``image``) into ``image`` in place."""
    for c in range(image.shape[0]):
        v = value[c]
        image[c] += weight * (v - image[c])


class Rasteriser:
    """Fills image channels and a label map for one anatomy on one grid."""

    def __init__(self, anatomy: Anatomy, tissues: CaseIntensities, grid: Grid) -> None:
        self.anatomy, self.tissues, self.grid = anatomy, tissues, grid
        sz, sy, sx = grid.spacing_mm
        # One voxel's worth of edge blending: partial volume of an anisotropic voxel.
        self.edge_mm = float(max((sx * sy * sz) ** (1.0 / 3.0), 0.5))
        self.x, self.y, self.z = grid.axis(0), grid.axis(1), grid.axis(2)
        self.x3, self.y3 = self.x[None, None, :], self.y[None, :, None]
        self.dome = anatomy.diaphragm.height(self.x[None, :], self.y[:, None])  # (Y, X)
        self.boxes = [self._box(s) for s in anatomy.structures]
        self._bowel_planes = self._bowel_in_plane()
        self._wall_tables()

    def _box(self, s: Structure) -> tuple[slice, slice, tuple[int, int]] | None:
        lo, hi = s.bounds()
        ranges = [self.grid.index_range(k, lo[k], hi[k]) for k in range(3)]
        if any(a >= b for a, b in ranges):
            return None
        (i0, i1), (j0, j1), zr = ranges
        return slice(j0, j1), slice(i0, i1), zr

    def _bowel_in_plane(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """In-plane factors of the bowel-loop texture.

        Term k is ``plane(x, y) * sin(f z + phi + twist(x, y))``; expanding the sine gives
        ``A(x, y) sin(f z + phi) + B(x, y) cos(f z + phi)``, so the 3-D texture costs two
        multiply-adds per voxel and term while its loops wander in z instead of stacking.
        """
        a = self.anatomy
        xw, yw, _ = a.bowel_warp.apply(self.x[None, :], self.y[:, None], np.float32(0.0))
        factors = []
        for k in range(3):
            theta = k * np.pi / 3.0 + a.bowel_phase[k, 2]
            u = xw * np.float32(np.cos(theta)) + yw * np.float32(np.sin(theta))
            v = yw * np.float32(np.cos(theta)) - xw * np.float32(np.sin(theta))
            f, p = a.bowel_frequency[k], a.bowel_phase[k]
            plane = np.sin(u * np.float32(f[0]) + np.float32(p[0]))
            plane *= np.sin(v * np.float32(f[1]) + np.float32(p[1]))
            twist = np.zeros_like(plane)
            for amplitude, fx, fy, phase in a.bowel_twist[k]:
                twist += np.float32(amplitude) * np.sin(
                    self.x[None, :] * np.float32(fx)
                    + self.y[:, None] * np.float32(fy)
                    + np.float32(phase)
                )
            factors.append(
                (
                    (plane * np.cos(twist)).astype(np.float32),
                    (plane * np.sin(twist)).astype(np.float32),
                )
            )
        return factors

    # -- layers -------------------------------------------------------------------------
    def _body_distance(self, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) to the skin, per voxel of the chunk."""
        a, b = self.anatomy.body.radii(z.ravel())
        a = a.astype(np.float32)[:, None, None]
        b = b.astype(np.float32)[:, None, None]
        # Below the groin the outline splits into two thighs.
        split = np.clip((-330.0 - z.ravel()) / 70.0, 0.0, 1.0).astype(np.float32)[:, None, None]
        if not split.any():
            return self._ellipse_distance(self.x3, self.y3, a, b)
        offset = a * 0.5 * split
        leg_a = a * (1.0 - 0.5 * split)
        left = self._ellipse_distance(self.x3 - offset, self.y3, leg_a, b)
        right = self._ellipse_distance(self.x3 + offset, self.y3, leg_a, b)
        return np.minimum(left, right, out=left)

    @staticmethod
    def _ellipse_distance(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # F / |grad F| for F = (x/a)^2 + (y/b)^2 - 1: exact on the outline, good to a few cm.
        xa, yb = (x / a) ** 2, (y / b) ** 2
        f = xa + yb
        f -= np.float32(1.0)
        g = xa / (a * a) + yb / (b * b)
        np.sqrt(g, out=g)
        g *= np.float32(2.0)
        g += np.float32(1e-6)
        f /= g
        return f

    def _wall_tables(self) -> None:
        """Look-up tables of the body wall (skin, subcutaneous fat, muscle) by skin distance.

        Painting the wall layer by layer costs about twenty passes over every voxel; the same
        blend tabulated once per case at 0.05 mm steps costs one index computation and a take.
        """
        t, body, e = self.tissues, self.anatomy.body, self.edge_mm
        self.wall_depth_mm = 2.0 + body.subcutaneous_fat_mm + body.muscle_mm
        self.lut_low = -(self.wall_depth_mm + 2.0 * e)
        self.lut_step = 0.05
        d = np.arange(self.lut_low, 2.0 * e + self.lut_step, self.lut_step, dtype=np.float32)
        wall = np.repeat(t["air"][:, None], len(d), axis=1).astype(np.float32)
        for shift, tissue in (
            (0.0, "skin"),
            (2.0, "fat"),
            (2.0 + body.subcutaneous_fat_mm, "muscle"),
        ):
            _paint(wall, _weight(d + np.float32(shift), e), t[tissue])
        self.wall_lut = wall
        self.cavity_lut = _weight(d + np.float32(self.wall_depth_mm), e)

    def _layers(self, image: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Paint body, wall, ribs, cavity and lungs; return the cavity filling (C, Z, Y, X)."""
        t, body, e = self.tissues, self.anatomy.body, self.edge_mm
        d = self._body_distance(z)
        index = d - np.float32(self.lut_low)
        index *= np.float32(1.0 / self.lut_step)
        np.clip(index, np.float32(0), np.float32(self.cavity_lut.size - 1), out=index)
        index = index.astype(np.intp)
        for c in range(image.shape[0]):
            np.take(self.wall_lut[c], index, out=image[c])
        cavity_weight = np.take(self.cavity_lut, index)
        if z.max() > self.dome.max() - 170:
            self._ribs(image, d + np.float32(body.subcutaneous_fat_mm), z)
        d += np.float32(self.wall_depth_mm)
        # Bowel loops in mesenteric fat: a thresholded sum of three smooth 3-D waves.
        a = self.anatomy
        wave = np.zeros(d.shape, np.float32)
        term = np.empty(d.shape, np.float32)
        for k, (along_sin, along_cos) in enumerate(self._bowel_planes):
            angle = z * np.float32(a.bowel_frequency[k, 2]) + np.float32(a.bowel_phase[k, 2])
            np.multiply(along_sin[None], np.sin(angle).astype(np.float32), out=term)
            wave += term
            np.multiply(along_cos[None], np.cos(angle).astype(np.float32), out=term)
            wave += term
        wave += np.float32(a.bowel_share)  # share of bowel vs mesenteric fat varies per case
        wave *= np.float32(2.5)
        wave += np.float32(0.5)
        bowel = _clip01(wave)
        top = self.dome.min()
        if z.max() > top:  # above the dome: mediastinal fat, no bowel
            below = self.dome[None] - z
            bowel *= _weight(-below, e)
        cavity = np.empty_like(image)
        fat, gut = t["fat"], t["bowel"]
        for c in range(image.shape[0]):
            cavity[c] = fat[c] + bowel * (gut[c] - fat[c])
        _paint(image, cavity_weight, cavity)
        if z.max() > top:
            lung = self.dome[None] - z
            np.maximum(lung, np.float32(32.0) - np.abs(self.x3 - np.float32(5.0)), out=lung)
            np.maximum(lung, d + np.float32(5.0), out=lung)
            _paint(image, _weight(lung, e), t["lung"])
        return cavity

    def _ribs(self, image: np.ndarray, wall_depth: np.ndarray, z: np.ndarray) -> None:
        """Rib bands in the muscle wall of the lower chest and upper abdomen."""
        top = self.dome.max()
        if z.max() < top - 170 or z.min() > top + 230:
            return
        # Ribs run downwards from back to front: a wave in (z + 0.45 y).
        phase = z + np.float32(0.45) * self.y3 - np.float32(self.anatomy.rib_phase_mm)
        band = np.cos(phase * np.float32(2 * np.pi / 34.0))
        band = np.broadcast_to(band, wall_depth.shape).copy()
        band -= np.float32(0.6)
        band *= np.float32(4.0)
        _clip01(band)
        fade = np.clip((z - (top - 170)) / 40.0, 0, 1) * np.clip((top + 230 - z) / 40.0, 0, 1)
        band *= fade.astype(np.float32)
        # Only in the middle of the wall, and not at the anterior midline (costal cartilage).
        middle = np.abs(wall_depth + np.float32(self.anatomy.body.muscle_mm / 2.0))
        depth_w = _weight(middle - np.float32(self.anatomy.body.muscle_mm * 0.35), self.edge_mm)
        band *= depth_w
        band *= _clip01((np.abs(self.x3) - np.float32(35.0)) / np.float32(10.0) + (self.y3 > -20))
        _paint(image, band, self.tissues["cortical_bone"] * 0.6 + self.tissues["bone"] * 0.4)

    # -- structures ---------------------------------------------------------------------
    def _structure(
        self,
        s: Structure,
        box,
        image: np.ndarray,
        labels: np.ndarray,
        cavity: np.ndarray,
        z: np.ndarray,
        k0: int,
    ) -> None:
        ys, xs, (zk0, zk1) = box
        lo, hi = max(zk0, k0), min(zk1, k0 + len(z.ravel()))
        if lo >= hi:
            return
        zs = slice(lo - k0, hi - k0)
        x, y, zz = self.x3[..., xs], self.y3[:, ys, :], z[zs]
        if s.warp is not None:
            x, y, zz = s.warp.apply(x, y, zz)
        shape = (hi - lo, ys.stop - ys.start, xs.stop - xs.start)
        dist = np.full(shape, np.inf, np.float32)
        # Each primitive (each tube segment) is evaluated only inside its own bounding box,
        # widened by the warp's largest displacement: long tubes stay cheap.
        axes = (self.x[xs], self.y[ys], self.z[lo:hi])
        margin = (s.warp.max_displacement if s.warp is not None else 0.0) + 2.0 * self.edge_mm
        for part in s.parts:
            pieces = (
                [(part.segment_bounds(i), i) for i in range(len(part.points) - 1)]
                if isinstance(part, Tube)
                else [(part.bounds(), None)]
            )
            for (low, high), segment in pieces:
                window = _sub_window(axes, low - margin, high + margin)
                if window is None:
                    continue
                px, py, pz = (_take(a, window) for a in (x, y, zz))
                d = (
                    part.distance(px, py, pz)
                    if segment is None
                    else part.segment_distance(segment, px, py, pz)
                )
                target = dist[window]
                np.minimum(target, d, out=target)
        if s.below_diaphragm:
            under = z[zs] - (self.dome[None, ys, xs] - np.float32(4.0))
            dist = np.maximum(dist, under)
        region = (slice(None), zs, ys, xs)
        sub = image[region]
        w = _weight(dist.copy(), self.edge_mm)
        lab = labels[zs, ys, xs]
        inside = dist < 0
        if s.resected:
            # The emptied fossa fills with the neighbouring fat and bowel, not air or organ.
            _paint(sub, w, cavity[region])
            lab[inside & (lab == s.label)] = 0
            lab[inside] = 0
            return
        _paint(sub, w, self.tissues[s.tissue])
        if s.core_tissue is not None:
            core = dist + np.float32(s.core_depth_mm)
            wc = _weight(core, self.edge_mm)
            _paint(sub, wc, self.tissues[s.core_tissue])
            if s.gas_anterior_of_mm is not None:
                gas = _weight(self.y3[:, ys, :] - np.float32(s.gas_anterior_of_mm), self.edge_mm)
                _paint(sub, wc * gas, self.tissues["air"])
        if s.keep_labels:
            inside &= ~np.isin(lab, s.keep_labels)
        lab[inside] = s.label

    def render(self, finish: Callable[[int, np.ndarray], None]) -> np.ndarray:
        """Render chunk by chunk; return labels (Z, Y, X) uint8.

        ``finish(k0, chunk)`` receives each chunk's noise-free channels (C, slices, Y, X) as
        float32, starting at slice ``k0``, and may modify it; the buffer is reused afterwards,
        so the full-size float volume never exists.
        """
        nz, ny, nx = self.grid.shape
        n_channels = len(next(iter(self.tissues.values.values())))
        buffer = np.empty((n_channels, CHUNK_SLICES, ny, nx), np.float32)
        labels = np.zeros((nz, ny, nx), np.uint8)
        for k0 in range(0, nz, CHUNK_SLICES):
            k1 = min(k0 + CHUNK_SLICES, nz)
            z = self.z[k0:k1, None, None]
            chunk = buffer[:, : k1 - k0]
            cavity = self._layers(chunk, z)
            for s, box in zip(self.anatomy.structures, self.boxes, strict=True):
                if box is not None:
                    self._structure(s, box, chunk, labels[k0:k1], cavity, z, k0)
            finish(k0, chunk)
        return labels
