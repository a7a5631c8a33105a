"""Memory: whether a scan fits in what is available, and large arrays mapped in one call.

:func:`check_fits_in_memory` refuses a scan up front (with :class:`NotEnoughMemoryError`)
that could not be segmented in the memory available, instead of being killed half-way; it
lives here rather than in :mod:`edge_seg.io` because the DICOM reader needs it too.

Large fresh arrays are mapped by the kernel in one call instead of page by page. The first
touch of every 4 kB page of a fresh allocation is a page fault. On the 2-core VMs
edgeseg is measured on, each fault is a trip through the hypervisor: filling 44 MB of fresh
NumPy memory took 60-100 ms, of which the copy itself is 10 ms. ``MAP_POPULATE`` asks the
kernel to map the whole buffer at once (35 ms for the same 44 MB). Used for the few arrays
that are large, fresh and filled at once: the scan's voxels as they are inflated, and the
first-pass tiles kept for the main pass.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

import numpy as np

from edge_seg.errors import NotEnoughMemoryError

#: Below this size a plain NumPy allocation: the allocator's reused memory is faster.
PREFAULT_MIN_BYTES = 1 << 20


def prefaulted_empty(shape: Sequence[int], dtype: np.typing.DTypeLike) -> np.ndarray:
    """A writable array to be filled by the caller, mapped up front where the OS can.

    Falls back to :func:`numpy.empty` where ``MAP_POPULATE`` does not exist (not Linux) and
    for small arrays.

    Examples
    --------
    >>> a = prefaulted_empty((4, 512, 512), np.int16)
    >>> a.shape, a.dtype.name, bool(a.flags.writeable)
    ((4, 512, 512), 'int16', True)
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes < PREFAULT_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def prefaulted_copy(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` in memory from :func:`prefaulted_empty`."""
    copy = prefaulted_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


#: Bytes of working memory per input voxel while a scan is segmented: the stored array, a
#: float32 working copy, its spline coefficients and the uint8 label map, with some slack.
#: Used to refuse a scan that cannot fit instead of being killed half-way.
WORKING_BYTES_PER_VOXEL = 14


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
