"""What an adapter produces: the list of cases with where their ground truth and prediction are.

References are small picklable records so that cases can be scored in worker processes; the
volumes are read by :func:`load_ground_truth` and :func:`load_prediction` inside the worker.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError
from evaluator.labelsets import PRESETS, LabelSet
from evaluator.masks import read_mask_folder
from evaluator.volumes import (
    LabelVolume,
    dicom_series_geometry,
    read_label_file,
    read_png_series,
)


@dataclass(frozen=True)
class LabelFile:
    """A NIfTI/MHA/NRRD label map."""

    path: Path


@dataclass(frozen=True)
class ChaosSeries:
    """A CHAOS PNG slice series whose geometry comes from a DICOM folder."""

    png_dir: Path
    dicom_dir: Path


@dataclass(frozen=True)
class MaskFolder:
    """A folder of one binary mask per structure (TotalSegmentator's output and dataset)."""

    path: Path


VolumeRef = LabelFile | ChaosSeries | MaskFolder


@dataclass
class CaseSpec:
    """One case to score.

    ``gt`` is None for a presence-only case (cohort studies without voxel labels), in which
    case ``presence`` holds the ground-truth organ presence. ``pred`` is None when the
    prediction is missing. ``gt_labels`` / ``pred_labels`` name the label set the adapter
    infers for each side ("flare", "chaos_ct", a dataset.json path, ...), used unless the user
    gives one. ``gt_problem`` is set by an adapter that found the case but not a usable ground
    truth (a CHAOS folder without ``Ground/``, an MSD ``training`` entry without its label
    file): the case is reported as a ground-truth failure instead of being dropped.
    """

    case_id: str
    gt: VolumeRef | None
    pred: VolumeRef | None
    gt_labels: str = "flare"
    pred_labels: str = "flare"
    presence: dict[str, bool] | None = None
    modality: str = ""
    gt_problem: str | None = None
    notes: list[str] = field(default_factory=list)


def load_volume(ref: VolumeRef, labels: LabelSet | None = None,
                organs: Collection[str] | None = None) -> LabelVolume:
    """Read a referenced label volume (raises EvaluationError naming the file).

    ``labels`` is the label set the volume is read in (FLARE's if None): a
    :class:`MaskFolder` is merged into a label map in its values, reading the masks of
    ``organs`` only (default: all of the set); the other kinds carry their own values.
    """
    if isinstance(ref, LabelFile):
        return read_label_file(ref.path)
    if isinstance(ref, MaskFolder):
        return read_mask_folder(ref.path, labels if labels is not None else PRESETS["flare"],
                                organs)
    geometry = dicom_series_geometry(ref.dicom_dir)
    array = read_png_series(ref.png_dir)
    if array.shape != geometry.shape:
        raise EvaluationError(
            f"{ref.png_dir}: {array.shape[0]} slices of {array.shape[1]}x{array.shape[2]} do not "
            f"match the DICOM series {ref.dicom_dir} ({geometry.shape[0]} slices of "
            f"{geometry.shape[1]}x{geometry.shape[2]})"
        )
    return LabelVolume(
        array=np.ascontiguousarray(array),
        spacing_mm=geometry.spacing_mm,
        origin=geometry.origin,
        direction=geometry.direction,
        path=ref.png_dir,
    )


def describe(ref: VolumeRef | None) -> str:
    if ref is None:
        return "-"
    return str(ref.png_dir if isinstance(ref, ChaosSeries) else ref.path)
