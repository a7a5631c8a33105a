"""The one exception type the CLI turns into a one-line error message and a non-zero exit."""

from __future__ import annotations


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
