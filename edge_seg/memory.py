"""Large arrays in memory the kernel maps in one call instead of page by page.

The first touch of every 4 kB page of a fresh allocation is a page fault. On the 2-core VMs
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
