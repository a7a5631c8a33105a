"""How predict is scheduled: static-shape compiling, compiling beside reading, pipelined batches.

Real OpenVINO sessions and real files; the only fault injected is a failing label-map write,
which no real file system here produces on demand (the tests run as root).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom

import edge_seg.batch as batch
from edge_seg.backends.base import open_session
from edge_seg.batch import run_batch
from edge_seg.bundle import load_bundle
from edge_seg.errors import EdgesegError
from edge_seg.io import read_volume
from edge_seg.predict import PredictOptions, Predictor, open_predictor_and_read

SPACING_XYZ = (1.2, 1.2, 2.5)


def write_scan(path: Path, seed: int = 0, shape: tuple[int, int, int] = (24, 40, 44)) -> Path:
    image, _ = make_phantom(shape=shape, seed=seed)
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(SPACING_XYZ)
    itk.SetOrigin((5.0, -3.0, 12.0 + seed))
    sitk.WriteImage(itk, str(path), useCompression=True)
    return path


def scan_folder(folder: Path, count: int) -> tuple[Path, Path]:
    """``folder/in`` with scans case0..case{count-1} (nnU-Net names) and ``folder/out``."""
    inputs = folder / "in"
    inputs.mkdir()
    for i in range(count):
        write_scan(inputs / f"case{i}_0000.nii.gz", seed=i)
    return inputs, folder / "out"


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("dynamic"), dynamic=True)


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("static"))


def test_openvino_compiles_dynamic_model_for_the_patch_shape(dynamic_bundle: Path) -> None:
    bundle = load_bundle(dynamic_bundle)
    import openvino as ov

    assert (
        ov.Core()
        .read_model(str(dynamic_bundle / "model.onnx"))
        .inputs[0]
        .get_partial_shape()
        .is_dynamic
    )
    session = open_session(bundle, "openvino", "fp32", 1)
    shape = session.compiled.inputs[0].get_partial_shape()
    assert not shape.is_dynamic
    assert [d.get_length() for d in shape] == [1, 1, *bundle.patch_size]


def test_dynamic_and_static_bundles_label_the_same(
    dynamic_bundle: Path, static_bundle: Path, tmp_path: Path
) -> None:
    volume = read_volume(write_scan(tmp_path / "scan.nii.gz"))
    options = PredictOptions(precision="fp32", threads=1)
    dynamic = Predictor(dynamic_bundle, options).predict(volume).labels
    static = Predictor(static_bundle, options).predict(volume).labels
    assert np.array_equal(dynamic, static)
    assert set(np.unique(static)) == {0, 1, 2, 3}


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("int8"), int8=True,
                       validated=("fp32", "int8_openvino"))


def test_int8_runs_its_float_layers_in_f32_unless_overridden(int8_bundle: Path) -> None:
    import openvino as ov

    # On a CPU with bf16 (AMX, AVX-512 BF16) the plugin's default would be bf16: the layers an
    # INT8 model keeps in float must run as `edgeseg quantize` validated them, in f32.
    for precision in ("int8", "auto"):
        session = Predictor(int8_bundle, PredictOptions(precision=precision, threads=1)).session
        assert session.choice.file_key == "int8_openvino"
        assert session.inference_precision == str(ov.Type.f32)
    plugin_default = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    options = PredictOptions(precision="int8", openvino_precision_hint="default", threads=1)
    assert Predictor(int8_bundle, options).session.inference_precision == plugin_default


def test_precision_hint_override_reaches_openvino(static_bundle: Path) -> None:
    import openvino as ov

    # "default" sets no hint: the plugin's own choice (bf16 on AMX CPUs, f32 elsewhere).
    plugin_default = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    options = PredictOptions(precision="fp32", openvino_precision_hint="default", threads=1)
    assert Predictor(static_bundle, options).session.inference_precision == plugin_default
    options = PredictOptions(precision="bf16", openvino_precision_hint="f32", threads=1)
    assert "float32" in Predictor(static_bundle, options).session.inference_precision
    with pytest.raises(EdgesegError, match="onnxruntime"):
        Predictor(
            static_bundle,
            PredictOptions(backend="onnxruntime", openvino_precision_hint="f32"),
        )


def test_compile_beside_read_returns_both(static_bundle: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "scan.nii.gz")
    predictor, volume = open_predictor_and_read(static_bundle, PredictOptions(threads=1), scan)
    assert volume.shape == (24, 40, 44)
    assert predictor.predict(volume).labels.shape == volume.shape


def test_compile_beside_read_reports_option_error_before_scan_error(
    static_bundle: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    with pytest.raises(EdgesegError, match="--absent"):
        open_predictor_and_read(static_bundle, PredictOptions(absent_organs=("pancreas",)), broken)
    with pytest.raises(EdgesegError, match=r"broken\.nii\.gz"):
        open_predictor_and_read(static_bundle, PredictOptions(threads=1), broken)


def test_pipelined_batch_keeps_order_and_goes_past_bad_cases(
    static_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, outputs = scan_folder(tmp_path, 4)
    (inputs / "case1_0000.nii.gz").write_bytes(b"truncated")  # fails while read ahead
    real_write = batch.write_label_map

    def write_fails_for_case2(labels, reference, path):
        if Path(path).name == "case2.nii.gz":
            raise OSError("disk full")
        return real_write(labels, reference, path)

    monkeypatch.setattr(batch, "write_label_map", write_fails_for_case2)
    scans = sorted(inputs.iterdir())
    seen = []
    report = run_batch(
        scans, outputs, static_bundle, PredictOptions(threads=1), 1, None, seen.append
    )
    assert [(r.name, r.status) for r in seen] == [
        ("case0", "done"),
        ("case1", "failed"),
        ("case2", "failed"),
        ("case3", "done"),
    ]
    assert "case1_0000.nii.gz" in seen[1].message
    assert "disk full" in seen[2].message and "case2_0000.nii.gz" in seen[2].message
    assert report.count("done") == 2
    assert sorted(p.name for p in outputs.iterdir()) == ["case0.nii.gz", "case3.nii.gz"]
    # Each output is the one-case prediction of its own scan, with its own geometry.
    predictor = Predictor(static_bundle, PredictOptions(threads=1))
    for name in ("case0", "case3"):
        volume = read_volume(inputs / f"{name}_0000.nii.gz")
        written = sitk.ReadImage(str(outputs / f"{name}.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(written), predictor.predict(volume).labels)
        assert written.GetOrigin() == pytest.approx(volume.origin)


def test_pipelined_batch_bad_bundle_fails_before_any_case(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_scan(inputs / "case0_0000.nii.gz")
    with pytest.raises(EdgesegError, match="not a model bundle"):
        run_batch(sorted(inputs.iterdir()), tmp_path / "out", tmp_path, PredictOptions(), 1)
    assert not any((tmp_path / "out").iterdir())


def test_pipelined_batch_retries_a_memory_refusal_once_alone(
    static_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan refused for memory while read ahead is read again once nothing else runs."""
    from edge_seg.errors import NotEnoughMemoryError

    inputs, outputs = scan_folder(tmp_path, 3)
    write_scan(inputs / "huge_0000.nii.gz", seed=9)
    refused: list[str] = []

    def tight_memory(path, count=1):
        name = Path(path).name
        if name == "case1_0000.nii.gz" and name not in refused:
            refused.append(name)  # refused the first time only: beside other work
            raise NotEnoughMemoryError(f"{path}: needs about 9.0 GiB, only 1.0 GiB available")
        if name == "huge_0000.nii.gz":  # refused every time: too large on its own too
            raise NotEnoughMemoryError(f"{path}: needs about 99.0 GiB, only 1.0 GiB available")
        return read_volume(path)

    monkeypatch.setattr(batch, "read_channels", tight_memory)
    report = run_batch(sorted(inputs.iterdir()), outputs, static_bundle, PredictOptions(threads=1))
    assert [(r.name, r.status) for r in report.results] == [
        ("case0", "done"),
        ("case1", "done"),
        ("case2", "done"),
        ("huge", "failed"),
    ]
    assert refused == ["case1_0000.nii.gz"]
    assert "99.0 GiB" in report.results[3].message
    assert all(r.seconds > 0 for r in report.results)


def test_bf16_request_on_a_cpu_without_bf16_says_it_ran_float32(
    static_bundle: Path, tmp_path: Path
) -> None:
    import openvino as ov

    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    volume = read_volume(write_scan(tmp_path / "scan.nii.gz"))
    prediction = Predictor(static_bundle, PredictOptions(precision="bf16", threads=1)).predict(
        volume
    )
    fell_back = any("no bf16 support" in note for note in prediction.notes)
    assert fell_back == (not has_bf16)
    fp32 = Predictor(static_bundle, PredictOptions(precision="fp32", threads=1)).predict(volume)
    assert not fp32.notes


def test_organ_volumes_count_every_slab_and_ignore_unknown_labels() -> None:
    from edge_seg.postprocess import organ_volumes_ml

    # 2048x2048 planes: one plane per counting slab, so all three slabs must be summed.
    labels = np.zeros((3, 2048, 2048), dtype=np.uint8)
    labels[0, :10, :10] = 1
    labels[2, :20, :5] = 1
    labels[1, 100:110, :] = 7  # a label the table does not list
    labels[1, 2047, 2047] = 7  # stretches the labelled box over the whole planes
    volumes = organ_volumes_ml(labels, (2.0, 0.5, 0.5), {"liver": 1, "spleen": 3})
    voxel_ml = 2.0 * 0.5 * 0.5 / 1000
    assert volumes == pytest.approx({"liver": 200 * voxel_ml, "spleen": 0.0})
    # Counting only in the labelled box changes nothing; an empty map has no volume.
    inner = np.zeros((9, 64, 64), dtype=np.uint8)
    inner[3:5, 10:20, 30:33] = 3
    assert organ_volumes_ml(inner, (1.0, 1.0, 1.0), {"spleen": 3}) == {"spleen": 0.06}
    empty = organ_volumes_ml(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), {"liver": 1})
    assert empty == {"liver": 0.0}


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_run_many_returns_each_patch_its_own_logits_in_order(
    static_bundle: Path, backend: str
) -> None:
    """With several patches in flight, results come back in input order and none is
    overwritten by a later patch that reuses its infer request."""
    bundle = load_bundle(static_bundle)
    rng = np.random.default_rng(3)
    tiles = [
        rng.normal(size=(1, 1, *bundle.patch_size)).astype(np.float32) * (i + 1) for i in range(7)
    ]
    one = open_session(bundle, backend, "fp32", 2, streams=1 if backend == "openvino" else None)
    expected = [one.run(tile)[0] for tile in tiles]
    session = open_session(bundle, backend, "fp32", 2, streams=2 if backend == "openvino" else None)
    got = [logits for logits, _ in session.run_many(iter(tiles))]
    assert len(got) == len(tiles)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)
    # Distinct inputs give distinct outputs, so a mix-up could not pass unnoticed.
    assert not np.allclose(got[0], got[1], atol=1e-3)


@pytest.mark.parametrize("streams", [1, 2])
def test_run_many_without_copies_gives_each_result_until_the_next(
    static_bundle: Path, streams: int
) -> None:
    """``copy=False`` hands out OpenVINO's own buffers: read at once, they are each patch's."""
    bundle = load_bundle(static_bundle)
    rng = np.random.default_rng(4)
    tiles = [rng.normal(size=(1, 1, *bundle.patch_size)).astype(np.float32) for _ in range(5)]
    one = open_session(bundle, "openvino", "fp32", 2, streams=1)
    expected = [one.run(tile)[0] for tile in tiles]
    session = open_session(bundle, "openvino", "fp32", 2, streams=streams)
    got = [logits.copy() for logits, _ in session.run_many(iter(tiles), copy=False)]
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got[0], got[1], atol=1e-3)


def test_streams_setting_reaches_openvino(static_bundle: Path) -> None:
    bundle = load_bundle(static_bundle)
    assert (
        open_session(bundle, "openvino", "fp32", 2, streams=2).compiled.get_property("NUM_STREAMS")
        == 2
    )
    assert open_session(bundle, "openvino", "fp32", 2, streams=1).streams == 1
    assert open_session(bundle, "openvino", "fp32", 2).streams == 2  # the default on 2 threads
    with pytest.raises(EdgesegError, match="--streams"):
        open_session(bundle, "openvino", "fp32", 2, streams=-1)


def test_predict_with_two_streams_labels_as_with_one(static_bundle: Path, tmp_path: Path) -> None:
    volume = read_volume(write_scan(tmp_path / "scan.nii.gz", shape=(40, 56, 60)))
    labels = {
        streams: Predictor(
            static_bundle, PredictOptions(precision="fp32", threads=2, streams=streams)
        )
        .predict(volume)
        .labels
        for streams in (1, 2)
    }
    assert np.mean(labels[1] == labels[2]) > 0.999
    assert set(np.unique(labels[2])) == {0, 1, 2, 3}
