"""Continuous shape primitives in millimetres and their approximate signed distances.

Every anatomical structure of the phantom is a union of ellipsoids and tubes (capsule chains
with a varying radius) defined in a patient frame in millimetres: x towards the patient's left,
y towards the back, z towards the head (DICOM/ITK "LPS"). Rasterising evaluates an approximate
signed distance (negative inside, in mm) on the voxel centres of a bounding box only; the
distance also drives the partial-volume blend at the organ's edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def rotation_matrix(
    yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0
) -> np.ndarray:
    """Rotation about z (yaw), then y (pitch), then x (roll), angles in degrees.

    The columns are the primitive's local axes expressed in the patient frame.
    """
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class Ellipsoid:
    """A rotated ellipsoid: ``center`` (x, y, z) mm, semi-axes ``radii`` mm, ``rotation`` 3x3."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (low, high) corners in mm of the rotated ellipsoid."""
        half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm (exact on the surface, scaled by the short axis)."""
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        r = self.rotation
        q = np.zeros(np.broadcast_shapes(np.shape(dx), np.shape(dy), np.shape(dz)), np.float32)
        for axis in range(3):
            u = (
                dx * np.float32(r[0, axis])
                + dy * np.float32(r[1, axis])
                + dz * np.float32(r[2, axis])
            )
            u *= np.float32(1.0 / self.radii[axis])
            u *= u
            q += u
        np.sqrt(q, out=q)
        q -= np.float32(1.0)
        # The short semi-axis keeps thin organs (adrenals, gallbladder wall) from blurring away.
        q *= np.float32(self.radii.min())
        return q


@dataclass
class Tube:
    """A chain of capsules through ``points`` (n, 3) mm with radius ``radii`` (n,) mm."""

    points: np.ndarray
    radii: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (low, high) corners in mm."""
        r = self.radii[:, None]
        return (self.points - r).min(axis=0), (self.points + r).max(axis=0)

    def segment_bounds(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of segment ``i`` (points i and i + 1)."""
        p, r = self.points[i : i + 2], self.radii[i : i + 2, None]
        return (p - r).min(axis=0), (p + r).max(axis=0)

    def segment_distance(self, i: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance in mm to segment ``i`` with linearly varying radius."""
        a, b = self.points[i], self.points[i + 1]
        ab = b - a
        length2 = float(ab @ ab) or 1e-6
        px, py, pz = x - np.float32(a[0]), y - np.float32(a[1]), z - np.float32(a[2])
        t = (
            px * np.float32(ab[0] / length2)
            + py * np.float32(ab[1] / length2)
            + pz * np.float32(ab[2] / length2)
        )
        np.clip(t, 0.0, 1.0, out=t)
        px = px - t * np.float32(ab[0])
        py = py - t * np.float32(ab[1])
        pz = pz - t * np.float32(ab[2])
        d = px * px
        d += py * py
        d += pz * pz
        np.sqrt(d, out=d)
        d -= np.float32(self.radii[i]) + t * np.float32(self.radii[i + 1] - self.radii[i])
        return d


Primitive = Ellipsoid | Tube


@dataclass
class SmoothWarp:
    """A smooth random displacement field made of separable sinusoids (mm).

    Each displacement component is a sum of two sinusoids of the other two coordinates, so the
    field is cheap to evaluate on broadcast grids yet bends every organ differently per case.
    """

    amplitude: np.ndarray  # (3, 2) mm
    frequency: np.ndarray  # (3, 2) rad/mm
    phase: np.ndarray  # (3, 2) rad

    @classmethod
    def random(
        cls, rng: np.random.Generator, amplitude_mm: float, wavelength_mm: tuple[float, float]
    ) -> SmoothWarp:
        amp = rng.uniform(0.3, 1.0, size=(3, 2)) * amplitude_mm / 2.0
        wavelength = rng.uniform(*wavelength_mm, size=(3, 2))
        return cls(amp, 2 * np.pi / wavelength, rng.uniform(0, 2 * np.pi, size=(3, 2)))

    @property
    def max_displacement(self) -> float:
        return float(np.abs(self.amplitude).sum(axis=1).max())

    def apply(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Coords:
        """Warped coordinates for broadcastable ``x`` (1,1,X), ``y`` (1,Y,1), ``z`` (Z,1,1)."""
        a, f, p = self.amplitude, self.frequency, self.phase

        def wave(k: int, j: int, v: np.ndarray) -> np.ndarray:
            return (
                np.float32(a[k, j]) * np.sin(v * np.float32(f[k, j]) + np.float32(p[k, j]))
            ).astype(np.float32)

        wx = x + wave(0, 0, y) + wave(0, 1, z)
        wy = y + wave(1, 0, x) + wave(1, 1, z)
        wz = z + wave(2, 0, x) + wave(2, 1, y)
        return wx, wy, wz
