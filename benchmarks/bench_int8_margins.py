"""Where INT8 relabels voxels: fp32 logit margins, the INT8 error of the margin, and flips.

For each image, in one process: the bundle's preprocessing, then the whole image through the
sliding window (no crop, no post-processing) with the fp32 model and with the INT8 model the
bundle ships for the backend, keeping the averaged logits at the network's resolution. Per
organ (pooled over the images; :mod:`export.margins`): voxels labelled by fp32, the Dice of the
INT8 labels against them, the share of those voxels whose fp32 winner leads the runner-up by
less than 0.25 and 0.5 logit, the share INT8 relabels, and the RMS of the INT8 error of that
lead. The last line gives the share of all relabelled voxels that fp32 had decided by less
than each margin. A HALOS-style bundle gets the all-present prior.

Usage::

    python benchmarks/bench_int8_margins.py edge_seg/models/flare_ct_plain \
        --phantoms vs_nnunet --cases 3
    python benchmarks/bench_int8_margins.py edge_seg/models/halos_ct --phantoms holdout --cases 3
    python benchmarks/bench_int8_margins.py BUNDLE --images DIR
    python benchmarks/bench_int8_margins.py edge_seg/models/halos_ct --phantoms holdout \
        --requantize 1 --calib /tmp/edgeseg_ref/calib

``--requantize LEVEL`` diagnoses an INT8 model the bundle does not ship: the OpenVINO INT8
rebuilt from the bundle's fp32 ONNX with the first/last LEVEL convolutions in float (``0``:
all INT8; ``1,2``: first 1 and last 2), calibrated as ``edgeseg quantize`` does on ``--calib``.

``vs_nnunet`` writes the 512x512 phantoms of ``bench_vs_nnunet.py`` (same seeds), ``holdout``
the held-out phantoms of the bundles' fidelity report (``build_reference_bundles.py``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_description
from bench_vs_nnunet import mean_organ_dice

from edge_seg.backends.base import open_session
from edge_seg.bundle import Bundle, load_bundle
from evaluator.atomic import write_text_atomic
from export.calibration import list_images, read_images
from export.fidelity import network_logits
from export.margins import MarginTally


def write_phantoms(kind: str, count: int, folder: Path) -> Path:
    if kind == "vs_nnunet":
        from bench_vs_nnunet import write_cases
        write_cases(folder, count, 512)
        return folder
    from build_reference_bundles import HOLDOUT_SEED
    from build_reference_bundles import write_phantoms as write_holdout
    return write_holdout(folder, HOLDOUT_SEED, count)


def requantized_bundle(bundle: Bundle, level: str, calib: Path, patches_per_image: int,
                       work: Path) -> Bundle:
    """A copy of ``bundle`` whose OpenVINO INT8 model is rebuilt at mixed level ``level``."""
    from export.calibration import patch_set
    from export.quantize import parse_level
    from export.quantize_bundle import bundle_with_int8

    volumes, problems = read_images(list_images(calib), calib)
    if problems or not volumes:
        raise SystemExit(f"{calib}: " + ("; ".join(problems) or "no images"))
    samples = patch_set(volumes, bundle, patches_per_image).inputs
    return bundle_with_int8(bundle, work, bundle.model_path("fp32"), samples,
                            keep_fp=parse_level(level))


def render(bundle: Bundle, command: str, host: str, names: list[str], tally: MarginTally,
           int8_file: str, per_image: list[dict[str, Any]]) -> str:
    t0, t1 = tally.thresholds
    lines = [
        f"# Where INT8 relabels voxels: {bundle.name}",
        "",
        f"Command: `{command}`",
        "",
        f"Host: {host}. Images: {', '.join(names)}. fp32 `{bundle.files['fp32']}` vs INT8 "
        f"`{int8_file}` on OpenVINO, whole image through the sliding window at the network's "
        "resolution (no crop, no LCC); margin = fp32 winner minus runner-up logit; "
        "margin error = INT8 minus fp32 lead of the fp32 winner over the fp32 runner-up.",
        "",
        f"| organ | fp32 voxels | INT8 voxels | INT8 Dice | margin < {t0} | margin < {t1} "
        "| fp32 voxels INT8 relabels | RMS margin error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in tally.classes.items():
        lines.append(
            f"| {name} | {entry.voxels} | {entry.candidate_voxels} | {entry.dice:.3f} | "
            f"{entry.share_below(t0):.1%} | "
            f"{entry.share_below(t1):.1%} | {entry.flip_rate:.1%} | "
            f"{entry.margin_error_rms:.3f} |")
    lines += [
        "",
        f"Relabelled voxels: {tally.flipped}; of them {tally.share_of_flips_below(t0):.1%} had "
        f"an fp32 margin below {t0} and {tally.share_of_flips_below(t1):.1%} below {t1}.",
        "",
        "Per image (network grid): " + "; ".join(
            f"{row['image']} mean organ Dice {row['mean_dice']:.4f}" for row in per_image) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images")
    source.add_argument("--phantoms", choices=("vs_nnunet", "holdout"))
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--requantize", metavar="LEVEL", default=None,
                        help="rebuild the OpenVINO INT8 at this mixed level (needs --calib)")
    parser.add_argument("--calib", type=Path, default=None)
    parser.add_argument("--patches-per-image", type=int, default=6)
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    # Rebuilt models (hard links to the bundle's files among them) and phantoms go when we do.
    scratch = Path(tempfile.mkdtemp(prefix="bench_margins_"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    if args.requantize is not None:
        if args.calib is None:
            parser.error("--requantize needs --calib")
        (scratch / "int8").mkdir()
        bundle = requantized_bundle(bundle, args.requantize, args.calib,
                                    args.patches_per_image, scratch / "int8")
    folder = args.images or write_phantoms(args.phantoms, args.cases, scratch / "phantoms")
    volumes, problems = read_images(list_images(folder), folder)
    if problems:
        raise SystemExit("; ".join(problems))
    command = f"python benchmarks/bench_int8_margins.py {args.bundle} " + (
        f"--images {args.images}" if args.images
        else f"--phantoms {args.phantoms} --cases {args.cases}") + (
        f" --requantize {args.requantize} --calib {args.calib} "
        f"--patches-per-image {args.patches_per_image}" if args.requantize is not None else "")
    fp32 = open_session(bundle, "openvino", "fp32", args.threads, "f32")
    int8 = open_session(bundle, "openvino", "int8", args.threads)
    names, per_image = [], []
    tally = MarginTally(bundle.organs)
    start = time.perf_counter()
    for volume in volumes:
        name = volume.path.name if volume.path else f"image {len(names)}"
        reference = network_logits(bundle, fp32, volume, args.threads)
        candidate = network_logits(bundle, int8, volume, args.threads)
        tally.add(reference, candidate)
        labels = [logits.argmax(axis=0) for logits in (reference, candidate)]
        per_image.append({"image": name, "mean_dice": mean_organ_dice(*labels)})
        names.append(name)
        print(f"{name}: {per_image[-1]['mean_dice']:.4f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    int8_file = int8.choice.path.name
    host = cpu_description()
    text = render(bundle, command, host, names, tally, int8_file, per_image)
    source_name = args.phantoms or args.images.name
    stem = f"int8_margins_{bundle.name}_{source_name}" + (
        f"_level{args.requantize.replace(',', '_')}" if args.requantize is not None else "")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output_dir / f"{stem}.md", text)
    summary = {
        "command": command, "host": host, "images": names, "per_image": per_image,
        "thresholds": list(tally.thresholds), "flipped": tally.flipped,
        "share_of_flips_below": {str(t): tally.share_of_flips_below(t)
                                 for t in tally.thresholds},
        "classes": {name: {"voxels": e.voxels, "int8_voxels": e.candidate_voxels,
                           "dice": e.dice, "flip_rate": e.flip_rate,
                           "margin_error_rms": e.margin_error_rms,
                           "share_below": {str(t): e.share_below(t) for t in tally.thresholds}}
                    for name, e in tally.classes.items()},
    }
    write_text_atomic(args.output_dir / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
