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


def add_noise(image: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> None:
    """Add pooled noise with per-channel SD ``sd`` to ``image`` (C, Z, Y, X) in place."""
    n_channels, nz, ny, nx = image.shape
    pool = noise_pool(rng, (ny, nx))
    picks = rng.integers(0, POOL_SLICES, size=(n_channels, nz))
    offsets = rng.integers(0, POOL_MARGIN + 1, size=(n_channels, nz, 2))
    flips = rng.integers(0, 2, size=(n_channels, nz))
    for c in range(n_channels):
        s = np.float32(sd[c])
        for k in range(nz):
            oy, ox = offsets[c, k]
            plane = pool[picks[c, k], oy : oy + ny, ox : ox + nx]
            if flips[c, k]:
                plane = plane[::-1]
            image[c, k] += plane * s


def apply_bias_field(image: np.ndarray, rng: np.random.Generator, strength: float = 0.15) -> None:
    """Multiply (C, Z, Y, X) MR channels by one smooth coil-sensitivity field in place."""
    _, nz, ny, nx = image.shape
    factors = []
    for n in (nz, ny, nx):
        t = np.linspace(0.0, 1.0, n, dtype=np.float32)
        f = 1.0 + strength * rng.uniform(0.3, 1.0) * np.sin(
            np.pi * t * rng.uniform(0.5, 1.2) + rng.uniform(0, np.pi)
        )
        factors.append(f.astype(np.float32))
    field = factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    image *= field[None]
