"""Shared pytest fixtures: paths to the real data in ../shared/data and small temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real reference data folder; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _openvino_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """Compiled-model blobs go to a folder of the test session, not the user's cache."""
    import os

    before = os.environ.get("EDGESEG_CACHE_DIR")
    os.environ["EDGESEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("openvino_cache"))
    yield
    if before is None:
        os.environ.pop("EDGESEG_CACHE_DIR", None)
    else:
        os.environ["EDGESEG_CACHE_DIR"] = before
