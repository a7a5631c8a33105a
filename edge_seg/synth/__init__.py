"""Synthetic abdominal CT/MR phantoms with FLARE-numbered organ labels.

>>> from edge_seg.synth import generate_phantom
>>> p = generate_phantom(0, spacing_mm=(3.0, 3.0, 3.0), shape_yx=(130, 130), n_slices=80)
>>> p.labels.shape, p.image.dtype
((80, 130, 130), dtype('int16'))
"""

from edge_seg.synth.anatomy import RESECTABLE_ORGANS
from edge_seg.synth.phantom import MODALITIES, Phantom, generate_phantom
from edge_seg.synth.protocols import PROTOCOLS, CaseParams, sample_case_params

__all__ = [
    "MODALITIES",
    "PROTOCOLS",
    "RESECTABLE_ORGANS",
    "CaseParams",
    "Phantom",
    "generate_phantom",
    "sample_case_params",
]
