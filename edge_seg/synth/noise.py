"""Scanner noise and MR bias field, cheap enough for FLARE-size volumes.

Drawing 78 million Gaussian samples costs about a second, longer than everything else, so CT
noise is taken from a small pool of pre-drawn, slightly correlated noise slices (CT noise has
a grainy texture, not white noise), each slice of the volume reading the pool at its own random
offset. Consecutive slices therefore get different noise; the pool only repeats far apart.
"""

from __future__ import annotations

import numpy as np

POOL_SLICES = 6
POOL_MARGIN = 48


def noise_pool(rng: np.random.Generator, shape_yx: tuple[int, int]) -> np.ndarray:
    """``POOL_SLICES`` unit-variance noise planes, 2x2-box correlated, with margins for shifts."""
    ny, nx = shape_yx[0] + POOL_MARGIN + 1, shape_yx[1] + POOL_MARGIN + 1
    white = rng.standard_normal((POOL_SLICES, ny, nx), dtype=np.float32)
    grainy = white[:, :-1, :-1] + white[:, 1:, :-1] + white[:, :-1, 1:] + white[:, 1:, 1:]
    grainy *= np.float32(0.5)  # the sum of 4 unit normals has SD 2
    return grainy


class NoisePlan:
    """Pooled scanner noise for a (C, Z, Y, X) volume, drawn up front and added chunk by chunk.

    Every random draw happens in the constructor, so the result does not depend on how the
    volume is split into chunks.
    """

    def __init__(
        self, rng: np.random.Generator, sd: np.ndarray, shape_czyx: tuple[int, ...]
    ) -> None:
        n_channels, nz, ny, nx = shape_czyx
        self.sd = np.asarray(sd, np.float32)
        self.shape_yx = (ny, nx)
        self.pool = noise_pool(rng, (ny, nx))
        self.picks = rng.integers(0, POOL_SLICES, size=(n_channels, nz))
        self.offsets = rng.integers(0, POOL_MARGIN + 1, size=(n_channels, nz, 2))
        self.flips = rng.integers(0, 2, size=(n_channels, nz))

    def add(self, chunk: np.ndarray, k0: int) -> None:
        """Add the noise of slices ``k0 ..`` to ``chunk`` (C, slices, Y, X) in place."""
        ny, nx = self.shape_yx
        scratch = np.empty((ny, nx), np.float32)
        for c in range(chunk.shape[0]):
            for j in range(chunk.shape[1]):
                k = k0 + j
                oy, ox = self.offsets[c, k]
                plane = self.pool[self.picks[c, k], oy : oy + ny, ox : ox + nx]
                if self.flips[c, k]:
                    plane = plane[::-1]
                np.multiply(plane, self.sd[c], out=scratch)
                chunk[c, j] += scratch


class BiasField:
    """A smooth multiplicative coil-sensitivity field, separable in z, y and x."""

    def __init__(
        self, rng: np.random.Generator, shape_zyx: tuple[int, int, int], strength: float = 0.15
    ) -> None:
        self.factors = []
        for n in shape_zyx:
            t = np.linspace(0.0, 1.0, n, dtype=np.float32)
            amplitude = strength * rng.uniform(0.3, 1.0)
            f = 1.0 + amplitude * np.sin(np.pi * t * rng.uniform(0.5, 1.2) + rng.uniform(0, np.pi))
            self.factors.append(f.astype(np.float32))

    def apply(self, chunk: np.ndarray, k0: int) -> None:
        """Multiply ``chunk`` (C, slices, Y, X), starting at slice ``k0``, in place."""
        fz, fy, fx = self.factors
        plane = fy[:, None] * fx[None, :]
        chunk *= (fz[k0 : k0 + chunk.shape[1], None, None] * plane[None])[None]
