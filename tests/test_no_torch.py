"""edge_seg/ (the runtime) and evaluator/ must never import torch."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import edge_seg
import evaluator


def _all_modules(package) -> list[str]:
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        names.append(info.name)
    return names


def test_runtime_and_evaluator_import_without_torch() -> None:
    modules = _all_modules(edge_seg) + _all_modules(evaluator)
    assert "edge_seg.cli" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    if name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(name)\n"
        "heavy_roots = {'torch', 'nnunetv2', 'nncf'}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in heavy_roots)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"runtime imported: {result.stdout.strip()}"


def test_cli_help_lists_subcommands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_seg", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "synth" in result.stdout
