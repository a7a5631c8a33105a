"""``edgeseg benchmark`` with the real ``edgeseg predict`` child and a small real bundle
(genuine ONNX model, OpenVINO and ONNX Runtime sessions): the whole FLARE-style path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from helpers_bundle import make_bundle, make_phantom

SPACING_XYZ = (1.2, 1.2, 2.5)


def _edgeseg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_seg", "benchmark", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def _write(array, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("bench_predict")
    bundle = make_bundle(root / "bundle")
    images, labels = root / "imagesTs", root / "labelsTs"
    images.mkdir()
    labels.mkdir()
    for seed in (0, 1):
        image, label = make_phantom(seed=seed)
        _write(image, images / f"case_{seed:03d}_0000.nii.gz")
        _write(label, labels / f"case_{seed:03d}.nii.gz")
    _write(image, images / "unlabelled_0000.nii.gz")
    return bundle, images, labels


def test_benchmark_with_real_predict_accuracy_and_compare(dataset, tmp_path: Path) -> None:
    bundle, images, labels = dataset
    out = tmp_path / "results"
    result = _edgeseg(images, "--model", bundle, "--gt", labels, "--time-limit", "120",
                      "--output", out, "--threads", "1", "--compare", "backend=onnxruntime")
    assert result.returncode == 0, result.stderr
    assert "no ground truth" in result.stderr and "unlabelled" in result.stderr
    data = json.loads((out / "benchmark.json").read_text())
    assert [c["name"] for c in data["configs"]] == ["base", "backend=onnxruntime"]
    assert len(data["cases"]) == 6
    for case in data["cases"]:
        assert case["status"] == "ok", case["stderr_tail"]
        # a fresh interpreter with OpenVINO or ONNX Runtime loaded: tens of MB at least. The
        # kernel's peak is exact; a 0.2 s child gives the 0.1 s sampler only two or three
        # readings, which can all fall before the model is loaded.
        assert case["kernel_max_rss_mb"] > 50
        assert case["peak_rss_mb"] > 0 and case["memory_auc_mb_s"] > 0
        assert case["time_s"] > 0 and case["samples"]
        if case["case_id"] == "unlabelled":
            assert case["dsc"] is None
        else:
            # the threshold "network" segments its own phantom almost perfectly
            assert case["organ_dsc"]["liver"] > 0.9 and case["dsc"] > 0.9
    assert data["summary"]["base"]["scored"] == 2
    assert data["comparison"]["backend=onnxruntime"]["cases_compared"] == 3
    assert "predictions" not in {p.name for p in out.iterdir()}
    assert (out / "plots" / "memory_case_000.png").is_file()

    # The run is its own baseline: accuracy identical, so the gate passes (time not gated).
    again = _edgeseg(images, "--model", bundle, "--gt", labels, "--time-limit", "120",
                     "--output", tmp_path / "again", "--threads", "1", "--no-plots",
                     "--baseline", out / "benchmark.json", "--no-time-gate",
                     "--compare", "backend=onnxruntime")
    assert again.returncode == 0, again.stderr
    assert "no regression" in again.stdout


def test_model_that_fails_to_load_is_reported_once(dataset, tmp_path: Path) -> None:
    _, images, _ = dataset
    broken = make_bundle(tmp_path / "broken")
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    result = _edgeseg(images, "--model", broken, "--time-limit", "60",
                      "--output", tmp_path / "out")
    assert result.returncode == 2
    # (OpenVINO's own C++ logger may print lines of its own before ours.)
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgeseg:")]
    assert len(errors) == 1 and errors[0].startswith("edgeseg: error:")
    assert "model.onnx" in errors[0] and "Traceback" not in result.stderr
    assert "[1/" not in result.stderr  # no case was started
    assert not (tmp_path / "out").exists()


def test_bad_compared_option_is_refused_before_any_case_runs(dataset, tmp_path: Path) -> None:
    bundle, images, _ = dataset
    for spec, message in [("min-component-ml=-1", "--min-component-ml: -1.0 is not a volume"),
                          ("step=fast", "--step: 'fast' is not a number")]:
        result = _edgeseg(images, "--model", bundle, "--output", tmp_path / "out",
                          "--compare", spec)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("edgeseg:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert f"(--compare {spec})" in errors[0]
        assert "[1/" not in result.stderr and not (tmp_path / "out").exists()
