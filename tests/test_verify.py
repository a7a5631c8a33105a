"""``edgeseg verify``: a bundle's shipped INT8 models re-measured against fp32 on this CPU.

Real OpenVINO and ONNX Runtime sessions on a small real bundle and real NIfTI files; the
failing case ships an INT8 IR of another network (two classes swapped), the way a model
quantised on one machine can disagree on another.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from export_fixtures import cli_without, run_cli
from helpers_bundle import make_bundle, make_phantom

pytest.importorskip("onnx")



@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("holdout")
    for seed in range(2):
        image, _ = make_phantom(shape=(20, 36, 40), seed=seed)
        itk = sitk.GetImageFromArray(image)
        itk.SetSpacing((1.2, 1.2, 2.5))
        sitk.WriteImage(itk, str(folder / f"case{seed}_0000.nii.gz"), useCompression=True)
    return folder


def int8_bundle(folder: Path) -> Path:
    return make_bundle(folder, int8=True, validated=("fp32", "int8_openvino", "int8_onnx"))


def swap_int8_classes(bundle_dir: Path) -> None:
    """Replace the OpenVINO INT8 model by the fp32 network with liver and spleen swapped."""
    import onnx
    import openvino as ov
    from onnx import numpy_helper

    model = onnx.load(str(bundle_dir / "model.onnx"))
    for init in model.graph.initializer:
        if init.name in ("W", "B"):
            values = numpy_helper.to_array(init).copy()
            values[[1, 3]] = values[[3, 1]]
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    swapped = bundle_dir / "swapped.onnx"
    onnx.save(model, swapped)
    ov.save_model(ov.convert_model(str(swapped)), str(bundle_dir / "model_int8.xml"))
    swapped.unlink()


def test_verify_measures_each_shipped_int8_model_and_leaves_the_bundle(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle_dir = int8_bundle(tmp_path / "bundle")
    # A stored report in which the shipped IR is a mixed-precision fallback, as after
    # `edgeseg quantize` when the plain INT8 variant missed the bar.
    manifest = json.loads((bundle_dir / "edgeseg.json").read_text())
    manifest["fidelity"] = {"cpu": "quantise-time CPU", "measured_at": "2026-12-01",
                            "variants": {
                                "int8_openvino": {"file": "model_int8_openvino.xml",
                                                  "mean_dice": 0.5, "passed": False},
                                "int8_openvino_mixed": {"file": "model_int8.xml",
                                                        "mean_dice": 0.99, "passed": True}}}
    (bundle_dir / "edgeseg.json").write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    # The tiny network's QDQ model (MinMax ranges, int8 activations) agrees about 0.976.
    code, out, err = run_cli(["verify", str(bundle_dir), str(images), "--threads", "1",
                              "--bar", "0.9"], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
    assert set(rows) == {"int8_openvino", "int8_onnx"}
    for row in rows.values():
        assert float(row[2]) >= 0.9 and row[-1] == "yes"
    assert rows["int8_openvino"][1] == "int8_openvino_mixed" and "0.9900" in rows["int8_openvino"]
    assert rows["int8_onnx"][1] == "int8_onnx"  # not in the stored report: no stored figure
    per_image = [line for line in out.splitlines() if " per image: " in line]
    assert [line.split()[0] for line in per_image] == ["int8_openvino", "int8_onnx"]
    assert all("case0_0000 " in line and "case1_0000 " in line for line in per_image)
    # The stored report predates speck removal (no label_cleanup key) and says so.
    assert out.splitlines()[-2] == ("label maps here: largest component per organ, components "
                                    "under 0.5 ml removed")
    assert out.splitlines()[-1] == ("stored: measured by edgeseg quantize on quantise-time CPU, "
                                    "2026-12-01; label maps: largest component per organ, no "
                                    "speck removal")
    assert "2 images from" in out
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before


def test_verify_fails_when_an_int8_model_disagrees_here(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle_dir = int8_bundle(tmp_path / "bundle")
    swap_int8_classes(bundle_dir)
    code, out, _ = run_cli(["verify", str(bundle_dir), str(images), "--threads", "1",
                            "--bar", "0.9"], capsys)
    assert code == 1
    rows = {line.split()[0]: line for line in out.splitlines()[2:4]}
    openvino = rows["int8_openvino"]
    assert "NO (below 0.9)" in openvino
    # Liver and spleen relabelled: their Dice (and the mean) collapse; kidney is untouched.
    assert float(openvino.split()[2]) < 0.6
    assert rows["int8_onnx"].endswith("yes")


def test_verify_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp32_only = make_bundle(tmp_path / "fp32_only")
    code, _, err = run_cli(["verify", str(fp32_only), str(images)], capsys)
    assert code == 2 and "ships no validated INT8 model" in err and err.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    bundle = int8_bundle(tmp_path / "b")
    code, _, err = run_cli(["verify", str(bundle), str(empty)], capsys)
    assert code == 2 and "no readable images" in err and err.count("\n") == 1
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    wrong = (([a_file, images], "model bundle folder"), ([bundle, a_file], "image folder"))
    for args, what in wrong:
        code, _, err = run_cli(["verify", *map(str, args)], capsys)
        assert code == 2 and err.count("\n") == 1
        assert f"{a_file}: {what} expected, but this is a file" in err


def test_verify_needs_no_export_extra(tmp_path: Path, images: Path) -> None:
    bundle_dir = int8_bundle(tmp_path / "bundle")
    for module in ("nncf", "torch", "onnx"):
        result = cli_without(module, ["verify", str(bundle_dir), str(images), "--threads", "1",
                                      "--bar", "0.9"])
        assert result.returncode == 0, result.stderr
        assert np.all(["int8_openvino" in result.stdout, "int8_onnx" in result.stdout])
