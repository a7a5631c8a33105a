"""The phantom generator's API: grids, labels, anatomy, intensities, resections, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from edge_seg.synth import PROTOCOLS, generate_phantom, sample_case_params
from evaluator.labels import FLARE_LABELS

TINY = dict(n_slices=20, spacing_mm=(5.0, 6.0, 6.0), shape_yx=(64, 64))
# 3 mm isotropic over 300 mm: every organ in view, still only 1.7 M voxels.
COARSE = dict(n_slices=100, spacing_mm=(3.0, 3.0, 3.0), shape_yx=(130, 130), z_center_mm=40.0)


@pytest.fixture(scope="module")
def coarse_ct():
    return generate_phantom(7, "ct", **COARSE)


def _centroid_mm(phantom, organ: str) -> np.ndarray:
    """(x, y, z) mm centroid of an organ in patient coordinates."""
    zyx = np.argwhere(phantom.labels == FLARE_LABELS[organ]).mean(axis=0)
    return np.asarray(phantom.origin) + zyx[::-1] * np.asarray(phantom.spacing_mm[::-1])


def test_tiny_grid_has_requested_geometry_and_valid_labels() -> None:
    p = generate_phantom(1, "ct", **TINY)
    assert p.image.shape == p.labels.shape == (20, 64, 64)
    assert p.image.dtype == np.int16 and p.labels.dtype == np.uint8
    assert p.spacing_mm == (5.0, 6.0, 6.0)
    assert p.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert set(np.unique(p.labels).tolist()) <= {0, *FLARE_LABELS.values()}
    assert p.present_organs == tuple(FLARE_LABELS)
    assert p.image.min() >= -1024 and p.image.max() <= 3071


def test_all_thirteen_organs_in_a_scan_covering_the_abdomen(coarse_ct) -> None:
    assert coarse_ct.organs_in_view == tuple(FLARE_LABELS)
    volume_ml = {o: (coarse_ct.labels == v).sum() * 27 / 1000 for o, v in FLARE_LABELS.items()}
    assert 900 < volume_ml["liver"] < 2600
    assert 60 < volume_ml["kidney_left"] < 300 and 60 < volume_ml["kidney_right"] < 300
    assert 80 < volume_ml["spleen"] < 500
    for side in ("left", "right"):
        assert 0.5 < volume_ml[f"adrenal_gland_{side}"] < 20


def test_organs_sit_where_anatomy_puts_them(coarse_ct) -> None:
    c = {o: _centroid_mm(coarse_ct, o) for o in FLARE_LABELS}
    x, y, z = 0, 1, 2  # LPS: x grows to the patient's left, y to the back, z to the head
    assert c["liver"][x] < c["spleen"][x]
    assert c["kidney_right"][x] < c["aorta"][x] < c["kidney_left"][x]
    assert c["inferior_vena_cava"][x] < c["aorta"][x]
    assert c["kidney_left"][y] > c["pancreas"][y]  # retroperitoneal kidneys: behind the pancreas
    assert c["adrenal_gland_right"][z] > c["kidney_right"][z]
    assert c["adrenal_gland_left"][z] > c["kidney_left"][z]
    assert c["esophagus"][z] > c["stomach"][z]
    # The gallbladder lies in its fossa on the liver's under-surface: touching the liver, lower.
    assert c["gallbladder"][z] < c["liver"][z]
    gb = coarse_ct.labels == FLARE_LABELS["gallbladder"]
    grown = gb.copy()
    for axis in range(3):
        grown |= np.roll(gb, 1, axis) | np.roll(gb, -1, axis)
    assert (coarse_ct.labels[grown & ~gb] == FLARE_LABELS["liver"]).any()


def test_ct_intensities_are_plausible_hounsfield_units(coarse_ct) -> None:
    img, lab = coarse_ct.image.astype(float), coarse_ct.labels
    mean = {o: img[lab == v].mean() for o, v in FLARE_LABELS.items()}
    assert 60 < mean["liver"] < 150
    assert mean["kidney_left"] > mean["liver"]  # portal-venous phase: cortex enhances most
    assert mean["aorta"] > mean["liver"]
    assert -40 < mean["gallbladder"] < 50  # bile
    assert img[0, 0, 0] < -900  # air outside the body
    assert (img[lab == 0] < -60).mean() > 0.1  # fat exists around the organs


def test_mr_channels_follow_the_dixon_model() -> None:
    p = generate_phantom(3, "mr", n_slices=30, spacing_mm=(8.0, 3.0, 3.0), shape_yx=(128, 128),
                         z_center_mm=40.0)
    assert set(p.channels) == {"t1_in_phase", "t1_opposed_phase", "t2"}
    ip, op, t2 = (p.channels[k] for k in ("t1_in_phase", "t1_opposed_phase", "t2"))
    assert p.image is ip and ip.dtype == np.float32
    assert (ip >= 0).all() and (op <= ip + 1e-3).all()  # |water - fat| <= water + fat
    lab = p.labels
    # Pure fat (the brightest T1 background) keeps its signal in opposed phase ...
    body_fat = (lab == 0) & (ip > np.percentile(ip[lab == 0], 97))
    assert op[body_fat].mean() > 0.7 * ip[body_fat].mean()
    # ... while voxels mixing fat and water cancel ("India ink" at fat/water borders).
    bright = ip > np.median(ip)
    assert (op[bright] < 0.3 * ip[bright]).mean() > 0.02
    liver = lab == FLARE_LABELS["liver"]
    assert t2[lab == FLARE_LABELS["gallbladder"]].mean() > 2 * t2[liver].mean()  # bile is T2-bright


@pytest.mark.parametrize("organ", ["gallbladder", "kidney_left", "kidney_right"])
def test_resected_organ_is_absent_and_its_fossa_is_tissue_not_a_hole(organ: str) -> None:
    kw = dict(n_slices=60, spacing_mm=(4.0, 2.0, 2.0), shape_yx=(200, 200), z_center_mm=40.0)
    intact = generate_phantom(11, "ct", **kw)
    resected = generate_phantom(11, "ct", resected=[organ], **kw)
    value = FLARE_LABELS[organ]
    region = intact.labels == value
    assert region.sum() > 100
    assert not (resected.labels == value).any()
    assert organ not in resected.present_organs and resected.resected == (organ,)
    fill = resected.image[region].astype(float)
    assert fill.min() > -400  # no air
    assert -150 < fill.mean() < 80  # soft tissue / fat range
    assert (fill < -50).mean() > 0.1  # fat moved in ...
    assert (intact.image[region] < -50).mean() < 0.05  # ... where the organ had none
    # Everything else is untouched.
    other = ~region
    assert np.array_equal(intact.labels[other & (intact.labels != value)],
                          resected.labels[other & (intact.labels != value)])


def test_same_seed_identical_different_seed_differs() -> None:
    a, b, c = (generate_phantom(s, "mr", **TINY) for s in (5, 5, 6))
    for key in a.channels:
        assert a.channels[key].tobytes() == b.channels[key].tobytes()
    assert a.labels.tobytes() == b.labels.tobytes() and a.origin == b.origin
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.image, c.image)


def test_same_seed_same_patient_on_another_grid() -> None:
    fine = generate_phantom(9, "ct", n_slices=40, spacing_mm=(5.0, 3.0, 3.0), shape_yx=(128, 128),
                            z_center_mm=40.0)
    coarse = generate_phantom(9, "ct", n_slices=20, spacing_mm=(10.0, 6.0, 6.0), shape_yx=(64, 64),
                              z_center_mm=40.0)
    ratio = (fine.labels == 1).sum() * 45.0 / ((coarse.labels == 1).sum() * 360.0)
    assert 0.85 < ratio < 1.15  # liver volume agrees across grids


def test_long_scans_cover_chest_and_pelvis_beyond_the_organs() -> None:
    p = generate_phantom(2, "ct", n_slices=300, spacing_mm=(3.0, 3.0, 3.0), shape_yx=(130, 130))
    # Aorta, IVC and oesophagus run on into the chest; the abdominal organs stop.
    tubes = [FLARE_LABELS[o] for o in ("aorta", "inferior_vena_cava", "esophagus")]
    abdominal = (p.labels > 0) & ~np.isin(p.labels, tubes)
    labelled = np.flatnonzero(abdominal.reshape(p.labels.shape[0], -1).any(axis=1))
    assert labelled.min() > 0 and labelled.max() < p.labels.shape[0] - 1
    assert (labelled.max() - labelled.min()) < 0.7 * p.labels.shape[0]
    top = p.image[labelled.max() + 5 :]
    assert (top < -700).mean() > 0.3  # lungs and air above the diaphragm


def test_sample_case_params_stays_in_protocol_ranges() -> None:
    for name in ("flare_ct", "chaos_mr", "ukb_dixon"):
        proto = PROTOCOLS[name]
        for seed in range(40):
            p = sample_case_params(seed, proto.modality, protocol=name)
            assert proto.slices[0] <= p.n_slices <= proto.slices[1]
            assert proto.slice_mm[0] <= p.spacing_mm[0] <= proto.slice_mm[1]
            assert proto.pixel_mm[0] <= p.spacing_mm[1] <= proto.pixel_mm[1]
            assert p.shape_yx == proto.matrix_yx and p.resected == ()
    flare = [sample_case_params(s, "ct") for s in range(200)]
    assert min(p.n_slices for p in flare) < 80 and max(p.n_slices for p in flare) > 400
    always = [sample_case_params(s, "ct", resection_rate=1.0).resected for s in range(30)]
    assert all(len(r) == 1 for r in always) and {"gallbladder"} < {r[0] for r in always}


def test_bad_arguments_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="modality"):
        generate_phantom(0, "xray", **TINY)
    with pytest.raises(ValueError, match="cannot resect"):
        generate_phantom(0, "ct", resected=["liver"], **TINY)
    with pytest.raises(ValueError, match="both kidneys"):
        generate_phantom(0, "ct", resected=["kidney_left", "right kidney"], **TINY)
    with pytest.raises(ValueError, match="spacing"):
        generate_phantom(0, "ct", n_slices=4, spacing_mm=(0.0, 1.0, 1.0), shape_yx=(8, 8))


def test_noise_and_partial_volume_edges() -> None:
    kw = dict(n_slices=30, spacing_mm=(3.0, 1.5, 1.5), shape_yx=(256, 256), z_center_mm=60.0)
    noisy = generate_phantom(4, "ct", **kw)
    clean = generate_phantom(4, "ct", noise=False, **kw)
    assert np.array_equal(noisy.labels, clean.labels)
    liver = noisy.labels == FLARE_LABELS["liver"]
    core = liver.copy()  # liver voxels whose 6 neighbours are liver too
    for axis in range(3):
        core &= np.roll(liver, 1, axis) & np.roll(liver, -1, axis)
    diff = noisy.image[core].astype(float) - clean.image[core]
    assert 4.0 < diff.std() < 30.0  # CT noise of a few to a few tens of HU
    assert clean.image[core].std() < 8.0  # homogeneous organ without noise (vessels aside)
    # Partial volume: on the liver's border there are values between liver and its neighbours.
    border = liver & ~core
    inner = float(np.median(clean.image[core]))
    between = (clean.image[border] < inner - 15) & (clean.image[border] > -90)
    assert between.mean() > 0.1  # a hard-edged rendering would have none


def test_phantom_volume_carries_the_geometry() -> None:
    p = generate_phantom(1, "mr", **TINY)
    v = p.volume("t2")
    assert v.array is p.channels["t2"] and v.spacing_mm == p.spacing_mm
    assert v.origin == p.origin and v.direction == p.direction
    assert p.volume().array is p.image
