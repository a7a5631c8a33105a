"""Test-time slice cropping: time and Dice of ``--crop none|auto|middle:N``, scans of varied length.

Phantom CTs of 96 to 320 slices (2.5 mm) are segmented with the same bundle three ways:
the whole scan, ``auto`` (first pass on non-overlapping patches finds the organs; full sliding
window on that box only), and ``middle:N`` (keep the middle N slices, as one FLARE23 entry did).
The synthetic protocol places long scans like clinical ones: they reach further into the
chest or (more often) the pelvis, so the organs are not mid-scan. Time: ``Predictor.predict`` in
one process (model loaded once), 2 inference threads; Dice: mean over the organs in the scan,
against the phantom's truth.

Usage::

    python benchmarks/bench_crop.py [--model edge_seg/models/flare_ct_plain] [--middle 96]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predict import DEFAULT_MODEL, command_line, dice_per_organ  # noqa: E402

from evaluator.atomic import write_text_atomic  # noqa: E402

#: (seed, slices at 2.5 mm)
CASES = [(6000, 96), (6001, 128), (6002, 160), (6003, 200), (6004, 240), (6005, 320)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--middle", type=int, default=96, help="N of middle:N (slices)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_crop.md"
    )
    parser.add_argument("--note", default="", help="model description for the table")
    args = parser.parse_args()

    from edge_seg.io import Volume
    from edge_seg.predict import PredictOptions, Predictor
    from edge_seg.synth import generate_phantom

    modes = ["none", "auto", f"middle:{args.middle}"]
    predictors = {
        mode: Predictor(
            args.model, PredictOptions(crop=mode, threads=args.threads, precision=args.precision)
        )
        for mode in modes
    }
    rows, summary = [], {mode: {"time": [], "dice": []} for mode in modes}
    for seed, slices in CASES:
        phantom = generate_phantom(
            seed,
            "ct",
            n_slices=slices,
            spacing_mm=(2.5, 1.5, 1.5),
            shape_yx=(args.matrix, args.matrix),
        )
        volume = Volume(
            phantom.image,
            tuple(phantom.spacing_mm),
            tuple(phantom.origin),
            tuple(phantom.direction),
        )
        organs = [int(v) for v in np.unique(phantom.labels) if v != 0]
        cells = [f"{seed}", f"{slices}", f"{len(organs)}"]
        for mode in modes:
            start = time.perf_counter()
            labels = predictors[mode].predict(volume).labels
            seconds = time.perf_counter() - start
            dice = float(np.mean(list(dice_per_organ(labels, phantom.labels, organs).values())))
            summary[mode]["time"].append(seconds)
            summary[mode]["dice"].append(dice)
            cells += [f"{seconds:.2f}", f"{dice:.3f}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)

    head = " | ".join(f"{m} s | {m} Dice" for m in modes)
    lines = [
        "# Test-time slice cropping (`--crop`)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Model: `{args.model}`" + (f" ({args.note})" if args.note else ""),
        "",
        f"Phantom CTs, {args.matrix}x{args.matrix} in-plane, 1.5x1.5x2.5 mm, scan range placed "
        "as the synthetic protocol does. Time: `Predictor.predict` (model loaded "
        f"once), {args.threads} threads, precision {args.precision}. Dice: mean over the organs "
        "in view, against the phantom truth.",
        "",
        f"| seed | slices | organs in view | {head} |",
        "|" + "---|" * (3 + 2 * len(modes)),
        *rows,
        "",
        "| mode | median s | total s | mean Dice | min Dice |",
        "|---|---|---|---|---|",
    ]
    for mode in modes:
        t, d = summary[mode]["time"], summary[mode]["dice"]
        lines.append(
            f"| {mode} | {statistics.median(t):.2f} | {sum(t):.2f} | {np.mean(d):.3f} "
            f"| {min(d):.3f} |"
        )
    lines.append("")
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
