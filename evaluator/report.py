"""Writing evaluation results: ``cases.csv``, ``summary.json``, ``junit.xml`` and a terminal table.

Scoring knows nothing about these formats; every file goes through :mod:`evaluator.atomic` so a
crash never leaves a half-written result.

``cases.csv`` is long format, one row per case and organ: ``case, organ, label, status`` then
the protocol's metrics (``dsc, nsd, hd95`` and for CHAOS ``ravd, assd, mssd`` and the CHAOS
points), the voxel counts ``tp, fp, fn`` and the presence outcome (``gt_present,
pred_present, presence`` = TP/FP/TN/FN). ``status`` is ``scored``, ``missing_prediction``,
``failed_prediction`` or ``presence_only``; empty cells are undefined values.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from evaluator.atomic import atomic_path, nearest_existing
from evaluator.errors import EvaluationError, OutputPathError
from evaluator.runner import EvaluationResult
from evaluator.summary import Regression


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return "" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.6g}")
    return str(value)


def cases_csv(result: EvaluationResult) -> str:
    """The long-format ``cases.csv`` text."""
    metric_names = result.protocol.metric_names
    header = ["case", "organ", "label", "status", *metric_names, "tp", "fp", "fn",
              "gt_present", "pred_present", "presence"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in result.rows:
        writer.writerow([
            row.case, row.organ, _cell(row.label), row.status,
            *(_cell(row.metrics.get(m)) for m in metric_names),
            _cell(row.tp), _cell(row.fp), _cell(row.fn),
            _cell(row.gt_present), _cell(row.pred_present), row.presence,
        ])
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n"


def junit_xml(result: EvaluationResult, regressions: Sequence[Regression]) -> str:
    """JUnit XML: one test per case (fails if missing or unreadable) and per baseline check."""
    failed = {f.case: f for f in result.failures}
    suite = ElementTree.Element("testsuite", name="edgeseg-evaluate")
    n_failures = 0
    for case in result.cases:
        test = ElementTree.SubElement(suite, "testcase", classname="cases", name=case)
        if case in failed:
            ElementTree.SubElement(test, "failure", message=failed[case].message)
            n_failures += 1
        elif case in result.missing_predictions:
            ElementTree.SubElement(test, "failure", message=f"{case}: prediction missing")
            n_failures += 1
    for regression in regressions:
        test = ElementTree.SubElement(suite, "testcase", classname="baseline",
                                      name=f"{regression.scope}.{regression.metric}")
        ElementTree.SubElement(test, "failure", message=regression.describe())
        n_failures += 1
    suite.set("tests", str(len(result.cases) + len(regressions)))
    suite.set("failures", str(n_failures))
    ElementTree.indent(suite)
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def result_files(*, junit: bool) -> tuple[str, ...]:
    """Names of the files :func:`write_outputs` writes (and so replaces) in the output folder."""
    return ("cases.csv", "summary.json", *(("junit.xml",) if junit else ()))


def check_output_dir(out_dir: Path, *, junit: bool, overwrite: bool) -> None:
    """Refuse, before anything is scored, an output folder that cannot take the results.

    Refused: a path that is a file or lies below one, a place where no folder can be created
    or written (a read-only or pseudo file system such as ``/proc``), and - unless
    ``overwrite`` - a folder that holds results of an earlier run, which may be the baseline
    being compared against. Nothing is left behind by the check.

    Raises
    ------
    EvaluationError
        A one-line message naming ``out_dir`` and the problem.
    """
    existing = nearest_existing(out_dir)
    if not existing.is_dir():
        problem = ("exists and is not a folder" if existing == out_dir
                   else f"lies below {existing}, which is a file, not a folder")
        raise OutputPathError(f"{out_dir}: output path {problem}")
    try:
        # Creating something is the only reliable test: os.access says yes to root on
        # read-only mounts, and /proc refuses new entries with "No such file or directory".
        os.rmdir(tempfile.mkdtemp(prefix=".edgeseg-write-check.", dir=existing))
    except OSError as exc:
        raise OutputPathError(f"{out_dir}: cannot create or write the output folder in "
                              f"{existing} ({exc.strerror or exc})") from None
    if existing == out_dir and not overwrite:
        earlier = [name for name in result_files(junit=junit) if (out_dir / name).exists()]
        if earlier:
            raise EvaluationError(f"{out_dir}: holds {', '.join(earlier)} of an earlier run; "
                                  "pass --overwrite to replace them or choose another --output")


def write_outputs(out_dir: Path, result: EvaluationResult, summary: dict[str, Any],
                  *, junit: bool, regressions: Sequence[Regression] = ()) -> list[Path]:
    """Write ``cases.csv``, ``summary.json`` (and ``junit.xml``) into ``out_dir`` atomically.

    All files are written to temporaries first and renamed only once every one is complete,
    so a failed write (a full disk) leaves the earlier results, never a mix of both.

    Raises
    ------
    OutputPathError
        When the folder cannot be created or a file cannot be written (an ``OSError``).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"{out_dir}: output path exists and is not a folder")
    # Render everything first: a formatting error must not leave some files written.
    texts = {"cases.csv": cases_csv(result), "summary.json": summary_json(summary)}
    if junit:
        texts["junit.xml"] = junit_xml(result, regressions)
    try:
        with contextlib.ExitStack() as renames:
            for name, text in texts.items():
                renames.enter_context(atomic_path(out_dir / name)).write_text(text)
    except OutputPathError:
        raise
    except OSError as exc:
        raise OutputPathError(f"{out_dir}: cannot write results "
                              f"({exc.strerror or exc})") from None
    return [out_dir / name for name in texts]


def _fmt(stats: dict[str, Any] | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f}"


def print_table(summary: dict[str, Any], console: Any) -> None:
    """Per-organ means and presence outcomes as a rich table."""
    from rich.table import Table

    metrics = summary["protocol"]["metrics"]
    shown = [m for m in metrics if m in ("dsc", "nsd", "hd95", "ravd", "assd", "mssd",
                                         "chaos_score")]
    table = Table(title=f"edgeseg evaluate - protocol {summary['protocol']['name']}, "
                        f"{summary['cases']['n']} case(s)")
    table.add_column("organ")
    for metric in shown:
        table.add_column(metric.upper() if metric != "chaos_score" else "CHAOS",
                         justify="right")
    table.add_column("n", justify="right")
    for column in ("TP", "FP", "TN", "FN", "FPR"):
        table.add_column(column, justify="right")
    blocks = [*summary["organs"].items(), ("overall", summary["overall"])]
    for name, block in blocks:
        presence = block["presence"]
        fpr = presence["fpr"]
        n = block["metrics"][shown[0]]["n"] if shown else 0
        table.add_row(
            name,
            *(_fmt(block["metrics"].get(m), 2 if m in ("hd95", "assd", "mssd", "ravd",
                                                        "chaos_score") else 3) for m in shown),
            str(n),
            *(str(presence[k]) for k in ("tp", "fp", "tn", "fn")),
            "-" if fpr is None else f"{fpr:.3f}",
            end_section=name == list(summary["organs"])[-1],
        )
    console.print(table)
