"""Checks of NIfTI files that ITK's reader does not make, from the header read directly.

ITK's NIfTI reader zero-fills the voxels a file lacks (a ``.nii`` cut short, or a complete
gzip stream of a cut ``.nii``) and reads NaN and infinite voxels as 0. Either way a broken
label map would be scored as a (partly) empty one, so the evaluator reads the NIfTI-1 (348
byte) or NIfTI-2 (540 byte) header itself, in either byte order, and checks that the file
holds ``vox_offset`` + the bytes its dimensions and data type need, that a float label
map has finite values only, and that the header gives a voxel size: nifticlib reads a
``pixdim`` of 0 as 1 mm, so surface distances (NSD, HD95, ASSD) would be measured at a made-up
scale.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError

NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540

#: Bytes per voxel of each NIfTI ``datatype`` code (nifti1.h).
_DATATYPE_BYTES = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8,
    1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}
#: Float data types whose voxels are checked for NaN and infinities (float32, float64).
_FLOAT_TYPES = {16: "f4", 64: "f8"}

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """What the checks need from a single-file NIfTI header.

    ``data_offset`` is where the voxels start: ``vox_offset``, but at least the header size,
    as nifticlib (ITK's reader) reads it. ``float_dtype`` is the NumPy type of a float voxel in
    the file's byte order, None for other data types.
    """

    version: int
    shape: tuple[int, ...]
    datatype: int
    bytes_per_voxel: int
    data_offset: int
    float_dtype: np.dtype | None
    voxel_size: tuple[float, ...] = ()  # pixdim of the spatial axes (at most 3), as stored

    @property
    def data_bytes(self) -> int:
        """Bytes of voxel data the dimensions and data type require."""
        return int(np.prod(self.shape, dtype=object)) * self.bytes_per_voxel

    @property
    def data_end(self) -> int:
        return self.data_offset + self.data_bytes


def parse_header(head: bytes) -> NiftiHeader | None:
    """The header at the start of ``head``; None if it is not a single-file NIfTI-1/2 header.

    None also for headers too broken to size (bad dimensions, unknown data type): ITK then
    decides, and reports its own error.
    """
    if len(head) < NIFTI1_HEADER_BYTES:
        return None
    for order in "<>":
        (size,) = struct.unpack(f"{order}i", head[:4])
        if size == NIFTI1_HEADER_BYTES and head[344:347] == b"n+1":
            dims = struct.unpack(f"{order}8h", head[40:56])
            datatype, bitpix = struct.unpack(f"{order}hh", head[70:74])
            pixdim = struct.unpack(f"{order}3f", head[80:92])  # pixdim[1:4]
            (offset,) = struct.unpack(f"{order}f", head[108:112])
            return _header(1, order, dims, datatype, bitpix, offset, size, pixdim)
        if (size == NIFTI2_HEADER_BYTES and len(head) >= NIFTI2_HEADER_BYTES
                and head[4:7] == b"n+2"):
            datatype, bitpix = struct.unpack(f"{order}hh", head[12:16])
            dims = struct.unpack(f"{order}8q", head[16:80])
            pixdim = struct.unpack(f"{order}3d", head[112:136])  # pixdim[1:4]
            (offset,) = struct.unpack(f"{order}q", head[168:176])
            return _header(2, order, dims, datatype, bitpix, offset, size, pixdim)
    return None


def _header(version: int, order: str, dims: tuple[int, ...], datatype: int, bitpix: int,
            offset: float, header_bytes: int,
            pixdim: tuple[float, ...]) -> NiftiHeader | None:
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        return None
    nbytes = _DATATYPE_BYTES.get(datatype)
    if nbytes is None and bitpix > 0 and bitpix % 8 == 0:
        nbytes = bitpix // 8
    if nbytes is None or not np.isfinite(offset) or offset < 0:
        return None
    float_code = _FLOAT_TYPES.get(datatype)
    return NiftiHeader(
        version=version,
        shape=tuple(int(d) for d in dims[1:ndim + 1]),
        datatype=datatype,
        bytes_per_voxel=nbytes,
        data_offset=max(int(offset), header_bytes),
        float_dtype=np.dtype(order + float_code) if float_code else None,
        voxel_size=tuple(float(v) for v in pixdim[:min(ndim, 3)]),
    )


class NiftiStreamCheck:
    """Size and finiteness check of a NIfTI byte stream fed in consecutive chunks.

    Works the same on a ``.nii`` read from disk and on a ``.nii.gz`` being decompressed, so
    the gzip integrity pass checks the voxels at no extra decompression.
    """

    def __init__(self) -> None:
        self.header: NiftiHeader | None = None
        self.total_bytes = 0
        self.non_finite = 0
        self._pending = bytearray()  # the first bytes, until a whole header is in
        self._parsed = False
        self._carry = b""  # a float voxel split across two chunks

    def feed(self, chunk: bytes) -> None:
        """Take the next ``chunk`` of the file's (decompressed) bytes."""
        start = self.total_bytes
        self.total_bytes += len(chunk)
        if self._parsed:
            self._scan(chunk, start)
            return
        if len(self._pending) + len(chunk) < NIFTI2_HEADER_BYTES:
            self._pending += chunk
            return
        # Only the header's bytes are copied; chunks of the data can be megabytes.
        head = bytes(self._pending) + chunk[:NIFTI2_HEADER_BYTES - len(self._pending)]
        self._parse(head)
        self._scan(chunk, start)

    def _parse(self, head: bytes) -> None:
        """Parse the header from ``head`` and scan the bytes held back until now."""
        self._parsed = True
        self.header = parse_header(head)
        earlier, self._pending = bytes(self._pending), bytearray()
        self._scan(earlier, 0)

    def _scan(self, chunk: bytes, start: int) -> None:
        """Count the non-finite float voxels in ``chunk``, which starts at byte ``start``."""
        header = self.header
        if header is None or header.float_dtype is None:
            return
        low = max(start, header.data_offset)
        high = min(start + len(chunk), header.data_end)
        if low >= high:
            return
        piece = memoryview(chunk)[low - start:high - start]
        # Chunk borders fall anywhere, also inside a voxel: its first bytes wait in _carry.
        data = self._carry + piece if self._carry else piece
        whole = len(data) - len(data) % header.bytes_per_voxel
        values = np.frombuffer(data[:whole], dtype=header.float_dtype)
        self.non_finite += int(values.size - np.count_nonzero(np.isfinite(values)))
        self._carry = bytes(data[whole:])

    def finish(self, path: Path, what: str = "file", subject: str = "label map") -> None:
        """Raise :class:`EvaluationError` naming ``path`` if the stream was short or not finite.

        ``what`` names the stream in the message ("file", "decompressed file"), ``subject``
        what the file holds ("label map", "scan").
        """
        if not self._parsed:  # a stream shorter than a NIfTI-2 header
            self._parse(bytes(self._pending))
        header = self.header
        if header is None:
            return
        if not all(np.isfinite(v) and v != 0 for v in header.voxel_size):
            sizes = ", ".join(f"{v:g}" for v in header.voxel_size)
            raise EvaluationError(
                f"{path}: the NIfTI header gives no usable voxel size (pixdim {sizes}); "
                "surface distances would be measured at 1 mm per voxel, fix the header's spacing"
            )
        if self.total_bytes < header.data_end:
            held = max(0, self.total_bytes - header.data_offset)
            raise EvaluationError(
                f"{path}: truncated NIfTI: header needs {header.data_bytes} bytes of voxel "
                f"data, {what} holds {held}"
            )
        if self.non_finite:
            raise EvaluationError(
                f"{path}: {subject} contains NaN or infinite values ({self.non_finite} voxel(s))"
            )


def check_uncompressed_nifti(path: Path, subject: str = "label map") -> None:
    """Check a ``.nii`` file's length against its header, and float voxels for finiteness.

    Only float files are read in full; for others the file size is enough. ``subject``:
    what the file holds, for the message ("label map", "scan").
    """
    check = NiftiStreamCheck()
    try:
        with path.open("rb") as handle:
            check.feed(handle.read(NIFTI2_HEADER_BYTES))
            if check.header is not None and check.header.float_dtype is not None:
                while chunk := handle.read(_CHUNK_BYTES):
                    check.feed(chunk)
            else:
                # The voxels need not be read: the file's length is all that is checked.
                check.total_bytes = max(check.total_bytes, path.stat().st_size)
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    check.finish(path, subject=subject)
