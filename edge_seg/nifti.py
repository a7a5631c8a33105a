"""NIfTI-1 at the byte level: a fast reader for ``.nii.gz`` scans, header checks ITK skips,
and a writer that gives a label map its scan's header.

Its own module because these bypass or second-guess ITK's NIfTI support:

* reading: ITK inflates ``.nii.gz`` with zlib; :func:`read_nifti_gz_voxels` inflates the data
  block with ISA-L (about twice as fast) straight into the voxel array, and leaves any file that
  needs more than a copy (scaling, NIfTI-2, 4D or vector data) to ITK;
* checking: ITK reads a ``pixdim`` of 0 as 1 mm, zero-fills the voxels a cut-short ``.nii``
  lacks, reads NaN/inf in a ``.nii`` as 0, and rejects a mixed-case suffix (``.Nii.gz``) after
  printing raw lines to stderr; the checks here refuse each of those with a one-line error;
* writing: a label map written as NIfTI reuses the scan's 348-byte header, so every field
  that places the voxels is the scan's byte for byte, and is compressed with ISA-L.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edge_seg.errors import EdgesegError
from edge_seg.memory import prefaulted_empty

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


def _check_nifti_letter_case(path: Path, suffix: str | None) -> None:
    """Refuse a NIfTI name whose suffix mixes letter cases (``.Nii.gz``).

    ITK's NIfTI library accepts ``.nii`` and ``.NII`` but rejects a mixed-case suffix, after
    printing a raw line to stderr for every probe; other readers based on it (ITK-SNAP,
    3D Slicer) cannot open such a file either.
    """
    if suffix not in (".nii", ".nii.gz"):
        return
    actual = path.name[-len(suffix) :]
    if actual not in (suffix, suffix.upper()):
        raise EdgesegError(
            f"{path}: mixed-case NIfTI suffix {actual} (ITK reads only {suffix} or "
            f"{suffix.upper()}); rename it"
        )


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
