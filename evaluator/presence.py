"""Case-level organ presence: reading presence CSVs and summarising presence outcomes.

Presence CSV (cohorts without voxel labels, e.g. UK Biobank): one row per subject, a subject
column named ``case``, ``subject``, ``eid``, ``id`` or ``case_id`` (else the first column), and
one column per organ (names as in :mod:`evaluator.labels`, aliases allowed) holding 1/0,
true/false, yes/no or present/absent.

Per organ, with TP/FP/TN/FN counted over cases (prediction has any voxel of the organ vs the
ground truth has any):

* false-positive rate ``FPR = FP / (FP + TN)`` - how often an absent organ is hallucinated;
* ``F1 = 2 TP / (2 TP + FP + FN)``;
* balanced accuracy ``(TP / (TP + FN) + TN / (TN + FP)) / 2``.

A ratio whose denominator is zero is reported as ``null``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from evaluator.errors import EvaluationError
from evaluator.labels import canonical_organ_name

_ID_COLUMNS = ("case", "subject", "eid", "id", "case_id", "subject_id")
_TRUE = {"1", "true", "yes", "present", "y", "t"}
_FALSE = {"0", "false", "no", "absent", "n", "f"}


def read_presence_csv(path: Path, known_organs: Iterable[str]) -> dict[str, dict[str, bool]]:
    """Subject id -> {organ: present} from a presence CSV (see module docstring)."""
    known = set(known_organs)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read presence CSV ({exc})") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise EvaluationError(f"{path}: presence CSV has no subjects")
    header = [cell.strip() for cell in rows[0]]
    lowered = [h.lower() for h in header]
    id_column = next((lowered.index(c) for c in _ID_COLUMNS if c in lowered), 0)
    organ_columns: dict[int, str] = {}
    for index, name in enumerate(header):
        if index == id_column:
            continue
        organ = canonical_organ_name(name)
        if organ not in known:
            raise EvaluationError(f"{path}: unknown organ column {name!r}")
        organ_columns[index] = organ
    if not organ_columns:
        raise EvaluationError(f"{path}: presence CSV has no organ columns")
    presence: dict[str, dict[str, bool]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise EvaluationError(f"{path}: line {line} has {len(row)} fields, expected "
                                  f"{len(header)}")
        subject = row[id_column].strip()
        if not subject:
            raise EvaluationError(f"{path}: line {line} has an empty subject id")
        if subject in presence:
            raise EvaluationError(f"{path}: subject {subject!r} appears twice")
        values: dict[str, bool] = {}
        for index, organ in organ_columns.items():
            cell = row[index].strip().lower()
            if cell in _TRUE:
                values[organ] = True
            elif cell in _FALSE:
                values[organ] = False
            else:
                raise EvaluationError(f"{path}: line {line}, column {header[index]!r}: "
                                      f"expected 1/0, got {row[index]!r}")
        presence[subject] = values
    return presence


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def presence_summary(outcomes: Iterable[str]) -> dict[str, float | int | None]:
    """Counts, FPR, F1 and balanced accuracy of a list of TP/FP/TN/FN outcomes."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for outcome in outcomes:
        counts[outcome.lower()] += 1
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    balanced = None
    if sensitivity is not None and specificity is not None:
        balanced = (sensitivity + specificity) / 2
    return {
        **counts,
        "n": tp + fp + tn + fn,
        "fpr": _ratio(fp, fp + tn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": balanced,
    }
