"""Scans of several input channels, named as nnU-Net names them: ``<case>_0000``, ``_0001``, ...

A network trained on more than one image per case (CHAOS MR: in-phase, opposed-phase and T2;
multi-phase CT) takes them as channels, one file each, with nnU-Net's 4-digit channel suffix:
``case_0000.nii.gz`` is channel 0, ``case_0001.nii.gz`` channel 1. ``edgeseg predict`` is
given the channel-0 file (or, in batch mode, a folder of them); the others are found beside
it. All channels must lie on one grid, as nnU-Net requires: they are one image to the network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_seg.errors import EdgesegError
from edge_seg.io import Volume, read_volume, strip_volume_suffix, volume_suffix

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# Writers round geometry differently; nnU-Net's own check uses a similar tolerance.
_SPACING_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3


def channel_of(path: Path) -> int | None:
    """The nnU-Net channel number of a scan file (``case_0001.nii.gz`` -> 1); None if none."""
    match = _CHANNEL.match(strip_volume_suffix(path.name))
    return int(match.group("channel")) if match else None


def channel_files(first: Path, count: int) -> list[Path]:
    """The files of channels 0..count-1 of the case whose channel-0 file is ``first``.

    Raises
    ------
    EdgesegError
        If ``first`` is not a channel-0 file or a channel file is missing, naming it.
    """
    suffix = volume_suffix(first.name)
    match = _CHANNEL.match(strip_volume_suffix(first.name))
    if first.is_dir() or suffix is None or match is None or match.group("channel") != "0000":
        raise EdgesegError(
            f"{first}: the model takes {count} input channels, one file each named as nnU-Net "
            "names them (<case>_0000.nii.gz, <case>_0001.nii.gz, ...); give the _0000 file"
        )
    case = match.group("case")
    files = [first.with_name(f"{case}_{k:04d}{suffix}") for k in range(count)]
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise EdgesegError(
            f"{first}: the model takes {count} input channels; {', '.join(missing)} "
            f"missing beside it"
        )
    return files


def read_channels(first: str | Path, count: int = 1) -> Volume:
    """Read a scan of ``count`` channels: channel 0 as the volume, the rest in
    ``extra_channels`` (checked to lie on channel 0's grid). ``count`` 1 is :func:`read_volume`.
    """
    if count == 1:
        return read_volume(first)
    files = channel_files(Path(first), count)
    volume = read_volume(files[0])
    for path in files[1:]:
        other = read_volume(path)
        problem = _grid_difference(volume, other)
        if problem:
            raise EdgesegError(f"{path}: not on the grid of {files[0].name} ({problem}); the "
                               "channels of a case are one image to the network")
        volume.extra_channels.append(other.array)
        volume.notes += other.notes
    return volume


def _grid_difference(reference: Volume, other: Volume) -> str:
    if other.array.shape != reference.array.shape:
        return f"shape {other.array.shape} != {reference.array.shape}"
    if not np.allclose(other.spacing_mm, reference.spacing_mm, rtol=_SPACING_RTOL, atol=0):
        return f"spacing {other.spacing_mm} != {reference.spacing_mm} mm"
    if not np.allclose(other.origin, reference.origin, rtol=0, atol=_ORIGIN_ATOL_MM):
        return f"origin {other.origin} != {reference.origin}"
    if not np.allclose(other.direction, reference.direction, rtol=0, atol=1e-4):
        return "direction differs"
    return ""


def first_channel_scans(scans: Sequence[Path], count: int) -> list[Path]:
    """The scans of a batch folder that are cases of a ``count``-channel model: the channel-0
    files (and anything else, which then fails as a case by name); the files of channels
    1..count-1 are read with their channel-0 file, not as cases of their own."""
    if count == 1:
        return list(scans)
    return [s for s in scans if not (channel_of(s) is not None and 0 < channel_of(s) < count)]
