"""NIfTI layouts: FLARE folders, nnU-Net raw datasets, MSD datasets and UK Biobank-like cohorts.

Ground truth may be a folder of label maps (``<case>.nii.gz``), or a dataset root holding
``labelsTs/`` (preferred) or ``labelsTr/`` and a ``dataset.json`` whose ``labels`` table (nnU-Net
v2 ``{"liver": 1}`` or MSD ``{"1": "liver"}``) becomes the ground-truth label set. Predictions
are ``PRED/<case>.nii.gz`` (other NIfTI/MHA/NRRD suffixes too); other files in PRED (nnU-Net's
``plans.json``, ``.npz``) are ignored. On either side a case may instead be a folder of one mask
per structure (``<case>/liver.nii.gz`` ..., TotalSegmentator's output; or
``<subject>/segmentations/`` of the TotalSegmentator dataset; :mod:`evaluator.masks`).

An MSD ``dataset.json`` ``training`` list must be a list of ``{"image": ..., "label": ...}``
objects; when ``labelsTr`` is scored, a listed case whose label map is not there is reported
as a case without ground truth (:func:`listed_but_missing`), not dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from evaluator.adapters.base import CaseSpec, LabelFile, MaskFolder, VolumeRef
from evaluator.errors import EvaluationError
from evaluator.masks import is_mask_folder
from evaluator.volumes import strip_image_suffix


def label_folder(gt_root: Path) -> Path:
    """The folder holding the ground-truth label maps of a dataset root or label folder."""
    for name in ("labelsTs", "labelsTr"):
        if (gt_root / name).is_dir():
            return gt_root / name
    return gt_root


def dataset_json(gt_root: Path) -> Path | None:
    """``dataset.json`` beside or above the label folder, if any."""
    for folder in (gt_root, gt_root.parent):
        candidate = folder / "dataset.json"
        if candidate.is_file():
            return candidate
    return None


def image_files(folder: Path) -> dict[str, Path]:
    """Case id -> path of every label image directly in ``folder``."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        case = strip_image_suffix(path.name)
        if case is not None and path.is_file():
            found.setdefault(case, path)
    return found


def label_refs(folder: Path) -> dict[str, VolumeRef]:
    """Case id -> label map file, or mask folder, of every case directly in ``folder``.

    A case with both a label map and a mask folder is read from the label map.
    """
    refs: dict[str, VolumeRef] = {case: LabelFile(path)
                                  for case, path in image_files(folder).items()}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name not in refs and not path.name.startswith(".") and is_mask_folder(path):
                refs[path.name] = MaskFolder(path)
    return dict(sorted(refs.items()))


def discover(gt_root: Path, pred_root: Path, default_labels: str = "flare") -> list[CaseSpec]:
    """Cases with voxel ground truth in ``gt_root``, matched to ``pred_root`` by case id."""
    folder = label_folder(gt_root)
    json_path = dataset_json(folder)
    gt_labels = str(json_path) if json_path is not None else default_labels
    predictions = label_refs(pred_root)
    return [
        CaseSpec(
            case_id=case,
            gt=ref,
            pred=predictions.get(case),
            gt_labels=gt_labels,
            pred_labels="flare",
        )
        for case, ref in label_refs(folder).items()
    ]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EvaluationError(f"{path}: not a valid dataset.json ({exc})") from None


def training_labels(json_path: Path) -> dict[str, str]:
    """Case id -> label path of every entry of the ``training`` list of an MSD dataset.json.

    Raises
    ------
    EvaluationError
        If ``training`` is not a list of objects with a label-image ``label`` path.
    """
    data = _read_json(json_path)
    training = data.get("training", []) if isinstance(data, Mapping) else []
    if not isinstance(training, Sequence) or isinstance(training, str):
        raise EvaluationError(f"{json_path}: 'training' must be a list of "
                              f'{{"image": ..., "label": ...}} objects, got '
                              f"{type(training).__name__} {training!r:.40}")
    listed: dict[str, str] = {}
    for index, entry in enumerate(training):
        label = entry.get("label") if isinstance(entry, Mapping) else None
        if not isinstance(label, str):
            raise EvaluationError(f"{json_path}: training entry {index} must be an object with "
                                  f"a 'label' path, got {entry!r:.60}")
        case = strip_image_suffix(Path(label).name)
        if case is None:
            raise EvaluationError(f"{json_path}: training entry {index}: {label!r} is not a "
                                  "NIfTI/MHA/NRRD label map")
        listed.setdefault(case, label)
    return listed


def listed_but_missing(gt_root: Path, pred_root: Path,
                       found: Sequence[CaseSpec]) -> list[CaseSpec]:
    """Cases the MSD ``training`` list names but whose label map is not in the label folder.

    Only checked when the training labels are scored (not ``labelsTs``). Each is returned
    with ``gt_problem`` set, so the run lists it as a failed case instead of dropping it.
    """
    folder = label_folder(gt_root)
    json_path = dataset_json(folder)
    if json_path is None:
        return []
    listed = training_labels(json_path)  # validates the type even when labelsTs is scored
    if folder.name == "labelsTs":
        return []
    known = {case.case_id for case in found}
    predictions = label_refs(pred_root)
    return [
        CaseSpec(
            case_id=case,
            gt=LabelFile(json_path.parent / label),
            pred=predictions.get(case),
            gt_labels=str(json_path),
            pred_labels="flare",
            gt_problem=(f"{json_path}: training lists {case} ({label}), but {folder} has no "
                        f"label map of it; case {case} not scored"),
        )
        for case, label in listed.items() if case not in known
    ]
