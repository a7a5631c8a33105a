"""``edgeseg quantize``: INT8 variants calibrated on real preprocessed patches, fidelity report."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nncf")
pytest.importorskip("dynamic_network_architectures")

from export_fixtures import cli_without, make_results_folder, run_cli, write_ct_image

from edge_seg.bundle import load_bundle


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from export.bundle_writer import export_nnunet

    root = tmp_path_factory.mktemp("quantize")
    results = make_results_folder(root / "nnUNet_results", seed=11)
    images = root / "images"
    for i in range(3):
        write_ct_image(images / f"case{i}_0000.nii.gz", seed=20 + i)
    bundle = root / "bundle"
    export_nnunet(results, bundle, images=sorted(images.iterdir()))
    return {"root": root, "bundle": bundle, "images": images}


def fresh_bundle(exported: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(exported["bundle"], target)
    return target



def test_quantize_adds_validated_variants_and_report(exported, tmp_path, capsys) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    code, out, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                              "--patches-per-image", "2"], capsys)
    assert code == 0, err
    bundle = load_bundle(bundle_dir)  # every listed file exists (load_bundle checks)
    fidelity = bundle.fidelity
    # Three images: the last one is held out, never used for calibration.
    assert fidelity["holdout_images"] == ["case2_0000"]
    assert fidelity["calibration_images"] == ["case0_0000", "case1_0000"]
    assert fidelity["calibration_patches"] == 4
    assert fidelity["label_cleanup"] == {"largest_component": True, "min_component_ml": 0.5}
    assert all(src.split("@")[0] != "case2_0000" for src in bundle.provenance["calibration_set"])
    variants = fidelity["variants"]
    assert {"int8_openvino", "int8_onnx"} <= {v.split("_mixed")[0] for v in variants}
    shipped = {report["shipped_as"] for report in variants.values() if report["passed"]}
    assert set(bundle.validated_precisions) == {"fp32", *shipped}
    for name, report in variants.items():
        assert set(report["dice_per_class"]) == {"liver", "kidney_right", "spleen"}
        per_class = list(report["dice_per_class"].values())
        assert report["mean_dice"] == pytest.approx(np.mean(per_class), abs=1e-4)
        assert report["worst_dice"] == min(report["dice_per_class"].values())
        # One held-out image: its mean over organs is the variant's mean.
        assert report["mean_dice_per_image"] == {
            "case2_0000": pytest.approx(report["mean_dice"], abs=1e-4)}
        assert report["passed"] == (report["mean_dice"] >= 0.98)
        assert report["latency_ratio_int8_vs_fp32"] > 0
        assert name in out  # the table is printed
    undecided = fidelity["fp32_undecided"]
    assert undecided["margin_logit"] == 0.5
    assert set(undecided["share_per_class"]) == set(bundle.organs)
    assert all(v is None or 0.0 <= v <= 1.0 for v in undecided["share_per_class"].values())
    for key in shipped:
        assert bundle.files[key].startswith("model_int8_")
    assert not [p for p in bundle_dir.iterdir() if p.name.startswith(".quantize")]


def test_quantizing_one_backend_keeps_the_other_backends_variant(exported, tmp_path,
                                                                 capsys) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    common = ["--calib", str(exported["images"]), "--patches-per-image", "1", "--bar", "0",
              "--no-mixed"]
    code, _, err = run_cli(["quantize", str(bundle_dir), "--backend", "onnxruntime", *common],
                           capsys)
    assert code == 0, err
    code, _, err = run_cli(["quantize", str(bundle_dir), "--backend", "openvino", *common],
                           capsys)
    assert code == 0, err
    bundle = load_bundle(bundle_dir)
    assert set(bundle.validated_precisions) == {"fp32", "int8_onnx", "int8_openvino"}
    assert {r["backend"] for r in bundle.fidelity["variants"].values()} == {
        "onnxruntime", "openvino"}


def test_variant_below_the_bar_is_not_shipped(exported, tmp_path, capsys) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    holdout = tmp_path / "holdout"
    write_ct_image(holdout / "held_0000.nii.gz", seed=99)
    code, out, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                              "--holdout", str(holdout), "--backend", "openvino",
                              "--patches-per-image", "1", "--bar", "1.0"], capsys)
    assert code == 0, err
    bundle = load_bundle(bundle_dir)
    variants = bundle.fidelity["variants"]
    plain = variants["int8_openvino"]
    assert plain["holdout_images"] == ["held_0000"]
    assert not plain["passed"] and "below the 1.0 bar" in out
    # The mixed-precision fallbacks were tried and reported beside the plain variant, each
    # keeping more convolutions at both ends in float.
    mixed = variants["int8_openvino_mixed"]
    assert len(mixed["quantization"]["fp_layers"]) == 2
    assert mixed["quantization"]["fp_normalisation"] == ["MVN"]
    previous = set(mixed["quantization"]["fp_layers"])
    for name, count in (("int8_openvino_mixed1_2", 3), ("int8_openvino_mixed2", 4)):
        if name in variants:
            kept = set(variants[name]["quantization"]["fp_layers"])
            assert len(kept) == count and previous < kept
            previous = kept
    shares = bundle.fidelity["fp32_undecided"]["share_per_class"]
    worst = plain["worst_class"]
    if shares[worst] is not None:
        # why the variant failed: how clearly fp32 itself decides its worst class
        assert f"(fp32 leads {shares[worst]:.0%} of its {worst} voxels by < 0.5 logit)" in out
        assert f"  {worst}: {shares[worst]:.0%}" in out
    passed = [report for report in variants.values() if report["passed"]]
    assert len(passed) <= 1  # attempts stop at the first variant that meets the bar
    if passed:
        assert bundle.validated_precisions == ["fp32", "int8_openvino"]
        assert bundle.files["int8_openvino"] == passed[0]["file"]
    else:
        assert set(variants) == {"int8_openvino", "int8_openvino_mixed",
                                 "int8_openvino_mixed1_2", "int8_openvino_mixed2",
                                 "int8_openvino_mixed3", "int8_openvino_accuracy_aware"}
        assert bundle.validated_precisions == ["fp32"]
        assert "int8_openvino" not in bundle.files


def test_calibration_patches_are_preprocessed_image_windows(exported) -> None:
    from export.calibration import list_images, patch_set, preprocessed_array, read_images

    bundle = load_bundle(exported["bundle"])
    volumes, problems = read_images(list_images(exported["images"]), exported["images"])
    assert not problems
    patches = patch_set(volumes[:1], bundle, patches_per_image=3)
    array = preprocessed_array(volumes[0], bundle)
    assert len(patches.inputs) == 3
    for (patch,), source in zip(patches.inputs, patches.sources, strict=True):
        start = [int(s) for s in source.split("@")[1].split(",")]
        window = array[:, start[0]:start[0] + 16, start[1]:start[1] + 32, start[2]:start[2] + 32]
        assert patch.shape == (1, 1, 16, 32, 32)
        np.testing.assert_array_equal(patch[0], window)


def test_window_starts_cover_the_axis() -> None:
    from export.calibration import window_starts

    assert window_starts(20, 32) == [0]
    starts = window_starts(100, 32)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert max(np.diff(starts)) <= 16  # step 0.5 of the patch


def test_report_says_how_clearly_fp32_decides_the_failing_classes() -> None:
    from export.fidelity import format_report

    fidelity = {
        "fp32_undecided": {"margin_logit": 0.5,
                           "share_per_class": {"liver": 0.03, "duodenum": 0.75, "adrenal": None}},
        "variants": {
            "int8_openvino": {"mean_dice": 0.97, "worst_dice": 0.9, "worst_class": "duodenum",
                              "latency_ratio_int8_vs_fp32": 0.7, "passed": False},
            "int8_openvino_mixed": {"mean_dice": 0.99, "worst_dice": 0.95,
                                    "worst_class": "liver",
                                    "latency_ratio_int8_vs_fp32": 0.8, "passed": True},
        },
    }
    text = format_report(fidelity)
    assert "median organ 39%" in text  # median of 3 % and 75 %; the unlabelled organ is left out
    assert "  duodenum: 75%" in text
    assert "liver: 3%" not in text  # the variant whose worst class is the liver passed
    fidelity["variants"]["int8_openvino"]["passed"] = True
    assert "logit over the runner-up" not in format_report(fidelity)


def test_dice_agreement_conventions() -> None:
    from export.fidelity import dice_agreement

    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2] = 1
    b[0, :1] = 1
    scores = dice_agreement(a, b, {"liver": 1, "spleen": 3})
    assert scores["spleen"] == 1.0  # empty in both
    assert scores["liver"] == pytest.approx(2 * 4 / (8 + 4))


@pytest.mark.parametrize("case", ["unreadable", "single", "overlap"])
def test_bad_calibration_input_leaves_bundle_untouched(exported, tmp_path, capsys, case) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    manifest = (bundle_dir / "edgeseg.json").read_bytes()
    calib = tmp_path / "calib"
    calib.mkdir()
    args = ["quantize", str(bundle_dir), "--calib", str(calib)]
    if case == "unreadable":
        (calib / "a_0000.nii.gz").write_bytes(b"not a nifti")
        (calib / "b_0000.nii.gz").write_bytes(b"not a nifti")
        expected = "no readable images"
    elif case == "single":
        write_ct_image(calib / "a_0000.nii.gz", seed=1)
        expected = "pass --holdout"
    else:
        write_ct_image(calib / "a_0000.nii.gz", seed=1)
        args += ["--holdout", str(calib)]
        expected = "must not be calibration images"
    code, _, err = run_cli(args, capsys)
    assert code == 2 and expected in err and err.count("\n") == 1
    assert (bundle_dir / "edgeseg.json").read_bytes() == manifest
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["edgeseg.json", "model.onnx"]


def test_quantize_without_nncf_names_the_extra(exported, tmp_path) -> None:
    result = cli_without("nncf", ["quantize", str(exported["bundle"]), "--calib",
                                  str(exported["images"])])
    assert result.returncode == 2
    assert "'export' extra" in result.stderr and "nncf" in result.stderr


def test_presence_priors_cover_present_absent_and_unknown(exported) -> None:
    from export.calibration import calibration_prior

    bundle = load_bundle(exported["bundle"])
    assert calibration_prior(bundle, 0) is None  # no presence input, no prior
    bundle.presence_input = ["gallbladder", "kidney_right", "kidney_left"]
    priors = [calibration_prior(bundle, i) for i in range(12)]
    assert all(p.shape == (1, 3) and p.dtype == np.float32 for p in priors)
    values = np.concatenate(priors)
    assert {0.0, 0.5, 1.0} == set(np.unique(values).tolist())
    absent = {int(np.flatnonzero(p[0] == 0)[0]) for p in priors if (p == 0).any()}
    assert absent == {0, 1, 2}  # each organ is absent in some calibration sample


def test_dense_branches_of_presence_network_stay_float(tmp_path) -> None:
    """DAFT MLPs, their pooled/concatenated inputs, the Mul/Add that apply them and the presence
    head are never quantised, on either route; the convolutions are."""
    import onnx
    import openvino as ov
    import torch

    from export.networks.halos_unet import HalosUNet
    from export.onnx_export import export_onnx
    from export.quantize import quantize_onnxruntime, quantize_openvino

    torch.manual_seed(3)
    network = HalosUNet(1, 4, 3, [4, 8, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]]).eval()
    rng = np.random.default_rng(0)
    samples = [
        (rng.normal(size=(1, 1, 16, 32, 32)).astype(np.float32),
         np.array([[1.0, 0.5, 0.0]], np.float32))
        for _ in range(4)
    ]
    fp32 = export_onnx(network, samples[0], tmp_path / "model.onnx",
                       ("image", "presence"), ("logits", "presence_logits"))

    def is_vector(shape) -> bool:  # batch x channels, or spatial extent 1
        dims = list(shape)
        return len(dims) <= 2 or all(d.is_static and d.get_length() == 1 for d in dims[2:])

    info = quantize_openvino(fp32, samples, tmp_path / "int8.xml")
    assert info["fp_dense_branch_nodes"] > 0
    model = ov.Core().read_model(str(tmp_path / "int8.xml"))
    ops = model.get_ordered_ops()
    convs_quantised = [
        op for op in ops if op.get_type_name() == "Convolution"
        and op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    ]
    assert convs_quantised
    modulations = 0
    for op in ops:
        feeders = [v.get_node() for v in op.input_values()]
        kinds = [f.get_type_name() for f in feeders]
        if op.get_type_name() == "MatMul":
            assert "FakeQuantize" not in kinds, op.get_friendly_name()
        if op.get_type_name() in ("Multiply", "Add") and "Constant" not in kinds:
            vectors = [is_vector(v.get_partial_shape()) for v in op.input_values()]
            if any(vectors) and not all(vectors):  # feature map modulated by an MLP output
                modulations += 1
                assert "FakeQuantize" not in kinds, op.get_friendly_name()
    assert modulations >= 2 * 3  # x * (1 + scale) + shift in each of the 3 DAFT blocks
    # Instance norms read the float convolution output (NNCF would round it to INT8 first).
    norms = [op for op in ops if op.get_type_name() == "MVN"]
    assert norms
    for op in norms:
        assert op.input_value(0).get_node().get_type_name() != "FakeQuantize"

    info = quantize_onnxruntime(fp32, samples, tmp_path / "int8_qdq.onnx")
    assert info["fp_dense_branch_nodes"] > 0
    qdq = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "int8_qdq.onnx"))).graph
    produced_by = {out: node.op_type for node in qdq.node for out in node.output}
    dims = {
        v.name: [d.dim_value if d.HasField("dim_value") else None
                 for d in v.type.tensor_type.shape.dim]
        for v in qdq.value_info
    }

    def onnx_vector(tensor: str) -> bool:
        shape = dims.get(tensor)
        return shape is not None and (len(shape) <= 2 or all(d == 1 for d in shape[2:]))

    assert any(n.op_type == "Conv" and produced_by.get(n.input[0]) == "DequantizeLinear"
               for n in qdq.node)
    norms = [n for n in qdq.node if n.op_type == "InstanceNormalization"]
    assert norms and all(produced_by.get(n.input[0]) != "DequantizeLinear" for n in norms)
    for node in qdq.node:
        if node.op_type in ("MatMul", "Gemm"):  # activation and weight inputs are float
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input[:2]), node.name
        if node.op_type in ("Mul", "Add") and "daft" in node.name:
            # The feature map may arrive quantised (as any conv input); scale/shift may not.
            for tensor in node.input:
                if onnx_vector(tensor):
                    assert produced_by.get(tensor) != "DequantizeLinear", (node.name, tensor)


def tiny_conv_model(path: Path) -> Path:
    """Conv (1 -> 2 channels, 3x3x3, padding 1) and Relu, with dynamic batch and spatial dims."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(5).normal(size=(2, 1, 3, 3, 3)).astype(np.float32)
    dims = ["batch", 1, "z", "y", "x"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "weight"], ["conv"], name="conv", pads=[1] * 6),
         helper.make_node("Relu", ["conv"], ["logits"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, "z", "y", "x"])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_calibration_reader_chunks_cover_every_sample_once() -> None:
    """``quantize_static``'s chunked calibration (``CalibStridedMinMax``) asks ``len(reader)``
    and then, per chunk, ``set_range`` and reads until ``get_next`` is exhausted."""
    from onnxruntime.quantization import CalibrationDataReader

    from export.quantize import _PatchReader, calibration_chunk

    class Reader(_PatchReader, CalibrationDataReader):
        pass

    samples = [(np.full((1, 1, 2, 2, 2), i, np.float32), np.full((1, 3), -i, np.float32))
               for i in range(12)]
    reader = Reader(samples, ["image", "presence"])
    assert len(reader) == 12
    chunk = calibration_chunk(len(reader), None, fallback=5)
    assert chunk == 4
    seen: list[int] = []
    for start in range(0, len(reader), chunk):
        reader.set_range(start_index=start, end_index=start + chunk)
        first = [int(feed["image"].flat[0]) for feed in reader]  # CalibrationDataReader.__iter__
        reader.rewind()  # a rewind stays within the range
        again = [int(feed["image"].flat[0]) for feed in iter(reader.get_next, None)]
        assert first == again == list(range(start, start + chunk))
        seen += first
    assert seen == list(range(12))  # every sample once, in order
    assert reader.get_next() is None
    reader.set_range(0, len(reader))
    feeds = list(reader)
    assert len(feeds) == 12 and np.all(feeds[7]["presence"] == -7)
    with pytest.raises(ValueError, match="outside"):
        reader.set_range(8, 13)


@pytest.mark.parametrize(("n_samples", "sample_bytes", "expected"), [
    (35, None, 7),  # fallback: at most 8 samples, a divisor of 35
    (37, None, 1),  # a prime count falls to one sample per chunk
    (35, 2**30, 1),  # 4 samples fit, but 35 has no divisor 2..4
    (36, 2**30, 4),
    (36, 5 * 2**30, 1),  # one sample over the budget: still one at a time
    (6, 1000, 6),  # everything fits: one chunk, as without chunking
])
def test_calibration_chunk_is_the_largest_divisor_within_budget(n_samples, sample_bytes,
                                                                expected) -> None:
    from export.quantize import calibration_chunk

    assert calibration_chunk(n_samples, sample_bytes, budget=4 * 2**30, fallback=8) == expected


def test_activation_bytes_from_the_patch_shape(tmp_path) -> None:
    from export.quantize import activation_bytes

    model = tiny_conv_model(tmp_path / "tiny.onnx")
    sample = (np.zeros((1, 1, 4, 8, 8), np.float32),)
    # image 256 floats, conv and relu outputs 512 each; plus two copies of the largest.
    assert activation_bytes(model, sample, ["image"]) == 4 * (256 + 512 + 512 + 2 * 512)
    sample = (np.zeros((2, 1, 4, 8, 8), np.float32),)
    assert activation_bytes(model, sample, ["image"]) == 2 * 4 * (256 + 512 + 512 + 2 * 512)


def test_chunked_calibration_ranges_cover_every_chunk(tmp_path, monkeypatch) -> None:
    """ORT calibrates the patches in chunks (histograms merged); an outlier in the last chunk
    sets the input range as it does when all patches are calibrated at once."""
    import onnx
    from onnx import numpy_helper

    import export.quantize as quantize
    from export.quantize import activation_bytes, quantize_onnxruntime

    model = tiny_conv_model(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(1)
    samples = [(rng.normal(size=(1, 1, 8, 16, 16)).astype(np.float32),) for _ in range(6)]
    samples[-1] = (samples[-1][0] * 20,)

    def input_scale(path: Path) -> float:
        graph = onnx.load(str(path)).graph
        node = next(n for n in graph.node if n.op_type == "QuantizeLinear"
                    and n.input[0] == "image")
        init = next(i for i in graph.initializer if i.name == node.input[1])
        return float(numpy_helper.to_array(init))

    per_sample = activation_bytes(model, samples[0], ["image"])
    assert per_sample is not None
    monkeypatch.setattr(quantize, "CALIB_CHUNK_BYTES", 2 * per_sample)
    info = quantize_onnxruntime(model, samples, tmp_path / "chunked.onnx")
    assert info["calibration_chunk"] == 2
    monkeypatch.setattr(quantize, "CALIB_CHUNK_BYTES", 100 * per_sample)
    info = quantize_onnxruntime(model, samples, tmp_path / "whole.onnx")
    assert info["calibration_chunk"] == 6
    chunked, whole = input_scale(tmp_path / "chunked.onnx"), input_scale(tmp_path / "whole.onnx")
    # uint8 over the symmetric percentile range [-t, t]: scale = 2 t / 255, t near the outlier.
    assert 2 * np.abs(samples[-1][0]).max() / 255 * 0.8 < whole
    assert chunked == pytest.approx(whole, rel=0.05)


def test_mixed_levels_name_and_pick_the_end_convolutions() -> None:
    from export.quantize import MIXED_LEVELS, mixed_suffix, sensitive_layers

    convs = [f"conv{i}" for i in range(8)]
    assert sensitive_layers(convs, 1) == ["conv0", "conv7"]
    assert sensitive_layers(convs, (1, 2)) == ["conv0", "conv6", "conv7"]
    assert sensitive_layers(convs, (0, 2)) == ["conv6", "conv7"]
    assert sensitive_layers(convs, (2, 0)) == ["conv0", "conv1"]
    assert sensitive_layers(convs[:3], 2) == convs[:3]
    assert sensitive_layers(convs, 0) == []  # plain INT8
    assert [mixed_suffix(level) for level in MIXED_LEVELS] == [
        "_mixed", "_mixed1_2", "_mixed2", "_mixed3"
    ]
    assert mixed_suffix(0) == ""


def test_mixed_level_from_the_command_line() -> None:
    import doctest

    from edge_seg.errors import EdgesegError
    from export import quantize
    from export.quantize import parse_level

    assert doctest.testmod(quantize).failed == 0
    assert parse_level("2") == 2 and parse_level("0,3") == (0, 3)
    for bad in ("", "a", "1,2,3", "-1"):
        with pytest.raises(EdgesegError, match="mixed level"):
            parse_level(bad)


def test_candidate_bundle_with_an_int8_model_of_each_backend(exported, tmp_path) -> None:
    from export.calibration import list_images, patch_set, read_images
    from export.quantize_bundle import bundle_with_int8

    bundle = load_bundle(exported["bundle"])
    volumes, _ = read_images(list_images(exported["images"]), exported["images"])
    samples = patch_set(volumes, bundle, 2).inputs
    work = tmp_path / "candidate"
    work.mkdir()
    first = bundle_with_int8(bundle, work, bundle.model_path("fp32"), samples, keep_fp=1)
    assert set(first.files) == {"fp32", "int8_openvino"}
    assert first.files["int8_openvino"] == "model_int8_openvino_mixed.xml"
    # A second backend into the same folder keeps the first candidate's models.
    both = bundle_with_int8(first, work, bundle.model_path("fp32"), samples, "onnxruntime",
                            keep_files=tuple(first.files))
    assert set(both.files) == {"fp32", "int8_openvino", "int8_onnx"}
    assert (work / "model.onnx").read_bytes() == bundle.model_path("fp32").read_bytes()
    assert load_bundle(work).files == both.files
    assert load_bundle(exported["bundle"]).files == bundle.files  # the source is untouched


def test_distillation_options_without_distill_are_refused(exported, tmp_path, capsys) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    before = (bundle_dir / "edgeseg.json").read_bytes()
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--backend", "openvino", "--distill-class-balance", "0.5"], capsys)
    assert code != 0
    assert "--distill-class-balance, --distill-float-convs and --distill-objective need " \
        "--distill" in err
    assert (bundle_dir / "edgeseg.json").read_bytes() == before
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--distill-objective", "labels"], capsys)
    assert code != 0 and "need --distill" in err
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--distill", "--distill-objective", "dice"], capsys)
    assert code != 0 and "--distill-objective: distillation objective 'dice'" in err
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--distill", "--distill-float-convs", "x,y"], capsys)
    assert code != 0 and "--distill-float-convs: mixed level 'x,y'" in err
    assert (bundle_dir / "edgeseg.json").read_bytes() == before


def test_distilled_int8_is_quantised_from_the_student(exported, tmp_path, capsys,
                                                      monkeypatch) -> None:
    from export import quantize_bundle as qb

    bundle_dir = fresh_bundle(exported, tmp_path)
    fp32_bytes = (bundle_dir / "model.onnx").read_bytes()
    quantised_from = []
    real = qb.quantize_variant

    def spy(backend, onnx_path, *args, **kwargs):
        quantised_from.append(Path(onnx_path).name)
        return real(backend, onnx_path, *args, **kwargs)

    monkeypatch.setattr(qb, "quantize_variant", spy)
    code, out, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                              "--backend", "openvino", "--patches-per-image", "1", "--bar",
                              "0", "--no-mixed", "--distill", "--distill-steps", "4",
                              "--distill-class-balance", "0.5", "--distill-float-convs", "1",
                              "--distill-objective", "labels"],
                             capsys)
    assert code == 0, err
    assert quantised_from == ["student.onnx"]
    bundle = load_bundle(bundle_dir)
    distillation = bundle.fidelity["distillation"]
    assert distillation["steps"] == 4 and distillation["patches"] >= 2
    assert distillation["class_balance"] == 0.5 and list(distillation["float_convs"]) == [1, 1]
    assert distillation["objective"] == "labels"
    assert distillation["source_max_abs_diff"] <= 1e-3
    assert np.isfinite(distillation["loss_last_tenth"])
    assert bundle.fidelity["variants"]["int8_openvino"]["quantised_from"] == "distilled student"
    assert "int8_openvino: quantised from a student distilled for INT8 (4 steps" in out

    # A later run for the other backend, without distillation, keeps what the first recorded.
    code, out, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                              "--backend", "onnxruntime", "--patches-per-image", "1", "--bar",
                              "0", "--no-mixed"], capsys)
    assert code == 0, err
    later = load_bundle(bundle_dir).fidelity
    assert later["distillation"] == distillation
    assert later["variants"]["int8_onnx"]["quantised_from"] == "fp32"
    [line] = [line for line in out.splitlines() if "quantised from a student" in line]
    assert line.startswith("int8_openvino: quantised from")
    bundle = load_bundle(bundle_dir)
    # The fp32 model stays the teacher; the student itself is not shipped.
    assert (bundle_dir / "model.onnx").read_bytes() == fp32_bytes
    assert not (bundle_dir / "student.onnx").exists()
    assert bundle.validated_precisions == ["fp32", "int8_openvino", "int8_onnx"]


def test_distillation_without_its_source_network_leaves_the_bundle(exported, tmp_path,
                                                                   capsys) -> None:
    bundle_dir = fresh_bundle(exported, tmp_path)
    manifest = (bundle_dir / "edgeseg.json").read_bytes()
    missing = tmp_path / "no_such_results"
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--backend", "openvino", "--distill", "--distill-source",
                            str(missing)], capsys)
    assert code == 2 and "results folder does not exist" in err and err.count("\n") == 1
    assert (bundle_dir / "edgeseg.json").read_bytes() == manifest
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["edgeseg.json", "model.onnx"]

    # The recorded source moved away: the error says how to point at it.
    moved = load_bundle(bundle_dir)
    moved.provenance = {**moved.provenance, "results_folder": str(missing)}
    moved.save(bundle_dir)
    code, _, err = run_cli(["quantize", str(bundle_dir), "--calib", str(exported["images"]),
                            "--backend", "openvino", "--distill"], capsys)
    assert code == 2 and "pass --distill-source" in err and err.count("\n") == 1


def test_distill_without_torch_names_the_extra(exported) -> None:
    result = cli_without("torch", ["quantize", str(exported["bundle"]), "--calib",
                                   str(exported["images"]), "--distill"])
    assert result.returncode == 2
    assert "'export' extra" in result.stderr and "torch is not installed" in result.stderr
    assert result.stderr.count("\n") == 1
