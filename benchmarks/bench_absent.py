"""Absent-organ prior after cholecystectomy: gallbladder hallucinations with and without a prior.

Phantom CTs, half of them with the gallbladder resected. Four ways to segment them:

* ``plain``: the plain nnU-Net-style model, told nothing;
* ``plain + exclusion``: the same model with ``--absent gallbladder`` on the resected cases
  (the class is excluded before the argmax);
* ``HALOS, true prior``: the HALOS-style model with the true presence vector (gallbladder 0 on
  resected cases, 1 otherwise) through its presence input;
* ``HALOS, predicted presence``: the HALOS-style model with ``--presence auto`` (its own
  presence head decides, nothing is told).

Reported: case-level false-positive rate for the gallbladder on resected cases (any predicted
gallbladder voxel counts as a hallucination), false-negative rate on the cases that have one,
gallbladder Dice on those cases, and the mean Dice of the other organs (to show the prior does
no harm elsewhere).

Usage::

    python benchmarks/bench_absent.py [--plain edge_seg/models/flare_ct_plain]
        [--halos edge_seg/models/halos_ct] [--cases 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predict import DEFAULT_MODEL, command_line, dice_per_organ  # noqa: E402

from evaluator.atomic import write_text_atomic  # noqa: E402
from evaluator.labels import FLARE_LABELS  # noqa: E402

GALLBLADDER = FLARE_LABELS["gallbladder"]
SEED = 7000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--halos", type=Path, default=ROOT / "edge_seg" / "models" / "halos_ct")
    parser.add_argument("--cases", type=int, default=8, help="cases per group (resected/intact)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_absent.md"
    )
    parser.add_argument("--note", default="", help="model description for the table")
    args = parser.parse_args()

    from edge_seg.io import Volume
    from edge_seg.predict import PredictOptions, Predictor
    from edge_seg.synth import generate_phantom

    def make(model: Path, **kwargs) -> Predictor:
        return Predictor(
            model, PredictOptions(threads=args.threads, precision=args.precision, **kwargs)
        )

    plain = make(args.plain)
    plain_excl = make(args.plain, absent_organs=("gallbladder",))
    halos_prior_absent = make(args.halos, absent_organs=("gallbladder",))
    halos_prior_present = make(args.halos, present_organs=("gallbladder",))
    halos_auto = make(args.halos, presence="auto")
    configs = {
        "plain": lambda resected: plain,
        "plain + exclusion (true prior)": lambda resected: plain_excl if resected else plain,
        "HALOS, true prior": lambda resected: (
            halos_prior_absent if resected else halos_prior_present
        ),
        "HALOS, predicted presence": lambda resected: halos_auto,
    }
    results = {
        name: {"fp": 0, "fn": 0, "gb_dice": [], "other_dice": [], "presence": []}
        for name in configs
    }
    n_resected = n_intact = 0
    for i in range(2 * args.cases):
        resected = i % 2 == 0
        phantom = generate_phantom(
            SEED + i,
            "ct",
            n_slices=args.slices,
            spacing_mm=(2.5, 1.5, 1.5),
            shape_yx=(args.matrix, args.matrix),
            resected=("gallbladder",) if resected else (),
        )
        truth = phantom.labels
        has_gb = bool((truth == GALLBLADDER).any())
        if not resected and not has_gb:
            continue  # gallbladder outside the scanned range: no use for this table
        n_resected += resected
        n_intact += not resected
        volume = Volume(
            phantom.image,
            tuple(phantom.spacing_mm),
            tuple(phantom.origin),
            tuple(phantom.direction),
        )
        others = [int(v) for v in np.unique(truth) if v not in (0, GALLBLADDER)]
        for name, pick in configs.items():
            prediction = pick(resected).predict(volume)
            labels = prediction.labels
            found = bool((labels == GALLBLADDER).any())
            row = results[name]
            if resected:
                row["fp"] += found
            else:
                row["fn"] += not found
                row["gb_dice"].append(dice_per_organ(labels, truth, [GALLBLADDER])[GALLBLADDER])
            row["other_dice"].append(
                float(np.mean(list(dice_per_organ(labels, truth, others).values())))
            )
            if prediction.presence and "gallbladder" in prediction.presence:
                row["presence"].append((resected, prediction.presence["gallbladder"]))
        print(
            f"case {SEED + i} resected={resected}: "
            + ", ".join(f"{n}: fp={r['fp']} fn={r['fn']}" for n, r in results.items()),
            flush=True,
        )

    lines = [
        "# Absent-organ prior: gallbladder after cholecystectomy (phantoms)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Models: `{args.plain}`, `{args.halos}`" + (f" ({args.note})" if args.note else ""),
        "",
        f"{n_resected} resected and {n_intact} intact cases (phantom seeds {SEED}..."
        f"{SEED + 2 * args.cases - 1}, {args.matrix}x{args.matrix}x{args.slices}, 1.5x1.5x2.5 mm), "
        f"precision {args.precision}, default options otherwise (`--crop auto`, LCC on).",
        "",
        "| configuration | gallbladder FPR (resected) | gallbladder FNR (intact) "
        "| gallbladder Dice (intact) | other organs mean Dice |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        fpr = row["fp"] / n_resected if n_resected else float("nan")
        fnr = row["fn"] / n_intact if n_intact else float("nan")
        lines.append(
            f"| {name} | {row['fp']}/{n_resected} = {fpr:.2f} | {row['fn']}/{n_intact} = {fnr:.2f} "
            f"| {np.mean(row['gb_dice']):.3f} | {np.mean(row['other_dice']):.3f} |"
        )
    auto = results["HALOS, predicted presence"]["presence"]
    if auto:
        resected_p = [p for r, p in auto if r]
        intact_p = [p for r, p in auto if not r]
        lines += [
            "",
            "Presence head (HALOS, `--presence auto`), gallbladder probability: resected cases "
            f"mean {np.mean(resected_p):.2f} (max {max(resected_p):.2f}); intact cases mean "
            f"{np.mean(intact_p):.2f} (min {min(intact_p):.2f}).",
        ]
    lines.append("")
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
