"""The one exception type the CLI turns into a one-line error message and a non-zero exit."""

from __future__ import annotations

import os
from pathlib import Path


class EdgesegError(Exception):
    """A problem with the user's input or environment, reported as one line.

    The message should name the file (or option) and the problem, e.g.
    ``"scan.nii.gz: 4D volume (shape 2x64x64x32); edgeseg segments 3D volumes only"``.
    """

    exit_code = 2


class MissingExtraError(EdgesegError):
    """A subcommand needs an optional dependency that is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"this command needs the '{extra}' extra ({module} is not installed); "
            f"install it with: pip install 'edgeseg[{extra}]'"
        )


class NotEnoughMemoryError(EdgesegError):
    """A scan needs more memory than is available now (checked before the work starts).

    Its own type because the answer can change: a batch that read this scan beside another
    case's work tries again once that work is done.
    """


def require_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a folder, else an :class:`EdgesegError`
    that says whether it is missing or a file (``what``: e.g. ``"model bundle folder"``)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise EdgesegError(f"{path}: {what} expected, but this is a file")
    raise EdgesegError(f"{path}: {what} does not exist")


def _first_line(exc: BaseException) -> str:
    """The useful line of an exception's message, for a one-line :class:`EdgesegError`.

    Shared by the readers and writers of :mod:`edge_seg.io`, :mod:`edge_seg.dicom` and the
    format modules beside them, which turn ITK's multi-line errors into one line.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK puts the useful sentence last, after file/line noise.
    line = lines[-1] if lines else type(exc).__name__
    return line.replace("sitk::ERROR: ", "")
