"""Real preprocessed patches for INT8 calibration and for the export's ONNX check.

INT8 scales are set from the activations the network sees at inference, so calibration patches
are cut from real images run through the runtime's own preprocessing
(:func:`edge_seg.preprocess.preprocess`: transpose, resample, normalise), at the positions the
sliding window visits - never random noise. When the user gives no images, the export check
uses a synthetic phantom from :mod:`edge_seg.synth`, preprocessed the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError, require_folder
from edge_seg.io import VOLUME_SUFFIXES, Volume

DEFAULT_PATCHES_PER_IMAGE = 4


@dataclass
class PatchSet:
    """Network inputs (one list of arrays per sample) and where they came from."""

    inputs: list[list[np.ndarray]]
    sources: list[str]


def list_images(folder: str | Path, channels: int = 1) -> list[Path]:
    """Image files (NIfTI/MHA/NRRD) and DICOM series folders directly inside ``folder``; for a
    model of several ``channels``, one entry per case (its ``_0000`` file, see
    :mod:`edge_seg.channels`)."""
    from edge_seg.channels import first_channel_scans

    folder = require_folder(folder, "image folder")
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        is_file = path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)
        is_dicom = path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())
        if is_file or is_dicom:
            found.append(path)
    return first_channel_scans(found, channels)


def read_images(paths: Sequence[Path], folder: str | Path,
                channels: int = 1) -> tuple[list[Volume], list[str]]:
    """Read what can be read; return the volumes and one line per unreadable file
    (``channels``: the model's input channels, each path a case's ``_0000`` file)."""
    from edge_seg.channels import read_channels

    volumes, problems = [], []
    for path in paths:
        try:
            volumes.append(read_channels(path, channels))
        except EdgesegError as exc:
            problems.append(str(exc))
    if not volumes:
        detail = f" ({problems[0]})" if problems else ""
        raise EdgesegError(f"{folder}: no readable images{detail}")
    return volumes, problems


def preprocessed_array(volume: Volume, bundle: Bundle) -> np.ndarray:
    """The runtime's preprocessing of ``volume`` as a float32 ``(C, z, y, x)`` array."""
    from edge_seg.channels import channel_volumes
    from edge_seg.preprocess import preprocess

    image, _geometry = preprocess(channel_volumes(volume), bundle)
    return np.asarray(image, dtype=np.float32)


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Sliding-window start positions along one axis (nnU-Net's step rule, overlap ``step``)."""
    if size <= patch:
        return [0]
    n = int(np.ceil((size - patch) / (patch * step))) + 1
    return [round(i * (size - patch) / (n - 1)) for i in range(n)]


def _pad_to_patch(array: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    # The runtime pads images smaller than a patch with zeros (the normalised mean), as nnU-Net.
    pads = [(0, 0)] + [
        ((p - s) // 2, p - s - (p - s) // 2) if s < p else (0, 0)
        for s, p in zip(array.shape[1:], patch, strict=True)
    ]
    return np.pad(array, pads) if any(sum(p) for p in pads) else array


def patches_from_array(
    array: np.ndarray, patch_size: Sequence[int], max_patches: int
) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Up to ``max_patches`` sliding-window patches ``(1, C, *patch)``, spread over the image.

    Positions are the window grid; when there are more than ``max_patches`` we keep the ones
    with the most variance (tissue rather than air), which are the activations that set scales.
    """
    array = _pad_to_patch(array, patch_size)
    grid = list(itertools.product(*(
        window_starts(s, p) for s, p in zip(array.shape[1:], patch_size, strict=True)
    )))
    def cut(start: tuple[int, ...]) -> np.ndarray:
        region = tuple(slice(b, b + p) for b, p in zip(start, patch_size, strict=True))
        return array[(slice(None), *region)]

    ranked = sorted(grid, key=lambda start: -float(cut(start).var()))
    chosen = sorted(ranked[:max_patches])
    return [(np.ascontiguousarray(cut(start)[None], dtype=np.float32), start) for start in chosen]


def presence_prior(bundle: Bundle) -> np.ndarray | None:
    """All-organs-present prior ``(1, K)`` for a network with a presence input, else None."""
    if not bundle.presence_input:
        return None
    return np.ones((1, len(bundle.presence_input)), dtype=np.float32)


def calibration_prior(bundle: Bundle, index: int) -> np.ndarray | None:
    """Presence prior for the ``index``-th calibration sample (None without a presence input).

    The prior feeds DAFT scale/shift layers, so their INT8 ranges must cover every prior users
    give: all present (most samples), one organ absent (in turn), all unknown (0.5).
    """
    prior = presence_prior(bundle)
    if prior is None:
        return None
    kind = index % 4
    if kind == 1:
        prior[0, (index // 4) % prior.shape[1]] = 0.0
    elif kind == 3:
        prior[:] = 0.5
    return prior


def network_inputs(patch: np.ndarray, bundle: Bundle, index: int = 0) -> list[np.ndarray]:
    prior = calibration_prior(bundle, index)
    return [patch] if prior is None else [patch, prior]


def patch_set(
    volumes: Sequence[Volume], bundle: Bundle, patches_per_image: int = DEFAULT_PATCHES_PER_IMAGE
) -> PatchSet:
    """Calibration samples from real images, preprocessed exactly as at inference."""
    inputs, sources = [], []
    for volume in volumes:
        array = preprocessed_array(volume, bundle)
        for patch, start in patches_from_array(array, bundle.patch_size, patches_per_image):
            inputs.append(network_inputs(patch, bundle, len(inputs)))
            sources.append(f"{volume.name}@{','.join(map(str, start))}")
    return PatchSet(inputs=inputs, sources=sources)


def phantom_volume(bundle: Bundle, seed: int = 0) -> Volume:
    """A synthetic abdomen in the bundle's modality (for checks when no images are given)."""
    from edge_seg.synth import generate_phantom

    # A coarse grid (whole abdomen field of view, few voxels): quick to make and preprocess.
    phantom = generate_phantom(seed, modality=bundle.modality.lower(), n_slices=48,
                               shape_yx=(160, 160))
    return Volume(
        array=phantom.image,
        spacing_mm=tuple(float(s) for s in phantom.spacing_mm),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in phantom.origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in phantom.direction),
        path=Path(f"phantom_seed{seed}.nii.gz"),
    )


def validation_inputs(
    bundle: Bundle, images: Sequence[Path] | None = None, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """One real preprocessed patch (the most textured window) for the export's ONNX check,
    from the first of ``images`` that reads (one damaged file does not stop the export; the
    error names the first problem only when none reads)."""
    from edge_seg.channels import first_channel_scans, read_channels

    count = len(bundle.channels)
    if images:
        problems = []
        for path in first_channel_scans(images, count):
            try:
                volume = read_channels(path, count)
                break
            except EdgesegError as exc:
                problems.append(str(exc))
        else:
            raise EdgesegError(f"{images[0].parent}: no readable images ({problems[0]})")
    else:
        volume = phantom_volume(bundle, seed)
        # The phantom has one image: every channel gets it (the check compares ONNX Runtime
        # with PyTorch on the same input, whatever the channels mean).
        volume.extra_channels = [volume.array] * (count - 1)
    array = preprocessed_array(volume, bundle)
    patch, start = patches_from_array(array, bundle.patch_size, 1)[0]
    where = "phantom" if not images else "image"
    return network_inputs(patch, bundle), f"{where} {volume.name} window at {list(start)}"
