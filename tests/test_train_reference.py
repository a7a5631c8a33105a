"""The reference-model trainer: padding convention, resection cases, fine-tuning round trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from export import train_reference as tr  # noqa: E402

TINY = tr.TrainConfig(
    patch_size=(16, 32, 32), base_features=4, max_features=16, max_stages=3, train_cases=2,
    batch_size=1, iterations=2, budget_min=10.0, bf16=False,
)


def test_narrow_images_are_padded_with_zero_after_normalisation() -> None:
    image = np.full((20, 10, 40), -3.0, np.float32)  # narrower than the patch in y
    labels = np.ones((20, 10, 40), np.uint8)
    rng = np.random.default_rng(0)
    config = replace(TINY, foreground_fraction=0.0)
    sampler = tr.training_sampler([image], [labels], config, rng)
    _, patch, label = sampler.sample()
    assert patch.shape == (16, 32, 32)
    rows_in_image = (label == 1).any(axis=(0, 2))
    assert rows_in_image.sum() == 10
    assert np.all(patch[:, ~rows_in_image] == 0.0)  # nnU-Net's pad value, not air
    assert np.all(patch[:, rows_in_image] == -3.0)


def test_focus_weights_make_the_named_organ_drawn_that_many_times_as_often() -> None:
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:6, 2:6, 2:6] = tr.LABELS["duodenum"]
    labels[30:38, 30:38, 30:38] = tr.LABELS["liver"]
    image = np.zeros(labels.shape, np.float32)
    config = replace(TINY, patch_size=(4, 4, 4), foreground_fraction=1.0,
                     organ_draw_weights=tr.parse_focus(["duodenum=3"]))
    sampler = tr.training_sampler([image], [labels], config, np.random.default_rng(1))
    duodenum = tr.LABELS["duodenum"]  # the two organs never fit in one patch
    share = np.mean([(sampler.sample()[2] == duodenum).any() for _ in range(2000)])
    assert 0.70 < share < 0.80  # 3 / (3 + 1)
    uniform = tr.training_sampler([image], [labels], replace(config, organ_draw_weights={}),
                                  np.random.default_rng(1))
    share = np.mean([(uniform.sample()[2] == duodenum).any() for _ in range(2000)])
    assert 0.45 < share < 0.55


@pytest.mark.parametrize("item", ["duodenum", "pancreas=0", "pancreas=x", "brain=2"])
def test_bad_focus_items_are_refused(item: str) -> None:
    with pytest.raises(ValueError, match="--focus"):
        tr.parse_focus([item])


def test_resections_are_deterministic_and_follow_the_rate() -> None:
    seeds = range(1000, 1200)
    first = [tr.case_resections(s, 0.5) for s in seeds]
    assert first == [tr.case_resections(s, 0.5) for s in seeds]
    share = np.mean([bool(r) for r in first])
    assert 0.4 < share < 0.6
    assert all(set(r) <= set(tr.PRESENCE_ORGANS) for r in first)
    assert not any(tr.case_resections(s, 0.0) for s in seeds)


@pytest.mark.slow
def test_train_then_fine_tune_from_the_written_models(tmp_path: Path) -> None:
    cases = tr.prepare_cases(tmp_path / "work", [1000, 1001], TINY)
    from export.nnunet_writer import foreground_intensity_properties

    intensity = foreground_intensity_properties(
        (np.load(c["image"]) for c in cases), (np.load(c["label"]) for c in cases)
    )
    first = tmp_path / "first"
    for kind in ("plain", "halos"):
        summary = tr.train_model(kind, cases, intensity, TINY, str(first), threads=1)
        assert summary["iterations"] == 2 and summary["config"]["init_from"] is None
    results = (first / "nnunet_results" / "Dataset900_EdgesegPhantomCT"
               / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    assert (results / "fold_0" / "checkpoint_final.pth").is_file()
    assert (first / "halos_ct" / "model.pth").is_file()

    # Fine-tuning with a zero learning rate must reproduce the starting weights exactly.
    frozen = replace(TINY, init_from=str(first), learning_rate=0.0, iterations=1)
    second = tmp_path / "second"
    for kind in ("plain", "halos"):
        tr.train_model(kind, cases, intensity, frozen, str(second), threads=1)
        before = tr.initial_weights(kind, first)
        after = tr.initial_weights(kind, second)
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), key
        # The record of the run it started from is kept, not overwritten.
        record = json.loads((tr.model_folder(kind, second) / "training.json").read_text())
        assert [stage["iterations"] for stage in record["earlier_stages"]] == [2]
        assert record["earlier_stages"][0]["config"]["init_from"] is None
        assert record["config"]["init_from"] == str(first)
