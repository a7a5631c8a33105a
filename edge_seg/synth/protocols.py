"""Scan protocols and the random draw of one case's grid and resections.

Ranges follow the public datasets the phantoms stand in for: FLARE CT (512 x 512, 0.6-0.9 mm
pixels, 1.5-5 mm slices, 50 to about 600 slices), CHAOS CT (liver-centred, 1.5-3.2 mm slices),
CHAOS MR (256 x 256, 1.4-1.9 mm pixels, 5.5-9 mm slices, 26-50 slices) and the UK Biobank
abdominal Dixon protocol (224 x 174, 2.23 mm pixels, 3 mm slices).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from edge_seg.synth.anatomy import RESECTABLE_ORGANS


@dataclass(frozen=True)
class Protocol:
    """Ranges of one acquisition protocol (all mm except counts)."""

    name: str
    modality: str
    matrix_yx: tuple[int, int]
    pixel_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    slices: tuple[int, int]
    coverage_mm: tuple[float, float]


PROTOCOLS: dict[str, Protocol] = {
    "flare_ct": Protocol(
        "flare_ct", "ct", (512, 512), (0.6, 0.9), (1.5, 5.0), (50, 600), (250.0, 900.0)
    ),
    "chaos_ct": Protocol(
        "chaos_ct", "ct", (512, 512), (0.6, 0.85), (1.5, 3.2), (70, 260), (160.0, 400.0)
    ),
    "chaos_mr": Protocol(
        "chaos_mr", "mr", (256, 256), (1.36, 1.89), (5.5, 9.0), (26, 50), (200.0, 350.0)
    ),
    "ukb_dixon": Protocol(
        "ukb_dixon", "mr", (174, 224), (2.232, 2.232), (3.0, 3.0), (96, 134), (290.0, 400.0)
    ),
}
DEFAULT_PROTOCOL = {"ct": "flare_ct", "mr": "chaos_mr"}

#: How often each organ is the one removed in a resection case.
RESECTION_WEIGHTS = {"gallbladder": 0.6, "kidney_right": 0.2, "kidney_left": 0.2}


@dataclass(frozen=True)
class CaseParams:
    """Grid and resections of one case. ``offset_mm`` shifts the field of view in-plane (x, y);
    ``table_mm`` is the scanner-frame translation added to the patient frame for the origin."""

    seed: int
    modality: str
    protocol: str
    n_slices: int
    spacing_mm: tuple[float, float, float]
    shape_yx: tuple[int, int]
    resected: tuple[str, ...]
    offset_mm: tuple[float, float]
    table_mm: tuple[float, float, float]


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose]))


def sample_case_params(
    seed: int,
    modality: str = "ct",
    *,
    n_slices: int | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    shape_yx: tuple[int, int] | None = None,
    protocol: str | None = None,
    resected: Iterable[str] | None = None,
    resection_rate: float = 0.0,
) -> CaseParams:
    """Draw the grid (and resections) of case ``seed``; given values are kept as they are.

    The slice spacing is drawn so that slices x spacing falls in the protocol's coverage range
    (clipped to its slice-spacing range): few slices means thick slices over the abdomen, many
    slices means a long scan from the chest into the pelvis. With ``resected`` None, a case is a
    resection case with probability ``resection_rate`` and then lacks the gallbladder (60 %),
    the right (20 %) or the left kidney (20 %). The draws use their own streams of ``seed``, so
    the grid never depends on the resection draw and vice versa.
    """
    name = protocol or DEFAULT_PROTOCOL.get(modality)
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    if not 0.0 <= resection_rate <= 1.0:
        raise ValueError(f"resection rate must be within [0, 1], got {resection_rate}")
    g = _rng(seed, 1)
    pixel = float(g.uniform(*p.pixel_mm))
    fov_yx = (p.matrix_yx[0] * pixel, p.matrix_yx[1] * pixel)
    coverage = float(g.uniform(*p.coverage_mm))
    drawn_slices = int(np.exp(g.uniform(np.log(p.slices[0]), np.log(p.slices[1] + 1))))
    offset = (float(g.normal(0, 8)), float(g.normal(0, 8)))
    table = (0.0, float(g.uniform(-60, 60)), float(g.uniform(-900, 300)))

    if spacing_mm is not None:
        spacing = tuple(float(v) for v in spacing_mm)
        if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(
                f"spacing_mm must be three positive numbers (z, y, x), got {spacing_mm}"
            )
        if n_slices is None:
            n_slices = max(1, round(coverage / spacing[0]))
    else:
        if n_slices is None:
            n_slices = drawn_slices
        slice_mm = float(np.clip(coverage / max(n_slices, 1), *p.slice_mm))
        if shape_yx is not None:  # keep the field of view: fewer pixels means larger pixels
            spacing = (slice_mm, fov_yx[0] / shape_yx[0], fov_yx[1] / shape_yx[1])
        else:
            spacing = (slice_mm, pixel, pixel)
    if shape_yx is None:
        shape_yx = (max(1, round(fov_yx[0] / spacing[1])), max(1, round(fov_yx[1] / spacing[2])))
    shape = (int(shape_yx[0]), int(shape_yx[1]))
    if int(n_slices) < 1 or min(shape) < 1:
        raise ValueError(f"grid must have at least one voxel, got {n_slices} slices of {shape}")

    if resected is None:
        r = _rng(seed, 2)
        resected = ()
        if r.random() < resection_rate:
            organs = list(RESECTION_WEIGHTS)
            resected = (organs[r.choice(len(organs), p=list(RESECTION_WEIGHTS.values()))],)
    return CaseParams(
        seed=int(seed),
        modality=modality,
        protocol=name,
        n_slices=int(n_slices),
        spacing_mm=spacing,
        shape_yx=shape,
        resected=tuple(resected),
        offset_mm=offset,
        table_mm=table,
    )


__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "RESECTABLE_ORGANS",
    "CaseParams",
    "Protocol",
    "sample_case_params",
]
