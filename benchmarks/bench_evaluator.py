"""Evaluator speed: a 13-organ FLARE-size phantom case, edgeseg vs DeepMind surface-distance.

Scores DSC, NSD (FLARE tolerances) and HD95 for all 13 organs of one 512x512x300 synthetic CT
(``edge_seg.synth.generate_phantom``) against a perturbed copy of its labels (per organ: a
dilation, an erosion or a shift, so that distances are non-trivial), with

* edgeseg's evaluator (:func:`evaluator.scoring.score_organs`, arrays in memory), and
* DeepMind's ``surface-distance`` (``compute_surface_distances`` per organ on the full
  volume, then ``compute_surface_dice_at_tolerance`` and ``compute_robust_hausdorff(95)``),

in the same process, checks that both give the same numbers, and writes a markdown table to
``benchmarks/results/evaluator.md``. Restrict it to two cores the way the target asks, e.g.::

    taskset -c 0,1 .venv/bin/python benchmarks/bench_evaluator.py

File reading is excluded on both sides (it is the same for any evaluator).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from evaluator.labels import FLARE_LABELS
from evaluator.protocols import get_protocol
from evaluator.scoring import score_organs

RESULTS = Path(__file__).resolve().parent / "results" / "evaluator.md"


def perturbed_prediction(labels: np.ndarray, seed: int) -> np.ndarray:
    """Per organ, dilate, erode or shift its mask by 1-2 voxels (cropped for speed)."""
    rng = np.random.default_rng(seed)
    prediction = np.zeros_like(labels)
    boxes = ndimage.find_objects(labels, max_label=max(FLARE_LABELS.values()))
    for value in FLARE_LABELS.values():
        box = boxes[value - 1]
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 4, 0), min(s.stop + 4, n))
                      for s, n in zip(box, labels.shape, strict=True))
        mask = labels[grown] == value
        action = value % 3
        steps = int(rng.integers(1, 3))
        if action == 0:
            mask = ndimage.binary_dilation(mask, iterations=steps)
        elif action == 1:
            eroded = ndimage.binary_erosion(mask, iterations=steps)
            mask = eroded if eroded.any() else mask
        else:
            mask = np.roll(mask, steps, axis=int(rng.integers(0, 3)))
        region = prediction[grown]
        region[mask & (region == 0)] = value
    return prediction


def deepmind_scores(gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float],
                    tolerances: dict[str, float]) -> dict[str, dict[str, float]]:
    import surface_distance

    out = {}
    for organ, value in FLARE_LABELS.items():
        mask_gt, mask_pred = gt == value, pred == value
        distances = surface_distance.compute_surface_distances(mask_gt, mask_pred, spacing)
        out[organ] = {
            "dsc": surface_distance.compute_dice_coefficient(mask_gt, mask_pred),
            "nsd": surface_distance.compute_surface_dice_at_tolerance(distances,
                                                                      tolerances[organ]),
            "hd95": surface_distance.compute_robust_hausdorff(distances, 95),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="in-plane matrix")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 0.8, 0.8),
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=3, help="edgeseg runs (median)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    # surface-distance 0.1 still uses np.Inf/np.NaN (gone in NumPy 2).
    for alias, value in (("Inf", np.inf), ("NaN", np.nan)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from edge_seg.synth import generate_phantom

    spacing = tuple(float(v) for v in args.spacing)
    start = time.perf_counter()
    phantom = generate_phantom(args.seed, "ct", n_slices=args.slices, spacing_mm=spacing,
                               shape_yx=(args.size, args.size), noise=False)
    gt = np.ascontiguousarray(phantom.labels.astype(np.uint8))
    pred = perturbed_prediction(gt, args.seed)
    print(f"phantom {gt.shape} ready in {time.perf_counter() - start:.1f} s; organs present: "
          f"{sorted(set(np.unique(gt)) - {0})}")

    protocol = get_protocol("flare22")
    tolerances = {o: protocol.tolerance_mm(o) for o in FLARE_LABELS}
    ids = dict(FLARE_LABELS)
    ours_times = []
    rows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rows = score_organs("bench", gt, pred, spacing, ids, protocol, workers=2)  # 2 threads
        ours_times.append(time.perf_counter() - start)
    ours = {r.organ: r.metrics for r in rows}

    start = time.perf_counter()
    reference = deepmind_scores(gt, pred, spacing, tolerances)
    deepmind_time = time.perf_counter() - start

    worst = {m: max(abs(ours[o][m] - reference[o][m]) for o in FLARE_LABELS)
             for m in ("dsc", "nsd", "hd95")}
    median = float(np.median(ours_times))
    speedup = deepmind_time / median
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Evaluator benchmark",
        "",
        f"One synthetic CT, {gt.shape[2]}x{gt.shape[1]}x{gt.shape[0]} voxels, spacing "
        f"{spacing[2]}x{spacing[1]}x{spacing[0]} mm, 13 organs; prediction = per-organ "
        "dilation/erosion/shift of the ground truth. DSC, NSD (FLARE tolerances) and HD95 for "
        "all organs, arrays in memory (file reading excluded).",
        "",
        f"Command: `taskset -c 0,1 .venv/bin/python benchmarks/bench_evaluator.py` "
        f"({cores} cores usable; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()})",
        "",
        "| evaluator | time per case (s) | speed-up |",
        "|---|---:|---:|",
        f"| edgeseg (`evaluator.scoring.score_organs`, median of {args.repeats}) "
        f"| {median:.2f} | {speedup:.1f}x |",
        f"| DeepMind surface-distance 0.1 | {deepmind_time:.2f} | 1.0x |",
        "",
        "Largest difference edgeseg vs surface-distance over the 13 organs: "
        + ", ".join(f"{m.upper()} {v:.1e}" for m, v in worst.items()) + ".",
        "",
        "| organ | DSC | NSD | HD95 (mm) |",
        "|---|---:|---:|---:|",
        *(f"| {o} | {ours[o]['dsc']:.4f} | {ours[o]['nsd']:.4f} | {ours[o]['hd95']:.2f} |"
          for o in FLARE_LABELS),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    from evaluator.atomic import write_text_atomic

    write_text_atomic(args.output, text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
