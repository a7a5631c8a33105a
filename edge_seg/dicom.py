"""Reading a DICOM series folder as one image, with the slice checks ITK leaves out.

Its own module because a series is not a file: GDCM lists the series in a folder, ITK stacks
their slices, and most of the work here is checking that stack before a scan is segmented on
a wrong grid. What ITK gets wrong, and this module refuses with a one-line error instead:

* slices unevenly spaced (a missing, cut or corrupt file): ITK reads the series with the
  average step and only warns, so every slice after the gap is misplaced;
* slices shifted in-plane (gantry tilt), of mixed orientations or sizes, or with a degenerate
  orientation: ITK stacks them straight along the first slice's normal;
* a slice cut short: GDCM leaves it out of the series without a word;
* several series in one folder: the largest is taken and a note says which were skipped.

ITK's own multi-line warnings are silenced while it reads (:func:`_itk_warnings_off`), since
every problem they are about is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edge_seg.errors import EdgesegError, _first_line
from edge_seg.memory import WORKING_BYTES_PER_VOXEL, check_fits_in_memory


@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's stderr warnings for a while, then restore the previous setting.

    ITK prints multi-line warnings ("Non uniform sampling or missing slices detected") that
    break the one-line error contract; edgeseg checks what they are about itself.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _dicom_series(folder: Path) -> list[tuple[str, list[str]]]:
    """Every DICOM series in ``folder`` as (series UID, sorted file names), largest first.

    Ties keep GDCM's order. Probing a folder that holds no series is expected (a folder of
    NIfTI files, an empty one), so it gives an empty list and no ITK warning.
    """
    reader = sitk.ImageSeriesReader
    with _itk_warnings_off():
        try:
            uids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        except RuntimeError:
            uids = ()
        series = [(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in uids]
    return sorted(series, key=lambda item: -len(item[1]))


def _dicom_series_files(folder: Path) -> list[str]:
    """The files of the largest DICOM series in ``folder`` (empty if it holds none)."""
    series = _dicom_series(folder)
    return series[0][1] if series else []


def looks_like_dicom(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.dcm`` or carrying the DICOM preamble (``DICM`` at
    byte 128), readable or not."""
    if not path.is_file():
        return False
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class _Slice:
    """What the header of one DICOM file says about where its slice lies."""

    path: Path
    position: np.ndarray  # ImagePositionPatient (x, y, z) mm
    orientation: np.ndarray  # ImageOrientationPatient: row then column direction cosines
    size: tuple[int, int]  # Columns, Rows
    pixel_spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)
    description: str  # SeriesDescription


def _dicom_numbers(value: str | None, count: int) -> np.ndarray | None:
    """The ``count`` numbers of a backslash-separated DICOM value; None if absent or malformed."""
    if value is None:
        return None
    try:
        numbers = np.array([float(v) for v in value.strip().split("\\")])
    except ValueError:
        return None
    return numbers if numbers.size == count and np.all(np.isfinite(numbers)) else None


def _slice_of_tags(path: Path, tag: Callable[[str], str | None]) -> _Slice:
    """A slice's geometry from its header tags (``tag``: value of a tag, None if absent),
    refusing a slice that cannot be placed."""
    position = _dicom_numbers(tag("0020|0032"), 3)
    orientation = _dicom_numbers(tag("0020|0037"), 6)
    if position is None or orientation is None:
        missing = "ImagePositionPatient" if position is None else "ImageOrientationPatient"
        raise EdgesegError(
            f"{path}: DICOM slice without a usable {missing}; the slices cannot be placed"
        )
    rows_cols = [_dicom_numbers(tag(t), 1) for t in ("0028|0010", "0028|0011")]
    size = tuple(int(v[0]) if v is not None else 0 for v in reversed(rows_cols))
    spacing = _dicom_numbers(tag("0028|0030"), 2)
    return _Slice(
        path,
        position,
        orientation,
        size,  # type: ignore[arg-type]
        (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0),
        (tag("0008|103e") or "").strip(),
    )


def _read_slice(path: Path) -> _Slice:
    """The geometry in the header of one DICOM file, read on its own."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        with _itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: unreadable DICOM slice ({_first_line(exc)})") from exc
    return _slice_of_tags(
        path, lambda t: reader.GetMetaData(t) if reader.HasMetaDataKey(t) else None
    )


def _slices_read(reader: sitk.ImageSeriesReader, files: Sequence[str]) -> list[_Slice]:
    """The geometry of each slice a series reader has read (it keeps their headers)."""

    def slice_of(i: int) -> _Slice:
        def tag(t: str) -> str | None:
            return reader.GetMetaData(i, t) if reader.HasMetaDataKey(i, t) else None

        return _slice_of_tags(Path(files[i]), tag)

    return [slice_of(i) for i in range(len(files))]


#: Direction cosines of two slices of one series may differ by this much (rounding in the
#: scanner's decimal strings), no more.
_ORIENTATION_TOLERANCE = 1e-4


def _slice_normal(folder: Path, slices: Sequence[_Slice]) -> np.ndarray:
    """The unit normal shared by all ``slices``; refuses mixed or degenerate orientations."""
    first = slices[0]
    for other in slices[1:]:
        if np.max(np.abs(other.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise EdgesegError(
                f"{folder}: DICOM series mixes slice orientations ({first.path.name} and "
                f"{other.path.name} differ); edgeseg reads one stack of parallel slices"
            )
        if other.size[:2] != first.size[:2]:
            raise EdgesegError(
                f"{folder}: DICOM series mixes slice sizes ({first.path.name} is "
                f"{first.size[0]}x{first.size[1]}, {other.path.name} {other.size[0]}x"
                f"{other.size[1]})"
            )
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        values = " ".join(f"{v:g}" for v in first.orientation)
        raise EdgesegError(
            f"{first.path}: degenerate ImageOrientationPatient ({values}); the slices "
            "cannot be placed"
        )
    return normal / length


def _check_slice_positions(folder: Path, slices: Sequence[_Slice], strays: Sequence[Path]) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal, or not stacked
    straight along it.

    ITK reads such a series with the average step and only warns, so every slice after a gap
    (a missing, cut or corrupt file) would be placed off its true position.
    """
    if len(slices) < 2:
        return  # one file (a single slice, or a multi-frame volume ITK places itself)
    normal = _slice_normal(folder, slices)
    positions = np.stack([s.position for s in slices])
    along = positions @ normal
    steps = np.diff(along)
    step = float(np.median(steps))
    hint = f"; not readable as DICOM: {', '.join(p.name for p in strays[:3])}" if strays else ""
    if abs(step) < 1e-3:
        raise EdgesegError(
            f"{folder}: DICOM series has several slices at one position (e.g. "
            f"{slices[0].path.name} and {slices[1].path.name}); one stack of slices expected"
        )
    # 1 % of the step: scanners round positions to a few decimals, and a missing slice is a
    # 100 % jump, so the margin separates the two cleanly.
    tolerance = max(0.01 * abs(step), 1e-3)
    uneven = np.flatnonzero(np.abs(steps - step) > tolerance)
    if uneven.size:
        i = int(uneven[0])
        gap = abs(float(steps[i]))
        why = "a slice is missing?" if gap > abs(step) else "a slice repeated or out of place?"
        raise EdgesegError(
            f"{folder}: DICOM series has uneven slice positions (step {abs(step):.4g} mm, but "
            f"{gap:.4g} mm between {slices[i].path.name} and {slices[i + 1].path.name}, "
            f"slices {i + 1} and {i + 2} of {len(slices)}: {why}{hint})"
        )
    # ITK stacks the slices straight along the normal from the first one: a slice shifted
    # in-plane (gantry tilt) would be misplaced by that shift.
    expected = positions[0] + np.outer(along - along[0], normal)
    shift = np.linalg.norm(positions - expected, axis=1)
    limit = 0.5 * min(slices[0].pixel_spacing[:2])
    if float(shift.max()) > limit:
        i = int(np.argmax(shift))
        raise EdgesegError(
            f"{folder}: DICOM series slices are not stacked along their normal "
            f"({slices[i].path.name} is {float(shift[i]):.3g} mm off in-plane: gantry tilt?); "
            "resample it to an orthogonal grid first"
        )


def _stray_files(folder: Path, series: Sequence[tuple[str, list[str]]]) -> list[Path]:
    """Files in ``folder`` that no series took: candidates for cut or corrupt slices."""
    taken = {Path(f).name for _, files in series for f in files}
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.name not in taken
        and not p.name.startswith(".")
        and p.name.upper() != "DICOMDIR"
    )


def _check_no_broken_slice(folder: Path, uid: str, strays: Sequence[Path]) -> None:
    """Refuse the series if a file GDCM could not read names its series UID.

    GDCM leaves a slice cut short (even by a byte) out of the series without a word; the UID
    in its intact header shows that it belongs there.
    """
    # The whole UID, not the start of a longer one (instance UIDs often extend the series UID).
    whole = re.escape(uid.encode("ascii", "replace"))
    needle = re.compile(rb"(?<![0-9.])" + whole + rb"(?![0-9.])")
    for stray in strays:
        try:
            with stray.open("rb") as handle:
                head = handle.read(1 << 20)  # the header: pixel data comes last
        except OSError:
            continue
        if needle.search(head):
            raise EdgesegError(
                f"{stray}: slice of the DICOM series in {folder} is unreadable (cut short or "
                "corrupt); restore or remove it"
            )


def _series_label(uid: str, files: Sequence[str], description: str) -> str:
    named = f' "{description}"' if description else ""
    return f"{uid}{named} ({len(files)} files)"


def _series_note(folder: Path, series: Sequence[tuple[str, list[str]]], used: str) -> str:
    """The note saying which of several series is segmented (a localiser often sits beside
    the main series, so the largest is taken)."""
    skipped = []
    for uid, files in series[1:]:
        try:
            description = _read_slice(Path(files[0])).description
        except EdgesegError:
            description = ""
        skipped.append(_series_label(uid, files, description))
    return (
        f"{folder}: holds {len(series)} DICOM series; using the largest, {used}; "
        f"skipped {', '.join(skipped)}"
    )


def _read_dicom_series(folder: Path) -> tuple[sitk.Image, list[str]]:
    """The largest DICOM series in ``folder``, checked slice by slice, and notes about it.

    The slices' positions are checked from the headers the series reader keeps, after it has
    read the voxels: reading every header a second time beforehand would cost about 1 ms per
    slice, and only a refused series pays for the voxels it did not need.
    """
    series = _dicom_series(folder)
    if not series:
        dicom = [p.name for p in sorted(folder.iterdir()) if looks_like_dicom(p)]
        if dicom:
            raise EdgesegError(
                f"{folder}: no readable DICOM series (none of {len(dicom)} DICOM file(s) "
                f"can be read, e.g. {dicom[0]})"
            )
        raise EdgesegError(f"{folder}: folder holds no DICOM series")
    uid, files = series[0]
    strays = _stray_files(folder, series)
    _check_no_broken_slice(folder, uid, strays)
    first = _read_slice(Path(files[0]))
    check_fits_in_memory((*first.size, len(files)), str(folder), WORKING_BYTES_PER_VOXEL)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _itk_warnings_off():
            image = reader.Execute()
    except RuntimeError as exc:
        raise EdgesegError(_series_failure(folder, files, exc)) from exc
    _check_slice_positions(folder, _slices_read(reader, files), strays)
    notes = []
    if len(series) > 1:
        notes.append(_series_note(folder, series, _series_label(uid, files, first.description)))
    return image, notes


def _series_failure(folder: Path, files: Sequence[str], exc: RuntimeError) -> str:
    """The message for a series ITK could not read: the first slice that fails alone, or
    ITK's reason."""
    for name in files:
        try:
            with _itk_warnings_off():
                sitk.ReadImage(name, imageIO="GDCMImageIO")
        except RuntimeError as slice_exc:
            return f"{name}: unreadable DICOM slice ({_first_line(slice_exc)})"
    return f"{folder}: unreadable DICOM series ({_first_line(exc)})"
