"""Regenerate :mod:`evaluator.surfel_table` (developer tool; needs scikit-image).

The surface elements ("surfels") of a binary mask are the marching-cubes triangles of every
2x2x2 voxel neighbourhood, with vertices on the edge midpoints. This script triangulates each of
the 256 neighbourhood codes with scikit-image's classic Lorensen marching-cubes table and stores
each triangle's area vector (half the cross product of two edges) in units of 1/8 voxel face.

One convention matters for agreement with DeepMind's ``surface-distance``: a code with five or
more voxels inside is triangulated as its complement (three or fewer inside), so a code and its
complement always get the same surface. ``tests/test_metrics_surface.py`` checks the resulting
areas against ``surface-distance`` for random anisotropic spacings.

Run ``python -m evaluator._generate_surfel_table`` from the repository root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Bit weight of each corner of the 2x2x2 neighbourhood, indexed by the corner offset (dz, dy, dx).
CORNER_BITS = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)


def triangle_area_vectors(code: int) -> np.ndarray:
    """Area vectors (n_triangles, 3) of the marching-cubes surface of one neighbourhood code."""
    from skimage.measure import marching_cubes  # developer-only dependency

    if code in (0, 255):
        return np.zeros((0, 3))
    inside = code if bin(code).count("1") <= 4 else 255 - code
    cube = ((CORNER_BITS & inside) > 0).astype(np.float64)
    vertices, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen", allow_degenerate=True)
    triangles = vertices[faces].astype(np.float64)
    return 0.5 * np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])


def main() -> None:
    rows = []
    for code in range(256):
        eighths = np.rint(triangle_area_vectors(code) * 8).astype(int)
        # "-" marks a code without surface, so that every code keeps its own line.
        rows.append(" ".join(",".join(str(v) for v in tri) for tri in eighths) or "-")
    body = "\n".join(rows)
    target = Path(__file__).with_name("surfel_table.py")
    text = target.read_text()
    start = text.index('_AREA_VECTORS_EIGHTHS = """') + len('_AREA_VECTORS_EIGHTHS = """')
    end = text.index('"""', start)
    target.write_text(text[:start] + "\n" + body + "\n" + text[end:])


if __name__ == "__main__":
    main()
