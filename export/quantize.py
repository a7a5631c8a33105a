"""Post-training INT8 quantisation of a bundle's fp32 ONNX model.

Two routes, both calibrated on real preprocessed patches (:mod:`export.calibration`):

* OpenVINO IR through NNCF (``nncf.quantize``) - the default, fastest on x86 CPUs;
* ONNX Runtime static QDQ (``onnxruntime.quantization.quantize_static``) - portable (ARM...).

Each variant may also be built in a mixed-precision form that keeps the most sensitive layers
(the first and the last convolution: raw intensities in, class logits out) in floating point;
:mod:`export.fidelity` decides which variants meet the bar.

Dense layers (MatMul/Gemm: the DAFT blocks' small MLPs and the presence head of the HALOS-style
network) always stay in floating point. They cost nothing next to the 3D convolutions, and
their inputs (a globally pooled feature vector concatenated with a 0/0.5/1 prior) mix scales
that one INT8 range per tensor represents badly; every decoder stage's scale and shift comes
out of them, so their error reaches every voxel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.errors import EdgesegError

OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
BACKENDS = (OPENVINO, ONNXRUNTIME)
#: ``keep_fp`` value asking for NNCF's accuracy-aware quantisation instead of a fixed scope.
ACCURACY_AWARE = -1


def _feeds(samples: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, sample, strict=True)) for sample in samples]


def onnx_input_names(onnx_path: str | Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def conv_node_names(onnx_path: str | Path) -> list[str]:
    """Names of the Conv/ConvTranspose nodes of an ONNX graph, in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]


def _ov_conv_names(model: Any) -> list[str]:
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
    ]


#: Operator types never quantised (see the module docstring), in ONNX and OpenVINO spelling.
_DENSE_ONNX = ("MatMul", "Gemm")
_DENSE_OPENVINO = ("MatMul",)


#: Shape-only or pooling operators between a feature map and a dense layer (GAP, concat with
#: the prior, flatten); ONNX Runtime would quantise their outputs, i.e. the dense input.
_DENSE_FEEDERS = (
    "Concat", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "GlobalAveragePool", "ReduceMean",
    "GlobalMaxPool", "ReduceMax",
)


def dense_node_names(onnx_path: str | Path) -> list[str]:
    """Names of the MatMul/Gemm nodes of an ONNX graph and of the pooling/concat/reshape
    nodes that feed them (so that the dense layers' inputs stay in floating point too)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    pending = [n for n in graph.node if n.op_type in _DENSE_ONNX]
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        for tensor in node.input:
            feeder = producer.get(tensor)
            if feeder is not None and feeder.op_type in _DENSE_FEEDERS:
                pending.append(feeder)
    return names


def _ignored_scope(conv_names: Sequence[str]) -> Any:
    import nncf

    # validate=False: a plain U-Net has no dense layer, and that is not an error.
    return nncf.IgnoredScope(names=list(conv_names), types=list(_DENSE_OPENVINO), validate=False)


def sensitive_layers(names: Sequence[str], count: int = 1) -> list[str]:
    """The first and last ``count`` convolutions (input intensities and output logits)."""
    if len(names) <= 2 * count:
        return list(names)
    return [*names[:count], *names[-count:]]


def quantize_openvino(
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    xml_path: str | Path,
    keep_fp: int = 0,
) -> dict[str, Any]:
    """NNCF post-training INT8 of the ONNX model, saved as OpenVINO IR (``.xml`` + ``.bin``).

    ``keep_fp`` > 0 leaves that many convolutions at each end of the network in floating point
    (NNCF ignored scope). Returns a description of what was done.
    """
    import logging

    import nncf
    import openvino as ov

    # NNCF logs every ignored node at INFO level; the report records them instead.
    nncf.set_log_level(logging.WARNING)
    names = onnx_input_names(onnx_path)
    model = ov.convert_model(str(onnx_path))
    ignored = sensitive_layers(_ov_conv_names(model), keep_fp) if keep_fp else []
    dataset = nncf.Dataset(_feeds(samples, names))
    quantized = nncf.quantize(
        model,
        dataset,
        # MIXED: symmetric weights, asymmetric activations - activations after LeakyReLU and
        # normalised CT intensities are far from symmetric around zero.
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
        ignored_scope=_ignored_scope(ignored),
    )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return {
        "tool": f"nncf {nncf.__version__}",
        "preset": "mixed",
        "calibration_samples": len(samples),
        "fp_layers": ignored,
        "fp_op_types": list(_DENSE_OPENVINO),
    }


def _patch_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean Dice over the classes either label patch contains (1.0 if only background)."""
    classes = [c for c in np.union1d(np.unique(reference), np.unique(candidate)) if c != 0]
    if not classes:
        return 1.0
    scores = []
    for c in classes:
        a, b = reference == c, candidate == c
        scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def quantize_openvino_accuracy_aware(
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    xml_path: str | Path,
    max_drop: float = 0.01,
    max_iterations: int = 12,
) -> dict[str, Any]:
    """NNCF accuracy-aware INT8: layers that cost agreement are reverted to floating point.

    The metric NNCF watches is the patch-level label agreement with the fp32 model (mean Dice
    over the organs in the patch) on the calibration patches; NNCF ranks the quantised layers
    by their effect on it and reverts the worst until the drop is at most ``max_drop``, or
    ``max_iterations`` layer groups have been reverted (bounds the run time; the fidelity
    check on held-out images decides afterwards whether the result ships).
    """
    import logging

    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    nncf.set_log_level(logging.WARNING)
    names = onnx_input_names(onnx_path)
    model = ov.convert_model(str(onnx_path))
    feeds = _feeds(samples, names)
    reference = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference_labels = [np.asarray(reference(feed)[0]).argmax(1) for feed in feeds]

    def agreement(compiled: Any, items: Any) -> tuple[float, list[float]]:
        scores = [
            _patch_agreement(reference_labels[index], np.asarray(compiled(feed)[0]).argmax(1))
            for index, feed in items
        ]
        return float(np.mean(scores)), scores

    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(feeds),
        nncf.Dataset(list(enumerate(feeds))),
        agreement,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
        ignored_scope=_ignored_scope(()),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_iterations,
            ranking_subset_size=min(len(samples), 6),
        ),
    )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    n_fake = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return {
        "tool": f"nncf {nncf.__version__} quantize_with_accuracy_control",
        "preset": "mixed",
        "calibration_samples": len(samples),
        "metric": "patch label agreement with fp32 (mean Dice), max absolute drop "
                  f"{max_drop}, at most {max_iterations} layer groups reverted",
        "fake_quantize_nodes": n_fake,
        "fp_op_types": list(_DENSE_OPENVINO),
    }


class _PatchReader:
    """ONNX Runtime ``CalibrationDataReader`` over the calibration patches."""

    def __init__(self, samples: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> None:
        self._feeds = _feeds(samples, names)
        self._iter: Iterator[dict[str, Any]] = iter(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_onnxruntime(
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    out_path: str | Path,
    keep_fp: int = 0,
) -> dict[str, Any]:
    """ONNX Runtime static INT8 in QDQ format (per-channel int8 weights, uint8 activations)."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_PatchReader, CalibrationDataReader):
        pass

    import logging

    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = onnx_input_names(onnx_path)
    out_path = Path(out_path)
    # ORT's recommended pre-processing: shape inference and graph optimisation (constant
    # folding, fusions) so that quantisation sees the graph the runtime will execute.
    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # ORT logs a warning per non-quantised norm weight
    try:
        try:
            quant_pre_process(str(onnx_path), str(prepared), auto_merge=True)
            source = prepared
        except Exception:  # pre-processing is an optimisation; the raw graph quantises too
            source = Path(onnx_path)
        excluded = sensitive_layers(conv_node_names(source), keep_fp) if keep_fp else []
        excluded += dense_node_names(source)
        quantize_static(
            str(source),
            str(out_path),
            Reader(samples, names),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    except Exception as exc:
        raise EdgesegError(f"{onnx_path}: ONNX Runtime quantisation failed ({exc})") from exc
    finally:
        root_logger.setLevel(level)
        prepared.unlink(missing_ok=True)
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ, per-channel int8 weights, uint8 activations, MinMax calibration",
        "calibration_samples": len(samples),
        "fp_layers": excluded,
    }


def quantize_variant(
    backend: str,
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    out_dir: str | Path,
    keep_fp: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Quantise for ``backend`` into ``out_dir``; return (file name, description).

    ``keep_fp``: 0 plain INT8; n > 0 keeps the first and last n convolutions in floating point;
    :data:`ACCURACY_AWARE` (OpenVINO only) lets NNCF choose the layers to keep.
    """
    suffix = "_mixed" if keep_fp else ""
    out_dir = Path(out_dir)
    if backend == OPENVINO and keep_fp == ACCURACY_AWARE:
        name = "model_int8_openvino_accuracy_aware.xml"
        info = quantize_openvino_accuracy_aware(onnx_path, samples, out_dir / name)
    elif backend == OPENVINO:
        name = f"model_int8_openvino{suffix}.xml"
        info = quantize_openvino(onnx_path, samples, out_dir / name, keep_fp)
    elif backend == ONNXRUNTIME:
        name = f"model_int8_qdq{suffix}.onnx"
        info = quantize_onnxruntime(onnx_path, samples, out_dir / name, keep_fp)
    else:
        raise EdgesegError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    return name, info
