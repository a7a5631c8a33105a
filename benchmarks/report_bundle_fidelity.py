"""The INT8 fidelity report stored in model bundles, as a Markdown table.

``edgeseg quantize`` measures every INT8 variant against fp32 on held-out images and stores
the result in the bundle's ``edgeseg.json``; this script prints those stored measurements (it
measures nothing itself), so that the README can cite the report of the bundles that ship.

Usage::

    python benchmarks/report_bundle_fidelity.py edge_seg/models/flare_ct_plain \
        edge_seg/models/halos_ct --out benchmarks/results/quantize_shipped.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_seg.bundle import load_bundle  # noqa: E402
from evaluator.atomic import write_text_atomic  # noqa: E402


def fidelity_table(bundle_dirs: list[Path]) -> str:
    lines = [
        "| bundle | variant | backend | quantised from | mean Dice | worst organ "
        "| int8/fp32 time (whole case) | network speed-up | shipped as |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for folder in bundle_dirs:
        bundle = load_bundle(folder)
        fidelity = bundle.fidelity
        notes.append(
            f"- `{folder.name}`: validated precisions {', '.join(bundle.validated_precisions)}; "
            f"held out {', '.join(fidelity.get('holdout_images', []))}; "
            f"{fidelity.get('calibration_patches', 0)} calibration patches from "
            f"{len(fidelity.get('calibration_images', []))} images; bar "
            f"{fidelity.get('bar_mean_dice')}"
        )
        if "distillation" in fidelity:
            d = fidelity["distillation"]
            notes.append(f"  - student: {d['steps']} steps on {d['patches']} patches "
                         f"({d['seconds']:.0f} s), weighted logit MSE {d['loss_first_tenth']:.5f}"
                         f" -> {d['loss_last_tenth']:.5f}")
        for name, report in fidelity.get("variants", {}).items():
            shipped = report.get("shipped_as", "not shipped") if report["passed"] else "not shipped"
            lines.append(
                # Reports older than --distill carry no "quantised_from": they are fp32's.
                f"| {folder.name} | {name} | {report['backend']} | "
                f"{report.get('quantised_from', 'fp32')} | {report['mean_dice']:.4f} | "
                f"{report['worst_class']} {report['worst_dice']:.4f} | "
                f"{report['latency_ratio_int8_vs_fp32']} | "
                f"{report.get('network_speedup_int8_vs_fp32', '')} | "
                f"{shipped} |"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = (
        "# INT8 fidelity of the shipped bundles (as stored by `edgeseg quantize`)\n\n"
        f"Command: `python benchmarks/report_bundle_fidelity.py "
        f"{' '.join(str(b) for b in args.bundles)}"
        f"{f' --out {args.out}' if args.out else ''}`\n\n" + fidelity_table(args.bundles)
    )
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
