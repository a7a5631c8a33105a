"""Score one case: every organ's metrics and presence outcome from two label maps.

Input label maps are already in evaluation numbering (:func:`evaluator.labelsets.evaluation_ids`)
and on the same grid. Each organ is cropped to the bounding box of its ground truth and
prediction (grown by one voxel) before any surface work, so a 13-organ CT costs little more
than the organs' surfaces.

Empty-organ conventions (FLARE / HALOS):

=====================  ========================  =================  ==================
ground truth           prediction                DSC, NSD           presence outcome
=====================  ========================  =================  ==================
empty                  empty                     1, 1 (HD95 0)      TN
empty                  not empty                 0, 0 (HD95 worst)  FP (hallucination)
not empty              empty                     0, 0 (HD95 worst)  FN
not empty              not empty                 computed           TP
=====================  ========================  =================  ==================

"Worst" distances (HD95, ASSD, MSSD when a side is empty) are the length of the volume's
diagonal in mm, so that summaries stay finite. A missing prediction is scored as the worst
case for every organ: DSC = NSD = 0, worst distances, presence FN where the organ is present
and FP where it is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from evaluator import metrics
from evaluator.protocols import Protocol

PRESENCE_OUTCOMES = ("TP", "FP", "TN", "FN")


@dataclass
class OrganScore:
    """One row of ``cases.csv``."""

    case: str
    organ: str
    label: int | None  # ground-truth label value in the ground truth's own convention
    status: str  # "scored", "missing_prediction", "failed_prediction" or "presence_only"
    gt_present: bool
    pred_present: bool
    presence: str  # TP / FP / TN / FN
    metrics: dict[str, float] = field(default_factory=dict)
    tp: int | None = None
    fp: int | None = None
    fn: int | None = None


def presence_outcome(gt_present: bool, pred_present: bool) -> str:
    """Case-level presence confusion outcome of one organ."""
    if gt_present:
        return "TP" if pred_present else "FN"
    return "FP" if pred_present else "TN"


def worst_distance_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """Diagonal of the volume in mm: the distance used when one side is empty."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing_mm, strict=True))))


def _empty_side_metrics(protocol: Protocol, both_empty: bool, worst: float,
                        gt_voxels: int) -> dict[str, float]:
    value = 1.0 if both_empty else 0.0
    distance = 0.0 if both_empty else worst
    scores: dict[str, float] = {"dsc": value, "nsd": value, "hd95": distance}
    if protocol.chaos_metrics:
        # RAVD is undefined (NaN) for a hallucinated organ: there is no ground-truth volume.
        ravd = 0.0 if both_empty else (100.0 if gt_voxels else float("nan"))
        scores.update(ravd=ravd, assd=distance, mssd=distance)
        _add_chaos_points(scores)
    return scores


def _add_chaos_points(scores: dict[str, float]) -> None:
    for name in ("dsc", "ravd", "assd", "mssd"):
        value = scores[name]
        # A hallucinated organ (RAVD undefined) earns no RAVD points.
        hallucinated = name == "ravd" and np.isnan(value)
        scores[f"{name}_score"] = 0.0 if hallucinated else metrics.chaos_score(name, value)
    scores["chaos_score"] = float(np.mean([scores[f"{n}_score"] for n in
                                           ("dsc", "ravd", "assd", "mssd")]))


def _grow(box: tuple[slice, ...] | None, other: tuple[slice, ...] | None,
          shape: Sequence[int]) -> tuple[slice, ...]:
    boxes = [b for b in (box, other) if b is not None]
    return tuple(
        slice(max(min(b[axis].start for b in boxes) - 1, 0),
              min(max(b[axis].stop for b in boxes) + 1, shape[axis]))
        for axis in range(3)
    )


def score_organs(
    case: str,
    gt: np.ndarray,
    pred: np.ndarray,
    spacing_mm: Sequence[float],
    organ_ids: Mapping[str, int],
    protocol: Protocol,
    *,
    gt_label_values: Mapping[str, int] | None = None,
    workers: int = 1,
) -> list[OrganScore]:
    """Score every organ of one case (both maps in evaluation numbering, same shape).

    ``workers`` > 1 scores organs in that many threads (the heavy parts - bounding boxes,
    k-d tree queries, NumPy - release the GIL); rows come back in ``organ_ids`` order.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"{case}: shapes differ {gt.shape} vs {pred.shape}")
    top = max(organ_ids.values(), default=0)
    worst = worst_distance_mm(gt.shape, spacing_mm)

    def organ_row(organ: str, boxes_gt: list, boxes_pred: list) -> OrganScore:
        value = organ_ids[organ]
        return _score_organ(case, organ, value, gt, pred, boxes_gt[value - 1],
                            boxes_pred[value - 1], spacing_mm, protocol, worst,
                            (gt_label_values or {}).get(organ, value))

    if workers <= 1:
        boxes_gt = ndimage.find_objects(gt, max_label=top)
        boxes_pred = ndimage.find_objects(pred, max_label=top)
        return [organ_row(organ, boxes_gt, boxes_pred) for organ in organ_ids]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        boxes_gt, boxes_pred = pool.map(lambda a: ndimage.find_objects(a, max_label=top),
                                        (gt, pred))
        return list(pool.map(lambda organ: organ_row(organ, boxes_gt, boxes_pred), organ_ids))


def _score_organ(case: str, organ: str, value: int, gt: np.ndarray, pred: np.ndarray,
                 box_gt: tuple[slice, ...] | None, box_pred: tuple[slice, ...] | None,
                 spacing_mm: Sequence[float], protocol: Protocol, worst: float,
                 label: int) -> OrganScore:
    gt_present, pred_present = box_gt is not None, box_pred is not None
    row = OrganScore(
        case=case, organ=organ, label=label, status="scored",
        gt_present=gt_present, pred_present=pred_present,
        presence=presence_outcome(gt_present, pred_present),
    )
    if not gt_present and not pred_present:
        row.tp = row.fp = row.fn = 0
        row.metrics = _empty_side_metrics(protocol, True, worst, 0)
        return row
    box = _grow(box_gt, box_pred, gt.shape)
    mask_gt = gt[box] == value
    mask_pred = pred[box] == value
    if gt_present and organ in protocol.ground_truth_slices_only:
        # Only the axial slices that hold this organ in the ground truth are scored.
        mask_pred &= mask_gt.any(axis=(1, 2))[:, None, None]
    counts = metrics.voxel_counts(mask_gt, mask_pred)
    row.tp, row.fp, row.fn = counts.tp, counts.fp, counts.fn
    if counts.gt_voxels == 0 or counts.pred_voxels == 0:
        row.metrics = _empty_side_metrics(protocol, False, worst, counts.gt_voxels)
    else:
        row.metrics = _both_present_metrics(mask_gt, mask_pred, counts, spacing_mm, organ,
                                            protocol)
    return row


def _both_present_metrics(mask_gt: np.ndarray, mask_pred: np.ndarray,
                          counts: metrics.VoxelCounts, spacing_mm: Sequence[float], organ: str,
                          protocol: Protocol) -> dict[str, float]:
    dsc = metrics.dice_from_counts(counts)
    distances = metrics.surface_distances(mask_gt, mask_pred, spacing_mm, crop=False)
    nsd = metrics.normalised_surface_dice(distances, protocol.tolerance_mm(organ))
    if protocol.nsd_zero_below_dsc is not None and dsc < protocol.nsd_zero_below_dsc:
        nsd = 0.0
    scores = {
        "dsc": dsc,
        "nsd": nsd,
        "hd95": metrics.robust_hausdorff(distances, protocol.hd_percentile),
    }
    if protocol.chaos_metrics:
        assd, mssd = metrics.chaos_surface_distances(mask_gt, mask_pred, spacing_mm)
        scores.update(ravd=metrics.ravd_percent(mask_gt, mask_pred), assd=assd, mssd=mssd)
        _add_chaos_points(scores)
    return scores


def worst_case_rows(
    case: str,
    gt: np.ndarray,
    spacing_mm: Sequence[float],
    organ_ids: Mapping[str, int],
    protocol: Protocol,
    status: str,
    *,
    gt_label_values: Mapping[str, int] | None = None,
) -> list[OrganScore]:
    """Rows for a case whose prediction is missing or unreadable: the worst score per organ."""
    top = max(organ_ids.values(), default=0)
    boxes = ndimage.find_objects(gt, max_label=top)
    worst = worst_distance_mm(gt.shape, spacing_mm)
    rows = []
    for organ, value in organ_ids.items():
        gt_present = boxes[value - 1] is not None
        gt_voxels = int(np.count_nonzero(gt[boxes[value - 1]] == value)) if gt_present else 0
        scores = _empty_side_metrics(protocol, False, worst, gt_voxels)
        rows.append(OrganScore(
            case=case, organ=organ, label=(gt_label_values or {}).get(organ, value),
            status=status, gt_present=gt_present, pred_present=False,
            presence="FN" if gt_present else "FP", metrics=scores,
            tp=0, fp=None, fn=gt_voxels,
        ))
    return rows


def presence_only_rows(
    case: str,
    gt_presence: Mapping[str, bool],
    pred: np.ndarray | None,
    organ_ids: Mapping[str, int],
) -> list[OrganScore]:
    """Rows for a case with presence labels only (no voxel ground truth): presence, no metrics."""
    top = max(organ_ids.values(), default=0)
    boxes = ndimage.find_objects(pred, max_label=top) if pred is not None else [None] * top
    rows = []
    for organ, value in organ_ids.items():
        if organ not in gt_presence:
            continue
        gt_present = bool(gt_presence[organ])
        pred_present = boxes[value - 1] is not None
        rows.append(OrganScore(
            case=case, organ=organ, label=None,
            status="presence_only" if pred is not None else "missing_prediction",
            gt_present=gt_present, pred_present=pred_present,
            presence=(presence_outcome(gt_present, pred_present) if pred is not None
                      else ("FN" if gt_present else "FP")),
        ))
    return rows
