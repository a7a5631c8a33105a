"""``edgeseg export torch``: module:factory + weights + spec, or TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from export_fixtures import CT_STATS, write_ct_image  # noqa: E402

from edge_seg.bundle import load_bundle  # noqa: E402
from edge_seg.cli import main  # noqa: E402

HALOS_KWARGS = {
    "input_channels": 1, "num_classes": 4, "n_presence": 3,
    "features_per_stage": [4, 8, 16], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
}
ORGANS = ["liver", "kidney_right", "spleen"]


def spec(tmp_path: Path, **extra) -> Path:
    data = {
        "name": "halos_tiny", "modality": "CT", "channels": ["CT"],
        "labels": {"background": 0, "Liver": 1, "Right Kidney": 2, "spleen": 3},
        "spacing_mm": [2.5, 2.0, 2.0], "patch_size": [16, 32, 32],
        "normalization": [{"scheme": "ct", "lower": CT_STATS["percentile_00_5"],
                           "upper": CT_STATS["percentile_99_5"], "mean": CT_STATS["mean"],
                           "std": CT_STATS["std"]}],
        **extra,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    write_ct_image(tmp_path / "images" / "case0_0000.nii.gz", seed=5)
    return tmp_path / "images"


def halos_weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    from export.networks.halos_unet import HalosUNet

    torch.manual_seed(7)
    network = HalosUNet(**HALOS_KWARGS).eval()
    path = tmp_path / "halos.pt"
    torch.save({"state_dict": network.state_dict(), "epoch": 3}, path)
    return path, network


def test_factory_export_of_presence_network(tmp_path, images, capsys) -> None:
    import onnxruntime as ort

    weights, network = halos_weights(tmp_path)
    spec_path = spec(tmp_path, presence_input=ORGANS, presence_output=True,
                     factory_kwargs=HALOS_KWARGS)
    out = tmp_path / "bundle"
    code, err = run_cli(["export", "torch", str(spec_path), "-o", str(out), "--factory",
                         "export.networks.halos_unet:HalosUNet", "--weights", str(weights),
                         "--images", str(images)], capsys)
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.labels == {"background": 0, "liver": 1, "kidney_right": 2, "spleen": 3}
    assert bundle.presence_input == ORGANS and bundle.presence_output
    diffs = bundle.provenance["onnx_check"]["max_abs_diff"]
    assert set(diffs) == {"logits", "presence_logits"} and max(diffs.values()) <= 1e-3

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "presence"]
    assert [o.name for o in session.get_outputs()] == ["logits", "presence_logits"]
    image = np.random.default_rng(0).normal(size=(1, 1, 24, 40, 32)).astype(np.float32)
    presence = np.array([[1.0, 0.0, 1.0]], dtype=np.float32)
    logits, presence_logits = session.run(None, {"image": image, "presence": presence})
    with torch.no_grad():
        want = network(torch.from_numpy(image), torch.from_numpy(presence))
    assert np.abs(logits - want[0].numpy()).max() <= 1e-3
    assert np.abs(presence_logits - want[1].numpy()).max() <= 1e-3


def test_torchscript_export(tmp_path, images, capsys) -> None:
    from export_fixtures import tiny_architecture

    from export.networks.plain_unet import build_plain_unet

    torch.manual_seed(0)
    network = build_plain_unet(tiny_architecture(), 1, 4).eval()
    scripted = torch.jit.trace(network, torch.zeros(1, 1, 16, 32, 32))
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    out = tmp_path / "bundle"
    code, err = run_cli(["export", "torch", str(spec(tmp_path)), "-o", str(out),
                         "--torchscript", str(path), "--images", str(images)], capsys)
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.provenance["onnx_check"]["max_abs_diff"]["logits"] <= 1e-3
    assert bundle.provenance["torchscript"] == str(path.resolve())


def test_weights_that_do_not_fit_the_factory(tmp_path, images, capsys) -> None:
    weights, _ = halos_weights(tmp_path)
    kwargs = {**HALOS_KWARGS, "features_per_stage": [8, 16, 32]}
    out = tmp_path / "bundle"
    code, err = run_cli(["export", "torch", str(spec(tmp_path, presence_input=ORGANS,
                                                     presence_output=True,
                                                     factory_kwargs=kwargs)),
                         "-o", str(out), "--factory", "export.networks.halos_unet:HalosUNet",
                         "--weights", str(weights)], capsys)
    assert code == 2 and "weights do not fit" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factory", "no_such_module_xyz:build", "--weights", "w.pt"], "cannot import module"),
        (["--factory", "export.networks.halos_unet", "--weights", "w.pt"], "module:function"),
        ([], "give --factory"),
    ],
)
def test_bad_torch_arguments(tmp_path, capsys, args, message) -> None:
    (tmp_path / "w.pt").write_bytes(b"")
    args = [a if a != "w.pt" else str(tmp_path / "w.pt") for a in args]
    code, err = run_cli(["export", "torch", str(spec(tmp_path)), "-o",
                         str(tmp_path / "b"), *args], capsys)
    assert code == 2 and message in err


def test_spec_missing_keys(tmp_path, capsys) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"modality": "CT", "channels": ["CT"]}))
    code, err = run_cli(["export", "torch", str(path), "-o", str(tmp_path / "b"),
                         "--torchscript", str(path)], capsys)
    assert code == 2 and "spec lacks labels" in err
