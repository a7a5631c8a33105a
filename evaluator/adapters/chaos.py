"""CHAOS native layout: DICOM series with per-slice PNG ground truth.

Accepted ground-truth roots: the ``Train_Sets`` folder (holding ``CT/`` and/or ``MR/``), a
modality folder (``CT/`` or ``MR/``), or one case folder holding ``DICOM_anon/`` and
``Ground/`` (a CT case or one MR sequence folder; an MR patient folder ``MR/<id>`` itself is
not a case folder).

MR sequences: every MR patient gives two cases, scored independently and each against its own
``Ground/``: ``MR/<id>/T1DUAL`` and ``MR/<id>/T2SPIR`` (a patient with only one of them gives
one case). The two are separate acquisitions with their own slice count and spacing, so they
are never merged; summaries pool them as cases of the same organs. T1DUAL has one ground truth
for its co-registered in-phase and opposed-phase echoes, so it is scored once, with the
geometry of ``DICOM_anon/InPhase``; ``OutPhase`` is not read.

Case ids: the path below the root with ``/`` replaced by ``_`` (``CT_1``, ``MR_3_T1DUAL``,
``MR_3_T2SPIR``), or the folder name for a single case. A prediction for a case is, in this
order of preference: ``PRED/<id>.nii.gz`` (or another NIfTI/MHA/NRRD suffix; array in CHAOS
file-name slice order, FLARE label numbers), else a folder of PNG slices (CHAOS grey values)
- for a single case ``PRED`` itself - or ``PRED/<relative path>/`` then its subfolders
``Results/`` (the CHAOS submission layout, ``MR/3/T1DUAL/Results``), ``Segmentation/`` or
``Ground/`` (a copy of the ground-truth tree), else ``PRED/<id>/``.
"""

from __future__ import annotations

from pathlib import Path

from evaluator.adapters.base import CaseSpec, ChaosSeries, LabelFile
from evaluator.volumes import NIFTI_SUFFIXES, png_files

#: PNG prediction subfolders of a case folder, in order of preference.
PREDICTION_SUBFOLDERS = ("Results", "Segmentation", "Ground")


def is_chaos_case(folder: Path) -> bool:
    return (folder / "Ground").is_dir() and (folder / "DICOM_anon").is_dir()


def looks_like_chaos(root: Path) -> bool:
    """True if ``root`` is a CHAOS Train_Sets root, modality folder or case folder."""
    if is_chaos_case(root):
        return True
    return any(True for _ in _case_folders(root))


def _case_folders(root: Path) -> list[tuple[Path, str]]:
    """(case folder, modality) pairs under ``root``."""
    if is_chaos_case(root):
        return [(root, _modality_of(root))]
    found: list[tuple[Path, str]] = []
    modality_dirs = [root / m for m in ("CT", "MR") if (root / m).is_dir()]
    if not modality_dirs and root.name.upper() in ("CT", "MR"):
        modality_dirs = [root]
    for modality_dir in modality_dirs:
        modality = modality_dir.name.upper()
        for case in sorted(p for p in modality_dir.iterdir() if p.is_dir()):
            if modality == "CT" and is_chaos_case(case):
                found.append((case, "CT"))
            elif modality == "MR":
                for sequence in ("T1DUAL", "T2SPIR"):
                    if is_chaos_case(case / sequence):
                        found.append((case / sequence, "MR"))
    return found


def _modality_of(case: Path) -> str:
    names = {p.name.upper() for p in case.parents} | {case.name.upper()}
    return "MR" if names & {"MR", "T1DUAL", "T2SPIR"} else "CT"


def _dicom_dir(case: Path) -> Path:
    in_phase = case / "DICOM_anon" / "InPhase"
    return in_phase if in_phase.is_dir() else case / "DICOM_anon"


def _find_prediction(pred_root: Path, case_id: str, relative: Path,
                     single: bool, dicom_dir: Path) -> LabelFile | ChaosSeries | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = pred_root / f"{case_id}{suffix}"
        if candidate.is_file():
            return LabelFile(candidate)
    folders = [pred_root / relative]
    folders += [pred_root / relative / name for name in PREDICTION_SUBFOLDERS]
    folders.append(pred_root / case_id)
    if single:
        folders.insert(0, pred_root)
    for folder in folders:
        if folder.is_dir() and png_files(folder):
            return ChaosSeries(folder, dicom_dir)
    return None


def discover(gt_root: Path, pred_root: Path) -> list[CaseSpec]:
    """Cases of a CHAOS ground-truth root with their predictions (None where missing)."""
    folders = _case_folders(gt_root)
    single = is_chaos_case(gt_root)
    cases = []
    for folder, modality in folders:
        relative = Path(".") if single else folder.relative_to(gt_root)
        case_id = folder.name if single else "_".join(relative.parts)
        if not single and gt_root.name.upper() in ("CT", "MR"):
            case_id = f"{gt_root.name.upper()}_{case_id}"
        dicom_dir = _dicom_dir(folder)
        pred = _find_prediction(pred_root, case_id, relative, single, dicom_dir)
        chaos_labels = "chaos_mr" if modality == "MR" else "chaos_ct"
        cases.append(CaseSpec(
            case_id=case_id,
            gt=ChaosSeries(folder / "Ground", dicom_dir),
            pred=pred,
            gt_labels=chaos_labels,
            # PNG predictions use the CHAOS grey values; NIfTI predictions FLARE numbers.
            pred_labels=chaos_labels if isinstance(pred, ChaosSeries) else "flare",
            modality=modality,
        ))
    return cases
