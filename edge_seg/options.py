"""Options of a prediction run, kept apart from the runtime so that reading them is cheap.

The command line builds a :class:`PredictOptions` before the runtime's libraries (SciPy,
OpenVINO) are imported; see :mod:`edge_seg.launch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_seg.errors import EdgesegError

#: What ``--presence`` accepts.
PRESENCE_MODES = ("prior", "auto")

#: Organ components below this volume (ml) are removed from a label map by default. The
#: smallest organs of the FLARE set are several ml when present (an adrenal gland 4-6 ml, the
#: abdominal oesophagus 5 ml and more), so a component of under half a millilitre (18 voxels
#: of a 3 mm network grid) is a speck: a few voxels whose class any perturbation of the
#: logits, INT8 rounding included, can flip, and no organ.
DEFAULT_MIN_COMPONENT_ML = 0.5


@dataclass
class PredictOptions:
    """How to run a bundle.

    Attributes
    ----------
    backend : {"openvino", "onnxruntime"}
    precision : {"auto", "int8", "fp32", "bf16"}
        ``auto``: the fastest precision the bundle's fidelity report validated.
    step : float
        Sliding-window step as a fraction of the patch (0.5 as nnU-Net).
    crop : str
        ``auto``, ``none`` or ``middle:N`` (see :mod:`edge_seg.crop`).
    lcc : bool
        Keep only the largest connected component of each organ.
    min_component_ml : float
        Remove organ components smaller than this volume in ml, the largest included
        (0: keep them; see :data:`DEFAULT_MIN_COMPONENT_ML`).
    absent_organs : tuple of str or int
        Organs known to be absent (names or label numbers), e.g. after resection.
    presence : {"prior", "auto"}
        ``auto``: let the model's presence head decide which organs are present (where the
        bundle has one); ``prior``: all organs present except ``absent_organs``.
    threads : int or None
        Inference threads (None: the backend's default, all cores).
    present_organs : tuple of str or int
        Organs known to be present (prior 1 for a network with a presence input; organs
        named in neither list get 0.5, "unknown").
    openvino_precision_hint : str or None
        Override of OpenVINO's ``INFERENCE_PRECISION_HINT`` (e.g. ``"f32"`` to time an INT8
        model's float layers as on a CPU without AMX); None keeps the precision's own.
    streams : int or None
        OpenVINO inference streams, i.e. patches run at once, sharing ``threads`` (None: 2
        where there are 2 threads or more, else 1). ONNX Runtime runs one patch at a time.
    """

    backend: str = "openvino"
    precision: str = "auto"
    step: float = 0.5
    crop: str = "auto"
    lcc: bool = True
    min_component_ml: float = DEFAULT_MIN_COMPONENT_ML
    absent_organs: tuple[str | int, ...] = ()
    presence: str = "prior"
    threads: int | None = None
    present_organs: tuple[str | int, ...] = ()
    openvino_precision_hint: str | None = None
    streams: int | None = None

    def check(self) -> None:
        """Refuse option values that cannot mean anything, before any work is done.

        Raises
        ------
        EdgesegError
            One line naming the option, e.g. ``--min-component-ml: inf is not a volume >= 0``.
        """
        if not 0 < self.step <= 1:  # NaN fails too
            raise EdgesegError(f"--step: {self.step} is not in (0, 1]")
        if self.presence not in PRESENCE_MODES:
            raise EdgesegError(
                f"--presence: {self.presence!r} is not one of {', '.join(PRESENCE_MODES)}"
            )
        # Infinity is no volume: converting it to a voxel count overflows, and "remove every
        # organ" is not a request anyone makes on purpose.
        if not (self.min_component_ml >= 0 and math.isfinite(self.min_component_ml)):
            raise EdgesegError(
                f"--min-component-ml: {self.min_component_ml} is not a volume >= 0 "
                "(a finite number of ml)"
            )
