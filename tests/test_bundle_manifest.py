"""A damaged ``edgeseg.json`` is refused when the bundle is loaded: one line naming the
manifest and the field, never a traceback later on or a label map from a misread manifest."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from helpers_bundle import make_bundle, make_phantom
from test_predict_cli import edgeseg

from edge_seg.bundle import load_bundle
from edge_seg.errors import EdgesegError

MODELS = Path(__file__).resolve().parents[1] / "edge_seg" / "models"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("source"))


def damaged(source: Path, folder: Path, edit: Callable[[Any], Any]) -> Path:
    """A copy of ``source`` whose manifest is ``edit(manifest)`` (or the manifest edited in
    place, where ``edit`` returns None)."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "edgeseg.json").read_text())
    changed = edit(manifest)
    data = manifest if changed is None else changed
    (folder / "edgeseg.json").write_text(json.dumps(data))
    return folder


def _parent(manifest: Any, path: str) -> tuple[Any, str | int]:
    """The object holding the last step of an ``a.b.0.c``-style ``path``, and that step."""
    *parents, last = path.split(".")
    target = manifest
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    return target, int(last) if isinstance(target, list) else last


def put(path: str, value: Any) -> Callable[[Any], None]:
    """An edit setting ``path`` to ``value``."""

    def edit(manifest: Any) -> None:
        target, key = _parent(manifest, path)
        target[key] = value

    return edit


def drop(path: str) -> Callable[[Any], None]:
    """An edit deleting ``path``."""

    def edit(manifest: Any) -> None:
        target, key = _parent(manifest, path)
        del target[key]

    return edit


# (edit, the field the message names, what it says)
DAMAGE = {
    "labels a list": (put("labels", ["liver"]), "labels", "is not an object"),
    "top-level array": (lambda m: [1, 2], "bundle manifest", "not an array"),
    "files null": (put("files", None), "files", "null is not an object"),
    "spacing a string": (put("spacing_mm", "3"), "spacing_mm", "3 finite positive"),
    "spacing of 2": (put("spacing_mm", [3, 3]), "spacing_mm", "3 finite positive"),
    "spacing negative": (put("spacing_mm", [3, -3, 3]), "spacing_mm", "3 finite positive"),
    "spacing zero": (put("spacing_mm", [3, 0, 3]), "spacing_mm", "3 finite positive"),
    "spacing NaN": (put("spacing_mm", [3, float("nan"), 3]), "spacing_mm", "3 finite positive"),
    "spacing true": (put("spacing_mm", [3, True, 3]), "spacing_mm", "3 finite positive"),
    "patch a string": (put("patch_size", ["8", 16, 16]), "patch_size", "3 positive integers"),
    "patch zero": (put("patch_size", [8, 0, 16]), "patch_size", "3 positive integers"),
    "patch float": (put("patch_size", [8.5, 16, 16]), "patch_size", "3 positive integers"),
    "transpose repeated": (put("transpose_forward", [0, 0, 1]), "transpose_forward", "permutation"),
    "transpose of 2": (put("transpose_forward", [1, 0]), "transpose_forward", "permutation"),
    "label 300": (put("labels.spleen", 300), "labels", "spleen = 300 is outside 0..255"),
    "label negative": (put("labels.spleen", -1), "labels", "outside 0..255"),
    "label a string": (put("labels.spleen", "3"), "labels", "not an integer label value"),
    "label value twice": (put("labels.spleen", 1), "labels", "liver and spleen have the same"),
    "label gap": (put("labels.spleen", 5), "labels", "missing: 3"),
    "no background": (drop("labels.background"), "labels", '"background": 0'),
    "std zero": (put("normalization.0.std", 0), "normalization[0]", "std = 0 is not positive"),
    "std negative": (put("normalization.0.std", -5.0), "normalization[0]", "not positive"),
    "mean missing": (drop("normalization.0.mean"), "normalization[0]", "mean = null"),
    "lower above upper": (put("normalization.0.lower", 2000.0), "normalization[0]", "above"),
    "unknown scheme": (put("normalization.0.scheme", "minmax"), "normalization[0]", "scheme"),
    "a norm per channel": (
        lambda m: m["normalization"].append({"scheme": "none"}),
        "normalization",
        "2 entries for 1 input channel",
    ),
    "file outside": (put("files.fp32", "/etc/passwd"), "files", "not a path inside the bundle"),
    "file above": (put("files.fp32", "../model.onnx"), "files", "not a path inside the bundle"),
    "file a number": (put("files.fp32", 3), "files", "is not a file name"),
    "no fp32 file": (put("files", {}), "files", "no fp32 model file"),
    "format version 0": (put("format_version", 0), "format_version", "0 is not a bundle format"),
    "format version str": (put("format_version", "1"), "format_version", "not an integer"),
    "modality PET": (put("modality", "PET"), "modality", '"PET" is not supported'),
    "channels empty": (put("channels", []), "channels", "non-empty list"),
    "io name a number": (put("io_names.image", 5), "io_names", "image = 5"),
    "io name misspelt": (put("io_names.imgae", "x"), "io_names", "unknown entry 'imgae'"),
    "presence not an organ": (put("presence_input", ["pancreas"]), "presence_input", "pancreas"),
    "presence twice": (put("presence_input", ["liver", "liver"]), "presence_input", "twice"),
    "presence_output yes": (put("presence_output", "yes"), "presence_output", "true or false"),
    "axis order": (put("axis_order", "xyz"), "axis_order", "not supported"),
    "threshold zero": (put("resampling", {"anisotropy_threshold": 0}), "resampling", "positive"),
    "name missing": (drop("name"), "bundle manifest", "missing name"),
    "fidelity variants": (put("fidelity", {"variants": [1]}), "fidelity", "variants"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_manifest_is_one_line_naming_the_field(
    source: Path, tmp_path: Path, case: str
) -> None:
    edit, field, problem = DAMAGE[case]
    bundle = damaged(source, tmp_path / "copy", edit)
    with pytest.raises(EdgesegError) as caught:
        load_bundle(bundle)
    message = str(caught.value)
    assert message.startswith(f"{bundle / 'edgeseg.json'}: "), message
    assert field in message and problem in message, message
    assert "\n" not in message


def test_a_key_given_twice_is_refused(source: Path, tmp_path: Path) -> None:
    # JSON readers keep the last of two equal keys: an organ would vanish without a word.
    bundle = damaged(source, tmp_path / "copy", lambda m: None)
    text = (bundle / "edgeseg.json").read_text()
    (bundle / "edgeseg.json").write_text(text.replace('"liver": 1', '"liver": 1, "liver": 2'))
    with pytest.raises(EdgesegError, match="key 'liver' is given twice"):
        load_bundle(bundle)


def test_shipped_and_helper_bundles_pass_the_checks(tmp_path: Path) -> None:
    for name in ("flare_ct_plain", "halos_ct"):
        if (MODELS / name / "edgeseg.json").is_file():
            assert load_bundle(MODELS / name).labels["background"] == 0
    halos = make_bundle(tmp_path / "halos", presence_input=True, presence_output=True)
    assert load_bundle(halos).presence_input == ["liver", "kidney_right", "spleen"]
    # Defaults fill io_names entries a manifest leaves out; an empty presence list is none.
    trimmed = damaged(halos, tmp_path / "trimmed", put("io_names", {"image": "image"}))
    assert load_bundle(trimmed).io_names["presence_logits"] == "presence_logits"
    empty = damaged(make_bundle(tmp_path / "plain"), tmp_path / "empty", put("presence_input", []))
    assert load_bundle(empty).presence_input is None


# -- the command line ------------------------------------------------------------------------




def test_cli_refuses_damaged_copies_of_the_shipped_bundle(tmp_path: Path) -> None:
    plain = MODELS / "flare_ct_plain"
    if not (plain / "edgeseg.json").is_file():
        pytest.skip("no shipped flare_ct_plain bundle in this installation")
    image, _ = make_phantom()
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(image), str(scan))
    cases = {
        "labels": (put("labels", ["liver"]), (), "labels: "),
        "spleen": (put("labels.spleen", 1), (), "liver and spleen have the same value 1"),
        "kidney": (drop("labels.kidney_left"), (), "outputs 14 classes"),
        "presence": (
            put("presence_input", ["gallbladder"]),
            ("--absent", "gallbladder"),
            "presence_input: the model has no input 'presence'",
        ),
        "ioname": (put("io_names.image", "foo"), ("--backend", "onnxruntime"), "no input 'foo'"),
        "std": (put("normalization.0.std", 0), (), "std = 0 is not positive"),
    }
    for name, (edit, extra, message) in cases.items():
        bundle = damaged(plain, tmp_path / name, edit)
        result = edgeseg(scan, "--model", bundle, "-o", tmp_path / f"{name}.nii.gz", *extra)
        assert result.returncode == 2, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert not (tmp_path / f"{name}.nii.gz").exists()


def test_cli_refuses_an_infinite_minimum_component_volume(source: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16)), str(scan))
    out = tmp_path / "out.nii.gz"
    result = edgeseg(scan, "--model", source, "-o", out, "--min-component-ml", "inf")
    assert result.returncode == 2, result.stderr
    assert "--min-component-ml: inf is not a volume >= 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
