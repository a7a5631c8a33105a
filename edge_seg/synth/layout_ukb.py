"""UK Biobank-like layout: opposed-phase Dixon NIfTI volumes and a per-subject presence CSV.

``images/<eid>.nii.gz`` (T1 Dixon opposed phase, float32), ``organ_presence.csv`` (``eid`` then
one 1/0 column per FLARE organ, as read by ``evaluator.presence``) and, with voxel labels
requested, ``labels/<eid>.nii.gz`` (uint8, FLARE numbers). Subject ids are 7-digit numbers like
UK Biobank's ``eid``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from edge_seg.synth.layout_nnunet import to_sitk
from edge_seg.synth.phantom import Phantom
from evaluator.labels import FLARE_LABELS

PRESENCE_CSV = "organ_presence.csv"
FIRST_EID = 1000001


def subject_id(index: int) -> str:
    """Synthetic 7-digit eid of the ``index``-th subject."""
    return str(FIRST_EID + index)


def write_case(phantom: Phantom, root: Path, case_id: str, with_labels: bool) -> None:
    """Write the opposed-phase volume (and labels) of one subject."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    opposed = phantom.channels["t1_opposed_phase"].astype(np.float32)
    sitk.WriteImage(
        to_sitk(opposed, phantom), str(root / "images" / f"{case_id}.nii.gz"), useCompression=True
    )
    if with_labels:
        (root / "labels").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(
            to_sitk(phantom.labels, phantom),
            str(root / "labels" / f"{case_id}.nii.gz"),
            useCompression=True,
        )


def write_presence_csv(root: Path, rows: list[tuple[str, tuple[str, ...]]]) -> None:
    """``organ_presence.csv``: one row per (eid, organs present in the patient)."""
    with open(root / PRESENCE_CSV, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["eid", *FLARE_LABELS])
        for eid, present in rows:
            writer.writerow([eid, *(1 if organ in present else 0 for organ in FLARE_LABELS)])
