"""NIfTI layouts: FLARE folders, nnU-Net raw datasets, MSD datasets and UK Biobank-like cohorts.

Ground truth may be a folder of label maps (``<case>.nii.gz``), or a dataset root holding
``labelsTs/`` (preferred) or ``labelsTr/`` and a ``dataset.json`` whose ``labels`` table (nnU-Net
v2 ``{"liver": 1}`` or MSD ``{"1": "liver"}``) becomes the ground-truth label set. Predictions
are ``PRED/<case>.nii.gz`` (other NIfTI/MHA/NRRD suffixes too); other files in PRED (nnU-Net's
``plans.json``, ``.npz``) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from evaluator.adapters.base import CaseSpec, LabelFile
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


def discover(gt_root: Path, pred_root: Path, default_labels: str = "flare") -> list[CaseSpec]:
    """Cases with voxel ground truth in ``gt_root``, matched to ``pred_root`` by case id."""
    folder = label_folder(gt_root)
    json_path = dataset_json(folder)
    gt_labels = str(json_path) if json_path is not None else default_labels
    predictions = image_files(pred_root)
    return [
        CaseSpec(
            case_id=case,
            gt=LabelFile(path),
            pred=LabelFile(predictions[case]) if case in predictions else None,
            gt_labels=gt_labels,
            pred_labels="flare",
        )
        for case, path in image_files(folder).items()
    ]
