"""``generate_phantom``: one synthetic abdominal CT or MR case with FLARE-numbered labels.

The anatomy is continuous (millimetres) and is rasterised at whatever spacing the caller asks
for, so the same seed gives the same patient on a 0.7 x 0.7 x 2.5 mm FLARE-like grid, on a
3 mm isotropic training grid, or on a 64 x 64 x 20 test grid.

Random streams are split per purpose (scan parameters, anatomy, intensities, noise), so a case
keeps its anatomy when only the grid changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edge_seg.synth.anatomy import RESECTABLE_ORGANS, sample_anatomy
from edge_seg.synth.intensity import (
    OUTPUT_CHANNELS,
    RENDER_CHANNELS,
    mr_outputs,
    sample_intensities,
)
from edge_seg.synth.noise import BiasField, NoisePlan
from edge_seg.synth.protocols import PROTOCOLS, CaseParams, sample_case_params
from edge_seg.synth.render import Grid, Rasteriser
from evaluator.labels import FLARE_LABELS, canonical_organ_name

if TYPE_CHECKING:
    from edge_seg.io import Volume

MODALITIES = ("ct", "mr")
#: Direction cosines of every phantom: axial slices, rows towards the back, LPS (identity).
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Phantom:
    """One synthetic case.

    Attributes
    ----------
    image
        The primary image, (z, y, x): CT in Hounsfield units as int16; MR the T1 Dixon
        in-phase image as float32 (non-negative arbitrary units).
    channels
        Every image of the case by name, same geometry: CT ``{"ct"}``; MR ``{"t1_in_phase",
        "t1_opposed_phase", "t2"}`` (fat-suppressed T2, on the same grid as the T1 images).
    labels
        uint8 (z, y, x), FLARE numbers (1 liver ... 13 left kidney), 0 background.
    spacing_mm
        (z, y, x) voxel size in mm.
    origin
        (x, y, z) mm position of voxel [0, 0, 0] (SimpleITK order).
    direction
        9 direction cosines (SimpleITK order); always the identity (axial, LPS).
    present_organs
        FLARE organ names present in the case (every organ except the resected ones; an organ
        outside the scanned z-range still counts as present in the patient).
    resected
        Organs removed in this case (cholecystectomy, nephrectomy).
    z_center_mm
        Patient-frame z (mm, 0 = L1/L2 disc) of the volume's centre: pass it back to
        :func:`generate_phantom` to image the same region of the same patient on another grid.
    """

    image: np.ndarray
    channels: dict[str, np.ndarray]
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    present_organs: tuple[str, ...]
    resected: tuple[str, ...]
    modality: str
    seed: int
    params: CaseParams = field(repr=False)
    z_center_mm: float = 0.0

    def volume(self, channel: str | None = None) -> Volume:
        """One image of the case as an :class:`edge_seg.io.Volume` (default: :attr:`image`)."""
        from edge_seg.io import Volume

        array = self.image if channel is None else self.channels[channel]
        return Volume(
            array=array,
            spacing_mm=self.spacing_mm,
            origin=self.origin,
            direction=self.direction,
            path=None,
        )

    @property
    def organs_in_view(self) -> tuple[str, ...]:
        """Organs with at least one labelled voxel in this volume."""
        values = set(np.unique(self.labels).tolist())
        return tuple(name for name, v in FLARE_LABELS.items() if v in values)


def _normalise_resected(resected: Iterable[str]) -> tuple[str, ...]:
    names = []
    for organ in resected:
        name = canonical_organ_name(organ)
        if name not in RESECTABLE_ORGANS:
            raise ValueError(
                f"cannot resect {organ!r}; resectable organs: {', '.join(RESECTABLE_ORGANS)}"
            )
        if name not in names:
            names.append(name)
    if {"kidney_left", "kidney_right"} <= set(names):
        raise ValueError("a phantom cannot lack both kidneys")
    return tuple(names)


def _streams(seed: int) -> Mapping[str, np.random.Generator]:
    children = np.random.SeedSequence(int(seed)).spawn(4)
    return dict(
        zip(
            ("params", "anatomy", "intensity", "noise"),
            (np.random.default_rng(c) for c in children),
            strict=True,
        )
    )


def generate_phantom(
    seed: int,
    modality: str = "ct",
    n_slices: int | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    shape_yx: tuple[int, int] | None = None,
    resected: Iterable[str] = (),
    *,
    protocol: str | None = None,
    z_center_mm: float | None = None,
    noise: bool = True,
) -> Phantom:
    """Generate one synthetic abdominal phantom.

    Parameters
    ----------
    seed
        Everything random derives from it: same seed and arguments, byte-identical arrays.
    modality
        ``"ct"`` (Hounsfield units) or ``"mr"`` (T1 Dixon in/opposed phase and T2).
    n_slices, spacing_mm, shape_yx
        Grid: slice count, (z, y, x) voxel size in mm, in-plane matrix (rows, columns). Missing
        ones are drawn from ``protocol`` (see :func:`sample_case_params`); a matrix without a
        spacing keeps the protocol's field of view, a spacing without a matrix too.
    resected
        Organs the patient lacks: any of ``gallbladder``, ``kidney_right``, ``kidney_left``.
    protocol
        Scan protocol for missing grid values: ``flare_ct`` (default for CT), ``chaos_ct``,
        ``chaos_mr`` (default for MR), ``ukb_dixon``.
    z_center_mm
        Patient-frame z (mm, 0 = L1/L2 disc) of the volume's centre; by default the scan
        covers the abdominal organs, with longer scans reaching further into chest and pelvis.
    noise
        Add scanner noise (and an MR bias field).

    Returns
    -------
    Phantom
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    gone = _normalise_resected(resected)
    rng = _streams(seed)
    params = sample_case_params(
        seed,
        modality,
        n_slices=n_slices,
        spacing_mm=spacing_mm,
        shape_yx=shape_yx,
        protocol=protocol,
        resected=gone,
    )
    anatomy = sample_anatomy(rng["anatomy"], params.resected)
    tissues = sample_intensities(modality, rng["intensity"])

    nz, (ny, nx) = params.n_slices, params.shape_yx
    sz, sy, sx = params.spacing_mm
    lo, hi = anatomy.organ_z_range_mm
    extent = (nz - 1) * sz
    if z_center_mm is None:
        z_center_mm = _scan_centre(lo, hi, extent, rng["params"])
    first = (
        -(nx - 1) * sx / 2.0 + params.offset_mm[0],
        -(ny - 1) * sy / 2.0 + params.offset_mm[1],
        z_center_mm - extent / 2.0,
    )
    grid = Grid((nz, ny, nx), (sz, sy, sx), first)
    n_channels = len(RENDER_CHANNELS[modality])
    bias = BiasField(rng["noise"], (nz, ny, nx)) if noise and modality == "mr" else None
    plan = NoisePlan(rng["noise"], tissues.noise_sd, (n_channels, nz, ny, nx)) if noise else None
    if modality == "ct":
        channels = {"ct": np.empty((nz, ny, nx), np.int16)}
    else:
        channels = {key: np.empty((nz, ny, nx), np.float32) for key in OUTPUT_CHANNELS["mr"]}

    def finish(k0: int, chunk: np.ndarray) -> None:
        k1 = k0 + chunk.shape[1]
        if bias is not None:
            bias.apply(chunk, k0)
        if plan is not None:
            plan.add(chunk, k0)
        if modality == "ct":
            np.rint(chunk[0], out=chunk[0])
            np.clip(chunk[0], np.float32(-1024), np.float32(3071), out=chunk[0])
            channels["ct"][k0:k1] = chunk[0]
        else:
            np.maximum(chunk, np.float32(0), out=chunk)
            outputs = mr_outputs(chunk[0], chunk[1], chunk[2])
            for key, value in outputs.items():
                channels[key][k0:k1] = value

    labels = Rasteriser(anatomy, tissues, grid).render(finish)
    primary = channels["ct"] if modality == "ct" else channels["t1_in_phase"]
    origin = tuple(float(v + t) for v, t in zip(first, params.table_mm, strict=True))
    present = tuple(name for name in FLARE_LABELS if name not in params.resected)
    return Phantom(
        image=primary,
        channels=channels,
        labels=labels,
        spacing_mm=(sz, sy, sx),
        origin=origin,
        direction=IDENTITY_DIRECTION,
        present_organs=present,
        resected=params.resected,
        modality=modality,
        seed=int(seed),
        z_center_mm=float(z_center_mm),
        params=params,
    )


def _scan_centre(
    organ_lo: float, organ_hi: float, extent: float, rng: np.random.Generator
) -> float:
    """z centre of the scan: organs covered when the scan is long enough, else centred on them.

    Long scans extend beyond the organs on both sides by a random share (more chest or more
    pelvis), so that the organs occupy only part of the z-range.
    """
    margin = 15.0
    mid = (organ_lo + organ_hi) / 2.0
    spare = extent - (organ_hi - organ_lo) - 2 * margin
    if spare <= 0:
        return float(mid + rng.normal(0.0, 0.1 * extent))
    # Clinical abdominal CTs usually extend further down (pelvis) than up (chest).
    share_below = rng.beta(2.5, 1.8)
    return float(organ_lo - margin - share_below * spare + extent / 2.0)


__all__ = ["PROTOCOLS", "CaseParams", "Phantom", "generate_phantom", "sample_case_params"]
