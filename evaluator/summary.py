"""Summaries of an evaluation and the ``summary.json`` schema; comparison with a baseline.

``summary.json`` (schema ``edgeseg-evaluation/1``)::

    {
      "schema": "edgeseg-evaluation/1",
      "ground_truth": "<folder>", "predictions": "<folder>", "format": "flare",
      "protocol": {"name": "flare22", "nsd_tolerance_mm": {...}, "nsd_zero_below_dsc": null,
                   "ground_truth_slices_only": [], "hd_percentile": 95.0, "metrics": [...]},
      "cases": {"n": 50, "voxel": 48, "presence_only": 2,
                "missing_predictions": ["case_07"],          # scored as worst case
                "failed": [{"case": "...", "side": "prediction", "error": "..."}],
                "ignored_predictions": 0},                   # predictions without ground truth
      "warnings": ["<labels.json>: label 'hepar' (value 1) ... not scored", ...],
      "organs": {
        "<organ>": {
          "metrics": {"<metric>": {"mean": 0.91, "median": 0.93, "std": 0.04, "n": 48}, ...},
          "presence": {"tp": 40, "fp": 1, "tn": 7, "fn": 0, "n": 48, "fpr": 0.125,
                       "f1": 0.988, "balanced_accuracy": 0.94},
          "voxels": {"tp": ..., "fp": ..., "fn": ...}       # summed over scored cases
        }, ...
      },
      "overall": {
        "metrics": {"<metric>": {"mean": ..., "median": ..., "std": ..., "n": ...}},
        "organ_mean": {"<metric>": mean of the per-organ means},
        "presence": {... pooled over all organs ...}
      }
    }

Metric statistics are over the (case, organ) rows that carry the metric (presence-only rows
carry none); ``std`` is the population standard deviation; undefined values (NaN) are
skipped and counted out of ``n``. Non-finite numbers are written as ``null``. ``warnings`` are
the run-level warnings the CLI prints (ground-truth structures left unscored, ...); cases that
could not be scored are in ``cases.failed``. A ``--baseline`` is checked against this schema by
:mod:`evaluator.baseline` before a run is scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluator.presence import presence_summary
from evaluator.runner import EvaluationResult, finite_or_none
from evaluator.scoring import OrganScore

SCHEMA = "edgeseg-evaluation/1"

#: Presence rates compared against a baseline (as ``presence_<rate>``).
PRESENCE_HEADLINES = ("fpr", "f1", "balanced_accuracy")

#: Metrics where a smaller value is better (all others: larger is better).
LOWER_IS_BETTER = frozenset({"hd95", "assd", "mssd", "ravd", "fpr"})


def statistics(values: Iterable[float]) -> dict[str, float | int | None]:
    """mean, median, population std and count of the finite values."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std()),
        "n": int(array.size),
    }


def _organ_order(rows: list[OrganScore]) -> list[str]:
    order: list[str] = []
    for row in rows:
        if row.organ not in order:
            order.append(row.organ)
    return order


def build_summary(result: EvaluationResult) -> dict[str, Any]:
    """The ``summary.json`` document of an evaluation (see module docstring)."""
    metric_names = result.protocol.metric_names
    organs: dict[str, Any] = {}
    for organ in _organ_order(result.rows):
        rows = [r for r in result.rows if r.organ == organ]
        scored = [r for r in rows if r.metrics]
        organs[organ] = {
            "metrics": {m: statistics(r.metrics.get(m, float("nan")) for r in scored)
                        for m in metric_names},
            "presence": presence_summary(r.presence for r in rows),
            "voxels": {k: int(sum(getattr(r, k) or 0 for r in scored)) for k in ("tp", "fp", "fn")},
        }
    all_scored = [r for r in result.rows if r.metrics]
    overall = {
        "metrics": {m: statistics(r.metrics.get(m, float("nan")) for r in all_scored)
                    for m in metric_names},
        "organ_mean": {
            m: finite_or_none(_mean_or_nan(o["metrics"][m]["mean"] for o in organs.values()))
            for m in metric_names
        },
        "presence": presence_summary(r.presence for r in result.rows),
    }
    presence_only = {r.case for r in result.rows if r.status == "presence_only"}
    return {
        "schema": SCHEMA,
        "ground_truth": str(result.gt_root),
        "predictions": str(result.pred_root),
        "format": result.format,
        "protocol": result.protocol.describe(),
        "cases": {
            "n": len(result.cases),
            "voxel": len({r.case for r in result.rows if r.metrics}),
            "presence_only": len(presence_only),
            "missing_predictions": list(result.missing_predictions),
            "failed": [{"case": f.case, "side": f.side, "error": f.message}
                       for f in result.failures],
            "ignored_predictions": result.ignored_predictions,
        },
        "warnings": list(result.warnings),
        "organs": organs,
        "overall": overall,
    }


def _mean_or_nan(values: Iterable[float | None]) -> float:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass(frozen=True)
class Regression:
    """A metric that got worse than the baseline by more than the tolerance."""

    scope: str  # organ name or "overall"
    metric: str
    baseline: float
    current: float | None

    def describe(self) -> str:
        now = "missing" if self.current is None else f"{self.current:.4f}"
        return f"{self.scope} {self.metric}: {self.baseline:.4f} -> {now}"


def _headline_values(summary: Mapping[str, Any]) -> dict[tuple[str, str], float | None]:
    values: dict[tuple[str, str], float | None] = {}
    scopes = dict(summary.get("organs", {}))
    if "overall" in summary:
        scopes["overall"] = summary["overall"]
    for scope, block in scopes.items():
        for metric, stats in block.get("metrics", {}).items():
            values[(scope, metric)] = stats.get("mean") if isinstance(stats, Mapping) else None
        presence = block.get("presence", {})
        for metric in PRESENCE_HEADLINES:
            if metric in presence:
                values[(scope, f"presence_{metric}")] = presence[metric]
    return values


def compare_to_baseline(current: Mapping[str, Any], baseline: Mapping[str, Any],
                        max_drop: float) -> list[Regression]:
    """Every organ/overall metric mean that regressed by more than ``max_drop`` (absolute).

    Larger-is-better metrics regress when ``current < baseline - max_drop``; distances, RAVD
    and the presence false-positive rate when ``current > baseline + max_drop``. A metric
    that the baseline has but the current run lacks is a regression too.
    """
    now = _headline_values(current)
    regressions = []
    for key, old in _headline_values(baseline).items():
        if old is None:
            continue
        new = now.get(key)
        metric = key[1].removeprefix("presence_")
        if new is None:
            regressions.append(Regression(key[0], key[1], old, None))
        elif metric in LOWER_IS_BETTER:
            if new > old + max_drop:
                regressions.append(Regression(key[0], key[1], old, new))
        elif new < old - max_drop:
            regressions.append(Regression(key[0], key[1], old, new))
    return regressions
