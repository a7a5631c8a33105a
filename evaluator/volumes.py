"""Reading label volumes for evaluation: NIfTI/MHA/NRRD files, PNG slice series, DICOM geometry.

Every reader returns a :class:`LabelVolume` (array in SimpleITK order z, y, x) or raises
:class:`~evaluator.errors.EvaluationError` with a one-line message naming the file. The
evaluator keeps its own small reader (rather than the runtime's ``edge_seg.io``) because it must
not depend on the runtime and because label maps need different checks than images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError
from evaluator.nifti_check import NiftiStreamCheck, check_uncompressed_nifti

NIFTI_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")

# Spacing and direction may differ by floating-point noise between writers.
_GEOMETRY_RTOL = 1e-4
_ORIGIN_ATOL_MM = 1e-3


@dataclass
class LabelVolume:
    """An integer label map with its geometry (spacing z, y, x; origin and direction as ITK)."""

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    path: Path
    #: What reading changed without failing (overlapping masks resolved), one line each.
    notes: list[str] = field(default_factory=list)


def strip_image_suffix(name: str) -> str | None:
    """Case id of an image file name (``case.nii.gz`` -> ``case``); None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and not name.startswith("."):
            return name[: -len(suffix)]
    return None


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        return array.view(np.uint8)
    if array.dtype.kind in "ui":
        if array.dtype.kind == "i" and array.size and array.min() < 0:
            raise EvaluationError(f"{path}: negative label value {int(array.min())}")
        return array
    if array.dtype.kind != "f":
        raise EvaluationError(f"{path}: unsupported label data type {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise EvaluationError(f"{path}: label map contains NaN or infinite values")
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        bad = array[rounded != array].flat[0]
        raise EvaluationError(f"{path}: non-integer label value {bad:g}")
    if rounded.size and rounded.min() < 0:
        raise EvaluationError(f"{path}: negative label value {rounded.min():g}")
    return rounded.astype(np.uint16 if rounded.max(initial=0) > 255 else np.uint8)


def check_gzip_complete(path: Path, sink: Callable[[bytes], None] | None = None) -> None:
    """Raise if a ``.gz`` file is truncated or corrupt.

    ITK's NIfTI reader fills a truncated gzip stream with zeros instead of failing, which
    would silently score an empty prediction; decompressing once to nowhere catches it.
    ``sink``, if given, receives the decompressed bytes in order (for checks of the content).
    """
    import zlib

    decompressor = zlib.decompressobj(wbits=31)  # gzip container
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                # Bounded output per call (16 MiB) so memory stays flat; only the sink sees it.
                out = decompressor.decompress(chunk, 1 << 24)
                while True:
                    if sink is not None and out:
                        sink(out)
                    if not decompressor.unconsumed_tail:
                        break
                    out = decompressor.decompress(decompressor.unconsumed_tail, 1 << 24)
    except (OSError, zlib.error) as exc:
        raise EvaluationError(f"{path}: corrupt gzip data ({exc})") from None
    if not decompressor.eof:
        raise EvaluationError(f"{path}: truncated file (gzip stream ends early)")


def check_file_complete(path: Path) -> None:
    """Raise :class:`EvaluationError` for a file that ITK would read although it is broken.

    Truncated gzip streams, NIfTI files shorter than their header says and NIfTI float voxels
    that are NaN or infinite (ITK reads those as 0, hiding them from :func:`_integer_labels`).
    """
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        check = NiftiStreamCheck()
        check_gzip_complete(path, sink=check.feed)
        check.finish(path, "decompressed file")
    elif name.endswith(".gz"):
        check_gzip_complete(path)
    elif name.endswith(".nii"):
        check_uncompressed_nifti(path)


def read_label_file(path: Path) -> LabelVolume:
    """Read a 3D label map with SimpleITK (NIfTI, MHA, NRRD); integer values only."""
    import SimpleITK as sitk

    if not path.is_file():
        raise EvaluationError(f"{path}: file not found")
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        # SimpleITK aborts the process (SIGABRT) on such a name, every other case with it.
        # Shown with the offending bytes escaped (case_\xe4), so the message itself prints.
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise EvaluationError(f"{shown}: the file name is not valid UTF-8, which ITK cannot "
                              "open; rename it") from None
    check_file_complete(path)
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "rror" in line), reason[-1] if reason else "")
        raise EvaluationError(
            f"{path}: unreadable or truncated image ({detail.strip()[:120]})"
        ) from None
    if image.GetNumberOfComponentsPerPixel() != 1 or array.ndim != 3:
        raise EvaluationError(f"{path}: expected a 3D single-channel label map, got shape "
                              f"{array.shape}")
    return LabelVolume(
        array=_integer_labels(array, path),
        spacing_mm=tuple(float(v) for v in reversed(image.GetSpacing())),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
        path=path,
    )


def png_files(folder: Path) -> list[Path]:
    """PNG slices of a folder in file-name order (the CHAOS slice-order rule)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def read_png_series(folder: Path) -> np.ndarray:
    """Stack a folder of greyscale PNG slices into a (slices, rows, cols) uint8/uint16 array."""
    from PIL import Image

    files = png_files(folder)
    if not files:
        raise EvaluationError(f"{folder}: no PNG slices found")
    slices = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                if image.mode not in ("L", "I;16", "I", "1", "P"):
                    image = image.convert("L")
                slices.append(np.asarray(image))
        except (OSError, SyntaxError, ValueError) as exc:
            raise EvaluationError(f"{file}: unreadable or truncated PNG ({exc})") from None
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise EvaluationError(f"{folder}: PNG slices differ in size {sorted(shapes)}")
    return _integer_labels(np.stack(slices), folder)


@dataclass(frozen=True)
class SeriesGeometry:
    """Geometry of a DICOM series in file-name order (CHAOS convention)."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def dicom_series_geometry(folder: Path) -> SeriesGeometry:
    """Geometry of the DICOM slices in ``folder`` taken in file-name order.

    As in the official CHAOS evaluation, the slice step is the distance between the first and
    last ImagePositionPatient divided by (N - 1) - not SliceThickness - and the slice axis
    runs in file-name order whatever the positions say.
    """
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise EvaluationError(f"{folder}: no DICOM files found")
    try:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        last = pydicom.dcmread(files[-1], stop_before_pixels=True)
        position_first = np.array([float(v) for v in first.ImagePositionPatient])
        position_last = np.array([float(v) for v in last.ImagePositionPatient])
        orientation = [float(v) for v in first.ImageOrientationPatient]
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        rows, cols = int(first.Rows), int(first.Columns)
    except Exception as exc:  # pydicom raises many types for broken headers
        raise EvaluationError(f"{folder}: unreadable DICOM header ({exc})") from None
    n = len(files)
    step_vector = (position_last - position_first) / (n - 1) if n > 1 else np.zeros(3)
    step = float(np.linalg.norm(step_vector))
    row_dir = np.array(orientation[:3])
    col_dir = np.array(orientation[3:])
    slice_dir = step_vector / step if step > 0 else np.cross(row_dir, col_dir)
    if step == 0:
        step = float(getattr(first, "SliceThickness", 1.0) or 1.0)
    # ITK direction columns are the x (column), y (row) and z (slice) axes.
    direction = np.stack([row_dir, col_dir, slice_dir], axis=1)
    return SeriesGeometry(
        shape=(n, rows, cols),
        spacing_mm=(step, row_spacing, col_spacing),
        origin=tuple(float(v) for v in position_first),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )


def same_geometry(reference: LabelVolume, other: LabelVolume, *, check_position: bool) -> str:
    """Empty string when ``other`` lies on ``reference``'s grid, else a short description."""
    if reference.array.shape != other.array.shape:
        return f"shape {other.array.shape} != ground truth {reference.array.shape}"
    if not np.allclose(other.spacing_mm, reference.spacing_mm, rtol=_GEOMETRY_RTOL, atol=0):
        return (f"spacing {_fmt(other.spacing_mm)} mm != ground truth "
                f"{_fmt(reference.spacing_mm)} mm")
    if check_position:
        if not np.allclose(other.origin, reference.origin, rtol=0, atol=_ORIGIN_ATOL_MM):
            return f"origin {_fmt(other.origin)} != ground truth {_fmt(reference.origin)}"
        if not np.allclose(other.direction, reference.direction, rtol=0, atol=_GEOMETRY_RTOL):
            return "direction differs from the ground truth"
    return ""


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def resample_to(reference: LabelVolume, moving: LabelVolume) -> LabelVolume:
    """Nearest-neighbour resampling of a label map onto the reference grid."""
    import SimpleITK as sitk

    def to_image(volume: LabelVolume) -> sitk.Image:
        image = sitk.GetImageFromArray(volume.array)
        image.SetSpacing(tuple(reversed(volume.spacing_mm)))
        image.SetOrigin(volume.origin)
        image.SetDirection(volume.direction)
        return image

    resampled = sitk.Resample(
        to_image(moving), to_image(reference), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
    )
    return LabelVolume(
        array=sitk.GetArrayFromImage(resampled),
        spacing_mm=reference.spacing_mm,
        origin=reference.origin,
        direction=reference.direction,
        path=moving.path,
    )
