"""Reading and checking a ``--baseline`` summary before anything is scored.

A baseline is the ``summary.json`` of an earlier run (see :mod:`evaluator.summary`). It is read
and validated up front, so that a wrong file is refused in one line before minutes of scoring,
and so that the comparison after scoring works on checked numbers and cannot fail (which would
lose the results just computed). Refused: unreadable JSON, another ``schema`` (or none), a
structure other than the one :func:`evaluator.summary.build_summary` writes, non-numeric or
non-finite headline numbers, and a baseline scored under another protocol or other NSD
tolerances than this run (their NSD values are not comparable).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evaluator.errors import EvaluationError
from evaluator.protocols import DEFAULT_NSD_TOLERANCE_MM, Protocol
from evaluator.summary import PRESENCE_HEADLINES, SCHEMA


def _is_number(value: object) -> bool:
    """A finite JSON number (``true``/``false`` are not numbers here, unlike in Python)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _mapping(value: object, where: str, source: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EvaluationError(f"{source}: baseline {where} must be an object, got "
                              f"{type(value).__name__} {value!r:.40}")
    return value


def _number_or_null(value: object, where: str, source: Path) -> None:
    if value is not None and not _is_number(value):
        raise EvaluationError(f"{source}: baseline {where} must be a finite number or null, "
                              f"got {value!r:.40}")


def _check_block(block: object, where: str, source: Path) -> None:
    """One organ's (or the overall) block: metric statistics and presence rates."""
    block = _mapping(block, where, source)
    for key in ("metrics", "presence"):
        if key not in block:
            raise EvaluationError(f"{source}: baseline {where} has no {key!r}")
    for metric, stats in _mapping(block["metrics"], f"{where}.metrics", source).items():
        stats = _mapping(stats, f"{where}.metrics.{metric}", source)
        if "mean" not in stats:
            raise EvaluationError(f"{source}: baseline {where}.metrics.{metric} has no 'mean'")
        _number_or_null(stats["mean"], f"{where}.metrics.{metric}.mean", source)
    presence = _mapping(block["presence"], f"{where}.presence", source)
    for rate in PRESENCE_HEADLINES:
        _number_or_null(presence.get(rate), f"{where}.presence.{rate}", source)


def validate_summary(data: object, source: Path) -> dict[str, Any]:
    """Check that ``data`` is a ``summary.json`` this evaluator writes; return it.

    Raises
    ------
    EvaluationError
        One line naming ``source`` and the first problem found.
    """
    summary = _mapping(data, "file", source)
    schema = summary.get("schema")
    if schema != SCHEMA:
        found = "has no schema" if schema is None else f"has schema {schema!r}"
        raise EvaluationError(f"{source}: not an edgeseg summary.json of schema {SCHEMA!r} "
                              f"(it {found})")
    for key in ("protocol", "organs", "overall"):
        if key not in summary:
            raise EvaluationError(f"{source}: baseline has no {key!r}")
    protocol = _mapping(summary["protocol"], "protocol", source)
    if not isinstance(protocol.get("name"), str):
        raise EvaluationError(f"{source}: baseline protocol has no name")
    tolerances = _mapping(protocol.get("nsd_tolerance_mm", {}), "protocol.nsd_tolerance_mm",
                          source)
    for organ, mm in tolerances.items():
        _number_or_null(mm, f"protocol.nsd_tolerance_mm.{organ}", source)
    for organ, block in _mapping(summary["organs"], "organs", source).items():
        _check_block(block, f"organs.{organ}", source)
    _check_block(summary["overall"], "overall", source)
    return dict(summary)


def check_protocol(summary: Mapping[str, Any], protocol: Protocol, source: Path) -> None:
    """Refuse a baseline scored with another protocol or other NSD tolerances of its organs.

    Only the organs the baseline scored are compared: an override for an organ it does not
    hold changes nothing in the comparison.
    """
    recorded = summary["protocol"]
    if recorded["name"] != protocol.name:
        raise EvaluationError(f"{source}: baseline was scored with protocol "
                              f"{recorded['name']!r}, this run uses {protocol.name!r}; "
                              "their metrics are not comparable")
    tolerances = recorded.get("nsd_tolerance_mm", {})
    for organ in summary["organs"]:
        old = tolerances.get(organ, DEFAULT_NSD_TOLERANCE_MM)
        new = protocol.tolerance_mm(organ)
        if old is not None and not math.isclose(float(old), new):
            raise EvaluationError(f"{source}: baseline scored {organ} NSD at {old} mm, this run "
                                  f"at {new} mm (protocol {protocol.name!r}); their NSD values "
                                  "are not comparable")


def load_baseline(path: Path, protocol: Protocol) -> dict[str, Any]:
    """Read, validate and protocol-check a baseline ``summary.json`` (see module docstring).

    Raises
    ------
    EvaluationError
        One line naming ``path`` and the problem.
    """
    try:
        # NaN/Infinity literals are refused: a NaN baseline mean would never regress.
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise EvaluationError(f"{path}: cannot read baseline summary ({reason})") from None
    summary = validate_summary(data, path)
    check_protocol(summary, protocol, path)
    return summary


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (summary.json writes null)")
