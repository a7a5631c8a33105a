"""What ``edgeseg benchmark`` does, step by step (kept apart from the Typer wiring so that tests
can drive it with their own child commands).

Everything that can be checked before the first case runs is checked first - the time limit,
the case folder, the model bundle (loaded once, so a broken model is reported once rather than
as N failed cases), the ground-truth matches, the baseline file - then the cases run, then the
accuracy is computed (outside the timed children), then results are written and gated.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from edge_seg.benchmark import (
    NUMBER_KEYS,
    SWITCH_KEYS,
    BenchmarkCase,
    CaseRecord,
    CommandBuilder,
    Config,
    apply_accuracy,
    build_configs,
    discover_cases,
    match_ground_truth,
    run_benchmark,
)
from edge_seg.benchmark_gate import check_regression, load_results
from edge_seg.benchmark_report import (
    comparison_table,
    markdown_table,
    results_table,
    run_to_json,
    write_results,
)
from edge_seg.errors import EdgesegError
from evaluator.atomic import write_text_atomic

#: Checks a model bundle for every configuration before any case runs; raises EdgesegError.
ModelCheck = Callable[[Path, list[Config], dict[str, str]], None]


class RegressionError(EdgesegError):
    """The run regressed against the baseline (exit status 1)."""

    exit_code = 1


def predict_kwargs(options: dict[str, str]) -> dict[str, object]:
    """Benchmark option strings -> ``PredictOptions`` keyword arguments.

    Raises ValueError naming the option when a number does not read as one.
    """
    kwargs: dict[str, object] = {}
    for key, value in options.items():
        field = key.replace("-", "_")
        if key in NUMBER_KEYS:
            try:
                kwargs[field] = NUMBER_KEYS[key](value)
            except ValueError:
                raise ValueError(f"--{key}: {value!r} is not a number") from None
        elif key in SWITCH_KEYS:
            kwargs[field] = value == "on"
        else:
            kwargs[field] = value
    return kwargs


def check_model(model: Path, configs: list[Config], base_options: dict[str, str]) -> None:
    """Load the bundle once per configuration, as predict would, before timing anything."""
    from edge_seg.bundle import load_bundle

    load_bundle(model)
    try:
        from edge_seg.predict import PredictOptions, Predictor
    except ImportError:  # pragma: no cover - predict ships with edgeseg
        return
    for config in configs:
        where = "" if config.name == "base" else f" (--compare {config.name})"
        try:
            kwargs = predict_kwargs({**base_options, **config.options})
        except ValueError as exc:
            raise EdgesegError(f"{exc}{where}") from exc
        try:
            Predictor(model, PredictOptions(**kwargs))  # type: ignore[arg-type]
        except EdgesegError as exc:
            raise EdgesegError(f"{exc}{where}") from exc


def run_benchmark_command(
    *,
    cases_dir: Path,
    time_limit: float,
    model: Path,
    gt: Path | None,
    memory_limit_mb: float | None,
    output: Path,
    predict_options: dict[str, str],
    compare: list[str],
    baseline: Path | None,
    max_slowdown: float | None,
    max_drop: float,
    interval: float,
    reference: bool,
    plots: bool,
    keep_predictions: bool = False,
    command_for: CommandBuilder | None = None,
    model_check: ModelCheck | None = check_model,
    console: Console | None = None,
) -> None:
    """Run ``edgeseg benchmark``; raises EdgesegError for bad input, RegressionError (exit 1)
    when the gate fails. ``command_for`` replaces the ``edgeseg predict`` child (tests)."""
    # Redirected output (CI logs, files) gets a wide table rather than rich's 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    err = Console(stderr=True)
    if time_limit <= 0:
        raise EdgesegError(f"--time-limit must be positive, got {time_limit:g}")
    if interval <= 0:
        raise EdgesegError(f"--interval must be positive, got {interval:g}")
    if max_slowdown is not None and max_slowdown <= 0:
        raise EdgesegError(f"--max-slowdown must be positive, got {max_slowdown:g}")
    if max_drop < 0:
        raise EdgesegError(f"--max-drop must not be negative, got {max_drop:g}")
    if output.exists() and not output.is_dir():
        raise EdgesegError(f"{output}: --output exists and is not a folder")
    cases = discover_cases(cases_dir)
    configs = build_configs(compare)
    if model_check is not None:
        model_check(model, configs, predict_options)
    unmatched: list[str] = []
    if gt is not None:
        cases, unmatched = match_ground_truth(cases, gt)
        if len(unmatched) == len(cases):
            raise EdgesegError(
                f"{gt}: no ground truth matches any case (cases: {_names(unmatched)})"
            )
        if unmatched:
            err.print(f"edgeseg: warning: no ground truth in {gt} for {len(unmatched)} "
                      f"case(s), accuracy not scored: {_names(unmatched)}", highlight=False)
    baseline_data = load_results(baseline) if baseline is not None else None
    if command_for is None:
        from edge_seg.commands.benchmark import predict_command

        command_for = predict_command(model, predict_options)

    total = len(cases) * len(configs)
    done = [0]

    def progress(record: CaseRecord) -> None:
        done[0] += 1
        tag = "" if len(configs) == 1 else f" [{record.config}]"
        err.print(
            f"[{done[0]}/{total}] {record.case_id}{tag}: {record.status}, "
            f"{record.time_s:.2f} s, peak {record.peak_rss_mb:.0f} MB", highlight=False,
        )

    output.mkdir(parents=True, exist_ok=True)
    # Predictions are scored and then dropped unless asked for: the benchmark's product is
    # the measurement, and a cohort's worth of label maps should not pile up by accident.
    with contextlib.ExitStack() as stack:
        if keep_predictions:
            predictions = output / "predictions"
        else:
            predictions = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix=".predictions.", dir=output)))
        run = run_benchmark(
            cases, configs, command_for, predictions, time_limit_s=time_limit,
            memory_limit_mb=memory_limit_mb, interval_s=interval, reference=reference,
            on_record=progress,
        )
        if gt is not None:
            for problem in apply_accuracy(run, cases, _evaluator_scorer()):
                err.print(f"edgeseg: warning: {problem}", highlight=False)
        if not keep_predictions:
            for record in run.records:
                record.prediction = None
    run.unmatched_cases = unmatched
    run.settings.update({
        "cases_dir": str(cases_dir), "model": str(model), "gt": str(gt) if gt else None,
        "predict_options": predict_options,
    })

    paths = write_results(run, output, plots=plots)
    write_text_atomic(output / "benchmark.md", markdown_table(run))
    console.print(results_table(run))
    table = comparison_table(run)
    if table is not None:
        console.print(table)
    _report_failures(run.records, err)
    console.print(f"results: {paths['csv']}, {paths['json']}, {output / 'benchmark.md'}"
                  + (f", plots in {output / 'plots'}" if plots else ""), highlight=False)

    if baseline_data is not None:
        gate = check_regression(run_to_json(run), baseline_data,
                                max_slowdown=max_slowdown, max_drop=max_drop)
        for line in gate.checks:
            console.print(f"gate ok: {line}", highlight=False)
        for line in gate.notes:
            console.print(f"gate note: {line}", highlight=False)
        if not gate.passed:
            for line in gate.regressions:
                err.print(f"REGRESSION: {line}", highlight=False)
            raise RegressionError(
                f"{baseline}: {len(gate.regressions)} regression(s) against the baseline: "
                + "; ".join(gate.regressions)
            )
        console.print(f"no regression against {baseline}", highlight=False)


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _report_failures(records: list[CaseRecord], err: Console) -> None:
    """Failed cases grouped by their last stderr line, so one cause is printed once."""
    groups: dict[str, list[str]] = {}
    for record in records:
        if record.ok:
            continue
        lines = [line for line in record.stderr_tail.splitlines() if line.strip()]
        reason = record.status if record.status != "failed" else (
            f"exit status {record.exit_code}: {lines[-1].strip() if lines else 'no message'}"
        )
        groups.setdefault(reason, []).append(f"{record.case_id} ({record.config})")
    for reason, names in groups.items():
        err.print(f"edgeseg: {len(names)} case(s) {reason}: {_names(names)}", highlight=False)


def _evaluator_scorer():  # -> edge_seg.benchmark.Scorer
    """DSC and NSD per organ from the evaluator (FLARE organ table and NSD tolerances)."""
    from edge_seg.benchmark_accuracy import score_prediction

    return score_prediction


__all__ = ["BenchmarkCase", "RegressionError", "check_model", "run_benchmark_command"]
