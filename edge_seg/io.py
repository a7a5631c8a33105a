"""Reading scans and writing label maps, with the input checks every command relies on.

Arrays are kept in SimpleITK/NumPy order (z, y, x), exactly as nnU-Net's ``SimpleITKIO`` hands
them to the network: no reorientation happens anywhere in edgeseg, so a label map written with
:func:`write_label_map` overlays its scan voxel for voxel in any viewer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edge_seg.errors import EdgesegError, NotEnoughMemoryError
from edge_seg.memory import prefaulted_empty
from evaluator.atomic import atomic_path

#: File endings read as single-file volumes (anything else must be a DICOM series folder).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

#: Bytes of working memory per input voxel while a scan is segmented: the stored array, a
#: float32 working copy, its spline coefficients and the uint8 label map, with some slack.
#: Used to refuse a scan that cannot fit instead of being killed half-way.
WORKING_BYTES_PER_VOXEL = 14


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
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    path: Path | None = None
    nifti_header: bytes | None = field(default=None, repr=False, compare=False)

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


def strip_volume_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case`` (any of :data:`VOLUME_SUFFIXES`)."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def available_memory_bytes() -> int:
    """Memory this process may still use: ``MemAvailable`` of ``/proc/meminfo`` on Linux
    (what psutil's ``available`` reports there, without psutil's 40 ms import on every
    predict), psutil's figure elsewhere."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits_in_memory(shape: Sequence[int], where: str, bytes_per_voxel: float) -> None:
    """Refuse a scan whose estimated working memory exceeds what is available."""
    need = float(np.prod([int(s) for s in shape])) * bytes_per_voxel
    have = available_memory_bytes()
    if need > have:
        dims = "x".join(str(int(s)) for s in shape)
        raise NotEnoughMemoryError(
            f"{where}: image of {dims} voxels needs about {need / 2**30:.1f} GiB to segment, "
            f"only {have / 2**30:.1f} GiB of memory is available"
        )


def _dicom_series_files(folder: Path) -> list[str]:
    reader = sitk.ImageSeriesReader
    # Probing a folder that holds no series is expected here (a folder of NIfTI files, an
    # empty one); ITK would print a multi-line warning to stderr for each probe.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        try:
            series = reader.GetGDCMSeriesIDs(str(folder)) or ()
        except RuntimeError:
            series = ()
        best: list[str] = []
        for uid in series:
            files = list(reader.GetGDCMSeriesFileNames(str(folder), uid))
            if len(files) > len(best):
                best = files
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    return best


def _read_image(path: Path, reader: sitk.ImageFileReader | None = None) -> sitk.Image:
    """The image at ``path``; ``reader``: a file reader that has already read its header."""
    if path.is_dir():
        files = _dicom_series_files(path)
        if not files:
            raise EdgesegError(f"{path}: folder holds no DICOM series")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        header = sitk.ImageFileReader()
        header.SetFileName(files[0])
        try:
            header.ReadImageInformation()
        except RuntimeError as exc:
            raise EdgesegError(f"{path}: unreadable DICOM series ({_first_line(exc)})") from exc
        size = (*header.GetSize()[:2], len(files))
        check_fits_in_memory(size, str(path), WORKING_BYTES_PER_VOXEL)
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise EdgesegError(f"{path}: unreadable DICOM series ({_first_line(exc)})") from exc
    reader = reader or _file_reader(path)
    # After the header checks (a huge claimed size is a memory error first), before ITK reads
    # voxels it would zero-fill or misread.
    if path.name.lower().endswith(".nii"):
        _check_uncompressed_nifti(path)
    elif path.name.lower().endswith((".mha", ".mhd")):
        _check_metaimage_size(path)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: unreadable image file ({_first_line(exc)})") from exc


def _file_reader(path: Path) -> sitk.ImageFileReader:
    """A reader that has read and checked the file's header (size, dimensions, memory)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise EdgesegError(f"{path}: unreadable image file ({_first_line(exc)})") from exc
    size = reader.GetSize()
    _check_dimensions(path, size)
    check_fits_in_memory(size[:3], str(path), WORKING_BYTES_PER_VOXEL)
    return reader


#: NIfTI-1 datatype codes -> NumPy types, with the SimpleITK pixel type ITK reads them as.
_NIFTI_TYPES = {
    2: ("u1", sitk.sitkUInt8),
    4: ("i2", sitk.sitkInt16),
    8: ("i4", sitk.sitkInt32),
    16: ("f4", sitk.sitkFloat32),
    64: ("f8", sitk.sitkFloat64),
    256: ("i1", sitk.sitkInt8),
    512: ("u2", sitk.sitkUInt16),
    768: ("u4", sitk.sitkUInt32),
}


#: Compressed bytes inflated per call: small enough that each inflated piece is still in
#: cache when it is copied into the voxel array.
_INFLATE_CHUNK = 512 * 1024


class _GzipReader:
    """Inflates a gzip file (any number of members) piece by piece with ISA-L.

    Pieces are copied straight into the caller's buffer: ISA-L's file object reads through a
    buffered stream and takes a third longer for a CT.
    """

    def __init__(self, path: Path) -> None:
        from isal import isal_zlib

        self._zlib = isal_zlib
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._inflater = isal_zlib.decompressobj(wbits=31)
        self._pending = b""  # inflated bytes not handed out yet

    def close(self) -> None:
        self._file.close()

    def _next_piece(self) -> bytes:
        """The next inflated bytes; b"" at the end of the file. Raises EOFError if the last
        member is cut short."""
        while True:
            data = self._file.read(_INFLATE_CHUNK)
            if not data:
                if not self._inflater.eof:
                    raise EOFError("compressed stream cut short")
                return b""
            pieces = []
            while data:
                if self._inflater.eof:  # a new gzip member starts (bgzip and pigz -i write many)
                    if not data.strip(b"\0"):
                        break  # zero padding after the last member
                    self._inflater = self._zlib.decompressobj(wbits=31)
                pieces.append(self._inflater.decompress(data))
                data = self._inflater.unused_data if self._inflater.eof else b""
            piece = b"".join(pieces)
            if piece:
                return piece

    def readinto(self, target: memoryview) -> int:
        """Fill ``target`` (bytes); returns how many bytes it got. What a piece holds beyond
        ``target`` is kept for the next read."""
        piece = self._pending
        filled = 0
        while True:
            n = min(len(piece), len(target) - filled)
            target[filled : filled + n] = piece[:n]
            filled += n
            if filled == len(target):
                self._pending = piece[n:]
                return filled
            piece = self._next_piece()
            if not piece:
                self._pending = b""
                return filled

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes unless the data ends first."""
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(memoryview(buffer))])


def read_nifti_gz_voxels(
    path: Path, reader: sitk.ImageFileReader
) -> tuple[np.ndarray, bytes] | None:
    """The voxels and the 348-byte header of a gzipped single-file NIfTI-1 scan, decompressed
    with ISA-L.

    Decompression is most of the time it takes to read a CT (ITK inflates with zlib; ISA-L is
    about twice as fast). ITK stores NIfTI voxels as they are on disk, in (z, y, x) order
    with no reorientation, so the array is the file's data block as is; ``reader`` (which has
    read the header) supplies the geometry. Returns None, for ITK to read the file itself,
    where ISA-L is not installed or the file needs more than a copy: intensity scaling,
    NIfTI-2, vector or 4D data, or a type ITK converts.
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    stream = None
    try:
        stream = _GzipReader(path)
        header = stream.read(352)
        if len(header) < 352:
            raise EOFError("header cut short")
        endian = _nifti1_endianness(header)
        if endian is None:
            return None
        _check_nifti1_voxel_size(path, header, endian)
        dims = np.frombuffer(header, f"{endian}i2", 8, 40)
        code = int(np.frombuffer(header, f"{endian}i2", 1, 70)[0])
        offset, slope, inter = (float(v) for v in np.frombuffer(header, f"{endian}f4", 3, 108))
        known = _NIFTI_TYPES.get(code)
        shape_xyz = tuple(int(d) for d in dims[1:4])
        if (
            known is None
            or known[1] != reader.GetPixelID()
            or int(dims[0]) != 3
            or shape_xyz != tuple(reader.GetSize())
            or header[344:348] != b"n+1\0"
            or slope not in (0.0, 1.0)
            or (slope != 0.0 and inter != 0.0)
            or offset < 352
        ):
            return None
        stream.read(int(offset) - 352)
        array = prefaulted_empty(shape_xyz[::-1], np.dtype(known[0]).newbyteorder(endian))
        got = stream.readinto(memoryview(array.reshape(-1).view(np.uint8)))
    except (OSError, EOFError, ValueError, isal_zlib.error) as exc:
        raise EdgesegError(f"{path}: unreadable image file (corrupt gzip data: {exc})") from exc
    finally:
        if stream is not None:
            stream.close()
    if got != array.nbytes:
        raise EdgesegError(
            f"{path}: unreadable image file (truncated: {got} of {array.nbytes} voxel bytes)"
        )
    if not array.dtype.isnative:
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    return array, header[:348]


def _check_nifti1_voxel_size(path: Path, header: bytes, endian: str) -> None:
    """Refuse a NIfTI-1 header without a voxel size: ITK reads a ``pixdim`` of 0 as 1 mm, and
    a scan resampled from a made-up spacing is segmented at the wrong scale."""
    pixdim = np.frombuffer(header, f"{endian}f4", 3, 80)  # pixdim[1:4]: x, y, z
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        sizes = ", ".join(f"{v:g}" for v in pixdim)
        raise EdgesegError(
            f"{path}: the NIfTI header gives no usable voxel size (pixdim {sizes}); "
            "fix the header's spacing"
        )


def _nifti1_endianness(header: bytes) -> str | None:
    for endian in ("<", ">"):
        if int(np.frombuffer(header, f"{endian}i4", 1, 0)[0]) == 348:
            return endian
    return None  # NIfTI-2 or not NIfTI at all


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK puts the useful sentence last, after file/line noise.
    line = lines[-1] if lines else type(exc).__name__
    return line.replace("sitk::ERROR: ", "")


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


def read_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI, MHA/MHD, NRRD file or a DICOM series folder as a checked 3D :class:`Volume`.

    Raises
    ------
    EdgesegError
        One line naming the file: missing, unreadable, not 3D, multi-component pixels,
        non-finite voxels, or too large for the memory available.
    """
    path = Path(path)
    if not path.exists():
        raise EdgesegError(f"{path}: no such file or folder")
    reader = None
    if path.is_file() and path.name.lower().endswith(".nii.gz"):
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
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EdgesegError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} values per voxel (colour/vector "
            "image); edgeseg segments single-channel scans"
        )
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    _check_dimensions(path, image.GetSize())
    return _checked_volume(
        path,
        sitk.GetArrayFromImage(image),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
    )


def _check_uncompressed_nifti(path: Path) -> None:
    """Refuse a ``.nii`` cut short, holding NaN/inf voxels or without a voxel size: ITK's reader
    zero-fills the missing voxels and reads non-finite ones as 0 and a size of 0 as 1 mm, so
    the scan would be segmented as if whole and sound."""
    from evaluator.errors import EvaluationError
    from evaluator.nifti_check import check_uncompressed_nifti

    try:
        check_uncompressed_nifti(path, subject="scan")
    except EvaluationError as exc:
        raise EdgesegError(str(exc)) from None
    with path.open("rb") as handle:
        header = handle.read(348)
    endian = _nifti1_endianness(header) if len(header) == 348 else None
    if endian is not None:
        _check_nifti1_voxel_size(path, header, endian)


#: Bytes per value of the MetaImage ``ElementType``s a scan can have.
_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_metaimage_size(path: Path) -> None:
    """Refuse an uncompressed MetaImage whose voxel data is shorter than its header says.

    ITK reads what is there and prints two raw lines to stderr before its own, misleading,
    error ("No such file or directory"); a size check from the text header says what is wrong.
    Compressed data, several data files and unknown element types are left to ITK.
    """
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        for raw in iter(lambda: handle.readline(4096), b""):
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                return  # not a MetaImage text header: ITK reports it
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        data_start = handle.tell()
    try:
        dims = [int(d) for d in fields["DimSize"].split()]
        element_bytes = _MET_TYPE_BYTES[fields["ElementType"]]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        data_file = fields["ElementDataFile"]
    except (KeyError, ValueError):
        return
    if fields.get("CompressedData", "False").lower() == "true" or " " in data_file:
        return
    if fields.get("HeaderSize", "0") not in ("0", ""):
        return  # a raw file with a header of its own: ITK's business
    if data_file == "LOCAL":
        held = path.stat().st_size - data_start
        where = "file"
    else:
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise EdgesegError(f"{path}: its voxel data file {data_path} does not exist")
        held, where = data_path.stat().st_size, data_path.name
    needed = int(np.prod(dims, dtype=np.int64)) * element_bytes * channels
    if held < needed:
        raise EdgesegError(
            f"{path}: truncated MetaImage: header needs {needed} bytes of voxel data, "
            f"{where} holds {held}"
        )


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
    if not path.name.lower().endswith(VOLUME_SUFFIXES):
        raise EdgesegError(
            f"{path}: unknown output format; use one of {', '.join(VOLUME_SUFFIXES)}"
        )
    check_writable_location(path)
    return path


def check_writable_location(path: str | os.PathLike[str]) -> None:
    """Check that a file can be created at ``path`` (its folder exists or can be made)."""
    path = Path(path)
    probe = path.parent if str(path.parent) else Path(".")
    while not probe.exists():
        probe = probe.parent
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
        ``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd`` ...; written to a temporary sibling first.
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
    header = reference.nifti_header
    try:
        with atomic_path(path) as tmp:
            if header is not None and path.name.lower().endswith((".nii", ".nii.gz")):
                _write_nifti_like(labels, header, tmp, path.name.lower().endswith(".gz"))
            else:
                sitk.WriteImage(reference.to_sitk(labels), str(tmp), useCompression=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise EdgesegError(f"{path}: cannot write label map ({_first_line(exc)})") from exc
    return path


def _label_header(source: bytes) -> bytes:
    """A NIfTI-1 header for a uint8 label map on the grid described by ``source``.

    Everything that places the voxels (dimensions, pixdim, qform, sform and their codes) is
    the source's, byte for byte, so every reader puts the labels exactly where it puts the
    scan; only the data type, scaling and display fields are changed.
    """
    endian = _nifti1_endianness(source)
    if endian is None or len(source) != 348:
        raise ValueError("not a NIfTI-1 header")
    header = bytearray(source)
    for offset, fmt, value in (
        (68, "i2", 0),  # intent_code: none
        (70, "i2", 2),  # datatype: unsigned char
        (72, "i2", 8),  # bitpix
        (108, "f4", 352.0),  # vox_offset: header + empty extension flag
        (112, "f4", 0.0),  # scl_slope 0: the stored values are the labels
        (116, "f4", 0.0),  # scl_inter
        (124, "f4", 0.0),  # cal_max: viewers pick the display range
        (128, "f4", 0.0),  # cal_min
    ):
        header[offset : offset + int(fmt[1])] = np.array(value, f"{endian}{fmt}").tobytes()
    header[148:228] = b"edgeseg label map".ljust(80, b"\0")  # descrip
    header[328:344] = bytes(16)  # intent_name
    header[344:348] = b"n+1\0"  # single file
    return bytes(header)


def _write_nifti_like(labels: np.ndarray, source_header: bytes, path: Path, gzip: bool) -> None:
    """Write ``labels`` as a single-file NIfTI-1 with the geometry of ``source_header``.

    A label map is mostly zeros: ISA-L's fastest level compresses a 512x512x300 one to about
    200 kB in 20 ms, where ITK's zlib writer takes ten times as long.
    """
    pieces = [_label_header(source_header) + bytes(4), memoryview(labels.reshape(-1))]
    if gzip:
        from isal import isal_zlib

        deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        pieces = [*map(deflate.compress, pieces), deflate.flush()]
    with open(path, "wb") as out:
        for piece in pieces:
            out.write(piece)
