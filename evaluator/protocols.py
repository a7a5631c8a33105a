"""Scoring protocols: the published rules of FLARE22-24, CHAOS and HALOS.

Every protocol computes DSC, NSD, HD95 and voxel TP/FP/FN per case and organ, applies the
FLARE/HALOS empty-organ conventions and reports case-level organ presence. They differ in:

``flare22`` (default)
    NSD at the FLARE per-organ tolerances (:data:`evaluator.labels.FLARE_NSD_TOLERANCE_MM`).
``flare23`` / ``flare24``
    As flare22, plus: NSD is set to 0 when DSC < 0.2, and aorta, inferior vena cava and
    oesophagus are scored only on the axial slices where the ground truth contains them
    (their annotated extent varies between scans).
``chaos``
    Adds RAVD, ASSD and MSSD (border voxels by 6-connected erosion) and the CHAOS 0-100
    points per metric and their mean (``chaos_score``).
``halos``
    As flare22; the headline figures are DSC/NSD with the empty-organ conventions and the
    organ-presence false-positive rate (hallucinations of resected organs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_NSD_TOLERANCE_MM

#: Tolerance for organs without a FLARE value.
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class Protocol:
    """How cases are scored (see module docstring)."""

    name: str
    nsd_tolerance_mm: Mapping[str, float] = field(
        default_factory=lambda: dict(FLARE_NSD_TOLERANCE_MM)
    )
    nsd_zero_below_dsc: float | None = None
    ground_truth_slices_only: tuple[str, ...] = ()
    chaos_metrics: bool = False
    hd_percentile: float = 95.0

    def tolerance_mm(self, organ: str) -> float:
        return float(self.nsd_tolerance_mm.get(organ, DEFAULT_NSD_TOLERANCE_MM))

    @property
    def metric_names(self) -> list[str]:
        """Per-case metrics in the order written to ``cases.csv``."""
        names = ["dsc", "nsd", "hd95"]
        if self.chaos_metrics:
            names += ["ravd", "assd", "mssd", "dsc_score", "ravd_score", "assd_score",
                      "mssd_score", "chaos_score"]
        return names

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "nsd_tolerance_mm": dict(self.nsd_tolerance_mm),
            "nsd_zero_below_dsc": self.nsd_zero_below_dsc,
            "ground_truth_slices_only": list(self.ground_truth_slices_only),
            "hd_percentile": self.hd_percentile,
            "metrics": self.metric_names,
        }


_FLARE23_RULES = {
    "nsd_zero_below_dsc": 0.2,
    "ground_truth_slices_only": ("aorta", "inferior_vena_cava", "esophagus"),
}

PROTOCOLS: dict[str, Protocol] = {
    "flare22": Protocol("flare22"),
    "flare23": Protocol("flare23", **_FLARE23_RULES),  # type: ignore[arg-type]
    "flare24": Protocol("flare24", **_FLARE23_RULES),  # type: ignore[arg-type]
    "chaos": Protocol("chaos", chaos_metrics=True),
    "halos": Protocol("halos"),
}

DEFAULT_PROTOCOL = "flare22"


def get_protocol(name: str, nsd_overrides: Mapping[str, float] | None = None) -> Protocol:
    """Look up a protocol by name, optionally overriding NSD tolerances per organ (mm)."""
    key = name.strip().lower()
    if key not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[key]
    if not nsd_overrides:
        return protocol
    for organ, tolerance in nsd_overrides.items():
        # inf would make every surface point count (NSD = 1 always); nan fails every test.
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise EvaluationError(f"NSD tolerance for {organ!r} must be >= 0 mm and finite, "
                                  f"got {tolerance}")
    merged = {**protocol.nsd_tolerance_mm, **nsd_overrides}
    return Protocol(
        protocol.name, merged, protocol.nsd_zero_below_dsc, protocol.ground_truth_slices_only,
        protocol.chaos_metrics, protocol.hd_percentile,
    )
