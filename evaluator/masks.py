"""Folders of one binary mask per structure, as TotalSegmentator writes and publishes them.

TotalSegmentator's default output (without ``--ml``) is a folder holding one mask per structure,
``liver.nii.gz``, ``kidney_right.nii.gz``, ... (117 of them for the ``total`` task), and its
public dataset stores each subject's ground truth the same way, in ``<subject>/segmentations/``.
A mask folder is scored as the label map it stands for: each organ of the label set in use gets
its mask, written with the value that set gives the organ, so the rest of the evaluator sees an
ordinary label map. Files of structures the label set does not name (vertebrae, ribs, ...) are
not read. An organ of the label set without a mask file counts as not segmented, as a label
value missing from a label map does; ``--organ`` restricts a run to the organs a
``--roi_subset`` run did write.

A voxel in two organs' masks is refused rather than given to one of them, since either choice
would change both organs' scores without a word.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_LABELS, canonical_organ_name
from evaluator.labelsets import PRESETS, LabelSet
from evaluator.volumes import LabelVolume, read_label_file, same_geometry, strip_image_suffix

#: The subfolder of a TotalSegmentator dataset subject that holds its masks.
DATASET_SUBFOLDER = "segmentations"

_KNOWN_ORGANS = frozenset(FLARE_LABELS) | {o for s in PRESETS.values() for o in s.organs}


def _masks_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = strip_image_suffix(path.name)
        if name is None or not path.is_file():
            continue
        organ = canonical_organ_name(name)
        if organ in found:
            raise EvaluationError(f"{folder}: two masks of {organ}: {found[organ].name} and "
                                  f"{path.name}")
        found[organ] = path
    return found


def mask_files(folder: Path) -> dict[str, Path]:
    """Structure name (canonical spelling) -> mask file, for the masks of ``folder``.

    The masks are the image files directly in ``folder`` or, where it has none, in its
    ``segmentations/`` subfolder (a TotalSegmentator dataset subject).
    """
    found = _masks_in(folder)
    subfolder = folder / DATASET_SUBFOLDER
    if not any(organ in _KNOWN_ORGANS for organ in found) and subfolder.is_dir():
        return _masks_in(subfolder)
    return found


def is_mask_folder(folder: Path) -> bool:
    """True if ``folder`` holds a mask of at least one organ that a label table knows."""
    try:
        return folder.is_dir() and any(organ in _KNOWN_ORGANS for organ in mask_files(folder))
    except (OSError, EvaluationError):
        # A folder that cannot be listed or holds a duplicate is still a mask folder: reading
        # it reports the problem against its case instead of dropping the case.
        return folder.is_dir()


def read_mask_folder(folder: Path, labels: LabelSet) -> LabelVolume:
    """The label map a mask folder stands for, in the values of ``labels``.

    Parameters
    ----------
    folder : Path
        A folder of binary masks named by structure (see :func:`mask_files`).
    labels : LabelSet
        The label set the map is written in: organ ``o`` gets
        ``labels.representative_value(o)`` wherever its mask is non-zero.

    Returns
    -------
    LabelVolume
        On the masks' common grid; ``path`` is ``folder``.

    Raises
    ------
    EvaluationError
        If no organ of ``labels`` has a mask, a mask is unreadable or not a label map, two
        masks lie on different grids, or two masks share a voxel.

    Examples
    --------
    >>> from evaluator.labelsets import PRESETS
    >>> volume = read_mask_folder(Path("ts_out/case_001"), PRESETS["flare"])  # doctest: +SKIP
    """
    found = mask_files(folder)
    files = {organ: found[organ] for organ in labels.organs if organ in found}
    if not files:
        raise EvaluationError(
            f"{folder}: no mask of an organ of label set {labels.name!r} (expected files such "
            f"as {', '.join(f'{o}.nii.gz' for o in labels.organs[:3])})"
        )
    merged: np.ndarray | None = None
    reference: LabelVolume | None = None
    by_value = {labels.representative_value(o): o for o in files}
    for organ, path in files.items():
        volume = read_label_file(path)
        if reference is None:
            reference = volume
            dtype = np.uint8 if max(by_value) <= 255 else np.uint16
            merged = np.zeros(volume.array.shape, dtype)
        else:
            problem = same_geometry(reference, volume, check_position=True)
            if problem:
                raise EvaluationError(f"{path}: not on the grid of the mask "
                                      f"{reference.path.name}: "
                                      f"{problem.replace('ground truth', 'that mask')}")
        assert merged is not None
        inside = volume.array != 0
        taken = merged[inside]
        if taken.any():
            other = files[by_value[int(taken[taken != 0][0])]]
            raise EvaluationError(f"{path}: {int(np.count_nonzero(taken))} voxel(s) also in the "
                                  f"mask {other.name}; masks must not overlap")
        merged[inside] = labels.representative_value(organ)
    assert reference is not None and merged is not None
    return LabelVolume(array=merged, spacing_mm=reference.spacing_mm, origin=reference.origin,
                       direction=reference.direction, path=folder)
