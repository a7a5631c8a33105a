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

Every subfolder of ``CT/`` and every ``T1DUAL``/``T2SPIR`` folder of an MR patient is a case; one
that lacks ``Ground/`` or ``DICOM_anon/`` (or an MR patient with neither sequence) is returned
with :attr:`~evaluator.adapters.base.CaseSpec.gt_problem` set, so it is listed as a case
without a readable ground truth rather than skipped. Auto-detection counts complete cases only.
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
    """(case folder, modality) pairs of the complete cases under ``root``."""
    return [(folder, modality) for folder, modality, missing in _candidate_folders(root)
            if not missing]


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted (macOS ``._*`` and ``__MACOSX`` copies are not cases)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "__MACOSX")))


def _missing_parts(folder: Path) -> str:
    """What a case folder lacks, as "no Ground/" ("" for a complete one)."""
    lacks = [name + "/" for name in ("DICOM_anon", "Ground") if not (folder / name).is_dir()]
    if len(lacks) == 2:
        return "neither DICOM_anon/ nor Ground/"
    return f"no {lacks[0]}" if lacks else ""


def _candidate_folders(root: Path) -> list[tuple[Path, str, str]]:
    """(folder, modality, missing parts) of every folder in a case position under ``root``.

    Every subfolder of ``CT/`` is a case, and so is every ``T1DUAL``/``T2SPIR`` folder of an
    MR patient; an MR patient folder with neither sequence is listed as lacking both. A case
    that lacks a part is returned (not skipped) so that it can be reported.
    """
    if is_chaos_case(root):
        return [(root, _modality_of(root), "")]
    found: list[tuple[Path, str, str]] = []
    modality_dirs = [root / m for m in ("CT", "MR") if (root / m).is_dir()]
    if not modality_dirs and root.name.upper() in ("CT", "MR"):
        modality_dirs = [root]
    for modality_dir in modality_dirs:
        modality = modality_dir.name.upper()
        for case in _subfolders(modality_dir):
            if modality == "CT":
                found.append((case, "CT", _missing_parts(case)))
                continue
            sequences = [case / s for s in ("T1DUAL", "T2SPIR") if (case / s).is_dir()]
            if not sequences:
                found.append((case, "MR", "no T1DUAL/ or T2SPIR/ sequence folder"))
            found += [(sequence, "MR", _missing_parts(sequence)) for sequence in sequences]
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


def _case_id(folder: Path, gt_root: Path, single: bool) -> tuple[str, Path]:
    """(case id, path of the case below the root) of a case folder."""
    relative = Path(".") if single else folder.relative_to(gt_root)
    case_id = folder.name if single else "_".join(relative.parts)
    if not single and gt_root.name.upper() in ("CT", "MR"):
        case_id = f"{gt_root.name.upper()}_{case_id}"
    return case_id, relative


def discover(gt_root: Path, pred_root: Path) -> list[CaseSpec]:
    """Cases of a CHAOS ground-truth root with their predictions (None where missing).

    A case folder without ``Ground/`` or ``DICOM_anon/`` is returned with ``gt_problem`` set
    (its ground truth cannot be read), so the run lists it as a failed case.
    """
    single = is_chaos_case(gt_root)
    cases = []
    for folder, modality, missing in _candidate_folders(gt_root):
        case_id, relative = _case_id(folder, gt_root, single)
        dicom_dir = _dicom_dir(folder)
        pred = _find_prediction(pred_root, case_id, relative, single, dicom_dir)
        chaos_labels = "chaos_mr" if modality == "MR" else "chaos_ct"
        problem = (f"{folder}: CHAOS case folder has {missing}, so its ground truth cannot be "
                   f"read; case {case_id} not scored") if missing else None
        cases.append(CaseSpec(
            case_id=case_id,
            gt=ChaosSeries(folder / "Ground", dicom_dir),
            pred=pred,
            gt_labels=chaos_labels,
            # PNG predictions use the CHAOS grey values; NIfTI predictions FLARE numbers.
            pred_labels=chaos_labels if isinstance(pred, ChaosSeries) else "flare",
            modality=modality,
            gt_problem=problem,
        ))
    return cases
