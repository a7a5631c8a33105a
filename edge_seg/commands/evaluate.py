"""``edgeseg evaluate PRED GT``: challenge-style scoring of a prediction folder.

Only parses options and calls :mod:`evaluator`; all logic lives there (the evaluator is usable
without the runtime). Exit codes: 0 success; 1 a metric regressed beyond ``--max-drop``
against ``--baseline``; 2 invalid input (one-line ``edgeseg: error:`` message), including runs
where some case could not be read (outputs are still written, listing those cases).
"""

from __future__ import annotations

from pathlib import Path

import typer


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


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Argument(..., metavar="PRED", help="Folder of predictions."),
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
            None, "--output", "-o", help="Write cases.csv and summary.json here."
        ),
        junit: bool = typer.Option(False, "--junit", help="Also write junit.xml (with -o)."),
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
        import json

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from evaluator.errors import EvaluationError
        from evaluator.report import print_table, write_outputs
        from evaluator.runner import EvaluationOptions, discover_cases
        from evaluator.runner import evaluate as run_evaluation
        from evaluator.summary import build_summary, compare_to_baseline

        if workers < 1:
            raise EvaluationError(f"--workers must be >= 1, got {workers}")
        if max_drop < 0:
            raise EvaluationError(f"--max-drop must be >= 0, got {max_drop}")
        baseline_summary = None
        if baseline is not None:
            try:
                baseline_summary = json.loads(baseline.read_text())
            except (OSError, ValueError) as exc:
                raise EvaluationError(f"{baseline}: cannot read baseline summary ({exc})") \
                    from None
            if not isinstance(baseline_summary, dict) or "organs" not in baseline_summary:
                raise EvaluationError(f"{baseline}: not an edgeseg summary.json")
        options = EvaluationOptions(
            format=format, protocol=protocol, gt_labels=gt_labels, pred_labels=pred_labels,
            presence_csv=presence_csv, organs=tuple(organs),
            nsd_tolerance_mm=_parse_tolerances(nsd_tolerance), resample_pred=resample_pred,
            workers=workers,
        )
        console = Console(stderr=True)
        n_cases = len(discover_cases(gt, pred, options)[1])
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.description}"), console=console,
                      disable=quiet, transient=True) as bar:
            task = bar.add_task("", total=n_cases)
            result = run_evaluation(
                gt, pred, options,
                progress=lambda case: bar.update(task, advance=1, description=case),
            )
        summary = build_summary(result)
        regressions = (compare_to_baseline(summary, baseline_summary, max_drop)
                       if baseline_summary is not None else [])
        if output is not None:
            write_outputs(output, result, summary, junit=junit, regressions=regressions)
        if not quiet:
            import sys

            # Off a terminal rich would wrap at 80 columns; the table needs more.
            print_table(summary, Console(width=None if sys.stdout.isatty() else 130))
        for failure in result.failures:
            typer.echo(f"edgeseg: warning: {failure.message}", err=True)
        if result.missing_predictions:
            shown = ", ".join(result.missing_predictions[:10])
            more = " ..." if len(result.missing_predictions) > 10 else ""
            typer.echo(f"edgeseg: warning: {len(result.missing_predictions)} case(s) without a "
                       f"prediction, scored as worst case: {shown}{more}", err=True)
        if regressions:
            for regression in regressions:
                typer.echo(f"regression: {regression.describe()}", err=True)
            typer.echo(f"edgeseg: {len(regressions)} metric(s) dropped by more than "
                       f"{max_drop} against {baseline}", err=True)
            raise typer.Exit(1)
        if result.failures:
            cases = ", ".join(f.case for f in result.failures[:10])
            raise EvaluationError(f"{len(result.failures)} case(s) could not be read: {cases} "
                                  "(listed in summary.json)")
