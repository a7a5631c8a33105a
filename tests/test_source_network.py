"""Rebuilding a bundle's PyTorch network from its provenance (export.source_network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from export_fixtures import make_results_folder, write_ct_image  # noqa: E402
from test_export_torch import HALOS_KWARGS, ORGANS, halos_weights, spec  # noqa: E402

from edge_seg.bundle import Bundle, load_bundle  # noqa: E402
from edge_seg.errors import EdgesegError  # noqa: E402
from export.bundle_writer import export_nnunet, export_torch  # noqa: E402
from export.source_network import (  # noqa: E402
    SourceMissingError,
    check_matches_bundle,
    source_network,
)


def patch_inputs(bundle, presence: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 1, *bundle.patch_size)).astype(np.float32)
    return [image, np.array([[1.0, 0.0, 0.5]], dtype=np.float32)] if presence else [image]


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    return [write_ct_image(tmp_path / "images" / "case0_0000.nii.gz", seed=5)]


@pytest.fixture()
def halos_bundle(tmp_path: Path, images: list[Path]) -> tuple[Bundle, Path, Path]:
    """A HALOS-style network exported with ``module:factory``; (bundle, weights, spec)."""
    weights, _ = halos_weights(tmp_path)
    spec_path = spec(tmp_path, presence_input=ORGANS, presence_output=True,
                     factory_kwargs=HALOS_KWARGS)
    bundle = export_torch(spec_path, tmp_path / "bundle",
                          factory="export.networks.halos_unet:HalosUNet", weights=weights,
                          images=images)
    return bundle, weights, spec_path


def test_factory_bundle_rebuilds_without_its_spec_file(tmp_path, halos_bundle) -> None:
    bundle, _, spec_path = halos_bundle
    assert bundle.provenance["factory_kwargs"] == HALOS_KWARGS
    spec_path.unlink()  # the kwargs in the provenance are enough

    network = source_network(load_bundle(tmp_path / "bundle"))
    diff = check_matches_bundle(network, bundle, patch_inputs(bundle, presence=True))
    assert diff <= 1e-3


def test_moved_weights_are_found_through_source(tmp_path, halos_bundle) -> None:
    bundle, weights, _ = halos_bundle
    moved = weights.rename(tmp_path / "elsewhere.pt")
    with pytest.raises(SourceMissingError, match="weights file does not exist"):
        source_network(bundle)
    assert check_matches_bundle(source_network(bundle, moved), bundle,
                                patch_inputs(bundle, presence=True)) <= 1e-3


def test_a_moved_checkout_finds_the_source_beside_the_bundle(tmp_path, halos_bundle) -> None:
    bundle, weights, _ = halos_bundle
    assert bundle.provenance["weights_from_bundle"] == f"../{weights.name}"
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "bundle", moved / "bundle")
    shutil.move(weights, moved / weights.name)  # the weights sit beside the bundle again
    relocated = load_bundle(moved / "bundle")
    assert not Path(relocated.provenance["weights"]).exists()
    network = source_network(relocated)
    assert check_matches_bundle(network, relocated, patch_inputs(bundle, presence=True)) <= 1e-3


def test_other_weights_are_not_taken_for_the_bundles_network(halos_bundle) -> None:
    bundle, _, _ = halos_bundle
    network = source_network(bundle)
    with torch.no_grad():  # a retrained checkpoint of the same architecture
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    with pytest.raises(EdgesegError, match="not the bundle's model"):
        check_matches_bundle(network, bundle, patch_inputs(bundle, presence=True))


def test_nnunet_bundle_rebuilds_its_fold(tmp_path, images) -> None:
    results = make_results_folder(tmp_path / "nnUNet_results", seed=3, folds=(0, 1))
    bundle = export_nnunet(results, tmp_path / "bundle", folds=("1",), images=images)
    network = source_network(bundle)
    assert check_matches_bundle(network, bundle, patch_inputs(bundle, presence=False)) <= 1e-3

    moved = tmp_path / "moved_results"
    shutil.move(results, moved)
    with pytest.raises(SourceMissingError, match="results folder does not exist"):
        source_network(bundle)
    assert check_matches_bundle(source_network(bundle, moved), bundle,
                                patch_inputs(bundle, presence=False)) <= 1e-3


def test_fold_zero_is_not_the_bundle_of_fold_one(tmp_path, images) -> None:
    results = make_results_folder(tmp_path / "nnUNet_results", seed=3, folds=(0, 1))
    bundle = export_nnunet(results, tmp_path / "bundle", folds=("1",), images=images)
    manifest = json.loads((bundle.root / "edgeseg.json").read_text())
    manifest["provenance"]["folds"] = ["0"]
    (bundle.root / "edgeseg.json").write_text(json.dumps(manifest))
    wrong = load_bundle(bundle.root)
    with pytest.raises(EdgesegError, match="not the bundle's model"):
        check_matches_bundle(source_network(wrong), wrong, patch_inputs(wrong, presence=False))


def test_ensembles_and_torchscript_cannot_be_rebuilt(tmp_path, images) -> None:
    results = make_results_folder(tmp_path / "nnUNet_results", seed=3, folds=(0, 1))
    ensemble = export_nnunet(results, tmp_path / "ensemble", folds=("0", "1"), images=images)
    with pytest.raises(EdgesegError, match="ensemble of folds 0, 1"):
        source_network(ensemble)

    network = torch.nn.Conv3d(1, 4, 1)
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 1, 8, 16, 16)), str(path))
    scripted = export_torch(spec(tmp_path), tmp_path / "scripted", torchscript=path,
                            images=images)
    with pytest.raises(EdgesegError, match="TorchScript"):
        source_network(scripted)
