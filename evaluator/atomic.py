"""Atomic file and folder writes: a temporary sibling first, then one rename.

An interrupted run therefore leaves either the old state or the complete new file, never a
half-written one. Used by the evaluator, the runtime and the exporters alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evaluator.errors import OutputPathError


def _current_umask() -> int:
    # Linux reports the umask without changing it; os.umask() must set it to read it, which
    # would briefly affect other threads creating files.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def nearest_existing(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (``.`` or the root at
    the latest): where a file or folder to be created at ``path`` would first meet the disk."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _blocking_file(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` (or itself) when it is not a folder."""
    existing = nearest_existing(folder)
    return None if existing.is_dir() else existing


def _prepare_parent(target: Path) -> None:
    """Create ``target``'s folder, or raise :class:`OutputPathError` saying why it cannot be.

    ``Path.mkdir`` reports a file in the way as FileExistsError or NotADirectoryError and a
    pseudo file system (``/proc``) as FileNotFoundError, none of which names the real problem.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = _blocking_file(parent)
        if blocking == parent:
            raise OutputPathError(f"{parent}: output folder path is a file, not a "
                                  "folder") from None
        reason = (f"{blocking} is not a folder" if blocking is not None
                  else exc.strerror or str(exc))
        raise OutputPathError(f"{parent}: output folder cannot be created ({reason})") from None


def _not_writable(folder: Path, exc: OSError) -> OutputPathError:
    """The error for a folder that exists but takes no new files (read-only, permissions)."""
    return OutputPathError(f"{folder}: output folder is not writable ({exc.strerror or exc})")


def _suffixes(path: Path) -> str:
    # Keep the full suffix (".nii.gz") so that writers choosing a format by extension still work.
    return "".join(path.suffixes)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched.

    Raises
    ------
    OutputPathError
        When ``target``'s folder cannot be created or written (an ``OSError``).

    Examples
    --------
    >>> with atomic_path(out_dir / "cases.csv") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("case,organ\\n")
    """
    target = Path(target)
    _prepare_parent(target)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name.split('.')[0]}.", suffix=".tmp" + _suffixes(target),
            dir=target.parent,
        )
    except OSError as exc:
        raise _not_writable(target.parent, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp creates 0600; a result file should get the mode a plain open() would give.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` on success.

    ``target`` must not exist yet (callers decide about overwriting before calling). On an
    exception the temporary folder is removed.

    Raises
    ------
    OutputPathError
        When ``target``'s folder cannot be created or written (an ``OSError``).
    """
    target = Path(target)
    _prepare_parent(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent))
    except OSError as exc:
        raise _not_writable(target.parent, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp creates 0700
        if target.exists():
            # Only an empty placeholder may be replaced (callers refuse non-empty targets).
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)
