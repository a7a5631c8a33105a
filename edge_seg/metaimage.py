"""MetaImage (``.mha``/``.mhd``) checks made before ITK reads the voxels.

Its own module because the check parses MetaImage's text header, which nothing else in
edgeseg reads. ITK reads an uncompressed MetaImage whose voxel data is shorter than its header
says, prints two raw lines to stderr and then fails with a misleading "No such file or
directory"; :func:`_check_metaimage_size` says what is wrong in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_seg.errors import EdgesegError

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
