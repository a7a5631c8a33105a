"""INT8-aware distillation (export.distill) on a tiny 3D network."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.distill import (  # noqa: E402
    DistillSettings,
    activation_ranges,
    distill_for_int8,
    focus_weights,
    rare_class_weights,
    simulated_int8,
    voxel_loss,
    without_float_ends,
)


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 6, 3, padding=1),
        torch.nn.InstanceNorm3d(6, affine=True),
        torch.nn.LeakyReLU(0.01),
        torch.nn.ConvTranspose3d(6, 6, 1),
        torch.nn.LeakyReLU(0.01),
        torch.nn.Conv3d(6, 3, 1),
    ).eval()
    with torch.no_grad():
        # One loud channel sets the per-tensor INT8 range of the next input, so the quiet
        # ones are rounded coarsely: an INT8 error well above float noise.
        network[1].weight[0] = 40.0
    return network


def patches(n: int = 3) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return [[rng.normal(size=(1, 1, 6, 8, 8)).astype(np.float32)] for _ in range(n)]


def int8_error(network: torch.nn.Module, teacher: torch.nn.Module,
               samples: list[list[np.ndarray]]) -> float:
    """Mean squared logit error of ``network`` under simulated INT8 against ``teacher``."""
    batches = [[torch.from_numpy(a) for a in s] for s in samples]
    ranges = activation_ranges(network, batches)
    with torch.no_grad(), simulated_int8(network, ranges):
        return float(np.mean([(network(*b) - teacher(*b)).square().mean().item()
                              for b in batches]))


def test_simulated_int8_rounds_inside_the_block_only() -> None:
    network = tiny_network()
    batch = [torch.from_numpy(patches(1)[0][0])]
    ranges = activation_ranges(network, [batch])
    assert len(ranges) == 3  # both convolutions and the transposed one
    with torch.no_grad():
        plain = network(*batch)
        with simulated_int8(network, ranges):
            rounded = network(*batch)
        again = network(*batch)
    assert not torch.equal(plain, rounded)
    assert (plain - rounded).abs().max() < 0.2 * plain.abs().max()
    torch.testing.assert_close(plain, again, rtol=0, atol=0)


def test_activation_ranges_include_zero_and_skip_unused_layers() -> None:
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1))
    unused = torch.nn.Conv3d(2, 2, 1)
    network.add_module("unused_head", unused)
    network.forward = lambda x: network[0](x)  # the head is never called
    batch = [torch.full((1, 1, 2, 2, 2), 3.0)]
    ranges = activation_ranges(network, [batch])
    assert ranges == {id(network[0]): (0.0, 3.0)}


def test_activation_ranges_follow_the_call_order() -> None:
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1), torch.nn.Conv3d(1, 1, 1))
    network.forward = lambda x: network[0](network[1](x))  # registered second, called first
    ranges = activation_ranges(network, [[torch.ones((1, 1, 2, 2, 2))]])
    assert list(ranges) == [id(network[1]), id(network[0])]


def test_without_float_ends_drops_the_first_and_last_convolutions() -> None:
    ranges = {k: (0.0, float(k)) for k in (5, 3, 9, 1)}
    assert list(without_float_ends(ranges, 1, 2)) == [3]
    assert list(without_float_ends(ranges, 0, 1)) == [5, 3, 9]
    assert without_float_ends(ranges, 0, 0) == ranges
    assert without_float_ends(ranges, 3, 3) == {}


def test_rare_class_weights_favour_small_organs_and_their_rims() -> None:
    logits = torch.zeros((1, 3, 1, 1, 100))
    logits[0, 0] = 2.0  # background wins voxels 0-49 and 97
    logits[0, 1] = 1.0  # a large organ, runner-up of the background
    logits[0, 1, ..., 50:97] = 3.0  # ... wins 50-96 and 98
    logits[0, 1, ..., 98] = 3.0
    logits[0, 2, ..., 99] = 3.0  # a small organ wins the last voxel
    logits[0, 2, ..., 97] = 1.5  # ... and is the runner-up next to it
    weights = rare_class_weights(logits, 0.5)
    assert weights.shape == (1, 1, 1, 100)
    rim, organ, plain = weights[0, 0, 0, 97], weights[0, 0, 0, 99], weights[0, 0, 0, 10]
    assert organ == rim and organ > 4 * plain
    assert torch.allclose(rare_class_weights(logits, 0.0), torch.ones_like(weights))


def test_focus_weights_favour_close_calls() -> None:
    logits = torch.tensor([[[[[4.0, 0.1]]], [[[0.0, 0.0]]]]])  # (1, 2 classes, 1, 1, 2)
    weights = focus_weights(logits, 0.5)
    assert weights.shape == (1, 1, 1, 2)
    assert weights[0, 0, 0, 1] > 5 * weights[0, 0, 0, 0]
    assert weights.min() > 0.1


def test_distillation_lowers_the_int8_error_and_leaves_the_teacher_alone() -> None:
    teacher = tiny_network()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    samples = patches()
    student, report = distill_for_int8(
        teacher, samples, DistillSettings(steps=60, learning_rate=3e-3, focus_logit=0.5),
        log=lambda line: None)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert student is not teacher
    assert "forward" not in student[0].__dict__  # the float forward is back
    assert int8_error(student, teacher, samples) < 0.98 * int8_error(
        tiny_network(), teacher, samples)
    assert report["patches"] == 3 and report["steps"] == 60
    assert report["loss_last_tenth"] < report["loss_first_tenth"]


def test_distillation_with_rare_class_weights_and_float_ends_still_learns() -> None:
    teacher = tiny_network()
    samples = patches()
    settings = DistillSettings(steps=60, learning_rate=3e-3, class_balance=0.5,
                               float_convs=(1, 0))
    _student, report = distill_for_int8(teacher, samples, settings, log=lambda line: None)
    assert report["class_balance"] == 0.5 and list(report["float_convs"]) == [1, 0]
    assert report["loss_last_tenth"] < report["loss_first_tenth"]


def int8_flips(network: torch.nn.Module, teacher: torch.nn.Module,
               samples: list[list[np.ndarray]]) -> int:
    """Voxels whose winning class under simulated INT8 differs from the teacher's."""
    batches = [[torch.from_numpy(a) for a in sample] for sample in samples]
    ranges = activation_ranges(network, batches)
    flips = 0
    with torch.no_grad(), simulated_int8(network, ranges):
        for batch in batches:
            flips += int((network(*batch).argmax(1) != teacher(*batch).argmax(1)).sum())
    return flips


def test_label_objective_adds_cross_entropy_on_the_teachers_winner() -> None:
    teacher = torch.tensor([[[3.0, 0.0], [0.0, 3.0]]])  # (1, 2 classes, 2 voxels)
    same_winner = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    mse = voxel_loss(same_winner, teacher)
    labels = voxel_loss(same_winner, teacher, "labels")
    np.testing.assert_allclose(mse.numpy(), [[2.0, 2.0]])
    # The hinge is zero once the right winner leads by LABEL_MARGIN, large for a flip.
    np.testing.assert_allclose(labels.numpy(), mse.numpy())
    flipped = voxel_loss(same_winner.flip(1), teacher, "labels") - voxel_loss(
        same_winner.flip(1), teacher)
    np.testing.assert_allclose(flipped.numpy(), [[1.25, 1.25]])


def test_distillation_with_the_label_objective_flips_fewer_voxels() -> None:
    teacher = tiny_network()
    samples = patches()
    settings = DistillSettings(steps=200, learning_rate=1e-2, objective="labels")
    student, report = distill_for_int8(teacher, samples, settings, log=lambda line: None)
    assert report["objective"] == "labels"
    assert int8_flips(student, teacher, samples) < int8_flips(tiny_network(), teacher, samples)
    with pytest.raises(ValueError, match="objective 'dice' is not one of logits, labels"):
        DistillSettings(objective="dice")


def test_distillation_needs_patches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        distill_for_int8(tiny_network(), [], DistillSettings(steps=1))
