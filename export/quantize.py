"""Post-training INT8 quantisation of a bundle's fp32 ONNX model.

Two routes, both calibrated on real preprocessed patches (:mod:`export.calibration`):

* OpenVINO IR through NNCF (``nncf.quantize``) - the default, fastest on x86 CPUs;
* ONNX Runtime static QDQ (``onnxruntime.quantization.quantize_static``) - portable (ARM...).

Each variant may also be built in mixed-precision forms that keep the most sensitive layers
(the first and the last n convolutions: raw intensities in, class logits out) in floating point;
:mod:`export.fidelity` decides which variants meet the bar.

Dense branches always stay in floating point: the DAFT blocks' small MLPs and the presence head
of the HALOS-style network, from the global pooling and the concat with the prior to the Mul/Add
that apply the per-channel scale and shift to the feature map. They cost nothing next to the 3D
convolutions, and their inputs (a pooled feature vector concatenated with a 0/0.5/1 prior) mix
scales that one INT8 range per tensor represents badly; every decoder stage's modulation comes
out of them, so their error reaches every voxel. The modulated feature map itself is quantised
where the next convolution reads it, like any other activation.

Instance normalisation (nnU-Net's default, ``MVN`` in OpenVINO) reads the raw convolution output
and stays in floating point too. Without an ignored scope NNCF puts a FakeQuantize in front of
every MVN, so each convolution's output is rounded to one per-tensor INT8 range fixed at
calibration. But the range of a convolution output before instance normalisation varies from
patch to patch (that is why the network normalises per instance), and the rounding error is then
amplified by the division by the patch's own standard deviation. ONNX Runtime's QDQ quantises
a convolution's output for the same reason (to fuse QLinearConv); in a graph with instance
norms, convolution outputs stay float there as well. Measured on the plain reference
model (held-out phantoms, no LCC): 0.917 mean Dice agreement with fp32 with MVN inputs
quantised, 0.918 with every convolution left in float but MVN inputs quantised, 0.980 with MVN
inputs in float and every convolution INT8. Convolutions still read INT8 activations (their
inputs are quantised after the LeakyReLU), so the INT8 speed-up is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge_seg.errors import EdgesegError

T = TypeVar("T")

OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
BACKENDS = (OPENVINO, ONNXRUNTIME)
#: ``keep_fp`` value asking for NNCF's accuracy-aware quantisation instead of a fixed scope.
ACCURACY_AWARE = -1
#: A mixed-precision level: n keeps the first and last n convolutions in float; (a, b) the
#: first a and the last b.
FloatEnds = int | tuple[int, int]

#: Mixed-precision fallbacks tried in turn, cheapest first: the first and last convolution in
#: float; then also the last full-resolution decoder convolution (the first one of the network
#: reads one channel and costs little, the last ones read every channel at full resolution);
#: then the first and last 2 and 3. At 3 a 5-stage nnU-Net keeps its full-resolution stages
#: (and the next encoder convolution) in float, the layers nearest the raw intensities and the
#: logits.
MIXED_LEVELS: tuple[FloatEnds, ...] = (1, (1, 2), 2, 3)


def float_ends(keep_fp: FloatEnds) -> tuple[int, int]:
    """``(first, last)`` counts of convolutions kept in float for a mixed-precision level."""
    if isinstance(keep_fp, tuple):
        return int(keep_fp[0]), int(keep_fp[1])
    return int(keep_fp), int(keep_fp)


def parse_level(text: str) -> FloatEnds:
    """A mixed-precision level from the command line: ``"0"``, ``"1"``, ``"1,2"``.

    >>> parse_level("1,2")
    (1, 2)
    >>> parse_level("0")
    0
    """
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 0:
        raise EdgesegError(f"mixed level {text!r}: expected N or FIRST,LAST (counts >= 0)")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def mixed_suffix(keep_fp: FloatEnds) -> str:
    """File/variant suffix of a mixed-precision level: ``_mixed``, ``_mixed2``, ...,
    ``_mixed1_2`` for the first 1 and the last 2."""
    first, last = float_ends(keep_fp)
    if first <= 0 and last <= 0:
        return ""
    if first != last:
        return f"_mixed{first}_{last}"
    return "_mixed" if first == 1 else f"_mixed{first}"


def _feeds(samples: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, sample, strict=True)) for sample in samples]


def onnx_input_names(onnx_path: str | Path) -> list[str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _onnx_node_names(onnx_path: str | Path, op_types: Sequence[str]) -> list[str]:
    """Names of the nodes of the given operator types in an ONNX graph, in graph order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def conv_node_names(onnx_path: str | Path) -> list[str]:
    """Names of the Conv/ConvTranspose nodes of an ONNX graph, in graph order."""
    return _onnx_node_names(onnx_path, ("Conv", "ConvTranspose"))


def _ov_conv_names(model: Any) -> list[str]:
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
    ]


#: Normalisation layers whose inputs stay in floating point (see the module docstring).
NORM_TYPES_ONNX = ("InstanceNormalization",)
NORM_TYPES_OPENVINO = ("MVN",)

#: Operator types of dense layers, in ONNX and OpenVINO spelling.
_DENSE_ONNX = ("MatMul", "Gemm")
_DENSE_OPENVINO = ("MatMul",)


@dataclass(frozen=True)
class _Node:
    """One operator of a graph, reduced to what the dense-branch walk needs."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dense: bool


def _dense_branch(nodes: Sequence[_Node], is_map: Callable[[str], bool]) -> list[str]:
    """Names of the nodes that compute on the per-channel vectors of the dense layers.

    A DAFT block is ``x * (1 + scale) + shift`` with ``(scale, shift) = MLP([mean(x), prior])``:
    the branch runs from the pooled feature map (``is_map`` false: batch x channels, or
    spatial extent 1) through the MLP to the Mul/Add that apply it to the feature map. Walking
    back from each dense layer over vector-valued tensors finds the pooling and the concat
    with the prior; walking forward finds the slicing and the modulating Mul/Add, which are
    kept (their output is a feature map, where the walk stops).
    """
    producer = {t: n for n in nodes for t in n.outputs}
    consumers: dict[str, list[_Node]] = {}
    for node in nodes:
        for tensor in node.inputs:
            consumers.setdefault(tensor, []).append(node)
    branch: dict[str, None] = {}
    pending = [n for n in nodes if n.dense]
    while pending:
        node = pending.pop()
        if node.name in branch:
            continue
        branch[node.name] = None
        if any(is_map(t) for t in node.outputs):
            continue  # the modulated feature map: end of the branch
        for tensor in node.inputs:  # back: pooling, concat with the prior
            feeder = producer.get(tensor)
            if feeder is not None and not is_map(tensor):
                pending.append(feeder)
        for tensor in node.outputs:  # forward: MLP, slicing, the Mul/Add on the feature map
            pending.extend(consumers.get(tensor, ()))
    return list(branch)


def dense_node_names(onnx_path: str | Path) -> list[str]:
    """ONNX nodes of the dense branches (see :func:`_dense_branch`); none in a plain U-Net."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    graph = model.graph
    if not any(n.op_type in _DENSE_ONNX for n in graph.node):
        return []
    shapes = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    constants = {init.name for init in graph.initializer}
    nodes = [
        _Node(n.name, tuple(i for i in n.input if i and i not in constants), tuple(n.output),
              n.op_type in _DENSE_ONNX)
        for n in graph.node
    ]

    def is_map(tensor: str) -> bool:
        dims = shapes.get(tensor)
        # Unknown shape: treat as a feature map (stop), the conservative choice.
        return dims is None or (len(dims) > 2 and any(d != 1 for d in dims[2:]))

    return _dense_branch(nodes, is_map)


def _openvino_dense_names(model: Any) -> list[str]:
    """OpenVINO friendly names of the dense branches of a converted model."""
    ops = list(model.get_ordered_ops())
    if not any(op.get_type_name() in _DENSE_OPENVINO for op in ops):
        return []
    shapes: dict[str, Any] = {}
    nodes = []
    for op in ops:
        if op.get_type_name() in ("Constant", "Parameter"):
            continue
        outputs = []
        for index, port in enumerate(op.outputs()):
            key = f"{op.get_friendly_name()}:{index}"
            shapes[key] = port.get_partial_shape()
            outputs.append(key)
        inputs = []
        for value in op.input_values():
            source = value.get_node()
            if source.get_type_name() != "Constant":
                inputs.append(f"{source.get_friendly_name()}:{value.get_index()}")
        nodes.append(_Node(op.get_friendly_name(), tuple(inputs), tuple(outputs),
                           op.get_type_name() in _DENSE_OPENVINO))

    def is_map(tensor: str) -> bool:
        shape = shapes.get(tensor)
        if shape is None or shape.rank.is_dynamic:
            return True
        dims = list(shape)
        return len(dims) > 2 and any(d.is_dynamic or d.get_length() != 1 for d in dims[2:])

    return _dense_branch(nodes, is_map)


def _ignored_scope(names: Sequence[str]) -> Any:
    import nncf

    # validate=False: a plain U-Net has no dense branch, and a network without instance
    # normalisation has no MVN; neither is an error.
    return nncf.IgnoredScope(names=list(names), types=list(NORM_TYPES_OPENVINO), validate=False)


def norm_node_names(onnx_path: str | Path) -> list[str]:
    """Names of the ONNX normalisation nodes (kept float, see the module docstring)."""
    return _onnx_node_names(onnx_path, NORM_TYPES_ONNX)


def sensitive_layers(names: Sequence[T], count: FloatEnds = 1) -> list[T]:
    """The first and last convolutions (input intensities and output logits) that a
    mixed-precision level keeps in float (``count``: see :data:`FloatEnds`); ``names`` in
    graph order (node names here, module ids in :mod:`export.distill`)."""
    first, last = float_ends(count)
    if first <= 0 and last <= 0:
        return []  # plain INT8
    if len(names) <= first + last:
        return list(names)
    return [*names[:first], *names[len(names) - last :]]


def quantize_openvino(
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    xml_path: str | Path,
    keep_fp: FloatEnds = 0,
) -> dict[str, Any]:
    """NNCF post-training INT8 of the ONNX model, saved as OpenVINO IR (``.xml`` + ``.bin``).

    ``keep_fp`` leaves convolutions at the ends of the network in floating point (NNCF ignored
    scope; see :data:`FloatEnds`). Returns a description of what was done.
    """
    import logging

    import nncf
    import openvino as ov

    # NNCF logs every ignored node at INFO level; the report records them instead.
    nncf.set_log_level(logging.WARNING)
    names = onnx_input_names(onnx_path)
    model = ov.convert_model(str(onnx_path))
    ignored = sensitive_layers(_ov_conv_names(model), keep_fp)
    dense = _openvino_dense_names(model)
    dataset = nncf.Dataset(_feeds(samples, names))
    quantized = nncf.quantize(
        model,
        dataset,
        # MIXED: symmetric weights, asymmetric activations - activations after LeakyReLU and
        # normalised CT intensities are far from symmetric around zero.
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
        ignored_scope=_ignored_scope([*ignored, *dense]),
    )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)
    return {
        "tool": f"nncf {nncf.__version__}",
        "preset": "mixed",
        "calibration_samples": len(samples),
        "fp_layers": ignored,
        "fp_dense_branch_nodes": len(dense),
        "fp_normalisation": list(NORM_TYPES_OPENVINO),
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
        ignored_scope=_ignored_scope(_openvino_dense_names(model)),
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
    }


# ORT's histogram calibrators run every patch of a chunk and keep all its intermediate tensors
# before building the histograms (merged across chunks); with all 35 patches of the HALOS
# reference model in one chunk that went past 24 GB. The chunk is sized from the tensor shapes
# rather than by a fixed patch count because the memory per patch grows with the patch size and
# the network width: about 0.6 GB for a 48x128x128 patch of either reference model, several GB
# for a wide nnU-Net at 128^3, where even 8 patches would not fit. The budget is a constant, not
# the machine's free memory, so that one bundle and calibration set give the same INT8 model on
# every machine (the histogram bins are laid out from the first chunk, so the chunk size moves
# the ranges slightly). 4 GiB leaves room on a 16 GB machine for what calibration holds besides
# the chunk: the calibration session's own buffers (one more forward pass), the models and the
# patches. Measured on HALOS (35 patches): calibration peaks at 1.2 GB in chunks of 1 and 4.0 GB
# in chunks of 5 (0.71 GB per patch, as estimated from the shapes), in about the same time
# (118 s and 128 s), so a tight budget costs no speed.
#: Activations ONNX Runtime's histogram calibrator may hold for one chunk of calibration
#: patches (see :func:`calibration_chunk`).
CALIB_CHUNK_BYTES = 4 * 2**30
#: Chunk size when the graph's tensor shapes cannot be inferred for the patch shape.
CALIB_CHUNK_SAMPLES = 8


def activation_bytes(onnx_path: str | Path, sample: Sequence[np.ndarray],
                     names: Sequence[str]) -> int | None:
    """Memory ONNX Runtime's histogram calibrator needs per calibration patch, from the graph.

    Parameters
    ----------
    onnx_path
        The model that will be calibrated (after pre-processing: its tensors are the ones
        calibrated).
    sample
        One calibration sample, in the order of ``names``; only the shapes are used.
    names
        The graph's non-initialiser input names.

    Returns
    -------
    int or None
        Bytes of every float tensor of one forward pass (the calibrator keeps them all until
        the chunk's histograms are built) plus two copies of the largest one (the collector
        stacks and flattens a tensor's chunk, then takes its absolute value); ``None`` if
        shape inference leaves some float tensor without a static shape.
    """
    import onnx

    # The element types ORT's calibrators collect.
    item_bytes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2}
    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    # The pre-processed graph carries symbolic shapes ("batch", "z", ...); drop them so that
    # inference works from the concrete patch shape instead.
    del graph.value_info[:]
    shapes = {name: array.shape for name, array in zip(names, sample, strict=True)}
    for value in [*graph.input, *graph.output]:
        if value.name in shapes:
            value.type.tensor_type.shape.ClearField("dim")
            for size in shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = int(size)
        else:
            value.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model).graph
    constants = {init.name for init in graph.initializer}
    sizes = []
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor = value.type.tensor_type
        if value.name in constants or tensor.elem_type not in item_bytes:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if not tensor.HasField("shape") or not all(dims):
            return None
        sizes.append(int(np.prod(dims, dtype=np.int64)) * item_bytes[tensor.elem_type])
    if not sizes:
        return None
    return sum(sizes) + 2 * max(sizes)


def calibration_chunk(n_samples: int, sample_bytes: int | None,
                      budget: int = CALIB_CHUNK_BYTES,
                      fallback: int = CALIB_CHUNK_SAMPLES) -> int:
    """Number of calibration patches ONNX Runtime calibrates at once (``CalibStridedMinMax``).

    Parameters
    ----------
    n_samples
        Number of calibration samples.
    sample_bytes
        Memory per sample (:func:`activation_bytes`); ``None`` if unknown.
    budget
        Memory one chunk may use.
    fallback
        Largest chunk when ``sample_bytes`` is unknown.

    Returns
    -------
    int
        The largest divisor of ``n_samples`` within the budget (at least 1): ORT requires
        the sample count to be a multiple of the chunk size, and padding the set with repeated
        patches would weight them twice in the histograms.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: need at least one calibration sample")
    limit = fallback if sample_bytes is None else budget // max(sample_bytes, 1)
    limit = max(1, min(n_samples, limit))
    return max(d for d in range(1, limit + 1) if n_samples % d == 0)


class _PatchReader:
    """ONNX Runtime ``CalibrationDataReader`` over the calibration patches.

    ``__len__`` and ``set_range`` let ``quantize_static`` calibrate in chunks
    (``CalibStridedMinMax``); ``get_next`` then yields the patches of the current range only.
    """

    def __init__(self, samples: Sequence[Sequence[np.ndarray]], names: Sequence[str]) -> None:
        self._feeds = _feeds(samples, names)
        self._range = (0, len(self._feeds))
        self._iter: Iterator[dict[str, Any]] = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        if not 0 <= start_index <= end_index <= len(self._feeds):
            raise ValueError(f"range [{start_index}, {end_index}) outside the "
                             f"{len(self._feeds)} calibration samples")
        self._range = (start_index, end_index)
        self.rewind()

    def rewind(self) -> None:
        start, end = self._range
        self._iter = iter(self._feeds[start:end])


def quantize_onnxruntime(
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    out_path: str | Path,
    keep_fp: FloatEnds = 0,
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
        excluded = sensitive_layers(conv_node_names(source), keep_fp)
        dense = dense_node_names(source)
        norms = norm_node_names(source)
        # Every calibration patch is a window of the bundle's patch size: one shape for all.
        chunk = calibration_chunk(len(samples), activation_bytes(source, samples[0], names),
                                  CALIB_CHUNK_BYTES)
        extra_options: dict[str, Any] = {"CalibStridedMinMax": chunk}
        if norms:
            # QDQ quantises a convolution's output for QLinearConv fusion; where instance
            # norms read those outputs that is the rounding the module docstring describes.
            extra_options["OpTypesToExcludeOutputQuantization"] = ["Conv"]
        quantize_static(
            str(source),
            str(out_path),
            Reader(samples, names),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # Percentile (99.999 %) ranges: on the plain reference model MinMax gave 0.977
            # agreement with fp32, Percentile 0.981 (held-out phantoms, LCC on); one outlier
            # activation in a calibration patch no longer stretches a whole tensor's range.
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=[*excluded, *dense, *norms],
            extra_options=extra_options,
        )
    except Exception as exc:
        raise EdgesegError(f"{onnx_path}: ONNX Runtime quantisation failed ({exc})") from exc
    finally:
        root_logger.setLevel(level)
        prepared.unlink(missing_ok=True)
    return {
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        "format": "QDQ, per-channel int8 weights, uint8 activations, percentile calibration",
        "calibration_samples": len(samples),
        "calibration_chunk": chunk,
        "fp_layers": excluded,
        "fp_dense_branch_nodes": len(dense),
        "fp_normalisation_nodes": len(norms),
    }


def quantize_variant(
    backend: str,
    onnx_path: str | Path,
    samples: Sequence[Sequence[np.ndarray]],
    out_dir: str | Path,
    keep_fp: FloatEnds = 0,
) -> tuple[str, dict[str, Any]]:
    """Quantise for ``backend`` into ``out_dir``; return (file name, description).

    ``keep_fp``: 0 plain INT8; n > 0 keeps the first and last n convolutions in floating point,
    ``(a, b)`` the first a and the last b (:data:`FloatEnds`); :data:`ACCURACY_AWARE` (OpenVINO
    only) lets NNCF choose the layers to keep.
    """
    suffix = mixed_suffix(keep_fp)
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
