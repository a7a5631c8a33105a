"""``edgeseg predict IN OUT --shard K/N``: machines split a cohort, each case exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle
from test_predict_cli import edgeseg, write_scan

from edge_seg.errors import EdgesegError
from edge_seg.shards import Shard, parse_shard, select


@pytest.mark.parametrize("count", [1, 2, 7, 64])
def test_every_case_is_in_exactly_one_shard_and_shards_are_even(count: int) -> None:
    names = [f"{1000000 + i}" for i in range(2000)] + [f"case_{i:04d}" for i in range(2000)]
    shards = [Shard(k, count) for k in range(1, count + 1)]
    parts = [select(names, shard, str) for shard in shards]
    assert sorted(n for part in parts for n in part) == sorted(names)
    expected = len(names) / count
    # A hash spreads names evenly: within 5 standard deviations of the binomial count.
    spread = 5 * (expected * (1 - 1 / count)) ** 0.5
    assert all(abs(len(part) - expected) <= spread for part in parts), [len(p) for p in parts]


def test_a_case_keeps_its_shard_when_the_cohort_grows() -> None:
    before = select([f"s{i}" for i in range(100)], Shard(2, 5), str)
    after = select([f"s{i}" for i in range(300)], Shard(2, 5), str)
    assert after[: len(before)] == before and set(before) <= set(after)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "is not K/N"),
        ("a/b", "is not K/N"),
        ("0/10", r"K counts from 1: for a 0-based array job id pass \$\(\(ID \+ 1\)\)/N"),
        ("11/10", "K must be 1 to N"),
        ("1/0", "K must be 1 to N"),
    ],
)
def test_bad_shard_values_are_refused(text: str, message: str) -> None:
    with pytest.raises(EdgesegError, match=message):
        parse_shard(text)
    assert parse_shard(" 3 / 10 ") == Shard(3, 10)


def test_two_machines_split_a_folder_between_them(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    names = [f"case_{i}" for i in range(6)]
    for seed, name in enumerate(names):
        write_scan(inputs / f"{name}_0000.nii.gz", seed=seed)
    first = sorted(select(names, Shard(1, 2), str))
    assert 0 < len(first) < len(names)  # the fixture splits; otherwise nothing is tested

    result = edgeseg(inputs, outputs, "--model", bundle, "--shard", "1/2")
    assert result.returncode == 0, result.stderr
    assert f"shard 1/2: {len(first)} of the 6 scans in {inputs}" in result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == [f"{n}.nii.gz" for n in first]

    result = edgeseg(inputs, outputs, "--model", bundle, "--shard", "2/2")
    assert result.returncode == 0, result.stderr
    assert f"{len(names) - len(first)} segmented, 0 already done, 0 failed" in result.stdout
    assert sorted(p.name for p in outputs.iterdir()) == [f"{n}.nii.gz" for n in names]


def test_shard_needs_a_folder_and_a_valid_value(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "one.nii.gz")
    result = edgeseg(scan, "--shard", "1/2")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"edgeseg: error: {scan}: --shard splits a folder of scans; this is one scan")
    result = edgeseg(tmp_path, tmp_path / "out", "--shard", "0/4")
    assert result.returncode == 2 and "--shard: '0/4': K must be 1 to N" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_name_that_is_not_utf8_fails_its_case_only(tmp_path: Path) -> None:
    # SimpleITK aborted the whole batch process (SIGABRT) on such a name.
    import os

    bundle = make_bundle(tmp_path / "bundle")
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write_scan(inputs / "good_0000.nii.gz")
    latin1 = os.fsencode(inputs) + b"/M\xfcller_0000.nii.gz"
    os.rename(write_scan(inputs / "tmp.nii.gz"), latin1)
    name = os.fsdecode(b"M\xfcller")
    assert sum(Shard(k, 3).holds(name) for k in (1, 2, 3)) == 1
    import subprocess

    # The message names the file as it is on disk, so the output is not valid UTF-8 either.
    result = subprocess.run([sys.executable, "-m", "edge_seg", "predict", str(inputs),
                             str(outputs), "--model", str(bundle)], capture_output=True,
                            timeout=300)
    stdout, stderr = (result.stdout.decode(errors="replace"),
                      result.stderr.decode(errors="replace"))
    assert result.returncode == 2, stderr
    assert "the file name is not valid UTF-8, which ITK cannot open; rename it" in stdout
    assert sorted(p.name for p in outputs.iterdir()) == ["good.nii.gz"]
    assert stderr.strip().endswith("1 of 2 cases failed: M\\xfcller")


def test_an_output_name_that_is_not_utf8_is_refused_before_the_work(tmp_path: Path) -> None:
    import os
    import subprocess

    scan = write_scan(tmp_path / "scan.nii.gz")
    out = os.fsencode(tmp_path) + b"/seg\xe9.nii.gz"
    result = subprocess.run([sys.executable, "-m", "edge_seg", "predict", os.fsencode(scan),
                             "-o", out, "--model", os.fsencode(make_bundle(tmp_path / "b"))],
                            capture_output=True, timeout=300)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2
    assert "seg\\xe9.nii.gz: the file name is not valid UTF-8" in stderr
    assert "Traceback" not in stderr and not os.path.exists(out)
