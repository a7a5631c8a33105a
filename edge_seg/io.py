"""Reading scans and writing label maps, with the input checks every command relies on.

Arrays are kept in SimpleITK/NumPy order (z, y, x), exactly as nnU-Net's ``SimpleITKIO`` hands
them to the network: no reorientation happens anywhere in edgeseg, so a label map written with
:func:`write_label_map` overlays its scan voxel for voxel in any viewer.

This is the public entry point; the format-specific work lives beside it:
:mod:`edge_seg.dicom` (DICOM series and their slice checks), :mod:`edge_seg.nifti` (the fast
``.nii.gz`` reader, NIfTI header checks, the label-map header writer) and
:mod:`edge_seg.metaimage` (the MetaImage size check). The memory checks are defined in
:mod:`edge_seg.memory` and re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edge_seg.dicom import _read_dicom_series
from edge_seg.errors import EdgesegError, _first_line
from edge_seg.memory import (
    WORKING_BYTES_PER_VOXEL,
    available_memory_bytes,
    check_fits_in_memory,
)
from edge_seg.metaimage import _check_metaimage_size
from edge_seg.nifti import (
    _check_nifti_letter_case,
    _check_uncompressed_nifti,
    _write_nifti_like,
    read_nifti_gz_voxels,
)
from evaluator.atomic import atomic_path, nearest_existing

__all__ = [
    "OUTPUT_SUFFIXES",
    "VOLUME_SUFFIXES",
    "WORKING_BYTES_PER_VOXEL",
    "Volume",
    "available_memory_bytes",
    "check_fits_in_memory",
    "check_output_path",
    "check_writable_location",
    "is_volume_file",
    "read_volume",
    "strip_volume_suffix",
    "volume_suffix",
    "write_label_map",
]

#: File endings read as single-file volumes (anything else must be a DICOM series folder),
#: matched in any letter case.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

#: File endings a label map can be written as. The two-file formats (.mhd + .raw,
#: .nhdr + .raw.gz) are left out: their header names the data file, so an atomic write
#: (temporary name, then a rename of one file) cannot give both their final names.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")

#: The ITK reader/writer of each suffix, set explicitly: ITK picks one by a case-sensitive
#: file-name match, reads ``scan.MHA`` not at all and writes ``x.MHA`` as .mhd + .zraw.
_IMAGE_IO = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
}


@dataclass
class Volume:
    """A 3D scan in SimpleITK order.

    Attributes
    ----------
    array : np.ndarray
        Voxel values, shape (z, y, x).
    spacing_mm : tuple of float
        Voxel size along (z, y, x) in mm.
    origin : tuple of float
        Physical position of voxel 0 in (x, y, z) mm, as SimpleITK reports it.
    direction : tuple of float
        Row-major 3x3 direction cosines (9 floats), as SimpleITK reports them.
    path : Path or None
        File or DICOM folder the scan was read from.
    nifti_header : bytes or None
        The 348-byte NIfTI-1 header of the file, where it was read as a plain gzipped
        NIfTI-1 file; a label map written as NIfTI reuses its geometry fields verbatim.
    notes : list of str
        One-line remarks about how the scan was read that the user should see (which of
        several DICOM series was taken); commands print them as ``note:`` lines.
    extra_channels : list of np.ndarray
        Channels 1.. of a scan for a model of several input channels, on this grid
        (:mod:`edge_seg.channels`); empty for a single-channel scan.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: Path | None = None
    nifti_header: bytes | None = field(default=None, repr=False, compare=False)
    notes: list[str] = field(default_factory=list, compare=False)
    extra_channels: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """Case name: file name without the image suffix (``case_0000.nii.gz`` -> ``case_0000``)."""
        if self.path is None:
            return "volume"
        return strip_volume_suffix(self.path.name)

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's) with this volume's geometry."""
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing(tuple(float(s) for s in reversed(self.spacing_mm)))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))
        return image


def volume_suffix(name: str) -> str | None:
    """The image suffix of a file name, in lower case (``CT.NII.GZ`` -> ``.nii.gz``); None if
    it has none of :data:`VOLUME_SUFFIXES`."""
    lower = name.lower()
    return next((suffix for suffix in VOLUME_SUFFIXES if lower.endswith(suffix)), None)


def strip_volume_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case`` (any of :data:`VOLUME_SUFFIXES`, any letter case)."""
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def is_volume_file(path: Path) -> bool:
    return path.is_file() and volume_suffix(path.name) is not None


def _read_image(path: Path, reader: sitk.ImageFileReader | None = None) -> sitk.Image:
    """The image in the file ``path``; ``reader``: a file reader that has read its header."""
    reader = reader or _file_reader(path)
    # After the header checks (a huge claimed size is a memory error first), before ITK reads
    # voxels it would zero-fill or misread.
    suffix = volume_suffix(path.name)
    if suffix == ".nii":
        _check_uncompressed_nifti(path)
    elif suffix in (".mha", ".mhd"):
        _check_metaimage_size(path)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: unreadable image file ({_first_line(exc)})") from exc


def _file_reader(path: Path) -> sitk.ImageFileReader:
    """A reader that has read and checked the file's header (size, dimensions, memory)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    suffix = volume_suffix(path.name)
    _check_nifti_letter_case(path, suffix)
    if suffix is not None:
        reader.SetImageIO(_IMAGE_IO[suffix])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: unreadable image file ({_first_line(exc)})") from exc
    size = reader.GetSize()
    _check_dimensions(path, size)
    _check_direction(path, reader.GetDirection(), reader.GetDimension())
    check_fits_in_memory(size[:3], str(path), WORKING_BYTES_PER_VOXEL)
    return reader


def _check_direction(path: Path, direction: Sequence[float], dimension: int) -> None:
    """Refuse a header whose direction matrix cannot place voxels (zero, singular, NaN).

    ITK reads such a header and then fails on the voxels with a bare "0 0 0"; the problem is
    the orientation, and the message should say so.
    """
    matrix = np.asarray(direction, dtype=float).reshape(dimension, dimension)[:3, :3]
    if not np.all(np.isfinite(matrix)) or abs(float(np.linalg.det(matrix))) < 1e-6:
        values = " ".join(f"{v:g}" for v in matrix.reshape(-1))
        raise EdgesegError(
            f"{path}: the header's direction matrix is degenerate ({values}: not invertible); "
            "fix the header's orientation"
        )


def _check_dimensions(path: Path, size: Sequence[int]) -> None:
    dims = "x".join(str(s) for s in size)
    if len(size) == 4 and size[3] == 1:
        return  # 3D volume stored with a singleton time axis
    if len(size) != 3:
        raise EdgesegError(
            f"{path}: {len(size)}D image (size {dims}); edgeseg segments 3D volumes only"
        )
    if min(size) < 2:
        raise EdgesegError(
            f"{path}: image of size {dims} is a single slice; edgeseg segments 3D volumes only"
        )


def check_itk_name(path: Path) -> None:
    """Refuse a path that is not valid UTF-8 (a Latin-1 ``Müller.nii.gz``), which ITK cannot
    take: Python hands such names on with surrogate escapes, and SimpleITK aborts the whole
    process on them (SIGABRT), a batch's other cases included."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # Shown with the offending bytes escaped (M\xfcller), so the message itself prints.
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise EdgesegError(
            f"{shown}: the file name is not valid UTF-8, which ITK cannot open; rename it"
        ) from None


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI, MHA/MHD, NRRD file or a DICOM series folder as a checked 3D :class:`Volume`.

    Raises
    ------
    EdgesegError
        One line naming the file: missing, unreadable, not 3D, multi-component pixels,
        non-finite voxels, a degenerate direction matrix, a DICOM series with a slice missing,
        unreadable or off the even stack, or too large for the memory available.
    """
    path = Path(path)
    if not path.exists():
        raise EdgesegError(f"{path}: no such file or folder")
    check_itk_name(path)
    if path.is_dir():
        image, notes = _read_dicom_series(path)
        return _volume_of_image(path, image, notes)
    reader = None
    if volume_suffix(path.name) == ".nii.gz":
        reader = _file_reader(path)
        fast = read_nifti_gz_voxels(path, reader)
        if fast is not None:
            array, header = fast
            volume = _checked_volume(
                path, array, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
            )
            volume.nifti_header = header
            return volume
    image = _read_image(path, reader)  # a declined fast path has read the header already
    return _volume_of_image(path, image, [])


def _volume_of_image(path: Path, image: sitk.Image, notes: list[str]) -> Volume:
    """The checked 3D :class:`Volume` of an image ITK has read."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EdgesegError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} values per voxel (colour/vector "
            "image); edgeseg segments single-channel scans"
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    _check_dimensions(path, image.GetSize())
    volume = _checked_volume(
        path,
        sitk.GetArrayFromImage(image),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
    )
    volume.notes = notes
    return volume


def _checked_volume(
    path: Path,
    array: np.ndarray,
    spacing_xyz: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> Volume:
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise EdgesegError(f"{path}: {bad} voxels are NaN or infinite")
    spacing = tuple(float(s) for s in reversed(spacing_xyz))
    if min(spacing) <= 0:
        raise EdgesegError(f"{path}: non-positive voxel spacing {spacing} mm")
    return Volume(
        array=array,
        spacing_mm=spacing,  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in direction),
        path=path,
    )


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check that a label map can be written to ``path`` before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise EdgesegError(
            f"{path}: output path is a folder; give a file name such as case_seg.nii.gz"
        )
    suffix = volume_suffix(path.name)
    if suffix not in OUTPUT_SUFFIXES:
        known = ", ".join(OUTPUT_SUFFIXES)
        if suffix is None:
            raise EdgesegError(f"{path}: unknown output format; use one of {known}")
        single = ".mha" if suffix == ".mhd" else ".nrrd"
        raise EdgesegError(
            f"{path}: {suffix} keeps the voxels in a second file, which edgeseg does not write; "
            f"use {single} (the same format in one file) or another of {known}"
        )
    _check_nifti_letter_case(path, suffix)
    check_itk_name(path)
    check_writable_location(path)
    return path


def check_writable_location(path: str | os.PathLike[str]) -> None:
    """Check that a file can be created at ``path`` (its folder exists or can be made)."""
    path = Path(path)
    probe = nearest_existing(path.parent)
    if not probe.is_dir():
        raise EdgesegError(f"{path}: cannot write here: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EdgesegError(f"{path}: output folder is not writable")


def write_label_map(labels: np.ndarray, reference: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 label map with ``reference``'s exact geometry, atomically.

    Parameters
    ----------
    labels : np.ndarray
        Integer labels, shape equal to ``reference.array.shape`` (z, y, x), values 0..255.
    reference : Volume
        The scan the labels belong to; its spacing, origin and direction are copied.
    path : path-like
        One of :data:`OUTPUT_SUFFIXES` in any letter case; written to a temporary sibling
        first, so a failure leaves neither a partial file nor a temporary one.
    """
    path = check_output_path(path)
    if tuple(labels.shape) != tuple(reference.array.shape):
        raise EdgesegError(
            f"{path}: label map shape {labels.shape} differs from the scan shape "
            f"{reference.array.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise EdgesegError(f"{path}: label values outside 0..255 cannot be stored as uint8")
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    suffix = volume_suffix(path.name)
    assert suffix is not None  # check_output_path refused the rest
    try:
        with atomic_path(path) as tmp:
            _write_labels_as(labels, reference, tmp, suffix)
    except (RuntimeError, OSError, ValueError) as exc:
        raise EdgesegError(f"{path}: cannot write label map ({_first_line(exc)})") from exc
    return path


def _write_labels_as(labels: np.ndarray, reference: Volume, tmp: Path, suffix: str) -> None:
    """Write ``labels`` to the temporary file ``tmp`` in the format of ``suffix``.

    ITK's NIfTI writer refuses an upper-case name (``.NII.GZ``), so the file is written under
    a lower-case suffix and renamed to ``tmp``; it is removed if anything fails.
    """
    work = tmp.with_name(tmp.name[: -len(suffix)] + suffix)
    try:
        if reference.nifti_header is not None and suffix in (".nii", ".nii.gz"):
            _write_nifti_like(labels, reference.nifti_header, work, suffix == ".nii.gz")
        else:
            writer = sitk.ImageFileWriter()
            writer.SetImageIO(_IMAGE_IO[suffix])
            writer.SetFileName(str(work))
            writer.UseCompressionOn()
            writer.Execute(reference.to_sitk(labels))
        if work != tmp:
            os.replace(work, tmp)
    finally:
        if work != tmp:
            work.unlink(missing_ok=True)
