"""Train the two small reference models on synthetic CT phantoms, on CPU, reproducibly.

No trained abdominal model can be downloaded where edgeseg is built, so the embedded default
models are trained here on phantoms from :func:`edge_seg.synth.generate_phantom`. They are
demonstration models for the export/quantisation/runtime pipeline, NOT clinical models.

Two models are trained, each in its own process with one thread (both at once):

``plain``
    nnU-Net's plain 3D U-Net (``PlainConvUNet`` with nnU-Net's keyword arguments), trained on
    nnU-Net-preprocessed patches (``CTNormalization`` with the training foreground statistics)
    and saved as a genuine nnU-Net v2 results folder that ``nnUNetv2_predict`` loads.
``halos``
    The HALOS-style U-Net (:class:`export.networks.HalosUNet`) with an organ-presence prior
    input and a presence head, trained on the same cases (about a third of them with a
    resected gallbladder or kidney). Per organ and patch, the prior is the truth
    (1 present / 0 absent) 70 % of the time and 0.5 ("unknown") otherwise, so the network both
    obeys a given prior and learns to decide from the image.

Patches of images narrower than one patch are padded with 0 *after* normalisation, which is
what nnU-Net's data loader and every sliding-window predictor (nnU-Net's and edgeseg's) do at
inference; padding with the image minimum (air) instead teaches the network a frame it never
sees at test time, and it then labels organs in the zero padding of narrow fields of view.

Usage (from the repository root)::

    python -m export.train_reference --out reference_models --iterations 1500 --budget-min 35

Everything random is seeded (phantoms, patch sampling, augmentation, weights); given the same
``--iterations`` and no budget stop, a rerun on the same machine reproduces the weights up to
floating-point non-determinism of multi-threaded kernels. The number of iterations actually run
is recorded with each model (``training.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.atomic import atomic_path
from evaluator.labels import FLARE_LABELS

#: Presence vector order of the HALOS-style model: the organs that get resected.
PRESENCE_ORGANS: tuple[str, ...] = ("gallbladder", "kidney_right", "kidney_left")
#: Value of a presence entry when nothing is known about the organ.
PRESENCE_UNKNOWN = 0.5
#: A patch counts as showing an organ when it holds at least this many of its voxels.
MIN_VISIBLE_VOXELS = 8

LABELS: dict[str, int] = {"background": 0, **FLARE_LABELS}
NUM_CLASSES = max(LABELS.values()) + 1

DATASET_ID = 900
DATASET_NAME = "EdgesegPhantomCT"


@dataclass
class TrainConfig:
    """Every knob of a training run (written beside the model as ``training.json``)."""

    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    patch_size: tuple[int, int, int] = (48, 128, 128)
    base_features: int = 8
    max_features: int = 128
    max_stages: int = 5
    train_cases: int = 48
    train_seed0: int = 1000
    resection_rate: float = 0.5
    batch_size: int = 2
    iterations: int = 1500
    budget_min: float = 35.0
    learning_rate: float = 3e-3
    foreground_fraction: float = 0.5
    presence_truth_fraction: float = 0.7
    presence_loss_weight: float = 0.5
    seed: int = 12345
    bf16: bool = False
    init_from: str | None = None
    # Relative weight of an organ in the foreground draw (1 where not named): a fine-tune can
    # show the organs the model barely decides (duodenum, oesophagus, adrenals) more often.
    organ_draw_weights: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def case_resections(seed: int, resection_rate: float) -> tuple[str, ...]:
    """Which organs the phantom with this seed lacks (deterministic in the seed).

    Cholecystectomy is far more common than nephrectomy, so most resection cases lack the
    gallbladder; a few lack one kidney, and a few both.
    """
    rng = np.random.default_rng(seed + 7919)
    if rng.random() >= resection_rate:
        return ()
    draw = rng.random()
    if draw < 0.6:
        return ("gallbladder",)
    if draw < 0.8:
        return ("kidney_right",) if rng.random() < 0.5 else ("kidney_left",)
    return ("gallbladder", "kidney_right") if rng.random() < 0.5 else ("gallbladder", "kidney_left")


def make_phantom(seed: int, spacing_mm: Sequence[float], resected: tuple[str, ...]):
    """One CT phantom at the training spacing (the synth package's own generator)."""
    from edge_seg.synth import generate_phantom

    return generate_phantom(
        seed, modality="ct", spacing_mm=tuple(spacing_mm), resected=resected
    )


def prepare_cases(
    work: Path, seeds: Sequence[int], config: TrainConfig
) -> list[dict[str, Any]]:
    """Generate (or reuse cached) phantoms; return per-case metadata with .npy paths."""
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        resected = case_resections(seed, config.resection_rate)
        # The resected organs are part of the name: another --resection-rate is another case.
        stem = f"case_{seed:05d}_" + ("-".join(resected) if resected else "intact")
        image_path = work / f"{stem}_image.npy"
        label_path = work / f"{stem}_label.npy"
        if not (image_path.exists() and label_path.exists()):
            phantom = make_phantom(seed, config.spacing_mm, resected)
            with atomic_path(label_path) as tmp:
                np.save(tmp, np.asarray(phantom.labels, np.uint8), allow_pickle=False)
            with atomic_path(image_path) as tmp:
                np.save(tmp, np.asarray(phantom.image, np.float32), allow_pickle=False)
        label = np.load(label_path, mmap_mode="r")
        cases.append({
            "seed": seed, "resected": list(resected), "image": str(image_path),
            "label": str(label_path), "shape": [int(s) for s in label.shape],
        })
    return cases


def pad_to(array: np.ndarray, shape: Sequence[int], value: float) -> np.ndarray:
    """Pad (symmetrically) so every axis is at least ``shape``."""
    pads = [(max(0, s - a) // 2, max(0, s - a) - max(0, s - a) // 2)
            for a, s in zip(array.shape, shape, strict=True)]
    if not any(p for pair in pads for p in pair):
        return array
    return np.pad(array, pads, mode="constant", constant_values=value)


class PatchSampler:
    """nnU-Net-style patch sampling: part random, part centred on a random organ voxel.

    The foreground draw first picks one of the organs present in the case, uniformly unless
    ``organ_weights`` (label value -> relative weight, 1 where absent) says otherwise, so small
    organs (gallbladder, adrenals) are seen at least as often as the liver.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray],
                 patch_size: Sequence[int], pad_value: float, rng: np.random.Generator,
                 foreground_fraction: float,
                 organ_weights: dict[int, float] | None = None) -> None:
        self.patch = tuple(patch_size)
        self.organ_weights = dict(organ_weights or {})
        self.images = [pad_to(im, self.patch, pad_value) for im in images]
        self.labels = [pad_to(lb, self.patch, 0) for lb in labels]
        self.rng = rng
        self.foreground_fraction = foreground_fraction
        # Organ voxel coordinates per case (subsampled to keep memory small).
        self.organ_voxels: list[dict[int, np.ndarray]] = []
        for label in self.labels:
            per_organ = {}
            for value in np.unique(label):
                if value == 0:
                    continue
                coords = np.argwhere(label == value)
                if len(coords) > 2000:
                    coords = coords[rng.choice(len(coords), 2000, replace=False)]
                per_organ[int(value)] = coords
            self.organ_voxels.append(per_organ)

    def sample(self) -> tuple[int, np.ndarray, np.ndarray]:
        case = int(self.rng.integers(len(self.images)))
        image, label = self.images[case], self.labels[case]
        organs = self.organ_voxels[case]
        if organs and self.rng.random() < self.foreground_fraction:
            present = list(organs)
            weights = np.array([self.organ_weights.get(o, 1.0) for o in present])
            organ = present[int(self.rng.choice(len(present), p=weights / weights.sum()))]
            centre = organs[organ][int(self.rng.integers(len(organs[organ])))]
            jitter = self.rng.integers(-np.array(self.patch) // 4, np.array(self.patch) // 4 + 1)
            start = centre + jitter - np.array(self.patch) // 2
        else:
            start = np.array([self.rng.integers(0, s - p + 1)
                              for s, p in zip(image.shape, self.patch, strict=True)])
        start = np.clip(start, 0, np.array(image.shape) - np.array(self.patch))
        window = tuple(slice(int(s), int(s) + p) for s, p in zip(start, self.patch, strict=True))
        return case, np.array(image[window]), np.array(label[window])


def training_sampler(images: list[np.ndarray], labels: list[np.ndarray], config: TrainConfig,
                     rng: np.random.Generator) -> PatchSampler:
    """The sampler ``train_model`` uses, on normalised images.

    Images narrower than a patch are padded with 0, the value nnU-Net's data loader and every
    sliding-window predictor pad normalised images with.
    """
    weights = {LABELS[name]: w for name, w in config.organ_draw_weights.items()}
    return PatchSampler(images, labels, config.patch_size, 0.0, rng, config.foreground_fraction,
                        weights)


def augment_intensity(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light intensity augmentation on the normalised patch (contrast, brightness, noise)."""
    out = patch * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.3:
        out = out + rng.normal(0.0, rng.uniform(0.0, 0.1), size=out.shape).astype(np.float32)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _dice_ce_loss(logits, target):
    """nnU-Net's default loss: soft Dice (foreground classes, batch Dice) + cross-entropy."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    return ce + (1 - dice[1:].mean()), dice[1:].detach()


def _learning_rate(config: TrainConfig, iteration: int, elapsed_s: float) -> float:
    """Polynomial decay (nnU-Net's exponent 0.9) on whichever runs out first: steps or time."""
    progress = max(iteration / config.iterations, elapsed_s / (config.budget_min * 60.0))
    return config.learning_rate * max(0.0, 1.0 - min(progress, 1.0)) ** 0.9


def build_network(kind: str, config: TrainConfig):
    """The network of ``kind`` ('plain' or 'halos') and the nnU-Net architecture entry."""
    from export.networks import HalosUNet, build_plain_unet, nnunet_arch_kwargs, plain_unet_topology

    strides, kernels, patch = plain_unet_topology(
        config.spacing_mm, config.patch_size, max_stages=config.max_stages
    )
    if list(patch) != list(config.patch_size):
        raise ValueError(f"patch {config.patch_size} is not divisible by the strides {strides}")
    architecture = nnunet_arch_kwargs(strides, kernels, config.base_features, config.max_features)
    if kind == "plain":
        return build_plain_unet(architecture, 1, NUM_CLASSES), architecture
    return HalosUNet(
        1, NUM_CLASSES, len(PRESENCE_ORGANS),
        architecture["arch_kwargs"]["features_per_stage"], strides,
    ), architecture


def _he_init(module) -> None:
    """nnU-Net's weight initialisation (``InitWeights_He``, negative slope 1e-2)."""
    from torch import nn

    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def cpu_has_fast_bf16() -> bool:
    """True where bf16 autocast helps: AMX or AVX512-BF16. Elsewhere (AVX2-only CPUs) oneDNN
    emulates bf16 convolutions about 20x slower than float32."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def model_folder(kind: str, out_dir: str | Path) -> Path:
    """Where a run with this ``--out`` writes the model of this kind (and its training.json)."""
    from export.nnunet_writer import dataset_folder_name, trainer_folder_name

    if kind == "plain":
        return (Path(out_dir) / "nnunet_results" / dataset_folder_name(DATASET_ID, DATASET_NAME)
                / trainer_folder_name() / "fold_0")
    return Path(out_dir) / "halos_ct"


def initial_weights(kind: str, folder: str | Path) -> dict[str, Any]:
    """Weights of an earlier run of this script (its ``--out`` folder) to fine-tune from."""
    from export.safe_checkpoint import load_checkpoint

    if kind == "plain":
        return load_checkpoint(model_folder(kind, folder) / "checkpoint_final.pth")[
            "network_weights"]
    return load_checkpoint(model_folder(kind, folder) / "model.pth")["state_dict"]


def earlier_stages(kind: str, folder: str | Path) -> list[dict[str, Any]]:
    """The training records of the run a fine-tune starts from, oldest first.

    A fine-tune overwrites ``training.json``; its history would otherwise live only in prose.
    """
    path = model_folder(kind, folder) / "training.json"
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    history = record.pop("earlier_stages", [])
    return [*history, record]


def train_model(kind: str, cases: list[dict[str, Any]], intensity: dict[str, float],
                config: TrainConfig, out_dir: str, threads: int) -> dict[str, Any]:
    """Train one model in this process and write it; returns a summary."""
    import torch

    from export.nnunet_writer import ct_normalize, empty_training_log

    torch.set_num_threads(threads)
    seed = config.seed + (0 if kind == "plain" else 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    images = [ct_normalize(np.load(c["image"]), intensity) for c in cases]
    labels = [np.load(c["label"]) for c in cases]
    sampler = training_sampler(images, labels, config, rng)
    case_presence = [
        np.array([1.0 if LABELS[o] in sampler.organ_voxels[i] else 0.0 for o in PRESENCE_ORGANS],
                 np.float32)
        for i in range(len(cases))
    ]

    network, architecture = build_network(kind, config)
    network.apply(_he_init)
    if config.init_from:
        network.load_state_dict(initial_weights(kind, config.init_from))
    # channels-last 3D convolutions are ~15 % faster in oneDNN on CPU; the saved weights
    # are converted back to the default layout.
    network = network.to(memory_format=torch.channels_last_3d)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                  weight_decay=1e-4)
    log = empty_training_log()
    epoch_length = 50
    start = time.perf_counter()
    epoch_start = time.time()
    running_loss, running_dice = [], []
    iteration = 0
    stop_reason = "iterations"
    while iteration < config.iterations:
        elapsed = time.perf_counter() - start
        if elapsed > config.budget_min * 60.0:
            stop_reason = "time budget"
            break
        lr = _learning_rate(config, iteration, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch_images, batch_labels, batch_prior, batch_visible = [], [], [], []
        for _ in range(config.batch_size):
            case, image_patch, label_patch = sampler.sample()
            batch_images.append(augment_intensity(image_patch, rng)[None])
            batch_labels.append(label_patch.astype(np.int64))
            truth = case_presence[case]
            keep = rng.random(len(PRESENCE_ORGANS)) < config.presence_truth_fraction
            batch_prior.append(np.where(keep, truth, PRESENCE_UNKNOWN).astype(np.float32))
            counts = np.array([(label_patch == LABELS[o]).sum() for o in PRESENCE_ORGANS])
            batch_visible.append((counts >= MIN_VISIBLE_VOXELS).astype(np.float32))
        x = torch.from_numpy(np.stack(batch_images)).to(memory_format=torch.channels_last_3d)
        y = torch.from_numpy(np.stack(batch_labels))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            if kind == "plain":
                logits = network(x)
                presence_logits = None
            else:
                logits, presence_logits = network(x, torch.from_numpy(np.stack(batch_prior)))
        loss, dice = _dice_ce_loss(logits.float(), y)
        if presence_logits is not None:
            presence_loss = torch.nn.functional.binary_cross_entropy_with_logits(
                presence_logits.float(), torch.from_numpy(np.stack(batch_visible))
            )
            loss = loss + config.presence_loss_weight * presence_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        running_loss.append(float(loss.detach()))
        running_dice.append(float(dice.mean()))
        iteration += 1
        if iteration % epoch_length == 0:
            epoch = len(log["train_losses"])
            mean_dice = float(np.mean(running_dice))
            previous = log["ema_fg_dice"][-1] if log["ema_fg_dice"] else mean_dice
            log["epoch_start_timestamps"].append(epoch_start)
            log["train_losses"].append(float(np.mean(running_loss)))
            log["val_losses"].append(float("nan"))
            log["mean_fg_dice"].append(mean_dice)
            log["ema_fg_dice"].append(0.9 * previous + 0.1 * mean_dice)
            log["dice_per_class_or_region"].append([])
            log["lrs"].append(lr)
            log["epoch_end_timestamps"].append(time.time())
            epoch_start = time.time()
            print(f"[{kind}] it {iteration} epoch {epoch} loss {np.mean(running_loss):.4f} "
                  f"train-dice {mean_dice:.3f} lr {lr:.5f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            running_loss, running_dice = [], []
    wall = time.perf_counter() - start
    summary = {
        "model": kind, "iterations": iteration, "stop_reason": stop_reason,
        "wall_time_s": round(wall, 1), "threads": threads, "torch": torch.__version__,
        "config": asdict(config), "train_seeds": [c["seed"] for c in cases],
        "resected_cases": {str(c["seed"]): c["resected"] for c in cases if c["resected"]},
        "intensity_properties": intensity,
    }
    if config.init_from:
        summary["earlier_stages"] = earlier_stages(kind, config.init_from)
    network = network.to(memory_format=torch.contiguous_format).eval()
    if kind == "plain":
        _save_plain(network, architecture, optimizer, log, iteration, cases, intensity,
                    config, Path(out_dir), summary)
    else:
        _save_halos(network, config, intensity, Path(out_dir), summary)
    print(f"[{kind}] done: {iteration} iterations in {wall:.0f}s ({stop_reason})", flush=True)
    return summary


def _save_plain(network, architecture, optimizer, log, iteration, cases, intensity, config,
                out_dir: Path, summary: dict[str, Any]) -> None:
    from export.nnunet_writer import NnunetModelDescription, write_nnunet_results_folder

    model = NnunetModelDescription(
        dataset_id=DATASET_ID, dataset_name=DATASET_NAME, labels=LABELS,
        architecture=architecture, spacing_mm=config.spacing_mm, patch_size=config.patch_size,
        intensity_properties=[intensity],
        training_spacings=[config.spacing_mm] * len(cases),
        training_shapes=[c["shape"] for c in cases],
        batch_size=config.batch_size,
        mirror_axes=None,  # trained without mirroring augmentation (left/right organs)
        description="edgeseg demonstration model trained on synthetic CT phantoms; not clinical",
    )
    write_nnunet_results_folder(
        out_dir / "nnunet_results", model, network.state_dict(), optimizer.state_dict(), log,
        current_epoch=len(log["train_losses"]), overwrite=True,
    )
    with atomic_path(model_folder("plain", out_dir) / "training.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def _save_halos(network, config: TrainConfig, intensity: dict[str, float], out_dir: Path,
                summary: dict[str, Any]) -> None:
    import torch

    folder = model_folder("halos", out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "network_class": "export.networks.halos_unet.HalosUNet",
        "init_kwargs": network.init_kwargs,
        "labels": LABELS,
        "presence_organs": list(PRESENCE_ORGANS),
        "presence_semantics": {"present": 1.0, "absent": 0.0, "unknown": PRESENCE_UNKNOWN},
        "presence_logits": "per window: organ visible in the patch (>= "
                           f"{MIN_VISIBLE_VOXELS} voxels); case level = max over windows",
        "modality": "CT",
        "spacing_mm": list(config.spacing_mm),
        "patch_size": list(config.patch_size),
        "normalization": {"scheme": "ct", "lower": intensity["percentile_00_5"],
                          "upper": intensity["percentile_99_5"], "mean": intensity["mean"],
                          "std": intensity["std"]},
        "intensity_properties": intensity,
        "note": "demonstration model trained on synthetic CT phantoms; not for clinical use",
    }
    with atomic_path(folder / "model.pth") as tmp:
        torch.save({"state_dict": network.state_dict(), "init_kwargs": network.init_kwargs}, tmp)
    with atomic_path(folder / "model.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    with atomic_path(folder / "training.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")


def load_halos(folder: str | Path):
    """Load the trained HALOS-style reference model (eval mode) and its manifest."""
    import torch

    from export.networks import HalosUNet

    folder = Path(folder)
    manifest = json.loads((folder / "model.json").read_text())
    checkpoint = torch.load(folder / "model.pth", map_location="cpu", weights_only=True)
    network = HalosUNet(**checkpoint["init_kwargs"])
    network.load_state_dict(checkpoint["state_dict"])
    network.eval()
    return network, manifest


def parse_focus(items: Sequence[str]) -> dict[str, float]:
    """``["duodenum=4", ...]`` -> ``{"duodenum": 4.0}``; unknown organs and bad weights raise."""
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in FLARE_LABELS:
            raise ValueError(f"--focus {item!r}: expected ORGAN=WEIGHT with ORGAN one of "
                             f"{', '.join(FLARE_LABELS)}")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"--focus {item!r}: the weight must be a positive number")
        weights[name] = weight
    return weights


def _train_worker(args: tuple) -> dict[str, Any]:
    kind, cases, intensity, config, out_dir, threads, log_path = args
    if log_path:
        sys.stdout = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the worker
        sys.stderr = sys.stdout
    return train_model(kind, cases, intensity, config, out_dir, threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="reference_models", help="where the models go")
    parser.add_argument("--work", default=".cache/reference_training",
                        help="phantom cache (regenerated when missing)")
    parser.add_argument("--models", default="plain,halos", help="comma list: plain, halos")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations)
    parser.add_argument("--budget-min", type=float, default=TrainConfig.budget_min,
                        help="wall-clock stop per model (the learning rate anneals to it)")
    parser.add_argument("--cases", type=int, default=TrainConfig.train_cases)
    parser.add_argument("--threads", type=int, default=1, help="threads per model process")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", dest="bf16", action="store_true", default=None,
                           help="bf16 autocast (default: only on CPUs with AMX/AVX512-BF16)")
    precision.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32")
    parser.add_argument("--init-from", default=None,
                        help="fine-tune: start from the models of an earlier run (its --out)")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--resection-rate", type=float, default=TrainConfig.resection_rate)
    parser.add_argument("--focus", action="append", default=[], metavar="ORGAN=WEIGHT",
                        help="draw patches centred on ORGAN WEIGHT times as often as on "
                             "another organ (repeatable; e.g. duodenum=4)")
    args = parser.parse_args(argv)
    try:
        organ_draw_weights = parse_focus(args.focus)
    except ValueError as error:
        parser.error(str(error))

    bf16 = cpu_has_fast_bf16() if args.bf16 is None else args.bf16
    config = TrainConfig(iterations=args.iterations, budget_min=args.budget_min,
                         train_cases=args.cases, bf16=bf16, init_from=args.init_from,
                         learning_rate=args.learning_rate, resection_rate=args.resection_rate,
                         organ_draw_weights=organ_draw_weights)
    seeds = list(range(config.train_seed0, config.train_seed0 + config.train_cases))
    t0 = time.perf_counter()
    cases = prepare_cases(Path(args.work), seeds, config)
    print(f"prepared {len(cases)} phantoms in {time.perf_counter() - t0:.0f}s "
          f"({sum(bool(c['resected']) for c in cases)} with resections)", flush=True)

    from export.nnunet_writer import foreground_intensity_properties

    intensity = foreground_intensity_properties(
        (np.load(c["image"]) for c in cases), (np.load(c["label"]) for c in cases)
    )
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("plain", "halos"):
            parser.error(f"unknown model {kind!r}")
    jobs = [(kind, cases, intensity, config, args.out, args.threads,
             os.environ.get(f"EDGESEG_TRAIN_LOG_{kind.upper()}")) for kind in kinds]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        summaries = list(pool.map(_train_worker, jobs))
    for summary in summaries:
        print(f"{summary['model']}: {summary['iterations']} iterations, "
              f"{summary['wall_time_s']:.0f}s ({summary['stop_reason']})")
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
