"""Load PyTorch checkpoints without running code from the file.

A ``.pth`` checkpoint is a Python pickle; unpickling an untrusted one can execute arbitrary code.
We therefore load with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers, plus an explicit allow-list of the few other types nnU-Net v2 stores in its
checkpoints (NumPy scalars in the training log and ``_best_ema``; ``torch.device`` in
``init_args`` is allowed by torch already). Anything else is refused with a message explaining
the risk, unless the user passes ``--trust-checkpoint``.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

from edge_seg.errors import EdgesegError


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _numpy_allow_list() -> list[Any]:
    """NumPy types that appear in nnU-Net checkpoints (scalars in ``logging`` and ``_best_ema``)."""
    import numpy as np

    try:  # NumPy >= 2
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed: list[Any] = [scalar, np.dtype]
    # Unpickling a NumPy scalar also rebuilds its dtype class (e.g. numpy.dtypes.Float64DType).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                     "Int32DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def load_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """Load a checkpoint onto the CPU, safely unless ``trust`` is set.

    Parameters
    ----------
    path
        The ``.pth``/``.pt`` file.
    trust
        Load with full pickle semantics (``weights_only=False``). Only for files from a source
        the user trusts; arbitrary code in the file runs.

    Raises
    ------
    EdgesegError
        The file is missing, unreadable, or holds types outside the allow-list.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: checkpoint file does not exist")
    _check_container(path)
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise EdgesegError(f"{path}: cannot read checkpoint ({_first_line(exc)})") from exc
    try:
        with torch.serialization.safe_globals(_numpy_allow_list()), warnings.catch_warnings():
            # torch warns (two lines on stderr) about pickle protocols it did not write.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path)
        what = f" (it references {', '.join(refused)})" if refused else ""
        raise EdgesegError(
            f"{path}: checkpoint holds Python objects outside the safe allow-list{what}; "
            "loading it could run arbitrary code from the file. If you trust its source, "
            "re-run with --trust-checkpoint"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:
        raise EdgesegError(f"{path}: cannot read checkpoint ({_first_line(exc)})") from exc


def _check_container(path: Path) -> None:
    """Refuse a file that is no ``torch.save`` output before unpickling it.

    ``torch.save`` writes a zip archive (``PK``) or, in the legacy format, a pickle (which
    starts with the PROTO opcode 0x80). Anything else reaches the weights-only unpickler as
    garbage, which reports it as objects outside the allow-list - and the advice to re-run
    with ``--trust-checkpoint`` is then wrong. A truncated archive (an interrupted copy or
    download) lacks the zip directory at its end and gets its own message too.
    """
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise EdgesegError(f"{path}: checkpoint file is empty")
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise EdgesegError(f"{path}: checkpoint is truncated or damaged (its zip archive "
                               "has no central directory; copy or download it again)")
    elif not head.startswith(b"\x80"):
        raise EdgesegError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip "
                           "archive nor a pickle)")


def _refused_globals(path: Path) -> list[str]:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the listing is a courtesy; the refusal stands either way
        return []
    allowed = {f"{obj.__module__}.{obj.__qualname__}" for obj in _numpy_allow_list()}
    return sorted(name for name in names if name not in allowed)[:5]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
