"""The benchmark runner, reports and gate, driven by real child processes (not edgeseg predict):
children that write an output, crash, sleep past the limit or allocate memory."""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from edge_seg.benchmark import (
    BASE_CONFIG,
    BenchmarkCase,
    Config,
    apply_accuracy,
    build_configs,
    case_id_of,
    compare_to_first,
    discover_cases,
    match_ground_truth,
    parse_config,
    run_benchmark,
    summarise,
)
from edge_seg.benchmark_gate import check_regression, load_results
from edge_seg.benchmark_report import csv_text, markdown_table, run_to_json, write_results
from edge_seg.errors import EdgesegError
from edge_seg.profiling import memory_auc_mb_s

# Child behaviour chosen by the case name; it writes the prediction path it is given.
CHILD = textwrap.dedent(
    """
    import sys, time
    case, config, out = sys.argv[1:4]
    if case == "crash":
        print("reading scan", file=sys.stderr)
        raise SystemExit("fatal: network weights are corrupt")
    if case == "slow":
        time.sleep(600)
    if case == "silent":
        raise SystemExit(0)  # exits 0 but writes nothing
    block = None
    if case == "big":
        import numpy
        block = numpy.ones(200 * 1024 * 1024 // 8)
    # a configuration that does twice the work, to give a measurable ratio
    work = 0.3 if config == "base" else 0.6
    end = time.process_time() + work
    while time.process_time() < end:
        pass
    open(out, "w").write(case)
    """
)


def _command(case: BenchmarkCase, config: Config, prediction: Path) -> list[str]:
    return [sys.executable, "-c", CHILD, case.case_id, config.name, str(prediction)]


def _cases(*names: str) -> list[BenchmarkCase]:
    return [BenchmarkCase(n, Path(f"{n}.nii.gz"), None, (10, 20, 30)) for n in names]


def _write_volume(path: Path, shape: tuple[int, int, int] = (4, 5, 6)) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8)), str(path))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory):
    """One run over a good, a big, a crashing, a silent and a timed-out case, two configs."""
    out = tmp_path_factory.mktemp("bench")
    configs = [Config(BASE_CONFIG), Config("step=0.25", {"step": "0.25"})]
    run = run_benchmark(
        _cases("good", "big", "crash", "silent", "slow"), configs, _command, out / "pred",
        time_limit_s=3.0, reference=True,
    )
    return run, out


def test_statuses_of_good_crashing_silent_and_slow_children(mixed_run) -> None:
    run, _ = mixed_run
    status = {(r.case_id, r.config): r for r in run.records}
    assert len(run.records) == 10
    # interleaved: each case runs under both configurations before the next case
    assert [r.case_id for r in run.records[:4]] == ["good", "good", "big", "big"]
    good = status["good", BASE_CONFIG]
    assert good.status == "ok" and good.exit_code == 0
    assert Path(good.prediction).read_text() == "good"
    crash = status["crash", BASE_CONFIG]
    assert crash.status == "failed" and crash.exit_code == 1
    assert "network weights are corrupt" in crash.stderr_tail and crash.prediction is None
    silent = status["silent", BASE_CONFIG]
    assert silent.status == "failed" and "no output written" in silent.stderr_tail
    slow = status["slow", BASE_CONFIG]
    assert slow.status == "timeout" and slow.exit_code is not None and slow.exit_code < 0
    assert slow.time_s >= 3.0


def test_memory_and_auc_per_case(mixed_run) -> None:
    run, _ = mixed_run
    big = next(r for r in run.records if r.case_id == "big")
    good = next(r for r in run.records if r.case_id == "good")
    assert big.peak_rss_mb >= 180.0
    assert big.peak_rss_mb > good.peak_rss_mb + 150.0
    t, m = zip(*[(s[0], s[1]) for s in big.samples], strict=True)
    assert big.memory_auc_mb_s == pytest.approx(memory_auc_mb_s(t, m))
    assert big.cpu_time_s >= 0.3


def test_reference_units_and_ratios(mixed_run) -> None:
    run, _ = mixed_run
    assert len(run.reference_times_s) == 5 and run.reference_time_s > 0
    good = next(r for r in run.records if r.case_id == "good")
    assert good.time_ref_units == pytest.approx(good.time_s / run.reference_time_s)
    ratios = compare_to_first(run)["step=0.25"]
    assert ratios["cases_compared"] == 2  # good and big finished under both
    assert ratios["time_ratio"] > 1.0  # the second config does twice the CPU work
    summary = summarise(run)[BASE_CONFIG]
    assert summary["cases"] == 5 and summary["ok"] == 2
    assert summary["status_counts"] == {"ok": 2, "failed": 2, "timeout": 1}
    times = sorted(r.time_s for r in run.records_for(BASE_CONFIG) if r.ok)
    assert summary["median_time_s"] == pytest.approx(np.median(times))


def test_failed_cases_score_zero_like_flare(mixed_run) -> None:
    run, _ = mixed_run
    cases = [BenchmarkCase(n, Path(n), Path(f"{n}_gt"), None) for n in
             ("good", "big", "crash", "silent", "slow")]
    scored: list[str] = []

    def score(prediction: Path, label: Path) -> tuple[dict[str, float], dict[str, float]]:
        scored.append(prediction.read_text())
        return {"liver": 0.9, "spleen": 0.8}, {"liver": 1.0, "spleen": 0.6}

    assert apply_accuracy(run, cases, score) == []
    assert sorted(set(scored)) == ["big", "good"]  # failed cases are never scored
    by = {(r.case_id, r.config): r for r in run.records}
    assert by["good", BASE_CONFIG].dsc == pytest.approx(0.85)
    assert by["good", BASE_CONFIG].nsd == pytest.approx(0.8)
    for name in ("crash", "silent", "slow"):
        assert by[name, BASE_CONFIG].dsc == 0.0 and by[name, BASE_CONFIG].nsd == 0.0
    assert summarise(run)[BASE_CONFIG]["mean_dsc"] == pytest.approx(0.85 * 2 / 5)


def test_results_files(mixed_run) -> None:
    run, out = mixed_run
    paths = write_results(run, out / "results")
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 10
    assert {"time_s", "peak_rss_mb", "memory_auc_mb_s", "status"} <= set(rows[0])
    assert all("\n" not in row["stderr_tail"] for row in rows)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "edgeseg-benchmark" and len(data["cases"]) == 10
    assert set(data["summary"]) == {BASE_CONFIG, "step=0.25"}
    assert data["reference_workload"]["median_s"] > 0
    for key in ("memory_good", "memory_slow", "summary"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing half-written is left behind
    assert not list((out / "results").rglob("*.tmp*"))
    table = markdown_table(run)
    assert "**median**" in table and "**p90**" in table and "| timeout |" in table
    assert csv_text(run).count("\n") == 11


def test_gate_against_itself_passes_and_names_regressions(mixed_run, tmp_path: Path) -> None:
    run, _ = mixed_run
    current = run_to_json(run)
    assert check_regression(current, current).passed
    baseline = json.loads(json.dumps(current))
    # the baseline was more accurate and faster, and "crash" used to finish
    baseline["summary"][BASE_CONFIG]["mean_dsc"] = 0.95
    baseline["summary"][BASE_CONFIG]["mean_nsd"] = 0.95
    current["summary"][BASE_CONFIG]["mean_dsc"] = 0.94
    current["summary"][BASE_CONFIG]["mean_nsd"] = 0.948
    baseline["summary"][BASE_CONFIG]["median_time_ref_units"] = (
        current["summary"][BASE_CONFIG]["median_time_ref_units"] / 1.5
    )
    baseline["comparison"]["step=0.25"]["time_ratio"] = (
        current["comparison"]["step=0.25"]["time_ratio"] / 1.1
    )
    for case in baseline["cases"]:
        if case["case_id"] == "crash":
            case["status"] = "ok"
    result = check_regression(current, baseline, max_slowdown=1.25, max_drop=0.005)
    text = "\n".join(result.regressions)
    assert not result.passed
    assert "mean DSC dropped 0.9500 -> 0.9400" in text
    assert "mean NSD" not in text  # 0.002 is within --max-drop
    assert "case crash (base): failed (baseline: ok)" in text
    assert "reference units" in text and "1.50x slower" in text
    assert "step=0.25" not in text.replace("case crash (step=0.25)", "")  # 1.10 is within 1.25
    untimed = check_regression(current, baseline, max_slowdown=None, max_drop=0.005)
    assert not any("slower" in r for r in untimed.regressions)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    assert load_results(path)["summary"][BASE_CONFIG]["mean_dsc"] == 0.95


def test_bad_baseline_files(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(EdgesegError, match="unreadable baseline"):
        load_results(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"a": 1}')
    with pytest.raises(EdgesegError, match="not an edgeseg benchmark result"):
        load_results(tmp_path / "y.json")


def test_time_limit_and_empty_case_list_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="--time-limit must be a positive number"):
        run_benchmark(_cases("good"), [Config(BASE_CONFIG)], _command, tmp_path, time_limit_s=0)
    with pytest.raises(EdgesegError, match="no cases"):
        run_benchmark([], [Config(BASE_CONFIG)], _command, tmp_path, time_limit_s=5)


def test_memory_limit_marks_the_case(tmp_path: Path) -> None:
    run = run_benchmark(
        _cases("big"), [Config(BASE_CONFIG)], _command, tmp_path, time_limit_s=60,
        memory_limit_mb=120, reference=False,
    )
    assert run.records[0].status == "memory_limit"
    assert run.reference_times_s == [] and run.records[0].time_ref_units is None


def test_case_discovery_and_ground_truth_matching(tmp_path: Path) -> None:
    cases_dir, gt_dir = tmp_path / "imagesTs", tmp_path / "labelsTs"
    cases_dir.mkdir()
    gt_dir.mkdir()
    for name in ("case_b_0000.nii.gz", "case_a_0000.nii.gz", "case_c.mha"):
        _write_volume(cases_dir / name)
    (cases_dir / "notes.txt").write_text("not an image")
    for name in ("case_a.nii.gz", "case_b.nii.gz", "other.nii.gz"):
        _write_volume(gt_dir / name)
    cases = discover_cases(tmp_path)  # a dataset folder: its imagesTs is used
    assert [c.case_id for c in cases] == ["case_a", "case_b", "case_c"]
    assert cases[0].shape == (4, 5, 6) and cases[0].voxels == 120
    matched, unmatched = match_ground_truth(cases, gt_dir)
    assert unmatched == ["case_c"]
    assert matched[0].label == gt_dir / "case_a.nii.gz" and matched[2].label is None
    assert case_id_of(Path("x/case_0001_0000.nii.gz")) == "case_0001"


def test_case_names_with_and_without_channel_suffix(tmp_path: Path) -> None:
    # plain FLARE-style names: "_0001" is part of the case name, not a channel
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("FLARE22_Tr_0001.nii.gz", "FLARE22_Tr_0002.nii.gz"):
        _write_volume(plain / name)
    assert [c.case_id for c in discover_cases(plain)] == ["FLARE22_Tr_0001", "FLARE22_Tr_0002"]
    # nnU-Net names: synth writes synth_0000_0000.nii.gz with label synth_0000.nii.gz
    nnunet, labels = tmp_path / "nnunet", tmp_path / "labels"
    nnunet.mkdir()
    labels.mkdir()
    for i in range(2):
        _write_volume(nnunet / f"synth_{i:04d}_0000.nii.gz")
        _write_volume(labels / f"synth_{i:04d}.nii.gz")
    matched, unmatched = match_ground_truth(discover_cases(nnunet), labels)
    assert [c.case_id for c in matched] == ["synth_0000", "synth_0001"] and unmatched == []
    assert matched[1].label == labels / "synth_0001.nii.gz"
    # a single plain-named case still finds its label by the full name
    single = tmp_path / "single"
    single.mkdir()
    _write_volume(single / "case_0007.nii.gz")
    matched, unmatched = match_ground_truth(discover_cases(single), plain)
    assert unmatched == ["case"]
    _write_volume(labels / "case_0007.nii.gz")
    matched, unmatched = match_ground_truth(discover_cases(single), labels)
    assert matched[0].label == labels / "case_0007.nii.gz" and unmatched == []


def test_bad_case_folders(tmp_path: Path) -> None:
    with pytest.raises(EdgesegError, match="does not exist"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgesegError, match="empty: no images found"):
        discover_cases(tmp_path / "empty")


def test_compare_specifications() -> None:
    config = parse_config(" precision=fp32 , backend=onnxruntime")
    assert config.name == "precision=fp32,backend=onnxruntime"
    assert config.options == {"precision": "fp32", "backend": "onnxruntime"}
    configs = build_configs(["precision=int8", "step=0.25,crop=none"])
    assert [c.name for c in configs] == [BASE_CONFIG, "precision=int8", "step=0.25,crop=none"]
    for bad, message in [
        ("precision", "key=value"), ("colour=red", "unknown option"),
        ("precision=int4", "must be one of"), ("step=0.5,step=0.25", "given twice"),
        ("lcc=maybe", "lcc must be one of on, off"),
        ("", "empty configuration"),
    ]:
        with pytest.raises(EdgesegError, match=message):
            parse_config(bad)
    with pytest.raises(EdgesegError, match="configuration given twice"):
        build_configs(["precision=int8", "precision=int8"])


def test_unscorable_ground_truth_is_left_out_while_failures_score_zero(tmp_path: Path) -> None:
    from evaluator.errors import EvaluationError

    run = run_benchmark(_cases("good", "crash"), [Config(BASE_CONFIG)], _command, tmp_path,
                        time_limit_s=60, reference=False)
    cases = [BenchmarkCase(n, Path(n), tmp_path / f"{n}_gt.nii.gz", None)
             for n in ("good", "crash")]

    def score(prediction: Path, label: Path) -> tuple[dict[str, float], dict[str, float]]:
        raise EvaluationError(f"{label}: truncated file (gzip stream ends early)")

    problems = apply_accuracy(run, cases, score)
    assert problems == [f"good (base): not scored: {tmp_path / 'good_gt.nii.gz'}: truncated "
                        "file (gzip stream ends early)"]
    good, crash = run.records
    assert good.dsc is None and good.nsd is None and "good_gt.nii.gz" in good.score_error
    assert crash.dsc == 0.0 and crash.score_error is None  # did not finish: FLARE's zero
    summary = summarise(run)[BASE_CONFIG]
    assert summary["scored"] == 1 and summary["not_scored"] == 1
    assert summary["mean_dsc"] == 0.0  # the crash only; no zero for the unscored case
    row = next(csv.DictReader(csv_text(run).splitlines()))
    assert row["dsc"] == "" and "truncated file" in row["score_error"]
    gate = check_regression(run_to_json(run), run_to_json(run))
    assert "config 'base': 1 case(s) not scored; mean DSC/NSD over 1 case(s)" in gate.notes
