"""Logit margins and INT8 flips (export.margins): the maths on small arrays."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from export import margins
from export.margins import margin_error, tally_margins, top_two_margin


def test_docstring_examples_hold() -> None:
    failures, _ = doctest.testmod(margins)
    assert failures == 0


def test_top_two_margin_is_winner_minus_runner_up() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 3, 4, 6)).astype(np.float32)
    ordered = np.sort(logits, axis=0)
    np.testing.assert_allclose(top_two_margin(logits), ordered[-1] - ordered[-2])
    assert (top_two_margin(logits) >= 0).all()


def test_margin_error_ignores_a_shift_common_to_all_classes() -> None:
    logits = np.random.default_rng(1).normal(size=(4, 2, 3, 3))
    shifted = logits + np.random.default_rng(2).normal(size=(1, 2, 3, 3))
    np.testing.assert_allclose(margin_error(logits, shifted), 0.0, atol=1e-12)


def test_two_classes_flip_exactly_where_the_lead_is_lost() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(2, 8, 8, 8))
    candidate = reference + rng.normal(scale=0.3, size=reference.shape)
    flipped = reference.argmax(0) != candidate.argmax(0)
    lost = margin_error(reference, candidate) < -top_two_margin(reference)
    assert flipped.any()
    np.testing.assert_array_equal(flipped, lost)


def test_margin_error_is_the_change_of_the_winner_s_lead() -> None:
    # one voxel, three classes: fp32 winner 2 (by 0.5 over class 0), INT8 narrows it by 0.75
    reference = np.array([1.0, -2.0, 1.5])[:, None, None, None]
    candidate = np.array([1.25, 0.0, 1.0])[:, None, None, None]
    assert margin_error(reference, candidate).item() == pytest.approx(-0.75)
    assert top_two_margin(reference).item() == pytest.approx(0.5)


def test_tally_counts_voxels_flips_and_shares_per_class() -> None:
    # 4 voxels in a row; classes background 0, organ 1, organ 2
    reference = np.array([
        [3.0, 0.0, 0.0, 0.0],
        [0.0, 2.0, 0.4, 0.0],
        [0.0, 0.0, 0.6, 1.0],
    ])[:, None, None, :]
    candidate = reference.copy()
    candidate[1, 0, 0, 2] = 0.8    # voxel 2 (organ 2 by 0.2) goes to organ 1
    tally = tally_margins([(reference, candidate)], {"a": 1, "b": 2})
    a, b = tally.classes["a"], tally.classes["b"]
    assert (a.voxels, a.candidate_voxels, a.flipped) == (1, 2, 0)
    assert (b.voxels, b.candidate_voxels, b.flipped) == (2, 1, 1)
    assert a.dice == pytest.approx(2 / 3) and b.dice == pytest.approx(2 / 3)
    assert b.share_below(0.25) == pytest.approx(0.5)
    assert b.share_below(0.5) == pytest.approx(0.5)
    assert b.flip_rate == pytest.approx(0.5)
    # the flipped voxel lost 0.4 of its lead, the other one none
    assert b.margin_error_rms == pytest.approx(np.sqrt(0.4 ** 2 / 2))
    assert tally.flipped == 1 and tally.share_of_flips_below(0.25) == 1.0


def test_tally_pools_images() -> None:
    rng = np.random.default_rng(4)
    pairs = []
    for _ in range(2):
        reference = rng.normal(size=(3, 4, 5, 5))
        pairs.append((reference, reference + rng.normal(scale=0.2, size=reference.shape)))
    organs = {"a": 1, "b": 2}
    pooled = tally_margins(pairs, organs)
    single = [tally_margins([pair], organs) for pair in pairs]
    for name in organs:
        assert pooled.classes[name].voxels == sum(t.classes[name].voxels for t in single)
        assert pooled.classes[name].flipped == sum(t.classes[name].flipped for t in single)
    assert pooled.flipped == sum(t.flipped for t in single)


def test_empty_class_and_bad_shapes() -> None:
    reference = np.zeros((2, 1, 1, 3))
    reference[0] = 1.0
    tally = tally_margins([(reference, reference)], {"absent": 1})
    entry = tally.classes["absent"]
    assert entry.dice == 1.0 and entry.flip_rate == 0.0 and entry.margin_error_rms == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        margin_error(reference, reference[:, :, :, :2])
    with pytest.raises(ValueError, match="two classes"):
        top_two_margin(reference[:1])
