"""Regression gate: compare a benchmark run with a baseline ``benchmark.json``.

Accuracy is gated on mean DSC and mean NSD per configuration (a drop larger than
``max_drop`` fails). Time is never gated on absolute seconds, which drift on shared machines:

* the first configuration is compared in *reference units* - its median case time divided by
  the median time of the fixed reference workload timed in the same run (see
  :mod:`edge_seg.benchmark`);
* every further configuration is compared by its in-run ratio to the first configuration
  (e.g. INT8/fp32 measured back to back), against the same ratio in the baseline.

A slowdown beyond ``max_slowdown`` (a ratio, 1.25 = 25 % slower) fails. A case that finished
in the baseline but not now (timeout, crash, memory limit) fails too. Memory is reported, not
gated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_seg.errors import EdgesegError

DEFAULT_MAX_SLOWDOWN = 1.25
DEFAULT_MAX_DROP = 0.005


@dataclass
class GateResult:
    """What regressed (fails the gate) and what could not be compared (reported only)."""

    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # passed checks, for the log

    @property
    def passed(self) -> bool:
        return not self.regressions


def load_results(path: Path) -> dict[str, Any]:
    """Read a ``benchmark.json`` written by ``edgeseg benchmark``; one-line error otherwise."""
    from edge_seg.benchmark_report import SCHEMA

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise EdgesegError(f"{path}: baseline file does not exist") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable baseline ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "summary" not in data:
        raise EdgesegError(f"{path}: not an edgeseg benchmark result (benchmark.json)")
    return data


def _statuses(results: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c["config"], c["case_id"]): c["status"] for c in results.get("cases", [])}


def check_regression(
    current: dict[str, Any],
    baseline: dict[str, Any],
    *,
    max_slowdown: float | None = DEFAULT_MAX_SLOWDOWN,
    max_drop: float = DEFAULT_MAX_DROP,
) -> GateResult:
    """Compare two results in the JSON form of :func:`edge_seg.benchmark_report.run_to_json`.

    Parameters
    ----------
    max_slowdown
        Largest allowed time ratio (current / baseline); None turns the time gate off.
    max_drop
        Largest allowed drop of mean DSC or mean NSD.
    """
    if max_slowdown is not None and max_slowdown <= 0:
        raise EdgesegError(f"--max-slowdown must be positive, got {max_slowdown:g}")
    if max_drop < 0:
        raise EdgesegError(f"--max-drop must not be negative, got {max_drop:g}")
    result = GateResult()
    cur_summary, base_summary = current["summary"], baseline["summary"]
    shared = [name for name in base_summary if name in cur_summary]
    for name in base_summary:
        if name not in cur_summary:
            result.notes.append(f"config '{name}' is in the baseline but was not run")
    if not shared:
        result.regressions.append("no configuration of the baseline was run; nothing compared")
        return result

    cur_status, base_status = _statuses(current), _statuses(baseline)
    for (config, case_id), status in sorted(base_status.items()):
        if config not in cur_summary:
            continue
        now = cur_status.get((config, case_id))
        if now is None:
            result.notes.append(f"case {case_id} ({config}) is in the baseline but was not run")
        elif status == "ok" and now != "ok":
            result.regressions.append(f"case {case_id} ({config}): {now} (baseline: ok)")

    for name in shared:
        _gate_accuracy(name, cur_summary[name], base_summary[name], max_drop, result)

    if max_slowdown is None:
        result.notes.append("time not gated (--no-time-gate)")
        return result
    first_cur = current["configs"][0]["name"] if current.get("configs") else None
    first_base = baseline["configs"][0]["name"] if baseline.get("configs") else None
    if first_cur in shared and first_cur == first_base:
        _gate_time(
            f"config '{first_cur}' time in reference units",
            cur_summary[first_cur].get("median_time_ref_units"),
            base_summary[first_cur].get("median_time_ref_units"),
            max_slowdown, result,
        )
    for name, entry in current.get("comparison", {}).items():
        base_entry = baseline.get("comparison", {}).get(name)
        if base_entry is None or first_cur != first_base:
            continue
        _gate_time(
            f"config '{name}' time ratio to '{first_cur}'",
            entry.get("time_ratio"), base_entry.get("time_ratio"), max_slowdown, result,
        )
    return result


def _gate_accuracy(
    name: str, cur: dict[str, Any], base: dict[str, Any], max_drop: float, result: GateResult
) -> None:
    unscored = cur.get("not_scored") or 0
    if unscored:
        # Their ground truth could not be read: the means cover fewer cases than the baseline's.
        result.notes.append(f"config '{name}': {unscored} case(s) not scored; mean DSC/NSD "
                            f"over {cur.get('scored', 0)} case(s)")
    for metric in ("dsc", "nsd"):
        before, now = base.get(f"mean_{metric}"), cur.get(f"mean_{metric}")
        if before is None:
            continue
        label = f"config '{name}' mean {metric.upper()}"
        if now is None:
            result.regressions.append(f"{label}: not measured (run with --gt); "
                                      f"baseline {before:.4f}")
        elif before - now > max_drop:
            result.regressions.append(
                f"{label} dropped {before:.4f} -> {now:.4f} "
                f"({before - now:.4f} > --max-drop {max_drop:g})"
            )
        else:
            result.checks.append(f"{label}: {before:.4f} -> {now:.4f}")


def _gate_time(
    label: str, now: float | None, before: float | None, max_slowdown: float,
    result: GateResult,
) -> None:
    if now is None or before is None or before <= 0:
        result.notes.append(f"{label}: not compared (missing in this run or the baseline)")
        return
    ratio = now / before
    if ratio > max_slowdown:
        result.regressions.append(
            f"{label}: {before:.3f} -> {now:.3f}, {ratio:.2f}x slower "
            f"(> --max-slowdown {max_slowdown:g})"
        )
    else:
        result.checks.append(f"{label}: {before:.3f} -> {now:.3f} ({ratio:.2f}x)")
