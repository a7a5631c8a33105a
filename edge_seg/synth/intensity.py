"""Tissue intensities per modality, with per-case variation.

CT values are Hounsfield units of a portal-venous-phase abdominal CT (liver about 100 HU,
kidney cortex brighter than medulla, contrast-filled vessels 130-180 HU). MR is modelled as
a water signal and a fat signal on a T1-weighted gradient echo plus a separate fat-suppressed
T2 signal; the Dixon images follow from them as in-phase = water + fat and opposed-phase =
|water - fat|, so partial-volume voxels at fat/water borders go dark in opposed phase (the
"India ink" artefact) exactly as on a real scanner. Arbitrary MR units are scaled like
typical CHAOS/UK Biobank magnitude images (hundreds to about 1500).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Internal rendering channels per modality.
RENDER_CHANNELS: dict[str, tuple[str, ...]] = {"ct": ("ct",), "mr": ("water", "fat", "t2")}

#: Output channels of a phantom per modality (see :func:`mr_outputs`).
OUTPUT_CHANNELS: dict[str, tuple[str, ...]] = {
    "ct": ("ct",),
    "mr": ("t1_in_phase", "t1_opposed_phase", "t2"),
}


@dataclass(frozen=True)
class Tissue:
    """Reference values: CT HU (and case-to-case SD), MR T1 water and fat signal, T2 signal."""

    hu: float
    hu_sd: float
    water: float
    fat: float
    t2: float


TISSUES: dict[str, Tissue] = {
    "air": Tissue(-1000, 0, 0, 0, 0),
    "lung": Tissue(-850, 25, 12, 0, 8),
    "fat": Tissue(-100, 8, 25, 420, 35),
    "skin": Tissue(35, 5, 180, 20, 110),
    "muscle": Tissue(50, 5, 160, 12, 60),
    "bowel": Tissue(30, 8, 190, 25, 170),
    "bone": Tissue(260, 40, 140, 230, 90),
    "cortical_bone": Tissue(750, 80, 15, 10, 10),
    "csf": Tissue(10, 4, 45, 0, 600),
    "urine": Tissue(8, 4, 40, 0, 650),
    "blood_pool": Tissue(150, 20, 120, 5, 60),
    "artery": Tissue(170, 25, 110, 0, 30),
    "vein": Tissue(140, 20, 130, 0, 70),
    "liver": Tissue(105, 12, 270, 10, 70),
    "spleen": Tissue(115, 12, 180, 0, 170),
    "pancreas": Tissue(95, 10, 300, 15, 110),
    "kidney_cortex": Tissue(175, 20, 230, 0, 210),
    "kidney_medulla": Tissue(125, 15, 160, 0, 280),
    "adrenal": Tissue(65, 8, 200, 25, 130),
    "bile": Tissue(10, 5, 70, 0, 650),
    "esophagus": Tissue(45, 6, 170, 10, 95),
    "stomach_wall": Tissue(70, 10, 190, 10, 120),
    "duodenum": Tissue(60, 10, 190, 10, 130),
    "gut_content": Tissue(18, 6, 60, 0, 480),
}


@dataclass(frozen=True)
class CaseIntensities:
    """Per-case channel values of every tissue and the noise level."""

    modality: str
    values: dict[str, np.ndarray]  # tissue -> (n_render_channels,) float32
    noise_sd: np.ndarray  # (n_render_channels,)

    def __getitem__(self, tissue: str) -> np.ndarray:
        return self.values[tissue]


def sample_intensities(modality: str, rng: np.random.Generator) -> CaseIntensities:
    """Draw tissue values for one case (contrast timing, scanner gain, liver fat)."""
    if modality == "ct":
        phase = rng.normal(0.0, 1.0)  # earlier or later contrast shifts all enhancing tissue
        enhancing = {
            "liver",
            "spleen",
            "pancreas",
            "kidney_cortex",
            "kidney_medulla",
            "artery",
            "vein",
            "blood_pool",
            "adrenal",
            "stomach_wall",
            "duodenum",
        }
        values = {}
        for name, t in TISSUES.items():
            shift = phase * t.hu_sd if name in enhancing else 0.0
            values[name] = np.array([t.hu + shift + rng.normal(0, 0.5) * t.hu_sd], np.float32)
        return CaseIntensities("ct", values, np.array([rng.uniform(8.0, 22.0)], np.float32))
    if modality == "mr":
        gain = rng.uniform(0.75, 1.35)
        liver_fat_fraction = rng.choice([0.0, 0.02, 0.05, 0.1, 0.2], p=[0.3, 0.3, 0.2, 0.12, 0.08])
        values = {}
        for name, t in TISSUES.items():
            jitter = rng.normal(1.0, 0.08, 3).clip(0.75, 1.25)
            water, fat, t2 = t.water * jitter[0], t.fat * jitter[1], t.t2 * jitter[2]
            if name == "liver":  # steatosis: part of the liver signal comes from fat
                fat = (water + fat) * liver_fat_fraction
                water = water * (1 - liver_fat_fraction)
            values[name] = (np.array([water, fat, t2]) * gain).astype(np.float32)
        noise = np.array([rng.uniform(6, 14)] * 2 + [rng.uniform(6, 14)], np.float32) * gain
        return CaseIntensities("mr", values, noise)
    raise ValueError(f"unknown modality {modality!r}; expected 'ct' or 'mr'")


def mr_outputs(water: np.ndarray, fat: np.ndarray, t2: np.ndarray) -> dict[str, np.ndarray]:
    """Dixon in-phase / opposed-phase and T2 images from rendered water, fat and T2 signals."""
    in_phase = water + fat
    opposed = np.abs(water - fat)
    return {"t1_in_phase": in_phase, "t1_opposed_phase": opposed, "t2": t2}
