"""CHAOS native layout: per-case DICOM series plus per-slice PNG ground truth.

CT: ``CT/<id>/DICOM_anon/i0000,0000b.dcm ...`` and ``CT/<id>/Ground/liver_GT_000.png ...``
(liver only, 1-bit PNG, any value > 0 is liver). MR: ``MR/<id>/T1DUAL/DICOM_anon/InPhase``,
``.../OutPhase``, ``MR/<id>/T1DUAL/Ground``, ``MR/<id>/T2SPIR/DICOM_anon`` and
``MR/<id>/T2SPIR/Ground`` with grey values liver 63, right kidney 126, left kidney 189,
spleen 252. T2 SPIR is its own acquisition of the same patient and region (own slice spacing
and count, see :func:`t2_phantom`), as in CHAOS. Slice order is file-name order and runs from
the top of the scan down (the first file has the highest z); PNG ``k`` in name order belongs to
DICOM ``k`` in name order. The DICOM position tags agree with that order, so SimpleITK's
position-sorted series reader gives the same volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edge_seg.synth.dicom import uid, write_series
from edge_seg.synth.phantom import Phantom, generate_phantom
from edge_seg.synth.protocols import PROTOCOLS
from evaluator.labels import FLARE_LABELS

#: CHAOS MR ground-truth grey values.
MR_GREY_VALUES = {"liver": 63, "kidney_right": 126, "kidney_left": 189, "spleen": 252}
T1_SERIES, T2_SERIES = 4, 6
#: Echo times (ms) of a 1.5 T dual-echo gradient echo: fat and water out of phase, then in phase.
OPPOSED_ECHO_MS, IN_PHASE_ECHO_MS = 2.3, 4.6


def _top_down(volume: np.ndarray) -> np.ndarray:
    """Slices in file-name order (highest z first) from a (z, y, x) array with z ascending."""
    return volume[::-1]


def _write_pngs(slices: np.ndarray, folder: Path, names: list[str], mode: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for plane, name in zip(slices, names, strict=True):
        image = Image.fromarray(plane.astype(np.uint8) * (255 if mode == "1" else 1))
        if mode == "1":
            image = image.convert("1")
        image.save(folder / name)


def mr_ground(labels: np.ndarray) -> np.ndarray:
    """CHAOS MR grey-value ground truth from FLARE labels (other organs are background)."""
    grey = np.zeros(labels.shape, np.uint8)
    for organ, value in MR_GREY_VALUES.items():
        grey[labels == FLARE_LABELS[organ]] = value
    return grey


def t2_phantom(phantom: Phantom) -> Phantom:
    """The T2-SPIR acquisition of an MR case: same patient and region, its own slices.

    CHAOS acquires T2 SPIR separately from the T1 dual echo, with its own slice spacing
    (5.5-9 mm) and count; the in-plane grid is kept. The spacing is drawn from the case seed.
    """
    rng = np.random.default_rng(np.random.SeedSequence([phantom.seed, 3]))
    sz, sy, sx = phantom.spacing_mm
    extent = (phantom.labels.shape[0] - 1) * sz
    slice_mm = float(rng.uniform(*PROTOCOLS["chaos_mr"].slice_mm))
    n_slices = max(2, round(extent / slice_mm) + 1)
    return generate_phantom(
        phantom.seed,
        "mr",
        n_slices=n_slices,
        spacing_mm=(slice_mm, sy, sx),
        shape_yx=phantom.labels.shape[1:],
        resected=phantom.resected,
        protocol=phantom.params.protocol,
        z_center_mm=phantom.z_center_mm,
    )


def write_case(phantom: Phantom, root: Path, case_id: str) -> None:
    """Write one case in the CHAOS layout under ``root`` (``root/CT/<id>`` or ``root/MR/<id>``)."""
    nz = phantom.labels.shape[0]
    # DICOM writer takes z-ascending slices; name k (top-down) belongs to array index nz-1-k.
    order = list(range(nz))
    common = dict(
        spacing_mm=phantom.spacing_mm,
        origin=phantom.origin,
        study_uid=uid(phantom.seed, case_id, "study"),
        frame_uid=uid(phantom.seed, case_id, "frame"),
        patient_id=f"CHAOS_SYNTH_{case_id}",
    )
    if phantom.modality == "ct":
        case = root / "CT" / case_id
        names = [f"i{nz - 1 - k:04d},0000b.dcm" for k in order]
        write_series(
            phantom.channels["ct"],
            case / "DICOM_anon",
            names,
            modality="CT",
            series_uid=uid(phantom.seed, case_id, "ct"),
            series_number=4,
            series_description="synthetic abdominal CT",
            **common,
        )
        liver = _top_down(phantom.labels == FLARE_LABELS["liver"])
        _write_pngs(liver, case / "Ground", [f"liver_GT_{k:03d}.png" for k in range(nz)], "1")
        return

    case = root / "MR" / case_id
    grey = _top_down(mr_ground(phantom.labels))

    def echo(ms: float):
        def set_tags(ds) -> None:
            ds.EchoTime = f"{ms}"
            ds.RepetitionTime = "150"
            ds.MagneticFieldStrength = "1.5"
            ds.ScanningSequence = "GR"

        return set_tags

    def t2_tags(ds) -> None:
        ds.EchoTime = "80"
        ds.RepetitionTime = "1600"
        ds.MagneticFieldStrength = "1.5"
        ds.ScanningSequence = "SE"

    in_names = [f"IMG-{T1_SERIES:04d}-{2 * (nz - 1 - k) + 2:05d}.dcm" for k in order]
    out_names = [f"IMG-{T1_SERIES:04d}-{2 * (nz - 1 - k) + 1:05d}.dcm" for k in order]
    t1 = case / "T1DUAL"
    write_series(
        phantom.channels["t1_in_phase"],
        t1 / "DICOM_anon" / "InPhase",
        in_names,
        modality="MR",
        series_uid=uid(phantom.seed, case_id, "t1dual", "in"),
        series_number=T1_SERIES,
        series_description="T1 dual echo in phase",
        extra=echo(IN_PHASE_ECHO_MS),
        **common,
    )
    write_series(
        phantom.channels["t1_opposed_phase"],
        t1 / "DICOM_anon" / "OutPhase",
        out_names,
        modality="MR",
        series_uid=uid(phantom.seed, case_id, "t1dual", "out"),
        series_number=T1_SERIES,
        series_description="T1 dual echo opposed phase",
        extra=echo(OPPOSED_ECHO_MS),
        **common,
    )
    _write_pngs(
        grey, t1 / "Ground", [f"IMG-{T1_SERIES:04d}-{2 * k + 2:05d}.png" for k in range(nz)], "L"
    )
    t2 = case / "T2SPIR"
    t2_case = t2_phantom(phantom)
    nz = t2_case.labels.shape[0]
    grey = _top_down(mr_ground(t2_case.labels))
    common["spacing_mm"], common["origin"] = t2_case.spacing_mm, t2_case.origin
    t2_names = [f"IMG-{T2_SERIES:04d}-{nz - k:05d}.dcm" for k in range(nz)]
    write_series(
        t2_case.channels["t2"],
        t2 / "DICOM_anon",
        t2_names,
        modality="MR",
        series_uid=uid(phantom.seed, case_id, "t2spir"),
        series_number=T2_SERIES,
        series_description="T2 SPIR",
        extra=t2_tags,
        **common,
    )
    _write_pngs(
        grey, t2 / "Ground", [f"IMG-{T2_SERIES:04d}-{k + 1:05d}.png" for k in range(nz)], "L"
    )
