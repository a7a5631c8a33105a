"""``edgeseg evaluate PRED GT``: challenge-style scoring of a prediction folder.

Only parses options and calls :mod:`evaluator`; all logic lives there (the evaluator is usable
without the runtime). Exit codes: 0 success; 1 a metric regressed beyond ``--max-drop``
against ``--baseline``; 2 invalid input (one-line ``edgeseg: error:`` message), including runs
where some case could not be read (outputs are still written, listing those cases) and
output folders that cannot be written or hold earlier results (without ``--overwrite``).

Everything that can be checked without scoring is checked first: options (``--max-drop`` and
``--nsd-tolerance`` must be finite and >= 0), the output folder and the ``--baseline`` (schema,
structure, protocol; :mod:`evaluator.baseline`). After scoring the outputs are written before
the baseline gate decides the exit code, so a run's results are never lost to the gate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from evaluator.protocols import Protocol
    from evaluator.runner import EvaluationResult
    from evaluator.summary import Regression

#: Case ids shown in one warning line before "...".
_SHOWN = 10


def _parse_tolerances(items: list[str]) -> dict[str, float]:
    from evaluator.errors import EvaluationError
    from evaluator.labels import canonical_organ_name

    tolerances: dict[str, float] = {}
    for item in items:
        organ, _, value = item.partition("=")
        try:
            tolerances[canonical_organ_name(organ)] = float(value)
        except ValueError:
            raise EvaluationError(
                f"--nsd-tolerance: expected ORGAN=MM (e.g. liver=5), got {item!r}"
            ) from None
    return tolerances


def _check_output_options(output: Path | None, junit: bool, overwrite: bool) -> None:
    """Refuse output options that would do nothing, and unusable output folders, up front."""
    from evaluator.errors import EvaluationError
    from evaluator.report import check_output_dir

    if output is None:
        # Otherwise these flags are silently ignored and CI finds no report later.
        for flag, given in (("--junit", junit), ("--overwrite", overwrite)):
            if given:
                raise EvaluationError(f"{flag} needs --output DIR")
        return
    check_output_dir(output, junit=junit, overwrite=overwrite)


def _check_max_drop(max_drop: float) -> None:
    """Refuse a tolerance that would switch the gate off (nan compares false) or make it odd."""
    from evaluator.errors import EvaluationError

    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise EvaluationError(f"--max-drop must be a finite number >= 0, got {max_drop}")


def _load_baseline(baseline: Path | None, protocol: Protocol) -> dict[str, Any] | None:
    """The checked baseline summary, read before anything is written (it may lie in the output).

    Raises
    ------
    EvaluationError
        One line naming the file: unreadable, another schema or structure, another protocol.
    """
    from evaluator.baseline import load_baseline

    return None if baseline is None else load_baseline(baseline, protocol)


def _report_regressions(regressions: list[Regression], max_drop: float,
                        baseline: Path | None) -> None:
    for regression in regressions:
        typer.echo(f"regression: {regression.describe()}", err=True)
    if regressions:
        typer.echo(f"edgeseg: {len(regressions)} metric(s) dropped by more than "
                   f"{max_drop} against {baseline}", err=True)


def _listed(case_ids: list[str]) -> str:
    more = " ..." if len(case_ids) > _SHOWN else ""
    return ", ".join(case_ids[:_SHOWN]) + more


def _warn_about_cases(result: EvaluationResult, quiet: bool) -> None:
    """Warnings (unscored structures, failed and missing cases) and, unless quiet, notes."""
    for warning in result.warnings:
        typer.echo(f"edgeseg: warning: {warning}", err=True)
    for failure in result.failures:
        typer.echo(f"edgeseg: warning: {failure.message}", err=True)
    if result.missing_predictions:
        typer.echo(f"edgeseg: warning: {len(result.missing_predictions)} case(s) without a "
                   f"prediction, scored as worst case: {_listed(result.missing_predictions)}",
                   err=True)
    if result.unscored_predictions and not quiet:
        # Not an error (a PRED folder may hold a whole test set), but a misnamed prediction
        # would otherwise only show as a missing one.
        typer.echo(f"edgeseg: note: {len(result.unscored_predictions)} prediction(s) without "
                   f"ground truth, not scored: {_listed(result.unscored_predictions)}",
                   err=True)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Argument(
            ..., metavar="PRED",
            help="Folder of predictions: <case>.nii.gz label maps or <case>/ folders of one "
                 "mask per structure (TotalSegmentator)."),
        gt: Path = typer.Argument(..., metavar="GT", help="Ground-truth folder or dataset."),
        format: str = typer.Option(
            "auto", "--format", help="Ground-truth layout: auto|flare|nnunet|msd|chaos|ukb."
        ),
        protocol: str = typer.Option(
            "flare22", "--protocol", help="Scoring rules: flare22|flare23|flare24|chaos|halos."
        ),
        gt_labels: str = typer.Option(
            "auto", "--gt-labels",
            help="Ground-truth label set: auto, a preset (flare, flare23, chaos, chaos_ct, "
                 "chaos_mr, totalsegmentator, totalsegmentator_mr) or a JSON file.",
        ),
        pred_labels: str = typer.Option(
            "auto", "--pred-labels", help="Prediction label set (same choices as --gt-labels)."
        ),
        presence_csv: Path | None = typer.Option(
            None, "--presence-csv", help="Organ presence per subject (cohorts without voxels)."
        ),
        organs: list[str] = typer.Option(
            [], "--organ", help="Score only this organ (repeatable)."
        ),
        nsd_tolerance: list[str] = typer.Option(
            [], "--nsd-tolerance", help="Override an NSD tolerance, ORGAN=MM (repeatable)."
        ),
        resample_pred: bool = typer.Option(
            False, "--resample-pred",
            help="Resample predictions onto the ground-truth grid (nearest neighbour) "
                 "instead of refusing a geometry mismatch.",
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o",
            help="Write cases.csv and summary.json here (refused if it holds earlier results, "
                 "unless --overwrite).",
        ),
        junit: bool = typer.Option(False, "--junit", help="Also write junit.xml (with -o)."),
        overwrite: bool = typer.Option(
            False, "--overwrite",
            help="Replace the results of an earlier run in --output (a --baseline there is "
                 "read first).",
        ),
        baseline: Path | None = typer.Option(
            None, "--baseline", help="summary.json of an earlier run to compare against."
        ),
        max_drop: float = typer.Option(
            0.005, "--max-drop", help="Largest tolerated drop of any mean metric vs baseline."
        ),
        workers: int = typer.Option(1, "--workers", "-j", help="Cases scored in parallel."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or progress bar."),
    ) -> None:
        """Score PRED against GT: DSC, NSD, HD95 (+ CHAOS metrics) and organ presence."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from evaluator.errors import EvaluationError, OutputPathError
        from evaluator.report import print_table, write_outputs
        from evaluator.runner import EvaluationOptions, discover_cases, resolve_protocol
        from evaluator.runner import evaluate as run_evaluation
        from evaluator.summary import build_summary, compare_to_baseline

        if workers < 1:
            raise EvaluationError(f"--workers must be >= 1, got {workers}")
        _check_max_drop(max_drop)
        options = EvaluationOptions(
            format=format, protocol=protocol, gt_labels=gt_labels, pred_labels=pred_labels,
            presence_csv=presence_csv, organs=tuple(organs),
            nsd_tolerance_mm=_parse_tolerances(nsd_tolerance), resample_pred=resample_pred,
            workers=workers,
        )
        _check_output_options(output, junit, overwrite)
        baseline_summary = _load_baseline(baseline, resolve_protocol(options))
        console = Console(stderr=True)
        n_cases = len(discover_cases(gt, pred, options)[1])
        # Off a terminal the bar draws nothing but leaves a blank line before the messages.
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}"), console=console,
                      disable=quiet or not console.is_terminal, transient=True) as bar:
            task = bar.add_task("", total=n_cases)
            result = run_evaluation(
                gt, pred, options,
                progress=lambda case: bar.update(task, advance=1, description=case),
            )
        summary = build_summary(result)
        regressions: list[Regression] = []
        write_error: OutputPathError | None = None
        try:
            # The baseline was validated up front, so this cannot fail on its content; should
            # it fail anyway, the finally clause still writes what was scored.
            if baseline_summary is not None:
                regressions = compare_to_baseline(summary, baseline_summary, max_drop)
        finally:
            if output is not None:
                try:
                    write_outputs(output, result, summary, junit=junit, regressions=regressions)
                except OutputPathError as exc:
                    write_error = exc  # reported after the table, so the scores are still seen
        if not quiet:
            import sys

            # Off a terminal rich would wrap at 80 columns; the table needs more.
            print_table(summary, Console(width=None if sys.stdout.isatty() else 130))
        _warn_about_cases(result, quiet)
        _report_regressions(regressions, max_drop, baseline)
        if write_error is not None:
            raise write_error
        if regressions:
            raise typer.Exit(1)
        if result.failures:
            cases = ", ".join(f.case for f in result.failures[:_SHOWN])
            raise EvaluationError(f"{len(result.failures)} case(s) could not be read: {cases} "
                                  "(listed in summary.json)")
