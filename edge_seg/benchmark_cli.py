"""What ``edgeseg benchmark`` does, step by step (kept apart from the Typer wiring so that tests
can drive it with their own child commands).

Everything that can be checked before the first case runs is checked first - the time limit,
the case folder, the model bundle (loaded once, so a broken model is reported once rather than
as N failed cases), the ground-truth matches, the baseline file - then the cases run, then the
accuracy is computed (outside the timed children), then results are written and gated.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from edge_seg.benchmark import (
    NUMBER_KEYS,
    SWITCH_KEYS,
    BenchmarkCase,
    BenchmarkRun,
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
from evaluator.atomic import nearest_existing, write_text_atomic

#: Checks a model bundle for every configuration before any case runs; raises EdgesegError.
ModelCheck = Callable[[Path, list[Config], dict[str, str]], None]


#: Files that mark a folder as holding an earlier run's results (refused without --overwrite).
RESULT_FILES = ("benchmark.json", "benchmark.csv")


class RegressionError(EdgesegError):
    """The run regressed against the baseline (exit status 1)."""

    exit_code = 1


class IncompleteRunError(EdgesegError):
    """No regression, but some case did not finish ok or could not be scored (exit status 2).

    Raised only after every result file is written, as batch ``edgeseg predict`` exits 2 when
    any case failed.
    """

    exit_code = 2


def predict_kwargs(options: dict[str, str]) -> dict[str, object]:
    """Benchmark option strings -> ``PredictOptions`` keyword arguments.

    Raises ValueError naming the option when a number does not read as one.
    """
    kwargs: dict[str, object] = {}
    for key, value in options.items():
        field = key.replace("-", "_")
        if key in NUMBER_KEYS:
            try:
                kwargs[field] = number = NUMBER_KEYS[key](value)
            except ValueError:
                raise ValueError(f"--{key}: {value!r} is not a number") from None
            if key == "threads" and number < 1:
                raise ValueError(f"--threads: {value!r} must be at least 1")
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
    overwrite: bool = False,
    command_for: CommandBuilder | None = None,
    model_check: ModelCheck | None = check_model,
    console: Console | None = None,
) -> None:
    """Run ``edgeseg benchmark``.

    Raises
    ------
    EdgesegError
        Bad input, before any case runs and before anything is written (exit status 2).
    RegressionError
        The ``--baseline`` gate failed (exit status 1), after every result is written.
    IncompleteRunError
        No regression, but some case did not finish ok or could not be scored (exit status 2),
        after every result is written.

    ``command_for`` replaces the ``edgeseg predict`` child (tests).
    """
    # Redirected output (CI logs, files) gets a wide table rather than rich's 80 columns.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
    # soft_wrap: a message stays one line however long its paths are (greppable logs).
    err = Console(stderr=True, soft_wrap=True)
    _check_numbers(time_limit, interval, max_slowdown, max_drop)
    check_output(output, overwrite=overwrite)
    cases = discover_cases(cases_dir, _model_channels(model))
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
            _warn(err, f"no ground truth in {gt} for {len(unmatched)} case(s), accuracy not "
                  f"scored: {_names(unmatched)}")
    # Read now, before anything in --output is replaced: with --overwrite the baseline may be
    # the very benchmark.json this run writes.
    baseline_data = load_results(baseline) if baseline is not None else None
    if command_for is None:
        from edge_seg.commands.benchmark import predict_command

        command_for = predict_command(model, predict_options)

    make_output(output)
    run = _run_cases(cases, configs, command_for, output, err, gt=gt, time_limit=time_limit,
                     memory_limit_mb=memory_limit_mb, interval=interval, reference=reference,
                     keep_predictions=keep_predictions)
    run.unmatched_cases = unmatched
    run.settings.update({
        "cases_dir": str(cases_dir), "model": str(model), "gt": str(gt) if gt else None,
        "predict_options": predict_options,
    })

    paths = write_reports(run, output, plots=plots, overwrite=overwrite)
    console.print(results_table(run))
    table = comparison_table(run)
    if table is not None:
        console.print(table)
    _report_failures(run, err)
    console.print(f"results: {paths['csv']}, {paths['json']}, {paths['md']}"
                  + (f", plots in {output / 'plots'}" if plots else ""),
                  highlight=False, markup=False, soft_wrap=True)

    if baseline is not None and baseline_data is not None:
        _gate(run, baseline_data, baseline, console, err,
              max_slowdown=max_slowdown, max_drop=max_drop)
    problem = incomplete_message(run, output)
    if problem is not None:
        raise IncompleteRunError(problem)


def _model_channels(model: Path) -> int:
    """The model's input channels (1 where its manifest cannot be read: the model check and
    the children report that problem)."""
    from edge_seg.bundle import model_channels

    try:
        return model_channels(model)
    except EdgesegError:
        return 1


def _check_numbers(
    time_limit: float, interval: float, max_slowdown: float | None, max_drop: float
) -> None:
    """One-line errors for numeric options out of range.

    NaN is refused explicitly: every comparison with it is false, so a ``--max-drop nan``
    would pass any regression and a ``--time-limit nan`` would never stop a case.
    """
    if not (math.isfinite(time_limit) and time_limit > 0):
        raise EdgesegError(f"--time-limit must be a positive number, got {time_limit:g}")
    if not (math.isfinite(interval) and interval > 0):
        raise EdgesegError(f"--interval must be a positive number, got {interval:g}")
    if max_slowdown is not None and not (math.isfinite(max_slowdown) and max_slowdown > 0):
        raise EdgesegError(f"--max-slowdown must be a positive number, got {max_slowdown:g}")
    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise EdgesegError(f"--max-drop must be a number >= 0, got {max_drop:g}")


def check_output(output: Path, *, overwrite: bool) -> None:
    """Refuse an ``--output`` that cannot become a results folder, or that holds an earlier
    run's results (unless ``overwrite``), before anything is loaded, run or written.

    Raises
    ------
    EdgesegError
        ``output`` is a file, lies below a file, or holds ``benchmark.json``/``benchmark.csv``
        and ``overwrite`` is false.
    """
    if output.exists() and not output.is_dir():
        raise EdgesegError(f"{output}: --output exists and is not a folder")
    if output.is_dir():
        earlier = [name for name in RESULT_FILES if (output / name).exists()]
        if earlier and not overwrite:
            raise EdgesegError(
                f"{output}: --output already holds the results of an earlier run "
                f"({', '.join(earlier)}); pass --overwrite to replace them, or choose a new "
                "folder"
            )
        return
    ancestor = nearest_existing(output.parent)
    if not ancestor.is_dir():
        raise EdgesegError(
            f"{output}: cannot create the --output folder: {ancestor} is a file, not a folder"
        )


def make_output(output: Path) -> None:
    """Create ``output`` and make sure it takes files, before the first case runs.

    Raises
    ------
    EdgesegError
        The file system refuses (a path under ``/proc``, a read-only mount, no permission).
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
        # A folder that exists but refuses files must fail now, not after an hour of cases.
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=output)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EdgesegError(
            f"{output}: cannot create or write the --output folder ({exc.strerror or exc})"
        ) from None


def _run_cases(
    cases: list[BenchmarkCase],
    configs: list[Config],
    command_for: CommandBuilder,
    output: Path,
    err: Console,
    *,
    gt: Path | None,
    time_limit: float,
    memory_limit_mb: float | None,
    interval: float,
    reference: bool,
    keep_predictions: bool,
) -> BenchmarkRun:
    """Run and (with ground truth) score every case, printing progress and scoring warnings."""
    total = len(cases) * len(configs)
    done = [0]

    def progress(record: CaseRecord) -> None:
        done[0] += 1
        tag = "" if len(configs) == 1 else f" [{record.config}]"
        err.print(
            f"[{done[0]}/{total}] {record.case_id}{tag}: {record.status}, "
            f"{record.time_s:.2f} s, peak {record.peak_rss_mb:.0f} MB",
            highlight=False, markup=False,
        )

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
                _warn(err, problem)
        if not keep_predictions:
            for record in run.records:
                record.prediction = None
    return run


def write_reports(
    run: BenchmarkRun, output: Path, *, plots: bool, overwrite: bool
) -> dict[str, Path]:
    """Write CSV, JSON, Markdown and plots (each atomically); return their paths.

    With ``overwrite``, plots of the earlier run that this run did not redraw are removed, so
    that every file in the folder describes one run.
    """
    try:
        paths = write_results(run, output, plots=plots)
        paths["md"] = write_text_atomic(output / "benchmark.md", markdown_table(run))
    except OSError as exc:
        raise EdgesegError(
            f"{exc.filename or output}: cannot write the results ({exc.strerror or exc})"
        ) from None
    if overwrite:
        _remove_stale_plots(output / "plots", set(paths.values()))
    return paths


def _remove_stale_plots(plots_dir: Path, written: set[Path]) -> None:
    if not plots_dir.is_dir():
        return
    for path in plots_dir.glob("*.png"):
        if path not in written:
            path.unlink(missing_ok=True)


def _gate(
    run: BenchmarkRun, baseline_data: dict[str, Any], baseline: Path, console: Console,
    err: Console, *, max_slowdown: float | None, max_drop: float,
) -> None:
    """Gate against the baseline: print what was checked; RegressionError on a regression."""
    gate = check_regression(run_to_json(run), baseline_data,
                            max_slowdown=max_slowdown, max_drop=max_drop)
    for line in gate.checks:
        console.print(f"gate ok: {line}", highlight=False, markup=False, soft_wrap=True)
    for line in gate.notes:
        console.print(f"gate note: {line}", highlight=False, markup=False, soft_wrap=True)
    if not gate.passed:
        for line in gate.regressions:
            err.print(f"REGRESSION: {line}", highlight=False, markup=False)
        raise RegressionError(
            f"{baseline}: {len(gate.regressions)} regression(s) against the baseline: "
            + "; ".join(gate.regressions)
        )
    console.print(f"no regression against {baseline}", highlight=False, markup=False,
                  soft_wrap=True)


def incomplete_message(run: BenchmarkRun, output: Path) -> str | None:
    """One line saying which cases did not finish ok or were not scored; None if all were."""
    not_ok = [r for r in run.records if not r.ok]
    unscored = [r for r in run.records if r.score_error is not None]
    if not not_ok and not unscored:
        return None
    parts: list[str] = []
    if not_ok:
        counts: dict[str, int] = {}
        for record in not_ok:
            counts[record.status] = counts.get(record.status, 0) + 1
        parts.append(
            f"{len(not_ok)} of {len(run.records)} case run(s) did not finish ok ("
            + ", ".join(f"{n} {status}" for status, n in counts.items())
            + f": {_names([_label(r) for r in not_ok])})"
        )
    if unscored:
        parts.append(f"{len(unscored)} not scored (ground truth unreadable or not on the "
                     f"scan's grid: {_names([_label(r) for r in unscored])})")
    return "; ".join(parts) + f"; all results written to {output}"


def _label(record: CaseRecord) -> str:
    return f"{record.case_id} ({record.config})"


def _warn(err: Console, message: str) -> None:
    err.print(f"edgeseg: warning: {message}", highlight=False, markup=False)


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _failure_reason(record: CaseRecord, settings: dict[str, Any]) -> str:
    """Why a case did not finish, in one line (the child's last stderr line for a crash)."""
    if record.status == "timeout":
        return f"timeout (killed at --time-limit {settings.get('time_limit_s', 0):g} s)"
    if record.status == "memory_limit":
        return (f"memory_limit (killed above --memory-limit "
                f"{settings.get('memory_limit_mb') or 0:g} MiB)")
    if record.status != "failed":
        return record.status
    lines = [line.strip() for line in record.stderr_tail.splitlines() if line.strip()]
    # The child is edgeseg itself: its own "edgeseg: error:" prefix would only repeat ours.
    last = lines[-1].removeprefix("edgeseg: error:").strip() if lines else "no message"
    # Exit status 0 with no output written: the last line already says so.
    return f"failed, exit status {record.exit_code}: {last}" if record.exit_code else \
        f"failed: {last}"


def _report_failures(run: BenchmarkRun, err: Console) -> None:
    """Failed cases grouped by their reason, one line per reason (one cause printed once)."""
    groups: dict[str, list[str]] = {}
    for record in run.records:
        if not record.ok:
            groups.setdefault(_failure_reason(record, run.settings), []).append(_label(record))
    for reason, names in groups.items():
        err.print(f"edgeseg: {len(names)} case(s) {reason}: {_names(names)}",
                  highlight=False, markup=False)


def _evaluator_scorer():  # -> edge_seg.benchmark.Scorer
    """DSC and NSD per organ from the evaluator (FLARE organ table and NSD tolerances)."""
    from edge_seg.benchmark_accuracy import score_prediction

    return score_prediction


__all__ = [
    "BenchmarkCase", "IncompleteRunError", "RegressionError", "check_model",
    "run_benchmark_command",
]
