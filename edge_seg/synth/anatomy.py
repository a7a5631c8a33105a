"""Organ templates of the abdominal phantom, in millimetres, with per-case random variation.

The patient frame is DICOM/ITK "LPS": x grows towards the patient's left, y towards the back,
z towards the head. Its origin sits on the midline, at the centre of the body outline, at the
level of the L1/L2 disc (roughly the renal hila). Reference positions and sizes are those of an
average adult (liver about 1.6 l, kidneys 11 x 6 x 4.5 cm, spleen 12 x 7 x 4 cm, aorta 2.2 cm,
gallbladder 8 x 3 cm in its fossa under the liver); each case scales, shifts, tilts and bends
them smoothly so that no two phantoms share a shape.

Structures are listed in painting order: a later structure overwrites an earlier one where they
meet, which is how organ contacts (the kidney's impression on the liver, the IVC running through
the liver) come out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_seg.synth.geometry import Ellipsoid, Primitive, SmoothWarp, Tube, rotation_matrix
from evaluator.labels import FLARE_LABELS

#: Organs a case can lack: cholecystectomy and nephrectomy are the common resections.
RESECTABLE_ORGANS: tuple[str, ...] = ("gallbladder", "kidney_right", "kidney_left")


@dataclass
class Structure:
    """One anatomical structure: a union of primitives painted with one tissue.

    ``label`` is the FLARE number (0 for structures that are not FLARE organs, e.g. the spine).
    ``core_tissue`` fills the part deeper than ``core_depth_mm`` (kidney medulla, stomach
    contents); ``gas_anterior_of_mm`` puts gas in the core anterior to that y (a supine
    patient's stomach bubble). ``below_diaphragm`` clips the structure under the dome.
    """

    name: str
    tissue: str
    parts: list[Primitive]
    label: int = 0
    core_tissue: str | None = None
    core_depth_mm: float = 0.0
    gas_anterior_of_mm: float | None = None
    below_diaphragm: bool = False
    warp: SmoothWarp | None = None
    resected: bool = False
    keep_labels: tuple[
        int, ...
    ] = ()  # labels this structure does not overwrite (vessels in organs)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (low, high) corners in mm, widened by the warp's largest displacement."""
        lows, highs = zip(*(p.bounds() for p in self.parts), strict=True)
        margin = (self.warp.max_displacement if self.warp else 0.0) + 1.0
        return np.min(lows, axis=0) - margin, np.max(highs, axis=0) + margin


@dataclass
class BodyShape:
    """Elliptic body outline whose half-axes change along z (chest, waist, pelvis)."""

    half_width_mm: float
    half_depth_mm: float
    subcutaneous_fat_mm: float
    muscle_mm: float
    # z (mm) -> relative half-width / half-depth; interpolated linearly, constant beyond.
    profile_z: np.ndarray = field(
        default_factory=lambda: np.array(
            [-450.0, -330.0, -200.0, -100.0, 0.0, 120.0, 250.0, 380.0, 450.0]
        )
    )
    profile_width: np.ndarray = field(
        default_factory=lambda: np.array([0.95, 1.08, 1.10, 1.02, 1.0, 1.02, 1.05, 1.10, 0.80])
    )
    profile_depth: np.ndarray = field(
        default_factory=lambda: np.array([0.90, 1.00, 1.02, 0.98, 1.0, 1.0, 0.98, 0.95, 0.75])
    )

    def radii(self, z_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-width and half-depth (mm) of the outline at each ``z_mm``."""
        a = self.half_width_mm * np.interp(z_mm, self.profile_z, self.profile_width)
        b = self.half_depth_mm * np.interp(z_mm, self.profile_z, self.profile_depth)
        return a, b


@dataclass
class Diaphragm:
    """Two paraboloid domes; lungs above, abdominal organs below."""

    right_top_mm: float
    left_top_mm: float
    half_width_mm: float = 95.0
    half_depth_mm: float = 85.0
    drop_mm: float = 70.0

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z (mm) of the diaphragm surface above (x, y); broadcasts."""
        depth = (y / np.float32(self.half_depth_mm)) ** 2
        right = self.right_top_mm - self.drop_mm * (((x + 70.0) / self.half_width_mm) ** 2 + depth)
        left = self.left_top_mm - self.drop_mm * (((x - 70.0) / self.half_width_mm) ** 2 + depth)
        return np.maximum(right, left).astype(np.float32)

    @property
    def top_mm(self) -> float:
        return max(self.right_top_mm, self.left_top_mm)


@dataclass
class Anatomy:
    """Everything geometric about one phantom, independent of the voxel grid."""

    body: BodyShape
    diaphragm: Diaphragm
    structures: list[Structure]
    bowel_warp: SmoothWarp
    bowel_frequency: np.ndarray  # (3, 3) rad/mm for the bowel-loop texture
    bowel_phase: np.ndarray  # (3, 3)
    rib_phase_mm: float
    bowel_share: float = 0.25  # threshold offset: more bowel loops, less mesenteric fat
    # (3 terms, 2 waves, [amplitude rad, x frequency, y frequency, phase]): in-plane phase
    # shift of each term's z-wave, so the loops do not line up in a lattice along z.
    bowel_twist: np.ndarray = field(default_factory=lambda: np.zeros((3, 2, 4)))

    @property
    def organ_z_range_mm(self) -> tuple[float, float]:
        """z extent (mm) of the labelled organs (present or not), for choosing the scan range."""
        lows, highs = [], []
        for s in self.structures:
            if s.label and s.name not in ("aorta", "inferior_vena_cava", "esophagus"):
                lo, hi = s.bounds()
                lows.append(lo[2])
                highs.append(hi[2])
        return float(min(lows)), float(max(highs))


def spine_depth_mm(z_mm: np.ndarray | float) -> np.ndarray:
    """y (mm) of the vertebral-body centre: lumbar lordosis, thoracic kyphosis, sacral tilt."""
    return np.interp(
        z_mm, [-300, -220, -140, -60, 0, 100, 250, 400], [70, 62, 48, 34, 36, 44, 52, 48]
    )


def _jitter(rng: np.random.Generator, sd_mm: float, limit: float = 2.0) -> np.ndarray:
    return np.clip(rng.normal(0.0, 1.0, 3), -limit, limit) * sd_mm


def _ellipsoid(
    center,
    radii,
    scale: float,
    shift: np.ndarray,
    rng: np.random.Generator,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    size_sd: float = 0.08,
    angle_sd: float = 6.0,
) -> Ellipsoid:
    radii = np.asarray(radii, float) * scale * np.clip(rng.normal(1.0, size_sd, 3), 0.8, 1.2)
    rot = rotation_matrix(
        yaw + rng.normal(0, angle_sd),
        pitch + rng.normal(0, angle_sd),
        roll + rng.normal(0, angle_sd),
    )
    return Ellipsoid(np.asarray(center, float) * scale + shift, radii, rot)


def _tube(
    points,
    radii,
    scale: float,
    shift: np.ndarray,
    rng: np.random.Generator,
    point_sd: float = 3.0,
    radius_sd: float = 0.08,
) -> Tube:
    pts = np.asarray(points, float) * scale + shift
    pts = pts + rng.normal(0, point_sd, pts.shape)
    r = np.asarray(radii, float) * scale * np.clip(rng.normal(1.0, radius_sd, len(radii)), 0.8, 1.2)
    return Tube(pts, r)


def sample_anatomy(rng: np.random.Generator, resected: tuple[str, ...] = ()) -> Anatomy:
    """Draw one case's anatomy: body habitus, organ sizes, positions, tilts and warps."""
    s = float(rng.uniform(0.9, 1.1))  # overall body size
    fat = float(rng.uniform(8.0, 40.0))  # subcutaneous fat thickness varies most between people
    muscle = float(rng.uniform(8.0, 16.0))
    body = BodyShape(
        half_width_mm=125 * s + fat + muscle + rng.uniform(-5, 5),
        half_depth_mm=82 * s + fat + muscle + rng.uniform(-5, 5),
        subcutaneous_fat_mm=fat,
        muscle_mm=muscle,
    )
    dz = float(rng.normal(0.0, 8.0))  # breathing / habitus moves the upper abdomen up or down
    dome = Diaphragm(
        right_top_mm=150 * s + dz + rng.normal(0, 5), left_top_mm=135 * s + dz + rng.normal(0, 5)
    )

    def warp(amplitude: float, size: float = 1.0) -> SmoothWarp:
        return SmoothWarp.random(rng, amplitude, (60.0 * size, 180.0 * size))

    o = np.array([0.0, 0.0, dz])
    liver_shift = o + _jitter(rng, 4.0)
    rk_shift = (
        o + _jitter(rng, 5.0) + np.array([0, 0, rng.uniform(-15, 5)])
    )  # right kidney sits lower
    lk_shift = o + _jitter(rng, 5.0)
    spleen_shift = o + _jitter(rng, 5.0)
    gut_shift = o + _jitter(rng, 4.0)
    ys = lambda z: float(spine_depth_mm(z))  # noqa: E731 - tiny local helper
    st: list[Structure] = []

    # --- musculoskeletal frame (not labelled) -------------------------------------------
    zs = np.array([-460, -300, -220, -140, -60, 0, 100, 250, 400, 470], float)
    spine_pts = np.stack([np.zeros_like(zs), spine_depth_mm(zs), zs], axis=1)
    st.append(
        Structure(
            "paraspinal_muscles",
            "muscle",
            [
                Tube(spine_pts + np.array([side * 32, 40, 0]), np.full(len(zs), 24.0 * s))
                for side in (-1, 1)
            ],
        )
    )
    for side in (-1, 1):
        st.append(
            Structure(
                "psoas",
                "muscle",
                [
                    _tube(
                        [
                            [side * 25, ys(40), 40],
                            [side * 38, ys(-40) - 5, -40],
                            [side * 52, ys(-140) - 15, -140],
                            [side * 65, -10, -230],
                            [side * 75, -20, -300],
                        ],
                        [6, 14, 22, 22, 18],
                        s,
                        o,
                        rng,
                    )
                ],
            )
        )
    st.append(Structure("vertebral_bodies", "bone", [Tube(spine_pts, np.full(len(zs), 19.0 * s))]))
    st.append(
        Structure(
            "spinal_canal",
            "csf",
            [Tube(spine_pts + np.array([0, 29 * s, 0]), np.full(len(zs), 8.0 * s))],
        )
    )
    st.append(
        Structure(
            "vertebral_arches",
            "cortical_bone",
            [
                Tube(spine_pts + np.array([side * 11 * s, 36 * s, 0]), np.full(len(zs), 5.0 * s))
                for side in (-1, 1)
            ]
            + [Tube(spine_pts + np.array([0, 52 * s, 0]), np.full(len(zs), 5.0 * s))],
        )
    )
    for side in (-1, 1):
        st.append(
            Structure(
                "iliac_wing",
                "bone",
                [_ellipsoid([side * 95, 20, -175], [16, 62, 55], s, o, rng, yaw=side * 25.0)],
            )
        )
        st.append(
            Structure(
                "femoral_head", "bone", [_ellipsoid([side * 92, -5, -290], [25, 25, 25], s, o, rng)]
            )
        )
        st.append(
            Structure(
                "femur",
                "bone",
                [
                    _tube(
                        [[side * 92, -5, -290], [side * 115, -5, -320], [side * 118, 0, -470]],
                        [22, 16, 14],
                        s,
                        o,
                        rng,
                    )
                ],
            )
        )
    st.append(Structure("bladder", "urine", [_ellipsoid([0, -45, -280], [45, 35, 35], s, o, rng)]))
    st.append(
        Structure(
            "heart", "blood_pool", [_ellipsoid([15, -30, 215], [62, 50, 58], s, o, rng, yaw=-30.0)]
        )
    )
    for side in (-1, 1):
        st.append(
            Structure(
                "iliac_artery",
                "artery",
                [
                    _tube(
                        [[8, 2, -95], [side * 45, 10, -170], [side * 80, -5, -260]],
                        [7, 6, 5],
                        s,
                        o,
                        rng,
                    )
                ],
            )
        )

    # --- FLARE organs, painting order ----------------------------------------------------
    def organ(name: str, tissue: str, parts: list[Primitive], **kw) -> Structure:
        return Structure(
            name, tissue, parts, label=FLARE_LABELS[name], resected=name in resected, **kw
        )

    st.append(
        organ(
            "stomach",
            "stomach_wall",
            [
                _tube(
                    [[45, 10, 130], [58, -20, 95], [52, -45, 65], [20, -58, 42], [-8, -52, 36]],
                    [36, 38, 33, 22, 11],
                    s,
                    gut_shift,
                    rng,
                )
            ],
            core_tissue="gut_content",
            core_depth_mm=4.0,
            gas_anterior_of_mm=float(rng.uniform(-40, 10)) if rng.random() < 0.6 else None,
            below_diaphragm=True,
            warp=warp(6.0),
        )
    )
    st.append(
        organ(
            "duodenum",
            "duodenum",
            [
                _tube(
                    [
                        [-8, -52, 36],
                        [-38, -35, 36],
                        [-58, -12, 24],
                        [-62, -5, -20],
                        [-48, -10, -45],
                        [-10, -25, -52],
                        [22, -22, -42],
                        [32, -18, -12],
                    ],
                    [11, 12, 12, 12, 12, 11, 11, 10],
                    s,
                    gut_shift,
                    rng,
                )
            ],
            core_tissue="gut_content",
            core_depth_mm=3.0,
            warp=warp(3.0),
        )
    )
    st.append(
        organ(
            "pancreas",
            "pancreas",
            [
                _tube(
                    [
                        [-42, -18, 2],
                        [-30, -22, 15],
                        [-8, -32, 24],
                        [25, -20, 32],
                        [60, 8, 45],
                        [82, 22, 55],
                    ],
                    [16, 14, 11, 10, 9, 7],
                    s,
                    gut_shift,
                    rng,
                    point_sd=2.0,
                )
            ],
            warp=warp(3.0, 0.6),
        )
    )
    st.append(
        organ(
            "spleen",
            "spleen",
            [_ellipsoid([88, 35, 88], [24, 52, 52], s, spleen_shift, rng, yaw=-35.0, roll=10.0)],
            below_diaphragm=True,
            warp=warp(5.0),
        )
    )
    st.append(
        organ(
            "liver",
            "liver",
            [
                _ellipsoid([-58, 0, 78], [68, 78, 72], s, liver_shift, rng, pitch=-5.0),
                _ellipsoid([8, -38, 100], [52, 34, 40], s, liver_shift, rng, yaw=15.0, pitch=-10.0),
                _ellipsoid([45, -42, 108], [32, 22, 26], s, liver_shift, rng, yaw=10.0),
            ],
            below_diaphragm=True,
            warp=warp(8.0),
        )
    )
    st.append(
        organ(
            "gallbladder",
            "bile",
            [
                _ellipsoid(
                    [-42, -48, 22],
                    [15, 15, 40],
                    s,
                    liver_shift,
                    rng,
                    roll=-40.0,
                    pitch=10.0,
                    size_sd=0.15,
                )
            ],
            warp=warp(2.5, 0.5),
        )
    )
    for name, side, shift in (("kidney_right", -1, rk_shift), ("kidney_left", 1, lk_shift)):
        st.append(
            organ(
                name,
                "kidney_cortex",
                [
                    _ellipsoid(
                        [side * 62, 48, -8 if side < 0 else 5],
                        [30, 23, 55],
                        s,
                        shift,
                        rng,
                        yaw=side * 30.0,
                        pitch=side * -12.0,
                    )
                ],
                core_tissue="kidney_medulla",
                core_depth_mm=7.0,
                warp=warp(3.0, 0.7),
            )
        )
    for name, side, shift, z in (
        ("adrenal_gland_right", -1, rk_shift, 62),
        ("adrenal_gland_left", 1, lk_shift, 52),
    ):
        centre = np.array([side * 38, 32, z])
        st.append(
            organ(
                name,
                "adrenal",
                [
                    _ellipsoid(
                        centre + np.array([side * 4, 4, 0]),
                        [3.5, 12, 18],
                        s,
                        shift,
                        rng,
                        yaw=side * 20.0,
                        roll=20.0,
                    ),
                    _ellipsoid(
                        centre + np.array([-side * 2, -2, -4]),
                        [3.5, 10, 16],
                        s,
                        shift,
                        rng,
                        yaw=side * -25.0,
                        roll=-15.0,
                    ),
                ],
                warp=warp(1.2, 0.3),
            )
        )
    ivc_y = ys(0) - 30
    st.append(
        organ(
            "inferior_vena_cava",
            "vein",
            [
                _tube(
                    [
                        [-20, -15, 190],
                        [-22, ivc_y, 140],
                        [-25, ivc_y, 60],
                        [-24, ivc_y, 0],
                        [-16, ivc_y + 5, -105],
                    ],
                    [13, 12, 11, 11, 10],
                    s,
                    o,
                    rng,
                    point_sd=2.0,
                )
            ],
        )
    )
    st.append(
        organ(
            "aorta",
            "artery",
            [
                _tube(
                    [
                        [5, -30, 250],
                        [2, -30, 330],
                        [15, 0, 365],
                        [24, ys(330) - 20, 330],
                        [22, ys(200) - 22, 200],
                        [14, ys(120) - 30, 120],
                        [10, ys(0) - 32, 0],
                        [7, ys(-95) - 30, -95],
                    ],
                    [15, 15, 14, 13, 12, 11.5, 10.5, 9],
                    s,
                    o,
                    rng,
                    point_sd=2.0,
                )
            ],
        )
    )
    st.append(
        organ(
            "esophagus",
            "esophagus",
            [
                _tube(
                    [
                        [0, 20, 470],
                        [2, ys(300) - 30, 300],
                        [12, ys(180) - 45, 180],
                        [25, -10, 125],
                        [40, -8, 110],
                    ],
                    [8, 8, 8, 9, 10],
                    s,
                    o,
                    rng,
                    point_sd=2.0,
                )
            ],
        )
    )

    freq = 2 * np.pi / rng.uniform(20.0, 50.0, size=(3, 3))
    bowel_warp = warp(16.0, 0.5)
    bowel_share = float(rng.uniform(0.05, 0.45))
    bowel_phase = rng.uniform(0, 2 * np.pi, size=(3, 3))
    rib_phase = float(rng.uniform(0, 36))
    # Vessels between the organs, painted before the IVC and aorta they drain into.
    at = next(i for i, x in enumerate(st) if x.name == "inferior_vena_cava")
    st[at:at] = _vessels(rng, s, {x.name: x for x in st})
    angle = rng.uniform(0, 2 * np.pi, size=(3, 2))
    wavelength = rng.uniform(50.0, 150.0, size=(3, 2))
    twist = np.stack(
        [
            rng.uniform(1.5, 3.0, size=(3, 2)),
            2 * np.pi / wavelength * np.cos(angle),
            2 * np.pi / wavelength * np.sin(angle),
            rng.uniform(0, 2 * np.pi, size=(3, 2)),
        ],
        axis=-1,
    )
    return Anatomy(
        body=body,
        diaphragm=dome,
        structures=st,
        bowel_warp=bowel_warp,
        bowel_share=bowel_share,
        bowel_frequency=freq,
        bowel_phase=bowel_phase,
        rib_phase_mm=rib_phase,
        bowel_twist=twist,
    )


def _tube_at_z(tube: Tube, z: float) -> np.ndarray:
    """(x, y, z) of a roughly vertical tube's centreline at height ``z``."""
    order = np.argsort(tube.points[:, 2])
    p = tube.points[order]
    return np.array([np.interp(z, p[:, 2], p[:, 0]), np.interp(z, p[:, 2], p[:, 1]), z])


def _vessels(rng: np.random.Generator, s: float, organs: dict[str, Structure]) -> list[Structure]:
    """Portal, splenic, mesenteric, hepatic and renal vessels joining the sampled organs.

    They give the network the cues a radiologist uses: the splenic vein along the back of the
    pancreas, the portal vein entering the liver at the porta, the renal veins at the hila.
    Intrahepatic parts keep the liver label; renal vessels keep the kidney label at the hilum.
    """
    liver = FLARE_LABELS["liver"]
    ivc, aorta = organs["inferior_vena_cava"].parts[0], organs["aorta"].parts[0]
    pancreas = organs["pancreas"].parts[0].points
    right_lobe, left_lobe = organs["liver"].parts[0].center, organs["liver"].parts[1].center
    spleen = organs["spleen"].parts[0].center

    def vessel(name: str, tissue: str, points, radii, keep=()) -> Structure:
        pts = np.asarray(points, float) + rng.normal(0, 1.5, (len(points), 3))
        return Structure(name, tissue, [Tube(pts, np.asarray(radii, float) * s)], keep_labels=keep)

    confluence = pancreas[2] + np.array([0, 13, -2]) * s
    porta = right_lobe + np.array([30, -14, -12]) * s
    top = _tube_at_z(ivc, right_lobe[2] + 55 * s)
    out = [
        vessel(
            "splenic_vein",
            "vein",
            [
                confluence,
                pancreas[3] + [0, 11 * s, 0],
                pancreas[4] + [0, 10 * s, 0],
                spleen + np.array([-18, -8, -10]) * s,
            ],
            [5, 4.5, 4.5, 4.5],
        ),
        vessel(
            "superior_mesenteric_vein",
            "vein",
            [confluence, confluence + np.array([-4, -10, -70]) * s],
            [5.5, 4.5],
        ),
        vessel(
            "portal_vein",
            "vein",
            [confluence, porta, right_lobe + np.array([-25, 5, 8]) * s],
            [7, 6, 4],
            (liver,),
        ),
        vessel("left_portal_vein", "vein", [porta, left_lobe], [5, 3], (liver,)),
        vessel(
            "hepatic_veins",
            "vein",
            [top, right_lobe + np.array([-40, 15, 35]) * s],
            [6, 3],
            (liver,),
        ),
        vessel(
            "middle_hepatic_vein",
            "vein",
            [top, right_lobe + np.array([20, -45, 25]) * s],
            [5, 2.5],
            (liver,),
        ),
        vessel(
            "left_hepatic_vein",
            "vein",
            [top, left_lobe + np.array([5, 0, 10]) * s],
            [5, 2.5],
            (liver,),
        ),
        vessel(
            "superior_mesenteric_artery",
            "artery",
            [
                _tube_at_z(aorta, pancreas[2][2] - 9 * s) + np.array([0, -8, 0]),
                confluence + np.array([8, -6, -20]) * s,
                confluence + np.array([6, -14, -80]) * s,
            ],
            [4, 3.5, 3],
        ),
    ]
    for side, name in ((-1, "kidney_right"), (1, "kidney_left")):
        kidney = organs[name]
        if kidney.resected:
            continue  # ligated with the kidney
        centre = kidney.parts[0].center
        hilum = centre + np.array([-side * 24, -8, 2]) * s
        keep = (FLARE_LABELS[name],)
        vein_end = _tube_at_z(ivc, hilum[2])
        points = [hilum, vein_end]
        if side > 0:  # the left renal vein crosses in front of the aorta
            front = _tube_at_z(aorta, hilum[2] + 5) + np.array([0, -16, 0]) * s
            points = [hilum, front, vein_end]
        out.append(
            vessel(f"renal_vein_{name}", "vein", points, [5] * (len(points) - 1) + [6], keep)
        )
        out.append(
            vessel(
                f"renal_artery_{name}",
                "artery",
                [_tube_at_z(aorta, hilum[2] + 8), hilum + np.array([0, 5, 3]) * s],
                [3.5, 3],
                keep,
            )
        )
    return out
