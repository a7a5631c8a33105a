"""Writing a phantom volume as a DICOM series (one file per axial slice) with pydicom.

The files carry what DICOM readers need to rebuild the geometry: ImagePositionPatient per slice,
ImageOrientationPatient, PixelSpacing (row spacing, column spacing), SliceThickness and
SpacingBetweenSlices, and matching study/series/frame-of-reference UIDs. UIDs derive from the
case seed, so the same seed writes the same files. CT is stored like CHAOS CT: unsigned 16-bit
with RescaleIntercept -1024.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_INTERCEPT = -1024


def uid(*parts: object) -> str:
    """A deterministic DICOM UID from ``parts``."""
    return generate_uid(entropy_srcs=["edgeseg-synth", *(str(p) for p in parts)])


def write_series(
    volume: np.ndarray,
    folder: Path,
    file_names: Sequence[str],
    *,
    spacing_mm: tuple[float, float, float],
    origin: tuple[float, float, float],
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    series_description: str,
    patient_id: str,
    extra: Callable[[FileDataset], None] | None = None,
) -> None:
    """Write ``volume`` (z, y, x; index 0 lowest z) as one file per slice.

    ``file_names[k]`` is the name of slice ``k`` (callers choose the order of names).
    """
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    sz, sy, sx = spacing_mm
    if modality == "CT":
        stored = np.clip(volume.astype(np.int32) - CT_INTERCEPT, 0, 65535).astype(np.uint16)
    else:
        stored = np.clip(np.rint(volume), 0, 65535).astype(np.uint16)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    for k in range(nz):
        instance_uid = uid(series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / file_names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = instance_uid
        ds.StudyDate = ds.SeriesDate = "20000101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.Modality = modality
        ds.Manufacturer = "edgeseg synthetic phantom"
        ds.PatientName = f"SYNTH^{patient_id}"
        ds.PatientID = patient_id
        ds.PatientPosition = "FFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        z = origin[2] + k * sz
        ds.ImagePositionPatient = [f"{origin[0]:.4f}", f"{origin[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{z:.4f}"
        ds.SliceThickness = f"{sz:.4f}"
        ds.SpacingBetweenSlices = f"{sz:.4f}"
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (y), then column spacing (x)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept = str(CT_INTERCEPT)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = "50", "400"
        if extra is not None:
            extra(ds)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.save_as(folder / file_names[k], enforce_file_format=True)
