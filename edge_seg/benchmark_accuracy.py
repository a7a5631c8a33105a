"""Accuracy of benchmark predictions, computed by the evaluator (never re-implemented here).

Both the prediction and the ground truth are read as FLARE-numbered label maps (the runtime
writes FLARE numbers, ``edgeseg synth`` and FLARE ground truth use them), mapped onto the
evaluator's internal numbering, and scored with the FLARE22 protocol: DSC and NSD per organ at
FLARE's per-organ tolerances, with FLARE's empty-organ conventions (both empty: 1; one side
empty: 0). Organs empty in both are therefore included as 1, as FLARE's per-case mean does.
"""

from __future__ import annotations

from pathlib import Path

from evaluator.errors import EvaluationError
from evaluator.labelsets import evaluation_ids, load_labelset, to_evaluation_labels
from evaluator.protocols import DEFAULT_PROTOCOL, get_protocol
from evaluator.scoring import score_organs
from evaluator.volumes import read_label_file, same_geometry


def score_prediction(
    prediction: Path, label: Path, *, protocol: str = DEFAULT_PROTOCOL, labelset: str = "flare"
) -> tuple[dict[str, float], dict[str, float]]:
    """DSC and NSD per organ of one prediction against its ground truth.

    Raises
    ------
    EvaluationError
        Unreadable files, unknown label values, or ground truth not on the grid of the
        prediction (one line, naming the ground-truth file: the prediction is written on the
        scan's own grid, and in the benchmark it is a temporary file gone by the time the
        message is read).
    """
    rules = get_protocol(protocol)
    labels = load_labelset(labelset)
    ids = evaluation_ids(labels.organs)
    gt = read_label_file(Path(label))
    pred = read_label_file(Path(prediction))
    mismatch = same_geometry(gt, pred, check_position=True)
    if mismatch:
        raise EvaluationError(
            f"{label}: ground truth is not on the scan's grid (prediction {mismatch})"
        )
    rows = score_organs(
        Path(label).name,
        to_evaluation_labels(gt.array, labels, ids, str(label)),
        to_evaluation_labels(pred.array, labels, ids, str(prediction)),
        gt.spacing_mm, ids, rules,
    )
    dsc = {row.organ: float(row.metrics["dsc"]) for row in rows}
    nsd = {row.organ: float(row.metrics["nsd"]) for row in rows}
    return dsc, nsd
