"""The HALOS prior fine-tune: cached decoder features, and that it teaches the prior."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import train_prior as tp  # noqa: E402
from export.networks import HalosUNet  # noqa: E402
from export.train_reference import LABELS, NUM_CLASSES, PRESENCE_ORGANS  # noqa: E402

PATCH = (8, 16, 16)
GALLBLADDER = LABELS["gallbladder"]


def tiny_network() -> HalosUNet:
    torch.manual_seed(0)
    return HalosUNet(
        1, NUM_CLASSES, len(PRESENCE_ORGANS), (4, 8, 16), ((1, 1, 1), (2, 2, 2), (2, 2, 2))
    ).eval()


def test_forward_is_head_of_last_daft_of_decoder_features() -> None:
    network = tiny_network()
    for daft in network.decoder_daft:  # non-identity DAFT blocks, so the order matters
        torch.nn.init.normal_(daft.mlp[2].weight, std=0.5)
    image = torch.randn(2, 1, *PATCH)
    prior = torch.tensor([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        logits, presence = network(image, prior)
        features, presence_too = network.decoder_features(image, prior)
        again = network.segmentation_head(network.decoder_daft[-1](features, prior))
    torch.testing.assert_close(again, logits)
    torch.testing.assert_close(presence_too, presence)


def test_patch_starts_fit_the_case_and_follow_the_liver() -> None:
    label = np.zeros((20, 40, 40), np.uint8)
    label[10:14, 30:36, 30:36] = LABELS["liver"]
    starts = tp.patch_starts(label, PATCH, 50, 1.0, np.random.default_rng(1))
    for start in starts:
        assert all(0 <= s <= n - p for s, n, p in zip(start, label.shape, PATCH, strict=True))
    # Centred on the liver (at y, x 30-36) with a quarter-patch jitter: never at the origin.
    assert min(s[1] for s in starts) >= 30 - PATCH[1] // 2 - PATCH[1] // 4 - 1


def test_truth_prior_marks_missing_organs_absent() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    label[0, 0, 0] = LABELS["kidney_left"]
    prior = tp.truth_prior(label)
    assert prior.tolist() == [1.0 if organ == "kidney_left" else 0.0 for organ in PRESENCE_ORGANS]


def _blob_cases(network: HalosUNet, prior_matters: bool) -> list[tp.CachedPatch]:
    """Eight cases whose images all show a gallbladder-like blob; half are resected. With
    ``prior_matters`` the labels follow the resection, else every case is labelled with a
    gallbladder (a model trained so hallucinates it)."""
    slot = PRESENCE_ORGANS.index("gallbladder")
    items = []
    for case in range(8):
        generator = torch.Generator().manual_seed(case)
        image = torch.randn(1, 1, *PATCH, generator=generator)
        image[..., 2:6, 4:12, 4:12] += 3.0
        resected = case % 2 == 0
        prior = np.ones(len(PRESENCE_ORGANS), np.float32)
        prior[slot] = 0.0 if resected else 1.0
        labels = np.zeros(PATCH, np.uint8)
        if not resected or not prior_matters:
            labels[2:6, 4:12, 4:12] = GALLBLADDER
        with torch.no_grad():
            features, _ = network.decoder_features(image, torch.from_numpy(prior[None]))
        items.append(tp.CachedPatch(case, features[0].numpy(), prior, labels, "truth", resected))
    return items


def test_tune_teaches_the_last_fusion_to_drop_an_absent_organ() -> None:
    """A model that segments the blob whatever the prior learns from the tune that "absent"
    means no gallbladder and "present" keeps it, through its last DAFT block alone; the
    frozen layers (encoder, segmentation head) stay as they were."""
    network = tiny_network()
    rng = np.random.default_rng(0)
    config = tp.PriorTuneConfig(steps=600, batch_size=4, learning_rate=3e-2, crop=(8, 12, 12))
    pretrain = tp.PriorTuneConfig(**{**config.__dict__, "train_head": True})
    tp.tune(network, _blob_cases(network, prior_matters=False), pretrain, rng)
    items = _blob_cases(network, prior_matters=True)
    before = tp.gallbladder_checks(network, items)
    assert before == {"found, truth prior": 1.0, "hallucinated, truth prior": 1.0}
    frozen = {
        k: v.clone()
        for k, v in network.state_dict().items()
        if "encoder" in k or "segmentation_head" in k
    }
    tp.find_focus(network, items)
    assert all(len(item.focus) for item in items)  # hallucinated or true, there is one
    tp.tune(network, items, config, rng)
    after = tp.gallbladder_checks(network, items)
    assert after == {"found, truth prior": 1.0, "hallucinated, truth prior": 0.0}
    for key, value in frozen.items():
        torch.testing.assert_close(network.state_dict()[key], value)
