"""What the sliding window needs from an inference engine, and how a model file is chosen.

A backend compiles one model file of a bundle and runs it on one patch at a time. Precisions:
``int8`` (the bundle's quantised model), ``fp32`` (the ONNX export, run in float32) and ``bf16``
(the fp32 model run in bfloat16 by OpenVINO on CPUs with AMX/AVX512-BF16). ``auto`` picks the
fastest precision the bundle's fidelity report validated (an INT8 model the report timed slower
than fp32 is skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError

BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("auto", "int8", "fp32", "bf16")

#: Fastest first: what ``--precision auto`` tries, per backend.
_AUTO_ORDER = {"openvino": ("int8", "bf16", "fp32"), "onnxruntime": ("int8", "fp32")}

#: Bundle file key for each (backend, precision); the first key the bundle has is used.
_FILE_KEYS = {
    ("openvino", "int8"): ("int8_openvino", "int8_onnx"),
    ("openvino", "fp32"): ("fp32",),
    ("openvino", "bf16"): ("fp32",),
    ("onnxruntime", "int8"): ("int8_onnx",),
    ("onnxruntime", "fp32"): ("fp32",),
}


@dataclass(frozen=True)
class ModelChoice:
    """The model file and numeric precision a session will run."""

    backend: str
    precision: str
    file_key: str
    path: Path


class Session(Protocol):
    """One compiled model that maps a patch to class logits (and optionally presence logits)."""

    choice: ModelChoice

    def run(
        self, image: np.ndarray, presence: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run one patch.

        Parameters
        ----------
        image : np.ndarray
            float32, shape (1, C, *patch_size).
        presence : np.ndarray or None
            float32, shape (1, K) organ-presence prior for networks with a presence input.

        Returns
        -------
        logits : np.ndarray
            float32, shape (num_classes, *patch_size).
        presence_logits : np.ndarray or None
            float32, shape (K,) where the network has a presence head.
        """
        ...

    def run_many(
        self,
        images: Iterable[np.ndarray],
        presence: np.ndarray | None = None,
        copy: bool = True,
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Run patches in order (a backend may keep several in flight); yields as ``run``.

        ``copy=False`` lets a backend hand out its own output buffers: each result is then
        valid only until the next one is requested (enough for a consumer that adds it up
        at once, and it saves a fresh copy of every patch's logits).
        """
        ...


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an engine's exception message, cut to ``limit`` characters
    (engines put whole stack dumps into their messages; the CLI prints one line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def _validated(bundle: Bundle, backend: str, precision: str) -> bool:
    names = set(bundle.validated_precisions) | {"fp32"}
    if precision == "int8":
        suffix = "openvino" if backend == "openvino" else "onnx"
        return ("int8" in names or f"int8_{suffix}" in names) and not _int8_measured_slower(
            bundle, f"int8_{suffix}"
        )
    return precision in names


def validated_choice(bundle: Bundle, choice: ModelChoice) -> bool:
    """Whether the bundle's fidelity report validated the model ``choice`` runs.

    fp32 always counts as validated (it is the reference); bf16 runs the fp32 file.
    """
    names = set(bundle.validated_precisions) | {"fp32"}
    if choice.precision == "int8":
        return "int8" in names or choice.file_key in names
    return choice.precision in names or choice.precision == "bf16"


def _int8_measured_slower(bundle: Bundle, key: str) -> bool:
    """True when the fidelity report timed the shipped INT8 model slower than fp32.

    ONNX Runtime's QDQ INT8 3D convolutions are slower than fp32 on x86; ``auto`` means
    fastest, so such a model is only used when asked for by name.
    """
    for report in bundle.fidelity.get("variants", {}).values():
        if report.get("shipped_as") == key and report.get("passed"):
            return float(report.get("latency_ratio_int8_vs_fp32", 0.0)) > 1.0
    return False


def choose_model(bundle: Bundle, backend: str, precision: str) -> ModelChoice:
    """Resolve ``--backend``/``--precision`` to one file of the bundle.

    Raises :class:`EdgesegError` for an unknown backend/precision, ``bf16`` on ONNX Runtime, or
    a precision the bundle has no file for.
    """
    if backend not in BACKENDS:
        raise EdgesegError(
            f"--backend: unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"
        )
    if precision not in PRECISIONS:
        raise EdgesegError(
            f"--precision: unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    if precision == "auto":
        for candidate in _AUTO_ORDER[backend]:
            keys = [k for k in _FILE_KEYS[(backend, candidate)] if k in bundle.files]
            if keys and _validated(bundle, backend, candidate):
                return ModelChoice(backend, candidate, keys[0], bundle.model_path(keys[0]))
        precision = "fp32"
    if (backend, precision) not in _FILE_KEYS:
        raise EdgesegError(f"--precision {precision}: not available with the {backend} backend")
    for key in _FILE_KEYS[(backend, precision)]:
        if key in bundle.files:
            return ModelChoice(backend, precision, key, bundle.model_path(key))
    have = ", ".join(sorted(bundle.files))
    raise EdgesegError(
        f"{bundle.root}: bundle has no {precision} model for {backend} (files: {have})"
    )


def open_session(
    bundle: Bundle,
    backend: str,
    precision: str,
    threads: int | None,
    openvino_precision_hint: str | None = None,
    streams: int | None = None,
) -> Session:
    """Compile the chosen model file on the chosen backend.

    ``openvino_precision_hint`` overrides OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``
    runs an INT8 model's float layers as a CPU without AMX would; ``"default"`` sets none).
    ``streams``: OpenVINO inference streams (patches in flight; None: 2 from 2 threads up).
    ONNX Runtime runs one patch at a time.
    """
    choice = choose_model(bundle, backend, precision)
    if backend == "openvino":
        from edge_seg.backends.openvino import OpenVinoSession

        return OpenVinoSession(bundle, choice, threads, openvino_precision_hint, streams)
    if openvino_precision_hint is not None:
        raise EdgesegError("an OpenVINO precision hint was given for the onnxruntime backend")
    from edge_seg.backends.onnxruntime import OnnxRuntimeSession

    return OnnxRuntimeSession(bundle, choice, threads)
