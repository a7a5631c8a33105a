"""Small but real model bundles for tests, built without torch.

The "network" is a 1x1x1 Conv3d whose class lines ``2 t_c x - t_c^2`` are tangents of ``x^2``:
class c wins where the normalised intensity x is closest to ``t_c``, so it segments a phantom
whose organs have distinct intensities. Optional presence input (a prior that suppresses absent
classes) and presence head (max over the patch of ``logit_c - max_j logit_j``, plus 0.25) mimic the
HALOS-style network's interface. Files are genuine ONNX (and OpenVINO IR / QDQ ONNX for INT8).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_seg.bundle import Bundle

LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "spleen": 3}
#: Hounsfield units of each class in :func:`make_phantom` (and class centres of the model).
HU = {"background": -1000.0, "liver": 100.0, "kidney_right": 200.0, "spleen": 300.0}
CT_NORM = {"scheme": "ct", "lower": -1000.0, "upper": 1000.0, "mean": 0.0, "std": 100.0}
CENTRES = (-5.0, 1.0, 2.0, 3.0)  # in normalised units (HU / 100); background wins below -200 HU


def _onnx_model(
    patch: Sequence[int], presence: Sequence[str], presence_output: bool, dynamic: bool = False,
    channels: int = 1,
):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    centres = np.asarray(CENTRES, dtype=np.float32)
    k = len(centres)
    weight = np.zeros((k, channels, 1, 1, 1), np.float32)
    weight[:, 0, 0, 0, 0] = 2 * centres
    # Channel c >= 1 votes for organ class 4 - c (spleen, kidney_right, liver, ...): where it
    # is bright that organ wins whatever channel 0 says, so a test sees that each channel was
    # read, put in its place, aligned and used.
    for c in range(1, channels):
        weight[(k - 1) - (c - 1) % (k - 1), c, 0, 0, 0] = 30.0
    bias = (-(centres**2)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    nodes = [helper.make_node("Conv", ["image", "W", "B"], ["raw"], kernel_shape=[1, 1, 1])]
    # Dynamic spatial axes, as `edgeseg export` writes them, or the patch shape fixed.
    spatial = ["depth", "height", "width"] if dynamic else list(patch)
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, *spatial])]
    outputs = []
    logits = "raw"
    if presence:
        # penalty (1, K) = 50 * min(2 * presence - 1, 0) @ M, M[j, label of organ j] = 1:
        # 0 (absent) suppresses the class, 0.5 (unknown) and 1 (present) leave it alone.
        to_class = np.zeros((len(presence), k), np.float32)
        for j, name in enumerate(presence):
            to_class[j, LABELS[name]] = 1.0
        inputs.append(
            helper.make_tensor_value_info("presence", TensorProto.FLOAT, [1, len(presence)])
        )
        inits += [
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(50.0, np.float32), "strength"),
            numpy_helper.from_array(to_class, "to_class"),
            numpy_helper.from_array(np.array([1, k, 1, 1, 1], np.int64), "shape5"),
        ]
        nodes += [
            helper.make_node("Mul", ["presence", "two"], ["doubled"]),
            helper.make_node("Sub", ["doubled", "one"], ["centred"]),
            helper.make_node("Min", ["centred", "zero"], ["missing"]),
            helper.make_node("MatMul", ["missing", "to_class"], ["missing_k"]),
            helper.make_node("Mul", ["missing_k", "strength"], ["penalty_k"]),
            helper.make_node("Reshape", ["penalty_k", "shape5"], ["penalty5"]),
            helper.make_node("Add", ["raw", "penalty5"], ["with_prior"]),
        ]
        logits = "with_prior"
    nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, k, *spatial]))
    if presence_output:
        inits += [
            numpy_helper.from_array(np.array([1], np.int64), "s1"),
            numpy_helper.from_array(np.array([k], np.int64), "sk"),
            numpy_helper.from_array(np.array([1], np.int64), "ax1"),
            numpy_helper.from_array(np.array(0.25, np.float32), "offset"),
        ]
        # presence_c = max over the patch of (logit_c - max_j logit_j) + 0.25: positive where
        # class c wins (or nearly wins) somewhere in the patch.
        nodes += [
            helper.make_node("ReduceMax", ["raw"], ["best"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["raw", "best"], ["gap"]),
            helper.make_node("Slice", ["gap", "s1", "sk", "ax1"], ["organ_gap"]),
            helper.make_node("ReduceMax", ["organ_gap"], ["gap_max"], axes=[2, 3, 4], keepdims=0),
            helper.make_node("Add", ["gap_max", "offset"], ["presence_logits"]),
        ]
        outputs.append(
            helper.make_tensor_value_info("presence_logits", TensorProto.FLOAT, [1, k - 1])
        )
    graph = helper.make_graph(nodes, "tiny_threshold_net", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_bundle(
    folder: Path,
    *,
    patch: Sequence[int] = (8, 16, 16),
    spacing_mm: Sequence[float] = (2.0, 1.5, 1.5),
    presence_input: bool | Sequence[str] = False,
    presence_output: bool = False,
    int8: bool = False,
    validated: Sequence[str] = ("fp32",),
    dynamic: bool = False,
    channels: int = 1,
) -> Path:
    """Write a complete bundle folder and return it (``dynamic``: free spatial input axes;
    ``channels`` > 1: channel 1 makes the spleen win where it is bright, channel 2 the right
    kidney, channel 3 the liver)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    organs = [n for n in LABELS if n != "background"]
    presence = list(organs if presence_input is True else presence_input or [])
    model = _onnx_model(patch, presence, presence_output, dynamic, channels)
    onnx.save(model, folder / "model.onnx")
    files = {"fp32": "model.onnx"}
    if int8:
        files.update(_int8_variants(folder, patch, len(presence)))
    bundle = Bundle(
        name="tiny-threshold",
        modality="CT",
        channels=["CT"] + [f"CT phase {c}" for c in range(1, channels)],
        labels=dict(LABELS),
        spacing_mm=[float(s) for s in spacing_mm],
        normalization=[dict(CT_NORM) for _ in range(channels)],
        patch_size=[int(p) for p in patch],
        files=files,
        presence_input=presence or None,
        presence_output=presence_output,
        validated_precisions=list(validated),
    )
    bundle.save(folder)
    return folder


def _int8_variants(folder: Path, patch: Sequence[int], n_presence: int) -> dict[str, str]:
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = []
            for _ in range(4):
                feed = {"image": rng.uniform(-10, 10, (1, 1, *patch)).astype(np.float32)}
                if n_presence:
                    feed["presence"] = np.ones((1, n_presence), np.float32)
                self.items.append(feed)

        def get_next(self):
            return self.items.pop() if self.items else None

    quantize_static(
        str(folder / "model.onnx"),
        str(folder / "model_int8.onnx"),
        Reader(),
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    ov.save_model(ov.convert_model(str(folder / "model_int8.onnx")), str(folder / "model_int8.xml"))
    return {"int8_onnx": "model_int8.onnx", "int8_openvino": "model_int8.xml"}


def make_phantom(
    shape: Sequence[int] = (24, 40, 44),
    spacing_mm: Sequence[float] = (2.5, 1.2, 1.2),
    organs: Sequence[str] = ("liver", "kidney_right", "spleen"),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Air-filled box with one ellipsoid per organ at its HU; returns (image int16, labels)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing_mm, strict=False)], indexing="ij"
    )
    extent = [n * s for n, s in zip(shape, spacing_mm, strict=False)]
    image = np.full(shape, HU["background"], dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    centres = {
        "liver": (0.5, 0.35, 0.3),
        "kidney_right": (0.5, 0.7, 0.3),
        "spleen": (0.5, 0.5, 0.75),
    }
    for name in organs:
        cz, cy, cx = (c * e for c, e in zip(centres[name], extent, strict=False))
        r = (0.3 * extent[0], 0.14 * extent[1], 0.16 * extent[2])
        inside = ((zz - cz) / r[0]) ** 2 + ((yy - cy) / r[1]) ** 2 + ((xx - cx) / r[2]) ** 2 <= 1
        image[inside] = HU[name]
        labels[inside] = LABELS[name]
    image += rng.normal(0, 5, shape).astype(np.float32)
    return image.astype(np.int16), labels
