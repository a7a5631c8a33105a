"""Bad input to ``edgeseg export``, ``quantize`` and ``verify``: one line, exit 2, no output.

Each case here was a traceback, a misleading message or a silent wrong result before: a
hand-edited plans.json / dataset.json, a checkpoint that is no checkpoint (random bytes, a
truncated archive, weights that are no state dict), a spec file with a wrong type, an unknown
key or the README's gap in the label values, a factory module that fails to import, a network
whose classes or inputs do not fit the spec, ``--checkpoint PATH`` with several folds, a
damaged fp32 model or no backend for ``quantize``. Small genuine nnU-Net folders and networks.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

from export_fixtures import (  # noqa: E402
    CT_STATS,
    TINY_LABELS,
    cli_without,
    make_workspace,
    run_cli,
)

from edge_seg.bundle import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_workspace(tmp_path_factory.mktemp("audit"))


def one_line_error(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("edgeseg: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


def no_output(out: Path) -> None:
    """Neither the bundle nor a temporary sibling of it is left behind."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def edited(workspace: dict[str, Path], tmp_path: Path, name: str,
           edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the results folder with ``edit`` applied to its plans.json or dataset.json."""
    folder = tmp_path / "results"
    shutil.copytree(workspace["results"], folder)
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))
    return folder


def _config(plans: dict[str, Any]) -> dict[str, Any]:
    return plans["configurations"]["3d_fullres"]


@pytest.mark.parametrize(("name", "edit", "expected"), [
    ("plans.json", lambda p: _config(p).pop("spacing"),
     "configuration '3d_fullres' lacks spacing"),
    ("plans.json", lambda p: _config(p).update(spacing=[2.0, 2.0]),
     "spacing_mm: [2.0, 2.0] is not 3"),
    ("plans.json", lambda p: p.update(transpose_forward=[0, 1]), "not a permutation of 0, 1, 2"),
    ("plans.json", lambda p: p["configurations"].update({"3d_fullres": "x"}),
     "configuration '3d_fullres' is not an object"),
    ("plans.json", lambda p: p["foreground_intensity_properties_per_channel"]["0"].pop("std"),
     "channel 0 lacks std"),
    ("dataset.json", lambda d: d.update(labels=["background", "liver"]),
     "'labels' is not an object"),
    ("dataset.json", lambda d: d["labels"].update(liver="one"), "liver = 'one' is not an integer"),
    ("dataset.json", lambda d: d.pop("channel_names"), "no 'channel_names' entry"),
    ("dataset.json", lambda d: d["labels"].update(spleen=4), "labels: values must be 0..3"),
])
def test_malformed_plans_or_dataset_name_the_file(workspace, capsys, tmp_path, name, edit,
                                                  expected) -> None:
    folder = edited(workspace, tmp_path, name, edit)
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(folder), "-o", str(out)], capsys)
    where = "plans.json" if name == "plans.json" or "values must be" in expected else name
    one_line_error(code, err, f"{folder}/{where}", expected)
    no_output(out)


def test_dataset_json_that_is_not_text(workspace, capsys, tmp_path) -> None:
    folder = edited(workspace, tmp_path, "dataset.json", lambda d: None)
    (folder / "dataset.json").write_bytes(b"\x00\xf0\x9f\xff" * 8)
    code, _, err = run_cli(["export", "nnunet", str(folder), "-o", str(tmp_path / "b")], capsys)
    one_line_error(code, err, "dataset.json: unreadable JSON")


def _replace_checkpoint(workspace: dict[str, Path], tmp_path: Path,
                        write: Callable[[Path], None]) -> Path:
    folder = tmp_path / "results"
    shutil.copytree(workspace["results"], folder)
    write(folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _weights_as(value: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=False)
        checkpoint["network_weights"] = value
        torch.save(checkpoint, path)
    return write


@pytest.mark.parametrize(("write", "expected"), [
    (lambda p: p.write_bytes(bytes(range(7, 250)) * 20), "not a PyTorch checkpoint"),
    (lambda p: p.write_text("hello world"), "not a PyTorch checkpoint"),
    (_truncate, "checkpoint is truncated or damaged"),
    (_weights_as(torch.zeros(3)), "'network_weights' is not a state dict"),
])
@pytest.mark.parametrize("trust", [False, True])
def test_checkpoint_that_is_no_checkpoint(workspace, capsys, tmp_path, write, expected,
                                          trust) -> None:
    folder = _replace_checkpoint(workspace, tmp_path, write)
    out = tmp_path / "bundle"
    args = ["export", "nnunet", str(folder), "-o", str(out)]
    code, _, err = run_cli(args + (["--trust-checkpoint"] if trust else []), capsys)
    one_line_error(code, err, "fold_0/checkpoint_final.pth: ", expected)
    assert "allow-list" not in err  # not a pickle to trust: that advice would be wrong
    no_output(out)


def test_plain_pickle_refused_in_one_line(workspace, tmp_path) -> None:
    import pickle

    # A fresh interpreter: pytest collects warnings, and torch's two-line warning about a
    # pickle protocol it did not write went to stderr before the error.
    folder = _replace_checkpoint(
        workspace, tmp_path, lambda p: p.write_bytes(pickle.dumps(shutil.rmtree, protocol=4)))
    result = cli_without("audit_no_such_module", ["export", "nnunet", str(folder), "-o",
                                                  str(tmp_path / "b")])
    one_line_error(result.returncode, result.stderr, "outside the safe allow-list",
                   "--trust-checkpoint")


def test_checkpoint_path_with_several_folds_is_refused(workspace, capsys, tmp_path) -> None:
    # folder / fold_k / <absolute path> is the same file for every fold: an "ensemble" of one.
    other = tmp_path / "other.pth"
    shutil.copy(workspace["results"] / "fold_1" / "checkpoint_final.pth", other)
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "--fold", "0,1",
                            "--checkpoint", str(other), "-o", str(out)], capsys)
    one_line_error(code, err, f"--checkpoint {other}: a checkpoint path goes with one --fold")
    no_output(out)
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "--checkpoint",
                            str(tmp_path / "nope.pth"), "-o", str(out)], capsys)
    one_line_error(code, err, "nope.pth: checkpoint file does not exist")
    assert "not a complete nnU-Net" not in err


def test_first_unreadable_image_does_not_stop_the_export(workspace, capsys, tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_0000.nii.gz").write_bytes(b"not a nifti")
    shutil.copy(workspace["images"] / "case1_0000.nii.gz", images / "b_0000.nii.gz")
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "-o", str(out),
                            "--images", str(images)], capsys)
    assert code == 0, err
    assert "b_0000" in load_bundle(out).provenance["onnx_check"]["patch_source"]


# --- export torch -------------------------------------------------------------------------

NETWORK_MODULE = '''
import torch


class Net(torch.nn.Module):
    def __init__(self, cin=1, ncls=4):
        super().__init__()
        self.conv = torch.nn.Conv3d(cin, ncls, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def build(cin=1, ncls=4):
    return Net(cin, ncls)


def broken():
    raise ValueError("line one\\nline two")
'''


@pytest.fixture()
def torch_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A factory module (imported from the working folder), its weights and a good spec."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"audit_net_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(NETWORK_MODULE)
    (tmp_path / "audit_bad_syntax.py").write_text("def build(:\n")
    spec = {"name": "t", "modality": "CT", "channels": ["CT"], "labels": dict(TINY_LABELS),
            "spacing_mm": [2.5, 2.0, 2.0], "patch_size": [16, 32, 32],
            "normalization": [{"scheme": "ct", "lower": CT_STATS["percentile_00_5"],
                               "upper": CT_STATS["percentile_99_5"],
                               "mean": CT_STATS["mean"], "std": CT_STATS["std"]}]}
    yield {"root": tmp_path, "module": name, "spec": spec}
    sys.modules.pop(name, None)
    sys.modules.pop("audit_bad_syntax", None)


def _weights(case: dict[str, Any], **kwargs: int) -> Path:
    module = __import__(case["module"])
    path = case["root"] / "w.pt"
    torch.save(module.build(**kwargs).state_dict(), path)
    return path


def _spec(case: dict[str, Any], **changes: Any) -> Path:
    path = case["root"] / "spec.json"
    path.write_text(json.dumps({**case["spec"], **changes}))
    return path


def _export_torch(case: dict[str, Any], capsys: Any, spec: Path, *args: str
                  ) -> tuple[int, str, Path]:
    out = case["root"] / "bundle"
    code, _, err = run_cli(["export", "torch", str(spec), "-o", str(out), *args], capsys)
    return code, err, out


@pytest.mark.parametrize(("changes", "expected"), [
    # The README's example labels: a gap in the values, refused by the runtime at the end.
    ({"labels": {"background": 0, "liver": 1, "spleen": 3}}, "labels: values must be 0..2"),
    ({"spacing_mm": 3}, "spacing_mm: 3 is not 3 finite positive numbers"),
    ({"labels": ["background", "liver"]}, "labels: ["),
    ({"normalization": ["ct"]}, 'normalization[0]: "ct" is not an object'),
    ({"patch_size": [16, -32, 32]}, "patch_size: [16, -32, 32] is not 3 positive integers"),
    ({"presence_inputs": ["liver"]}, "unknown spec key(s) 'presence_inputs'"),
    ({"factory_kwargs": [1]}, "factory_kwargs is not an object"),
])
def test_spec_with_wrong_types_or_keys(torch_case, capsys, changes, expected) -> None:
    weights = _weights(torch_case)
    code, err, out = _export_torch(torch_case, capsys, _spec(torch_case, **changes),
                                   "--factory", f"{torch_case['module']}:build",
                                   "--weights", str(weights))
    one_line_error(code, err, "spec.json: ", expected)
    no_output(out)


@pytest.mark.parametrize(("factory", "expected"), [
    (":build", "expected 'package.module:function'"),
    ("audit_bad_syntax:build", "importing module 'audit_bad_syntax' failed"),
    ("MODULE:broken", "factory call failed (line one)"),
])
def test_factory_that_fails(torch_case, capsys, factory, expected) -> None:
    weights = _weights(torch_case)
    code, err, out = _export_torch(torch_case, capsys, _spec(torch_case), "--factory",
                                   factory.replace("MODULE", torch_case["module"]),
                                   "--weights", str(weights))
    one_line_error(code, err, expected)
    no_output(out)


def test_weights_file_that_is_not_a_checkpoint(torch_case, capsys) -> None:
    spec = _spec(torch_case)
    code, err, out = _export_torch(torch_case, capsys, spec, "--factory",
                                   f"{torch_case['module']}:build", "--weights", str(spec))
    one_line_error(code, err, "spec.json: not a PyTorch checkpoint")
    no_output(out)


def test_network_with_other_classes_than_the_labels(torch_case, capsys) -> None:
    # Five output channels for four labels: the bundle was written, and predict refused it.
    weights = _weights(torch_case, ncls=5)
    code, err, out = _export_torch(torch_case, capsys,
                                   _spec(torch_case, factory_kwargs={"ncls": 5}), "--factory",
                                   f"{torch_case['module']}:build", "--weights", str(weights))
    one_line_error(code, err, f"{torch_case['module']}:build: the network's logits have shape "
                   "(1, 5, 16, 32, 32)", "4 classes")
    no_output(out)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"presence_input": ["liver"]}, "the network fails on the bundle's input"),
    ({"presence_output": True}, "the network returns 1 output(s), the bundle declares 2"),
])
def test_network_that_does_not_fit_the_spec(torch_case, capsys, changes, expected) -> None:
    # Reported by the ONNX exporter before, naming the temporary bundle folder.
    weights = _weights(torch_case)
    code, err, out = _export_torch(torch_case, capsys, _spec(torch_case, **changes),
                                   "--factory", f"{torch_case['module']}:build",
                                   "--weights", str(weights))
    one_line_error(code, err, expected)
    assert ".tmp" not in err
    no_output(out)


def test_torchscript_with_other_input_channels(torch_case, capsys) -> None:
    module = __import__(torch_case["module"])
    path = torch_case["root"] / "net.ts"
    torch.jit.save(torch.jit.script(module.build(cin=2)), str(path))
    code, err, out = _export_torch(torch_case, capsys, _spec(torch_case), "--torchscript",
                                   str(path))
    one_line_error(code, err, f"{path}: the network fails", "to have 2 channels")
    no_output(out)


# --- quantize -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(workspace: dict[str, Path]) -> Path:
    from export.bundle_writer import export_nnunet

    bundle = workspace["root"] / "bundle"
    export_nnunet(workspace["results"], bundle, images=sorted(workspace["images"].iterdir()))
    return bundle


def _bundle_copy(exported: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    target = tmp_path / "bundle"
    shutil.copytree(exported, target)
    return target, {p.name: p.read_bytes() for p in target.iterdir()}


def test_quantize_without_a_backend_leaves_the_bundle(exported, workspace, capsys,
                                                      tmp_path) -> None:
    # Was exit 0, rewriting the report and calibration set with nothing quantised.
    bundle, before = _bundle_copy(exported, tmp_path)
    code, _, err = run_cli(["quantize", str(bundle), "--calib", str(workspace["images"]),
                            "--backend", ""], capsys)
    one_line_error(code, err, "--backend: give one or more of")
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_quantize_names_a_damaged_fp32_model_in_the_bundle(exported, workspace, capsys,
                                                           tmp_path) -> None:
    bundle, _ = _bundle_copy(exported, tmp_path)
    (bundle / "model.onnx").write_bytes(b"garbage")
    code, _, err = run_cli(["quantize", str(bundle), "--calib", str(workspace["images"]),
                            "--backend", "onnxruntime"], capsys)
    one_line_error(code, err, f"{bundle / 'model.onnx'}: the fp32 model is not a readable ONNX")
    assert ".quantize." not in err
    assert sorted(p.name for p in bundle.iterdir()) == ["edgeseg.json", "model.onnx"]


def test_quantize_says_when_only_the_held_out_images_are_unreadable(
        exported, workspace, capsys, tmp_path) -> None:
    bundle, before = _bundle_copy(exported, tmp_path)
    calib = tmp_path / "calib"
    shutil.copytree(workspace["images"], calib)
    (calib / "z_0000.nii.gz").write_bytes(b"not a nifti")  # sorts last: the held-out one
    code, _, err = run_cli(["quantize", str(bundle), "--calib", str(calib), "--backend",
                            "onnxruntime"], capsys)
    one_line_error(code, err, f"{calib} (held out: the last 1 of its images): no readable",
                   "z_0000.nii.gz")
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_relative_checkpoint_path_with_several_folds_is_refused(workspace, capsys, tmp_path,
                                                                monkeypatch) -> None:
    # A relative path with a folder in it was looked for inside every fold_k/ ("does not
    # exist", for a file that does) or resolved to one file for every fold.
    monkeypatch.chdir(workspace["results"])
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", ".", "--fold", "0,1", "--checkpoint",
                            "fold_0/checkpoint_final.pth", "-o", str(out)], capsys)
    one_line_error(code, err, "a checkpoint path goes with one --fold (got 0, 1)")
    no_output(out)


def test_2d_configuration_is_refused_by_name(workspace, capsys, tmp_path) -> None:
    def add_2d(plans: dict[str, Any]) -> None:
        plans["configurations"]["2d"] = {**_config(plans), "patch_size": [128, 128],
                                         "spacing": [2.0, 2.0]}

    folder = edited(workspace, tmp_path, "plans.json", add_2d)
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(folder), "--configuration", "2d", "-o",
                            str(out)], capsys)
    one_line_error(code, err, "configuration '2d' is a 2D one (patch [128, 128])")
    no_output(out)


def test_nnunet_ignore_label_is_not_an_output_channel(workspace, capsys, tmp_path) -> None:
    # nnU-Net trains without an output channel for "ignore" (sparse annotations); it was
    # refused as "weights do not fit the plans' architecture".
    def add_ignore(dataset: dict[str, Any]) -> None:
        dataset["labels"]["ignore"] = max(dataset["labels"].values()) + 1

    folder = edited(workspace, tmp_path, "dataset.json", add_ignore)
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(folder), "-o", str(out)], capsys)
    assert code == 0, err
    assert "ignore" not in load_bundle(out).labels
