"""SIGINT and SIGTERM stop a batch promptly: workers gone, no temporaries, a rerun resumes.

Real ``edgeseg predict IN/ OUT/`` subprocesses. The first scan is tiny and the others larger,
so that the batch is still running when the first output appears and the signal is sent.
Timeouts are generous bounds against a hang, not measurements.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom

from edge_seg.io import read_volume

CASES = 6
HANG_S = 120  # no step of these tests takes near this long unless something hangs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(CASES):
        shape = (20, 32, 32) if i == 0 else (48, 96, 96)
        image, _ = make_phantom(shape=shape, seed=i)
        itk = sitk.GetImageFromArray(image)
        itk.SetSpacing((1.2, 1.2, 2.5))
        sitk.WriteImage(itk, str(folder / f"case{i}.nii.gz"))
    return folder


def _command(inputs: Path, outputs: Path, bundle: Path, workers: int) -> list[str]:
    return [
        sys.executable, "-m", "edge_seg", "predict", str(inputs), str(outputs),
        "--model", str(bundle), "--workers", str(workers), "--quiet",
    ]


def _wait_for_first_output(outputs: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        if outputs.is_dir() and any(p.name.startswith("case") for p in outputs.iterdir()):
            return
        assert process.poll() is None, "the batch ended before its first output"
        time.sleep(0.01)
    pytest.fail("no output appeared")


@pytest.mark.parametrize(
    ("sig", "to_group", "workers", "code"),
    [
        (signal.SIGTERM, False, 2, 143),
        (signal.SIGINT, False, 2, 130),
        (signal.SIGINT, True, 2, 130),  # Ctrl-C in a terminal reaches the whole group
        (signal.SIGTERM, False, 1, 143),
    ],
    ids=["sigterm-2-workers", "sigint-2-workers", "sigint-group-2-workers", "sigterm-1-worker"],
)
def test_signal_stops_the_batch_and_a_rerun_resumes(
    bundle: Path, inputs: Path, tmp_path: Path, sig: int, to_group: bool, workers: int, code: int
) -> None:
    outputs = tmp_path / "out"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        # Its own session: a group signal reaches only edgeseg and its workers. stderr goes
        # to a file, which an orphaned worker could not keep a pipe of open.
        process = subprocess.Popen(
            _command(inputs, outputs, bundle, workers),
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )
        try:
            _wait_for_first_output(outputs, process)
            children = psutil.Process(process.pid).children(recursive=True)
            if to_group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
            returncode = process.wait(timeout=HANG_S)
        finally:
            if process.poll() is None:
                process.kill()
    assert returncode == code
    message = stderr.read_text()
    assert message.startswith("edgeseg: error: interrupted; ")
    assert message.endswith(", the rest stopped or not started; run again to resume\n")
    assert len(message.splitlines()) == 1, message
    _, alive = psutil.wait_procs(children, timeout=HANG_S)
    for orphan in alive:  # a failing run must not leave them to the rest of the session
        orphan.kill()
    assert alive == []  # no worker left behind, writing or idle
    written = sorted(p.name for p in outputs.iterdir())
    assert all(not name.startswith(".") for name in written)  # no temporaries
    assert 1 <= len(written) < CASES  # stopped, not run to the end
    for name in written:  # what was written is complete
        assert read_volume(outputs / name).shape[0] in (20, 48)

    rerun = subprocess.run(
        _command(inputs, outputs, bundle, workers), capture_output=True, text=True,
        timeout=HANG_S,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in outputs.iterdir()) == [f"case{i}.nii.gz" for i in range(CASES)]
