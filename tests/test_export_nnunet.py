"""``edgeseg export nnunet`` on a small genuine nnU-Net v2 results folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

from export_fixtures import (  # noqa: E402
    CT_STATS,
    TINY_LABELS,
    TINY_PATCH,
    TINY_SPACING,
    cli_without,
    make_workspace,
    run_cli,
)

from edge_seg.bundle import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_workspace(tmp_path_factory.mktemp("export"))



def onnx_logits(bundle_dir: Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image})[0]


def fold_network(results: Path, fold: int) -> torch.nn.Module:
    """The fold's network rebuilt independently, with the TRAINER's builder."""
    from export.networks.plain_unet import build_plain_unet

    plans = json.loads((results / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    network = build_plain_unet(arch, 1, len(TINY_LABELS))
    checkpoint = torch.load(results / f"fold_{fold}" / "checkpoint_final.pth",
                            weights_only=False)
    network.load_state_dict(checkpoint["network_weights"])
    return network.eval()


def test_export_writes_bundle_matching_plans(workspace, capsys, tmp_path) -> None:
    out = tmp_path / "bundle"
    code, stdout, err = run_cli(
        ["export", "nnunet", str(workspace["results"]), "-o", str(out),
         "--images", str(workspace["images"])], capsys)
    assert code == 0, err
    assert "ONNX checker passed" in stdout
    bundle = load_bundle(out)
    assert bundle.files == {"fp32": "model.onnx"}
    assert bundle.labels == TINY_LABELS
    assert bundle.spacing_mm == list(TINY_SPACING)
    assert bundle.patch_size == list(TINY_PATCH)
    assert bundle.transpose_forward == [0, 1, 2]
    assert bundle.mirror_axes == [0, 1, 2]
    assert bundle.normalization == [{
        "scheme": "ct", "lower": CT_STATS["percentile_00_5"],
        "upper": CT_STATS["percentile_99_5"], "mean": CT_STATS["mean"], "std": CT_STATS["std"],
    }]
    checkpoint = workspace["results"] / "fold_0" / "checkpoint_final.pth"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert bundle.provenance["checkpoints"][0]["sha256"] == digest
    check = bundle.provenance["onnx_check"]
    assert check["max_abs_diff"]["logits"] <= 1e-3
    assert check["patch_shape"] == [1, 1, *TINY_PATCH]
    assert "case0_0000" in check["patch_source"]


def test_onnx_has_dynamic_spatial_axes_and_matches_torch(workspace, tmp_path) -> None:
    from export.bundle_writer import export_nnunet

    out = tmp_path / "bundle"
    export_nnunet(workspace["results"], out, images=sorted(workspace["images"].iterdir()))
    # A shape other than the traced patch (still divisible by the 4x pooling).
    image = np.random.default_rng(0).normal(size=(2, 1, 24, 40, 48)).astype(np.float32)
    with torch.no_grad():
        expected = fold_network(workspace["results"], 0)(torch.from_numpy(image)).numpy()
    got = onnx_logits(out, image)
    assert got.shape == (2, len(TINY_LABELS), 24, 40, 48)
    assert np.abs(got - expected).max() <= 1e-3


def test_network_is_the_one_nnunet_rebuilds(workspace, tmp_path) -> None:
    """Same logits as nnU-Net's own predictor gets from the folder (deep supervision off)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from export.bundle_writer import export_nnunet

    out = tmp_path / "bundle"
    export_nnunet(workspace["results"], out, images=sorted(workspace["images"].iterdir()))
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(workspace["results"]), use_folds=(0,))
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    image = np.random.default_rng(1).normal(size=(1, 1, *TINY_PATCH)).astype(np.float32)
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy(image)).numpy()
    assert np.abs(onnx_logits(out, image) - expected).max() <= 1e-3


def test_fold_ensemble_averages_logits(workspace, capsys, tmp_path) -> None:
    out = tmp_path / "ensemble"
    code, _, err = run_cli(
        ["export", "nnunet", str(workspace["results"]), "-o", str(out), "--fold", "0,1",
         "--images", str(workspace["images"])], capsys)
    assert code == 0, err
    bundle = load_bundle(out)
    assert bundle.provenance["folds"] == ["0", "1"]
    assert len(bundle.provenance["checkpoints"]) == 2
    image = np.random.default_rng(2).normal(size=(1, 1, *TINY_PATCH)).astype(np.float32)
    with torch.no_grad():
        logits = [fold_network(workspace["results"], f)(torch.from_numpy(image)).numpy()
                  for f in (0, 1)]
    assert np.abs(logits[0] - logits[1]).max() > 1e-2  # the folds really differ
    assert np.abs(onnx_logits(out, image) - (logits[0] + logits[1]) / 2).max() <= 1e-3


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_missing_plans_names_the_file(workspace, capsys, tmp_path) -> None:
    broken = tmp_path / "results"
    shutil.copytree(workspace["results"], broken)
    (broken / "plans.json").unlink()
    code, _, err = run_cli(["export", "nnunet", str(broken), "-o", str(tmp_path / "b")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "plans.json is missing" in err
    assert not (tmp_path / "b").exists()


def test_missing_fold_checkpoint(workspace, capsys, tmp_path) -> None:
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "--fold", "3",
                            "-o", str(tmp_path / "b")], capsys)
    assert code == 2
    assert "fold_3/checkpoint_final.pth: checkpoint is missing" in err
    assert "fold_0" in err  # says which folds exist


def test_weights_that_do_not_fit_the_plans(workspace, capsys, tmp_path) -> None:
    broken = tmp_path / "results"
    shutil.copytree(workspace["results"], broken)
    plans = json.loads((broken / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [f * 2 for f in arch["features_per_stage"]]
    (broken / "plans.json").write_text(json.dumps(plans))
    out = tmp_path / "b"
    code, _, err = run_cli(["export", "nnunet", str(broken), "-o", str(out),
                            "--images", str(workspace["images"])], capsys)
    assert code == 2
    assert "weights do not fit the plans' architecture" in err and "shape mismatch" in err
    assert not out.exists() and _no_leftovers(tmp_path)


def test_existing_output_is_refused_and_kept(workspace, capsys, tmp_path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "-o", str(out)],
                           capsys)
    assert code == 2 and "already exists" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_output_under_a_file_is_refused_before_export(workspace, capsys, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(workspace["results"]), "-o", str(out)],
                           capsys)
    assert code == 2 and "notes.txt is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_untrusted_pickle_is_refused_unless_trusted(workspace, capsys, tmp_path) -> None:
    results = tmp_path / "results"
    shutil.copytree(workspace["results"], results)
    path = results / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["logging"]["custom"] = [Fraction(1, 3)]  # a type outside the allow-list
    torch.save(checkpoint, path)

    code, _, err = run_cli(["export", "nnunet", str(results), "-o", str(tmp_path / "b")], capsys)
    assert code == 2
    assert "fractions.Fraction" in err and "--trust-checkpoint" in err and "arbitrary code" in err
    assert not (tmp_path / "b").exists()

    code, _, err = run_cli(["export", "nnunet", str(results), "-o", str(tmp_path / "b"),
                            "--trust-checkpoint", "--images", str(workspace["images"])], capsys)
    assert code == 0, err
    assert load_bundle(tmp_path / "b").files["fp32"] == "model.onnx"


def test_export_without_torch_names_the_extra(workspace, tmp_path) -> None:
    result = cli_without("torch", ["export", "nnunet", str(workspace["results"]), "-o",
                                   str(tmp_path / "b")])
    assert result.returncode == 2
    assert "'export' extra" in result.stderr and "torch" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_images_the_check_runs_on_a_preprocessed_phantom(workspace, tmp_path) -> None:
    from export.bundle_writer import export_nnunet

    bundle = export_nnunet(workspace["results"], tmp_path / "bundle")
    check = bundle.provenance["onnx_check"]
    assert check["patch_source"].startswith("phantom")
    assert check["max_abs_diff"]["logits"] <= 1e-3


def test_checkpoint_option_picks_another_file(workspace, capsys, tmp_path) -> None:
    results = tmp_path / "results"
    shutil.copytree(workspace["results"], results)
    # fold_0/checkpoint_best.pth holds fold 1's weights: the export must follow --checkpoint.
    shutil.copy(results / "fold_1" / "checkpoint_final.pth",
                results / "fold_0" / "checkpoint_best.pth")
    out = tmp_path / "bundle"
    code, _, err = run_cli(["export", "nnunet", str(results), "-o", str(out), "--checkpoint",
                            "checkpoint_best.pth", "--images", str(workspace["images"])], capsys)
    assert code == 0, err
    image = np.random.default_rng(4).normal(size=(1, 1, *TINY_PATCH)).astype(np.float32)
    with torch.no_grad():
        expected = fold_network(workspace["results"], 1)(torch.from_numpy(image)).numpy()
    assert np.abs(onnx_logits(out, image) - expected).max() <= 1e-3
    assert load_bundle(out).provenance["checkpoints"][0]["path"].endswith("checkpoint_best.pth")


@pytest.mark.parametrize("norm", ["native", "axiswise"])
def test_onnx_norm_choice(workspace, tmp_path, norm) -> None:
    import onnx

    from export.bundle_writer import export_nnunet

    out = tmp_path / norm
    bundle = export_nnunet(workspace["results"], out, images=sorted(workspace["images"].iterdir()),
                           norm=norm)
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert ("InstanceNormalization" in ops) == (norm == "native")
    assert bundle.provenance["onnx_check"]["instance_norm"] == norm
    # Either way the graph computes the trained network (dynamic shape, checked vs PyTorch).
    image = np.random.default_rng(5).normal(2.0, 1.0, size=(1, 1, 24, 64, 32)).astype(np.float32)
    with torch.no_grad():
        expected = fold_network(workspace["results"], 0)(torch.from_numpy(image)).numpy()
    assert np.abs(onnx_logits(out, image) - expected).max() <= 1e-4
