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

Masks may overlap: TotalSegmentator's ``total`` task combines several networks (the aorta and
the vena cava come from another one than the liver), and its dataset's masks overlap too. A
voxel in two masks goes to the structure TotalSegmentator's class map lists later, as in the
label map its ``--ml`` option writes, and the case gets a note with the voxel counts.
"""

from __future__ import annotations

from collections.abc import Collection
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


def _precedence(labels: LabelSet) -> list[str]:
    """The label set's organs in the order they are written: TotalSegmentator's class order
    (a later class wins a shared voxel, as in its ``--ml`` output), then the others."""
    ts_value = {o: r[0] for o, r in PRESETS["totalsegmentator"].ranges.items()}
    return sorted(labels.organs, key=lambda o: (o not in ts_value, ts_value.get(o, 0)))


def read_mask_folder(folder: Path, labels: LabelSet,
                     organs: Collection[str] | None = None) -> LabelVolume:
    """The label map a mask folder stands for, in the values of ``labels``.

    Parameters
    ----------
    folder : Path
        A folder of binary masks named by structure (see :func:`mask_files`).
    labels : LabelSet
        The label set the map is written in: organ ``o`` gets
        ``labels.representative_value(o)`` wherever its mask is non-zero.
    organs : collection of str, optional
        Only these organs of ``labels`` are read (the ones a run scores); default all.

    Returns
    -------
    LabelVolume
        On the masks' common grid; ``path`` is ``folder``; ``notes`` counts the voxels that
        two masks share, each given to the organ TotalSegmentator lists later.

    Raises
    ------
    EvaluationError
        If no organ of ``labels`` has a mask, a mask is unreadable or not a label map, or two
        masks lie on different grids.

    Examples
    --------
    >>> from evaluator.labelsets import PRESETS
    >>> volume = read_mask_folder(Path("ts_out/case_001"), PRESETS["flare"])  # doctest: +SKIP
    """
    found = mask_files(folder)
    available = [o for o in _precedence(labels) if o in found]
    if not available:
        raise EvaluationError(
            f"{folder}: no mask of an organ of label set {labels.name!r} (expected files such "
            f"as {', '.join(f'{o}.nii.gz' for o in labels.organs[:3])})"
        )
    wanted = [o for o in available if organs is None or o in organs]
    # A later class takes a shared voxel whether it is scored or not, so the masks of the
    # organs after the first wanted one are read too (a scored organ's voxels must not
    # depend on --organ); those that are not wanted only clear voxels.
    start = available.index(wanted[0]) if wanted else len(available)
    to_read = available[start:]
    # The grid comes from a mask even when no wanted organ has one (it is then not segmented).
    reference = read_label_file(found[(to_read or available)[0]])
    values = [labels.representative_value(o) for o in wanted] or [0]
    merged = np.zeros(reference.array.shape, np.uint8 if max(values) <= 255 else np.uint16)
    owner = {labels.representative_value(o): o for o in wanted}
    shared: dict[tuple[str, str], int] = {}
    for organ in to_read:
        path = found[organ]
        volume = reference if path == reference.path else read_label_file(path)
        problem = same_geometry(reference, volume, check_position=True)
        if problem:
            raise EvaluationError(f"{path}: not on the grid of the mask {reference.path.name}: "
                                  f"{problem.replace('ground truth', 'that mask')}")
        inside = volume.array != 0
        earlier = merged[inside]
        for value, count in zip(*np.unique(earlier[earlier != 0], return_counts=True),
                                strict=True):
            shared[owner[int(value)], organ] = int(count)
        merged[inside] = labels.representative_value(organ) if organ in wanted else 0
    notes = []
    if shared:
        pairs = "; ".join(f"{a} and {b}: {n}" for (a, b), n in list(shared.items())[:4])
        more = f"; {len(shared) - 4} more pairs" if len(shared) > 4 else ""
        notes.append(f"{folder}: {sum(shared.values())} voxel(s) lie in two masks ({pairs}{more}); "
                     "each went to the second organ named, as in TotalSegmentator's --ml map")
    return LabelVolume(array=merged, spacing_mm=reference.spacing_mm, origin=reference.origin,
                       direction=reference.direction, path=folder, notes=notes)
