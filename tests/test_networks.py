"""Network definitions: nnU-Net's plain U-Net and the HALOS-style presence-aware U-Net."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.networks import DaftBlock, HalosUNet, plain_unet_topology  # noqa: E402


@pytest.mark.parametrize(
    ("spacing", "patch"),
    [
        ((3.0, 3.0, 3.0), (48, 128, 128)),
        ((3.0, 3.0, 3.0), (40, 100, 90)),
        ((5.0, 0.8, 0.8), (64, 192, 160)),
        ((2.5, 1.5, 1.5), (80, 160, 160)),
    ],
)
def test_topology_follows_nnunet_planner(spacing, patch):
    planner = pytest.importorskip(
        "nnunetv2.experiment_planning.experiment_planners.network_topology"
    )
    _, strides, kernels, padded, _ = planner.get_pool_and_conv_props(spacing, patch, 4, 999999)
    ours = plain_unet_topology(spacing, patch)
    assert ours[0] == [list(s) for s in strides]
    assert ours[1] == [list(k) for k in kernels]
    assert ours[2] == [int(p) for p in padded]


def test_topology_stage_cap():
    strides, kernels, patch = plain_unet_topology((3.0, 3.0, 3.0), (48, 128, 128), max_stages=3)
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert len(kernels) == 3
    assert patch == [48, 128, 128]


def test_plain_unet_matches_nnunet_builder():
    """Our builder and nnU-Net's get_network_from_plans give the same module and weights keys."""
    helpers = pytest.importorskip("nnunetv2.utilities.get_network_from_plans")
    from export.networks import build_plain_unet, nnunet_arch_kwargs

    strides, kernels, _ = plain_unet_topology((3.0, 3.0, 3.0), (16, 32, 32), max_stages=3)
    architecture = nnunet_arch_kwargs(strides, kernels, base_features=4, max_features=16)
    ours = build_plain_unet(architecture, 1, 5)
    theirs = helpers.get_network_from_plans(
        architecture["network_class_name"], architecture["arch_kwargs"],
        architecture["_kw_requires_import"], 1, 5, deep_supervision=False,
    )
    assert type(ours) is type(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    theirs.load_state_dict(ours.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def _small_halos(seed: int = 0) -> HalosUNet:
    torch.manual_seed(seed)
    return HalosUNet(1, 4, 3, features_per_stage=(4, 8, 16),
                     strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)))


def _randomise_daft(net: HalosUNet) -> None:
    """Give the (zero-initialised) DAFT output layers weights, as training would."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, DaftBlock):
            with torch.no_grad():
                last = module.mlp[2]
                last.weight.copy_(torch.randn(last.weight.shape, generator=generator) * 0.5)


def test_halos_shapes_and_untrained_daft_is_identity():
    net = _small_halos().eval()
    image = torch.randn(2, 1, 16, 24, 32)
    with torch.no_grad():
        logits_a, presence_a = net(image, torch.ones(2, 3))
        logits_b, presence_b = net(image, torch.zeros(2, 3))
    assert logits_a.shape == (2, 4, 16, 24, 32)
    assert presence_a.shape == (2, 3)
    # Zero-initialised DAFT blocks leave the features untouched until training moves them.
    assert torch.allclose(logits_a, logits_b)
    assert torch.equal(presence_a, presence_b)


def test_halos_prior_changes_segmentation_but_not_presence_head():
    net = _small_halos()
    _randomise_daft(net)
    net.eval()
    image = torch.randn(1, 1, 16, 24, 32).repeat(2, 1, 1, 1, 1)
    prior = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        logits, presence = net(image, prior)
        alone, _ = net(image[:1], prior[:1])
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
    # The presence head reads the encoder only: it predicts from the image, not from the prior.
    assert torch.allclose(presence[0], presence[1])
    # Each case is conditioned on its own prior only (no mixing across the batch).
    assert torch.allclose(logits[:1], alone, atol=1e-5)


def test_halos_exports_to_onnx_with_two_inputs_and_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = _small_halos(seed=2)
    _randomise_daft(net)
    net.eval()
    image = torch.randn(1, 1, 16, 24, 32)
    prior = torch.tensor([[0.0, 0.5, 1.0]])
    path = tmp_path / "halos.onnx"
    torch.onnx.export(
        net, (image, prior), str(path), input_names=["image", "presence"],
        output_names=["logits", "presence_logits"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "batch", 2: "z", 3: "y", 4: "x"}, "presence": {0: "batch"},
                      "logits": {0: "batch", 2: "z", 3: "y", 4: "x"},
                      "presence_logits": {0: "batch"}},
    )
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image", "presence"]
    assert [o.name for o in model.graph.output] == ["logits", "presence_logits"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # A different spatial size than the traced one: no shape was baked into the graph.
    image2 = torch.randn(1, 1, 24, 16, 32)
    for img in (image, image2):
        logits, presence = session.run(None, {"image": img.numpy(), "presence": prior.numpy()})
        with torch.no_grad():
            ref_logits, ref_presence = net(img, prior)
        np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(presence, ref_presence.numpy(), atol=1e-4)


def test_halos_rejects_mismatched_stage_lists():
    with pytest.raises(ValueError, match="one entry per stage"):
        HalosUNet(1, 4, 3, features_per_stage=(4, 8), strides=((1, 1, 1),))
