"""``edgeseg benchmark`` end to end: bad input through the real CLI, and the whole command
(files, tables, gate, exit status) with real child processes standing in for predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from rich.console import Console

from edge_seg.benchmark import BenchmarkCase, Config
from edge_seg.benchmark_cli import (
    IncompleteRunError,
    RegressionError,
    predict_kwargs,
    run_benchmark_command,
)
from edge_seg.commands.benchmark import parse_memory_mb, predict_command
from edge_seg.errors import EdgesegError


def _edgeseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_seg", "benchmark", *args],
                          capture_output=True, text=True, timeout=120)


def _cases_dir(root: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    folder = root / "cases"
    folder.mkdir()
    for name in names:
        image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
        sitk.WriteImage(image, str(folder / f"{name}_0000.nii.gz"))
    return folder


def _assert_one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_input_is_one_line_before_any_case_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(_edgeseg(str(tmp_path / "empty")), "no images found")
    cases = _cases_dir(tmp_path)
    _assert_one_line_error(_edgeseg(str(cases), "--time-limit", "0"),
                           "--time-limit must be a positive number")
    _assert_one_line_error(_edgeseg(str(cases), "--model", str(tmp_path)),
                           "not a model bundle (edgeseg.json is missing)")
    _assert_one_line_error(_edgeseg(str(cases), "--memory-limit", "lots"), "--memory-limit")
    _assert_one_line_error(_edgeseg(str(cases), "--compare", "precision=int4"),
                           "precision must be one of")
    assert not (tmp_path / "benchmark_results").exists()


def test_memory_limit_units() -> None:
    assert parse_memory_mb("4GB") == 4096.0
    assert parse_memory_mb("512MB") == 512.0
    assert parse_memory_mb("1.5g") == 1536.0
    assert parse_memory_mb("300") == 300.0
    with pytest.raises(EdgesegError):
        parse_memory_mb("0GB")


def test_predict_command_line_applies_config_over_base_options(tmp_path: Path) -> None:
    build = predict_command(tmp_path / "bundle", {"precision": "int8", "step": "0.5"})
    case = BenchmarkCase("a", tmp_path / "a_0000.nii.gz")
    argv = build(case, Config("precision=fp32", {"precision": "fp32"}), tmp_path / "a.nii.gz")
    assert argv[1:5] == ["-m", "edge_seg", "predict", str(case.image)]
    assert argv[argv.index("--output") + 1] == str(tmp_path / "a.nii.gz")
    assert argv[argv.index("--precision") + 1] == "fp32"
    assert argv[argv.index("--step") + 1] == "0.5"
    assert argv[argv.index("--model") + 1] == str(tmp_path / "bundle")


def test_predict_command_line_turns_switches_into_flags(tmp_path: Path) -> None:
    build = predict_command(tmp_path / "bundle", {"lcc": "off", "min-component-ml": "0"})
    case = BenchmarkCase("a", tmp_path / "a_0000.nii.gz")
    base = build(case, Config("base"), tmp_path / "a.nii.gz")
    assert "--no-lcc" in base and "--lcc" not in base
    assert base[base.index("--min-component-ml") + 1] == "0"
    compared = build(case, Config("lcc=on", {"lcc": "on"}), tmp_path / "a.nii.gz")
    assert "--lcc" in compared and "--no-lcc" not in compared


def test_benchmark_options_become_predict_options() -> None:
    kwargs = predict_kwargs({"step": "0.25", "threads": "2", "lcc": "off",
                             "min-component-ml": "1.5", "crop": "none"})
    assert kwargs == {"step": 0.25, "threads": 2, "lcc": False, "min_component_ml": 1.5,
                      "crop": "none"}
    with pytest.raises(ValueError, match="--min-component-ml: 'lots' is not a number"):
        predict_kwargs({"min-component-ml": "lots"})


# A stand-in for predict: copies the image to the prediction path, or crashes on case "b"
# when the configuration asks for it.
CHILD = (
    "import shutil, sys\n"
    "image, out, config = sys.argv[1:4]\n"
    "if 'b_0000' in image and config != 'base':\n"
    "    raise SystemExit('model file unreadable')\n"
    "shutil.copy(image, out)\n"
)


def _copy_child(case: BenchmarkCase, config: Config, prediction: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, str(case.image), str(prediction), config.name]


def _run(tmp_path: Path, cases: Path, output: Path, *, incomplete: str | None = None,
         **kwargs) -> str:
    """Run the command in-process; ``incomplete``: the IncompleteRunError (exit 2) expected
    once all results are written, matched against this pattern."""
    console = Console(record=True, width=200)
    options = dict(
        cases_dir=cases, time_limit=60, model=tmp_path / "unused", gt=None,
        memory_limit_mb=None, output=output, predict_options={}, compare=[], baseline=None,
        max_slowdown=1.25, max_drop=0.005, interval=0.1, reference=False, plots=False,
        command_for=_copy_child, model_check=None, console=console,
    )
    options.update(kwargs)
    if incomplete is None:
        run_benchmark_command(**options)
    else:
        with pytest.raises(IncompleteRunError, match=incomplete) as info:
            run_benchmark_command(**options)
        assert info.value.exit_code == 2
    return console.export_text()


def test_command_writes_results_and_gates_against_itself(tmp_path: Path) -> None:
    cases = _cases_dir(tmp_path)
    out = tmp_path / "out"
    # case b fails under fp32: every result is still written, then exit status 2 names it
    failed_b = r"1 of 4 case run\(s\) did not finish ok \(1 failed: b \(precision=fp32\)\)"
    text = _run(tmp_path, cases, out, compare=["precision=fp32"], plots=True,
                keep_predictions=True, incomplete=failed_b)
    assert "median" in text and "p90" in text and "time ratio" in text
    data = json.loads((out / "benchmark.json").read_text())
    status = {(c["case_id"], c["config"]): c["status"] for c in data["cases"]}
    assert status == {("a", "base"): "ok", ("a", "precision=fp32"): "ok",
                      ("b", "base"): "ok", ("b", "precision=fp32"): "failed"}
    crashed = next(c for c in data["cases"] if c["status"] == "failed")
    assert "model file unreadable" in crashed["stderr_tail"]
    assert (out / "predictions" / "base" / "a.nii.gz").is_file()
    assert (out / "benchmark.csv").is_file() and (out / "plots" / "summary.png").is_file()
    assert "| **median** |" in (out / "benchmark.md").read_text()

    # The same command against its own result passes the gate (time not gated: too noisy for
    # a test) ...
    # (b failed in the baseline too: no regression, but still exit status 2)
    text = _run(tmp_path, cases, tmp_path / "again", compare=["precision=fp32"],
                baseline=out / "benchmark.json", max_slowdown=None, incomplete=failed_b)
    assert "no regression" in text
    # without --keep-predictions the label maps are gone, and so is their temporary folder
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        "benchmark.csv", "benchmark.json", "benchmark.md"]
    # ... and against a baseline in which case b also finished under fp32, it fails, naming it.
    baseline = json.loads((out / "benchmark.json").read_text())
    for case in baseline["cases"]:
        case["status"] = "ok"
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    with pytest.raises(RegressionError, match=r"case b \(precision=fp32\): failed") as info:
        _run(tmp_path, cases, tmp_path / "third", compare=["precision=fp32"],
             baseline=tmp_path / "baseline.json", max_slowdown=None)
    assert info.value.exit_code == 1


def test_ground_truth_without_any_match_is_refused(tmp_path: Path) -> None:
    cases = _cases_dir(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)),
                    str(labels / "zzz.nii.gz"))
    with pytest.raises(EdgesegError, match="no ground truth matches any case"):
        _run(tmp_path, cases, tmp_path / "out", gt=labels)


def _label_map(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_accuracy_comes_from_the_evaluator(tmp_path: Path) -> None:
    from edge_seg.benchmark_accuracy import score_prediction
    from evaluator.errors import EvaluationError

    gt = np.zeros((6, 10, 24), np.uint8)
    gt[1:5, 2:8, 2:22] = 1  # liver, 480 voxels
    pred = gt.copy()
    pred[1:5, 2:8, 2:14] = 0  # 12 mm of it missed: DSC = 2*192/(480+192)
    gt_path = _label_map(tmp_path / "gt.nii.gz", gt)
    dsc, nsd = score_prediction(_label_map(tmp_path / "p.nii.gz", pred), gt_path)
    assert dsc["liver"] == pytest.approx(2 * 192 / (480 + 192))
    assert 0 < nsd["liver"] < 1
    assert dsc["spleen"] == 1.0 and nsd["spleen"] == 1.0  # empty in both: FLARE scores 1
    assert len(dsc) == 13
    with pytest.raises(EvaluationError, match="spacing"):
        score_prediction(_label_map(tmp_path / "q.nii.gz", pred, (1.0, 1.0, 1.0)), gt_path)
