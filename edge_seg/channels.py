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
from edge_seg.io import Volume, read_volume, strip_volume_suffix

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# Writers round geometry differently; nnU-Net's own check uses a similar tolerance.
_SPACING_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3


def channel_of(path: Path) -> int | None:
    """The nnU-Net channel number of a scan file (``case_0001.nii.gz`` -> 1); None if none."""
    match = _CHANNEL.match(strip_volume_suffix(path.name))
    return int(match.group("channel")) if match else None


def sibling_channel(path: Path, channel: int) -> Path | None:
    """The file of ``channel`` of the case ``path`` belongs to (``a_0001.NII.GZ``, 0 ->
    ``a_0000.NII.GZ``, the suffix as written); None for a name without a channel suffix."""
    stem = strip_volume_suffix(path.name)
    match = _CHANNEL.match(stem)
    if match is None:
        return None
    return path.with_name(f"{match.group('case')}_{channel:04d}{path.name[len(stem):]}")


def channel_files(first: Path, count: int) -> list[Path]:
    """The files of channels 0..count-1 of the case whose channel-0 file is ``first``.

    Raises
    ------
    EdgesegError
        If ``first`` is not a channel-0 file or a channel file is missing, naming it.
    """
    stem = strip_volume_suffix(first.name)
    suffix = first.name[len(stem):]  # as written (.NII.GZ stays upper case)
    match = _CHANNEL.match(stem)
    if first.is_dir() or not suffix or match is None or match.group("channel") != "0000":
        raise EdgesegError(
            f"{first}: the model takes {count} input channels, one file each named as nnU-Net "
            "names them (<case>_0000.nii.gz, <case>_0001.nii.gz, ...); give the _0000 file"
        )
    case = match.group("case")
    files = [first] + [sibling_channel(first, k) for k in range(1, count)]
    if not first.is_file():  # a case whose other channel files are there
        raise EdgesegError(f"{first}: channel 0 of case {case} is missing (the model takes "
                           f"{count} input channels)")
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


def channel_volumes(volume: Volume, rows: slice | None = None) -> list[Volume]:
    """One :class:`Volume` per input channel of ``volume`` (channel 0 first), as
    :func:`edge_seg.preprocess.preprocess` takes them; ``rows``: only these z-slices (views,
    no copy)."""
    rows = rows if rows is not None else slice(None)
    return [
        Volume(array[rows], volume.spacing_mm, volume.origin, volume.direction, volume.path)
        for array in (volume.array, *volume.extra_channels)
    ]


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
    """The scans of a batch folder that are cases of a ``count``-channel model.

    The channel-0 files, and anything else (which then fails as a case, by name). A file of
    channel 1..count-1 is read with its channel-0 file, not as a case; where that file is
    missing, the channel-0 path stands in for the case, so that it fails naming it instead
    of vanishing from the batch. With ``count`` 1 every file is a case.
    """
    if count == 1:
        return list(scans)
    names = {s.name for s in scans}
    cases: list[Path] = []
    for scan in scans:
        channel = channel_of(scan)
        if channel is None or channel == 0 or channel >= count:
            cases.append(scan)
            continue
        first = sibling_channel(scan, 0)
        if first.name not in names and first not in cases:
            cases.append(first)
    return cases


def stray_channel_files(scans: Sequence[Path], count: int) -> dict[Path, str]:
    """Files of channels >= ``count`` beside a channel-0 file (a 3-channel MR case given to a
    1-channel model), each with a one-line message: they are not scans of their own, as
    nnU-Net groups ``<case>_XXXX`` files into one case, and the model cannot take them."""
    names = {s.name for s in scans}
    stray: dict[Path, str] = {}
    for scan in scans:
        channel = channel_of(scan)
        if channel is None or channel < count:
            continue
        first = sibling_channel(scan, 0).name
        if first in names:
            stray[scan] = (f"{scan}: channel {channel} of the case of {first}, but the model "
                           f"takes {count} input channel(s); not segmented")
    return stray
