"""Atomic writes: all or nothing, with ordinary file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from evaluator.atomic import atomic_dir, atomic_path, write_text_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_gets_the_umask_mode_not_mkstemp_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = write_text_atomic(tmp_path / "summary.json", "{}\n")
    finally:
        os.umask(old)
    assert out.read_text() == "{}\n"
    assert _mode(out) == 0o644


def test_folder_gets_the_umask_mode_not_mkdtemp_0700(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "edgeseg.json").write_text("{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "bundle") == 0o750
    assert (tmp_path / "bundle" / "edgeseg.json").exists()


def test_failure_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "cases.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv"]


def test_failed_folder_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "bundle") as tmp:
        (tmp / "model.onnx").write_bytes(b"\0" * 10)
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []
