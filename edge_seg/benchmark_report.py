"""Writers for benchmark results: per-case CSV, JSON, a rich table and PNG plots.

Every file is written atomically (:mod:`evaluator.atomic`), so an interrupted run never leaves
a half-written table.

JSON schema (``benchmark.json``, ``schema_version`` 1)
------------------------------------------------------
``schema`` : ``"edgeseg-benchmark"``; ``schema_version`` : 1
``created_utc`` : ISO 8601 time; ``edgeseg_version`` : str
``host`` : ``{"platform", "cpu", "python", "cpu_count_logical", "cpu_count_physical",
    "memory_mb"}`` (``cpu``: model and decisive instruction sets, :mod:`edge_seg.host`)
``settings`` : time limit (s), memory limit (MiB or null), sampling interval (s), model folder,
    cases and ground-truth folders, the predict options of the base configuration.
``reference_workload`` : ``{"times_s": [...], "median_s": float | null}`` - a fixed
    single-threaded job timed in a fresh process before each round of cases.
``configs`` : list of ``{"name", "options"}``; the first is the one ratios refer to.
``summary`` : config name -> ``{"cases", "ok", "status_counts", "scored", "not_scored",
    "mean_dsc", "mean_nsd", "median_time_ref_units", "median_<f>", "p90_<f>"}`` for ``<f>``
    in ``time_s``, ``peak_rss_mb``, ``memory_auc_mb_s``, ``mean_cpu_percent`` (over cases
    with status ok).
``comparison`` : config name (all but the first) -> ``{"cases_compared", "time_ratio",
    "peak_rss_ratio", "dsc_delta"}`` - medians of per-case ratios against the first config.
``unmatched_cases`` : cases with no ground-truth file.
``cases`` : one object per (case, config): ``case_id``, ``config``, ``image``, ``voxels``,
    ``shape`` (z, y, x), ``status`` (ok | failed | timeout | memory_limit | oom),
    ``exit_code`` (negative = killed by that signal), ``time_s`` (start of the process to its
    exit), ``time_ref_units`` (time_s / reference median), ``peak_rss_mb`` (largest sampled
    resident memory of the process tree, MiB), ``memory_auc_mb_s`` (trapezoid area under the
    sampled curve, MiB x s), ``mean_cpu_percent`` (kernel CPU time / wall time x 100),
    ``cpu_time_s``, ``kernel_max_rss_mb`` (kernel peak of the largest single process),
    ``prediction``, ``stderr_tail``, ``dsc``/``nsd`` (mean over organs; 0 for failed cases;
    null without ground truth or when it could not be scored), ``organ_dsc``/``organ_nsd``,
    ``score_error`` (null, or why the ground truth could not be scored: such a case is not
    counted in ``scored`` nor in the means), ``samples`` ([t_s, rss_mb, cpu_percent] every
    interval).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import re
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from edge_seg.benchmark import BenchmarkRun, compare_to_first, summarise
from edge_seg.host import cpu_description
from evaluator.atomic import atomic_path, write_text_atomic

SCHEMA = "edgeseg-benchmark"
SCHEMA_VERSION = 1

CSV_COLUMNS = (
    "case_id", "config", "status", "exit_code", "voxels", "shape", "time_s", "time_ref_units",
    "peak_rss_mb", "memory_auc_mb_s", "mean_cpu_percent", "cpu_time_s", "kernel_max_rss_mb",
    "dsc", "nsd", "stderr_tail", "score_error",
)


def _host() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "python": sys.version.split()[0],
        "cpu_count_logical": psutil.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_mb": round(psutil.virtual_memory().total / 2**20),
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgeseg")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "unknown"


def run_to_json(run: BenchmarkRun) -> dict[str, Any]:
    """The documented JSON form of a run (see the module docstring)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgeseg_version": _version(),
        "host": _host(),
        "settings": run.settings,
        "reference_workload": {
            "times_s": run.reference_times_s,
            "median_s": run.reference_time_s,
        },
        "configs": [{"name": c.name, "options": c.options} for c in run.configs],
        "summary": summarise(run),
        "comparison": compare_to_first(run),
        "unmatched_cases": run.unmatched_cases,
        "cases": [asdict(r) for r in run.records],
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return " | ".join(str(value).splitlines())  # one CSV line per case


def csv_text(run: BenchmarkRun) -> str:
    """Per-case CSV (one row per case and configuration)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in run.records:
        row = asdict(record)
        writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_results(run: BenchmarkRun, output_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``benchmark.csv``, ``benchmark.json`` and (optionally) the plots; return paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": write_text_atomic(output_dir / "benchmark.csv", csv_text(run)),
        "json": write_text_atomic(
            output_dir / "benchmark.json", json.dumps(run_to_json(run), indent=1) + "\n"
        ),
    }
    if plots:
        paths.update(write_plots(run, output_dir / "plots"))
    return paths


# --- table -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(run: BenchmarkRun):  # -> rich.table.Table (imported lazily)
    """Per-case rows, then median and p90 rows per configuration."""
    from rich.table import Table

    scored = any(r.dsc is not None for r in run.records)
    multi = len(run.configs) > 1
    table = Table(title="edgeseg benchmark", show_lines=False)
    table.add_column("case")
    if multi:
        table.add_column("config")
    for name in ("status", "voxels", "time s", "peak MB", "AUC MB·s", "CPU %"):
        table.add_column(name, justify="right" if name != "status" else "left")
    if scored:
        table.add_column("DSC", justify="right")
        table.add_column("NSD", justify="right")
    for record in run.records:
        row = [record.case_id] + ([record.config] if multi else [])
        row += [
            record.status if record.ok else f"[red]{record.status}[/red]",
            f"{record.voxels:,}" if record.voxels else "-",
            _fmt(record.time_s),
            _fmt(record.peak_rss_mb, 0),
            _fmt(record.memory_auc_mb_s, 0),
            _fmt(record.mean_cpu_percent, 0),
        ]
        if scored:
            row += [_fmt(record.dsc, 3), _fmt(record.nsd, 3)]
        table.add_row(*row)
    summary = summarise(run)
    if table.rows:
        table.rows[-1].end_section = True
    for config in run.configs:
        entry = summary[config.name]
        for stat in ("median", "p90"):
            label = f"[bold]{stat}[/bold]"
            row = [label] + ([config.name] if multi else [])
            row += [
                f"{entry['ok']}/{entry['cases']} ok" if stat == "median" else "",
                "",
                _fmt(entry[f"{stat}_time_s"]),
                _fmt(entry[f"{stat}_peak_rss_mb"], 0),
                _fmt(entry[f"{stat}_memory_auc_mb_s"], 0),
                _fmt(entry[f"{stat}_mean_cpu_percent"], 0),
            ]
            if scored:
                row += (
                    [_fmt(entry["mean_dsc"], 3) + " (mean)", _fmt(entry["mean_nsd"], 3)]
                    if stat == "median" else ["", ""]
                )
            # A rule above each configuration's summary block, none inside it.
            table.add_row(*row, end_section=stat == "p90")
    return table


def comparison_table(run: BenchmarkRun):  # -> rich.table.Table | None
    """Ratios of each configuration against the first (None for a single configuration)."""
    from rich.table import Table

    comparison = compare_to_first(run)
    if not comparison:
        return None
    table = Table(title=f"against '{run.configs[0].name}' (median of per-case ratios)")
    for name in ("config", "cases", "time ratio", "peak memory ratio", "DSC change"):
        table.add_column(name, justify="left" if name == "config" else "right")
    for name, entry in comparison.items():
        table.add_row(
            name,
            str(entry["cases_compared"]),
            _fmt(entry["time_ratio"]),
            _fmt(entry["peak_rss_ratio"]),
            "-" if entry["dsc_delta"] is None else f"{entry['dsc_delta']:+.4f}",
        )
    return table


def markdown_table(run: BenchmarkRun) -> str:
    """The per-case table with median/p90 rows as Markdown (for README and result files)."""
    scored = any(r.dsc is not None for r in run.records)
    multi = len(run.configs) > 1
    head = ["case"] + (["config"] if multi else []) + [
        "status", "voxels", "time (s)", "peak RSS (MB)", "memory AUC (MB·s)", "CPU (%)",
    ] + (["DSC", "NSD"] if scored else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in run.records:
        row = [r.case_id] + ([r.config] if multi else []) + [
            r.status, f"{r.voxels:,}" if r.voxels else "-", _fmt(r.time_s),
            _fmt(r.peak_rss_mb, 0), _fmt(r.memory_auc_mb_s, 0), _fmt(r.mean_cpu_percent, 0),
        ] + ([_fmt(r.dsc, 3), _fmt(r.nsd, 3)] if scored else [])
        lines.append("| " + " | ".join(row) + " |")
    summary = summarise(run)
    for config in run.configs:
        entry = summary[config.name]
        for stat in ("median", "p90"):
            row = [f"**{stat}**"] + ([config.name] if multi else []) + [
                f"{entry['ok']}/{entry['cases']} ok" if stat == "median" else "", "",
                _fmt(entry[f"{stat}_time_s"]), _fmt(entry[f"{stat}_peak_rss_mb"], 0),
                _fmt(entry[f"{stat}_memory_auc_mb_s"], 0),
                _fmt(entry[f"{stat}_mean_cpu_percent"], 0),
            ]
            if scored:
                row += (
                    [_fmt(entry["mean_dsc"], 3) + " (mean)", _fmt(entry["mean_nsd"], 3) +
                     " (mean)"] if stat == "median" else ["", ""]
                )
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# --- plots -------------------------------------------------------------------------------------


def write_plots(run: BenchmarkRun, plots_dir: Path) -> dict[str, Path]:
    """One memory-time curve per case (configurations overlaid) and a summary figure of time
    and peak memory against volume size. PNG, matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    case_ids = list(dict.fromkeys(r.case_id for r in run.records))
    for case_id in case_ids:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for record in (r for r in run.records if r.case_id == case_id):
            if record.samples:
                t = [s[0] for s in record.samples]
                m = [s[1] for s in record.samples]
                ax.plot(t, m, label=f"{record.config} ({record.status}, "
                        f"AUC {record.memory_auc_mb_s:.0f} MB·s)")
        ax.set_xlabel("time since process start (s)")
        ax.set_ylabel("resident memory, process tree (MB)")
        ax.set_title(f"{case_id}: memory over time (sampled every "
                     f"{run.settings.get('interval_s', 0.1):g} s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)
        paths[f"memory_{case_id}"] = _save(fig, plots_dir / f"memory_{safe}.png")
        plt.close(fig)

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for config in run.configs:
        records = [r for r in run.records_for(config.name) if r.ok and r.voxels]
        if not records:
            continue
        mvox = [r.voxels / 1e6 for r in records]  # type: ignore[operator]
        ax_time.plot(mvox, [r.time_s for r in records], "o", label=config.name)
        ax_mem.plot(mvox, [r.peak_rss_mb for r in records], "o", label=config.name)
    ax_time.set_xlabel("volume size (million voxels)")
    ax_time.set_ylabel("wall time per case (s)")
    ax_mem.set_xlabel("volume size (million voxels)")
    ax_mem.set_ylabel("peak resident memory (MB)")
    for ax in (ax_time, ax_mem):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        if run.configs:
            ax.legend(fontsize=7)
    fig.suptitle("time and peak memory against volume size (cases with status ok)")
    fig.tight_layout()
    paths["summary"] = _save(fig, plots_dir / "summary.png")
    plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
