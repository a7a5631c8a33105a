"""The HALOS prior fine-tune: cached decoder features, and that it teaches the prior."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import train_prior as tp  # noqa: E402
from export.networks import HalosUNet  # noqa: E402
from export.train_reference import (  # noqa: E402
    LABELS,
    NUM_CLASSES,
    PRESENCE_ORGANS,
    _dice_ce_loss,
)

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


def _blob_cases(prior_matters: bool) -> list[tp.CachedPatch]:
    """Eight patches whose decoder features all show a gallbladder-like blob (channel 0;
    the others are noise); half are resected. With ``prior_matters`` the labels follow the
    resection, else every case is labelled with a gallbladder (a model trained so
    hallucinates it)."""
    slot = PRESENCE_ORGANS.index("gallbladder")
    rng = np.random.default_rng(7)
    items = []
    for case in range(8):
        features = rng.normal(0.0, 0.3, size=(4, *PATCH)).astype(np.float32)
        features[0, 2:6, 4:12, 4:12] += 2.0
        resected = case % 2 == 0
        prior = np.ones(len(PRESENCE_ORGANS), np.float32)
        prior[slot] = 0.0 if resected else 1.0
        labels = np.zeros(PATCH, np.uint8)
        if not resected or not prior_matters:
            labels[2:6, 4:12, 4:12] = GALLBLADDER
        items.append(tp.CachedPatch(case, features, prior, labels, "truth"))
    return items


def _fit_last_layers(network: HalosUNet, items: list[tp.CachedPatch], steps: int = 300) -> None:
    """Plain supervised training of the last DAFT block and the head (the end-to-end loss,
    Dice + cross-entropy): the stand-in for the training that precedes the prior tune."""
    layers = [*network.decoder_daft[-1].parameters(), *network.segmentation_head.parameters()]
    optimizer = torch.optim.Adam(layers, lr=3e-2)
    features = torch.from_numpy(np.stack([i.features for i in items]))
    prior = torch.from_numpy(np.stack([i.prior for i in items]))
    target = torch.from_numpy(np.stack([i.labels for i in items]).astype(np.int64))
    for _ in range(steps):
        logits = network.segmentation_head(network.decoder_daft[-1](features, prior))
        loss, _ = _dice_ce_loss(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_tune_teaches_the_last_fusion_to_drop_an_absent_organ() -> None:
    """A model that segments the blob whatever the prior learns from the tune that "absent"
    means no gallbladder and "present" keeps it, through its last DAFT block alone; the
    frozen layers (encoder, segmentation head) stay as they were."""
    network = tiny_network()
    rng = np.random.default_rng(0)
    config = tp.PriorTuneConfig(steps=600, batch_size=4, learning_rate=3e-2, crop=(8, 12, 12))
    _fit_last_layers(network, _blob_cases(prior_matters=False))
    items = _blob_cases(prior_matters=True)
    before = tp.gallbladder_checks(network, items)
    assert before == {"found, truth prior": 1.0, "hallucinated, truth prior": 1.0}
    frozen = {
        k: v.clone()
        for k, v in network.state_dict().items()
        if "encoder" in k or "segmentation_head" in k
    }
    tp.find_focus(network, items)
    assert all(item.focus.any() for item in items)  # hallucinated or true, there is one
    labels_before = [tp._head(network, item).argmax(0) for item in items]
    tp.tune(network, items, config, rng)
    after = tp.gallbladder_checks(network, items)
    assert after == {"found, truth prior": 1.0, "hallucinated, truth prior": 0.0}
    # Away from the gallbladder the labels stay as they were (the drift term).
    for item, before_labels in zip(items, labels_before, strict=True):
        elsewhere = ~torch.from_numpy(item.focus)
        same = tp._head(network, item).argmax(0)[elsewhere] == before_labels[elsewhere]
        assert same.float().mean() > 0.99
    for key, value in frozen.items():
        torch.testing.assert_close(network.state_dict()[key], value)
