"""``edgeseg benchmark`` through the real CLI on small ``edgeseg synth`` phantoms with the
embedded model: unusable output folders, cases that fail or time out, ground truth that cannot
be scored, and earlier results in the output folder."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_benchmark_cli import _assert_one_line_error, _edgeseg

# No reference workload, no plots: these tests are about outcomes, not timings.
QUICK = ("--no-reference", "--no-plots", "--time-limit", "120")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 16-slice 64x64 CT phantoms (FLARE layout: imagesTr/, labelsTr/)."""
    root = tmp_path_factory.mktemp("bench_outcomes") / "phantoms"
    subprocess.run([sys.executable, "-m", "edge_seg", "synth", str(root), "--cases", "3",
                    "--slices", "16", "--size", "64", "--seed", "1", "--quiet"],
                   check=True, capture_output=True, timeout=120)
    return root


def _truncate(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _messages(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("edgeseg:")]


def test_output_below_a_file_or_under_proc_is_one_line_error(
    phantoms: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("keep me")
    result = _edgeseg(str(phantoms / "imagesTr"), "-o", str(blocker / "sub"), *QUICK)
    _assert_one_line_error(result, f"{blocker / 'sub'}: cannot create the --output folder")
    assert blocker.read_text() == "keep me"
    if Path("/proc").is_dir():
        result = _edgeseg(str(phantoms / "imagesTr"), "-o", "/proc/edgeseg-bench-test", *QUICK)
        _assert_one_line_error(result, "/proc/edgeseg-bench-test: cannot create or write")
        assert "[1/" not in result.stderr  # refused before any case ran


def test_failed_case_exits_2_after_all_results_are_written(
    phantoms: Path, tmp_path: Path
) -> None:
    cases = tmp_path / "batchin"
    cases.mkdir()
    shutil.copy(phantoms / "imagesTr" / "case_0000_0000.nii.gz", cases)
    _truncate(phantoms / "imagesTr" / "case_0001_0000.nii.gz", cases / "trunc.nii.gz")
    out = tmp_path / "out"
    result = _edgeseg(str(cases), "-o", str(out), *QUICK)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads((out / "benchmark.json").read_text())
    assert {c["case_id"]: c["status"] for c in data["cases"]} == {
        "case_0000": "ok", "trunc": "failed"}
    assert (out / "benchmark.csv").is_file() and (out / "benchmark.md").is_file()
    # the reason is one line however long the path: file, problem and case together
    reason = [line for line in _messages(result) if "unreadable image" in line]
    assert len(reason) == 1 and "trunc.nii.gz" in reason[0] and "trunc (base)" in reason[0]
    assert _messages(result)[-1].startswith(
        "edgeseg: error: 1 of 2 case run(s) did not finish ok (1 failed: trunc (base))")


def test_timed_out_cases_exit_2(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _edgeseg(str(phantoms / "imagesTr"), "-o", str(out), "--no-reference",
                      "--no-plots", "--time-limit", "0.05")
    assert result.returncode == 2, result.stderr
    data = json.loads((out / "benchmark.json").read_text())
    assert {c["status"] for c in data["cases"]} == {"timeout"}
    assert any("timeout (killed at --time-limit 0.05 s)" in line and "case_0002 (base)" in line
               for line in _messages(result)), result.stderr


def test_unscorable_ground_truth_is_not_scored_and_stays_out_of_the_means(
    phantoms: Path, tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(phantoms / "labelsTr" / "case_0000.nii.gz", labels)
    truncated = _truncate(phantoms / "labelsTr" / "case_0001.nii.gz", labels / "case_0001.nii.gz")
    wrong_shape = labels / "case_0002.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 64, 64), np.uint8)), str(wrong_shape))
    out = tmp_path / "out"
    result = _edgeseg(str(phantoms / "imagesTr"), "--gt", str(labels), "-o", str(out), *QUICK)
    assert result.returncode == 2, result.stderr
    warnings = [line for line in _messages(result) if "not scored" in line]
    assert any(str(truncated) in w and "case_0001 (base)" in w for w in warnings), warnings
    # the shape warning names the ground-truth file, not a deleted temporary prediction
    assert any(str(wrong_shape) in w and "case_0002 (base)" in w and "shape" in w
               for w in warnings), warnings
    assert ".predictions." not in result.stderr

    data = json.loads((out / "benchmark.json").read_text())
    cases = {c["case_id"]: c for c in data["cases"]}
    summary = data["summary"]["base"]
    assert summary["scored"] == 1 and summary["not_scored"] == 2
    assert summary["mean_dsc"] == pytest.approx(cases["case_0000"]["dsc"])
    assert summary["mean_nsd"] == pytest.approx(cases["case_0000"]["nsd"])
    for name, label in (("case_0001", truncated), ("case_0002", wrong_shape)):
        assert cases[name]["dsc"] is None and cases[name]["nsd"] is None
        assert str(label) in cases[name]["score_error"]
    rows = {r["case_id"]: r for r in csv.DictReader((out / "benchmark.csv").open())}
    assert rows["case_0001"]["dsc"] == "" and rows["case_0002"]["nsd"] == ""
    assert str(wrong_shape) in rows["case_0002"]["score_error"]
    assert _messages(result)[-1].startswith("edgeseg: error: 2 not scored")


def test_earlier_results_are_refused_unless_overwrite(phantoms: Path, tmp_path: Path) -> None:
    images, labels = str(phantoms / "imagesTr"), str(phantoms / "labelsTr")
    out = tmp_path / "out"
    first = _edgeseg(images, "--gt", labels, "-o", str(out), "--no-reference", "--time-limit",
                     "120")
    assert first.returncode == 0, first.stderr
    assert (out / "plots" / "memory_case_0000.png").is_file()
    before = {name: (out / name).read_bytes() for name in ("benchmark.json", "benchmark.csv")}

    again = _edgeseg(images, "--gt", labels, "-o", str(out), *QUICK)
    _assert_one_line_error(again, f"{out}: --output already holds the results of an earlier run")
    assert "--overwrite" in again.stderr and "[1/" not in again.stderr
    assert {name: (out / name).read_bytes() for name in before} == before

    # The baseline inside the folder is read before anything there is replaced: a baseline
    # that claims a better DSC must fail the gate, although the new run overwrites that file.
    baseline = json.loads(before["benchmark.json"])
    baseline["summary"]["base"]["mean_dsc"] = 0.99
    (out / "benchmark.json").write_text(json.dumps(baseline))
    gated = _edgeseg(images, "--gt", labels, "-o", str(out), "--overwrite", "--baseline",
                     str(out / "benchmark.json"), "--no-time-gate", *QUICK)
    assert gated.returncode == 1, gated.stderr
    assert "mean DSC dropped 0.9900 ->" in gated.stderr
    rewritten = json.loads((out / "benchmark.json").read_text())
    assert rewritten["summary"]["base"]["mean_dsc"] != 0.99
    assert rewritten["settings"]["gt"] == labels
    # the earlier run's plots, not redrawn by this --no-plots run, are gone
    assert not list((out / "plots").glob("*.png"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--max-drop", "nan"), "--max-drop must be a number >= 0, got nan"),
        (("--time-limit", "nan"), "--time-limit must be a positive number, got nan"),
        (("--max-slowdown", "nan"), "--max-slowdown must be a positive number, got nan"),
        (("--interval", "inf"), "--interval must be a positive number, got inf"),
        (("--threads", "0"), "--threads: '0' must be at least 1"),
        (("--compare", "threads=0"), "--threads: '0' must be at least 1 (--compare threads=0)"),
    ],
)
def test_options_that_would_disarm_a_gate_or_fail_every_case_are_refused(
    phantoms: Path, tmp_path: Path, option: tuple[str, str], message: str
) -> None:
    # NaN compares false with everything: a "--max-drop nan" gate would pass any regression.
    out = tmp_path / "out"
    result = _edgeseg(str(phantoms / "imagesTr"), "-o", str(out), "--no-reference",
                      "--no-plots", *option)
    _assert_one_line_error(result, message)
    assert not out.exists()
