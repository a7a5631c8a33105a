"""The model file must agree with its manifest: checked when a backend compiles it, on both
backends, with real models (the shipped bundles and small ONNX bundles of helpers_bundle)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom

from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from edge_seg.predict import PredictOptions, Predictor

MODELS = Path(__file__).resolve().parents[1] / "edge_seg" / "models"
BACKENDS = ("openvino", "onnxruntime")


def copy_with(source: Path, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the bundle ``source`` with its manifest edited in place by ``edit``."""
    if not (source / "edgeseg.json").is_file():
        pytest.skip(f"{source} is not installed")
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "edgeseg.json").read_text())
    edit(manifest)
    (folder / "edgeseg.json").write_text(json.dumps(manifest))
    return folder


def refused(bundle: Path, backend: str, message: str, **options: Any) -> None:
    with pytest.raises(EdgesegError, match=message) as caught:
        Predictor(bundle, PredictOptions(backend=backend, precision="fp32", **options))
    assert "\n" not in str(caught.value)
    assert f"{bundle / 'edgeseg.json'}" in str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_label_left_out_is_refused_by_the_class_count(tmp_path: Path, backend: str) -> None:
    # The last label removed: values stay 0..12, but the network outputs 14 classes.
    bundle = copy_with(
        MODELS / "flare_ct_plain", tmp_path / "b", lambda m: m["labels"].pop("kidney_left")
    )
    refused(bundle, backend, "labels: the model outputs 14 classes, the manifest has 13 labels")


@pytest.mark.parametrize("backend", BACKENDS)
def test_presence_input_must_exist_exactly_when_declared(tmp_path: Path, backend: str) -> None:
    plain = copy_with(
        MODELS / "flare_ct_plain",
        tmp_path / "plain",
        lambda m: m.update(presence_input=["gallbladder"]),
    )
    refused(plain, backend, "presence_input: the model has no input 'presence'",
            absent_organs=("gallbladder",))
    undeclared = copy_with(
        MODELS / "halos_ct", tmp_path / "halos", lambda m: m.update(presence_input=None)
    )
    refused(undeclared, backend, "presence_input is null, but the model has a presence input")
    shorter = copy_with(
        MODELS / "halos_ct",
        tmp_path / "shorter",
        lambda m: m.update(presence_input=["gallbladder", "kidney_left"]),
    )
    refused(shorter, backend, "presence input has 3 entries, the manifest names 2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_io_names_must_be_the_graph_names(tmp_path: Path, backend: str) -> None:
    source = make_bundle(tmp_path / "source", presence_output=False)
    image = copy_with(source, tmp_path / "image", lambda m: m["io_names"].update(image="foo"))
    refused(image, backend, "io_names.image: the model has no input 'foo'")
    logits = copy_with(source, tmp_path / "logits", lambda m: m["io_names"].update(logits="out"))
    refused(logits, backend, "io_names.logits: the model has no output 'out'")
    head = copy_with(source, tmp_path / "head", lambda m: m.update(presence_output=True))
    refused(head, backend, "presence_output: the model has no output 'presence_logits'")


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_model_shapes_must_match_patch_and_channels(tmp_path: Path, backend: str) -> None:
    source = make_bundle(tmp_path / "source", patch=(8, 16, 16))  # static spatial axes
    patch = copy_with(source, tmp_path / "patch", lambda m: m.update(patch_size=[8, 16, 24]))
    refused(patch, backend, "patch_size: 8x16x24 does not match the model's fixed input shape")

    def two_channels(m: dict[str, Any]) -> None:
        m.update(channels=["CT", "CT2"], normalization=m["normalization"] * 2)

    channels = copy_with(source, tmp_path / "channels", two_channels)
    refused(channels, backend, "channels: the model takes 1 input channel")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_patch_the_network_cannot_take_is_one_line(tmp_path: Path, backend: str) -> None:
    # Dynamic spatial axes: nothing to compare at compile time, but a patch the U-Net's
    # strides do not divide fails at the reshape (OpenVINO) or the first patch (ONNX Runtime).
    bundle = copy_with(
        MODELS / "flare_ct_plain", tmp_path / "b", lambda m: m.update(patch_size=[40, 120, 128])
    )
    image, _ = make_phantom(shape=(24, 40, 44))
    with pytest.raises(EdgesegError, match=r"check patch_size in the bundle's edgeseg\.json") as e:
        options = PredictOptions(backend=backend, precision="fp32", crop="none")
        Predictor(bundle, options).predict(Volume(image, (2.5, 1.2, 1.2)))
    assert "\n" not in str(e.value)


def with_depth_dependent_classes(bundle: Path) -> Path:
    """Rewrite the bundle's model so that its class count is known only at run time: the
    logits gain ``min(depth, 4)`` copies of their first channels (8 classes for the 8-slice
    patch), which no shape inference can tell from the graph."""
    from onnx import helper, numpy_helper

    model = onnx.load(bundle / "model.onnx")
    graph = model.graph
    identity = next(node for node in graph.node if node.op_type == "Identity")
    graph.node.remove(identity)
    graph.initializer.extend(
        numpy_helper.from_array(np.array([value], np.int64), name)
        for name, value in (("two", 2), ("three", 3), ("first", 0), ("channel_axis", 1))
    )
    graph.node.extend([
        helper.make_node("Shape", ["image"], ["image_shape"]),
        helper.make_node("Slice", ["image_shape", "two", "three"], ["depth"]),
        helper.make_node("Slice", [identity.input[0], "first", "depth", "channel_axis"], ["extra"]),
        helper.make_node("Concat", [identity.input[0], "extra"], ["logits"], axis=1),
    ])
    graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.checker.check_model(model)
    onnx.save(model, bundle / "model.onnx")
    return bundle


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_count_known_only_at_run_time_is_checked_on_each_patch(
    tmp_path: Path, backend: str
) -> None:
    bundle = with_depth_dependent_classes(make_bundle(tmp_path / "b", dynamic=True))
    predictor = Predictor(bundle, PredictOptions(backend=backend, crop="none"))
    image, _ = make_phantom()
    with pytest.raises(EdgesegError, match=r"logits of shape 8x8x16x16, .* implies 4x8x16x16"):
        predictor.predict(Volume(image, (2.5, 1.2, 1.2)))


def test_bundles_that_agree_still_run_on_both_backends(tmp_path: Path) -> None:
    image, _ = make_phantom()
    volume = Volume(image, (2.5, 1.2, 1.2))
    halos = make_bundle(tmp_path / "halos", presence_input=True, presence_output=True)
    for backend in BACKENDS:
        prediction = Predictor(halos, PredictOptions(backend=backend, presence="auto")).predict(
            volume
        )
        assert prediction.presence is not None and prediction.presence["liver"] > 0.5
        assert np.isin(prediction.labels, [0, 1, 2, 3]).all()


def test_a_damaged_openvino_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    # OpenVINO's message starts with source locations; the reason comes after them.
    bundle = make_bundle(tmp_path / "b", int8=True, validated=("fp32", "int8"))
    manifest = json.loads((bundle / "edgeseg.json").read_text())
    xml = bundle / manifest["files"]["int8_openvino"]
    xml.write_bytes(xml.read_bytes()[:300])
    with pytest.raises(EdgesegError) as caught:
        Predictor(bundle, PredictOptions(backend="openvino", precision="int8"))
    message = str(caught.value)
    assert message.startswith(f"{xml}: OpenVINO cannot load the model (")
    assert "mismatch" in message and "Exception from" not in message and "\n" not in message
