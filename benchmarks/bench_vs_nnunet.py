"""edgeseg vs nnU-Net v2's own predictor: same checkpoint, same cases, same 2 cores.

Phantom CTs are written as an nnU-Net ``imagesTs`` folder and segmented

* by ``nnUNetv2_predict -device cpu --disable_tta`` (one fold: ``-f 0``) from the reference
  model's genuine nnU-Net v2 results folder, and
* by ``edgeseg predict IN_DIR OUT_DIR`` with the bundle exported from that same checkpoint, in
  fp32 and INT8, with default options (``--crop auto``, LCC, specks under 0.5 ml removed),
  with ``--no-lcc --min-component-ml 0`` (nnU-Net applies neither clean-up) and with
  ``--crop none`` added to that (the configuration that is nnU-Net's computation exactly).

Each command processes the whole folder in one fresh process (model loaded once), pinned to the
same 2 cores, timed from process start until the last file is written. Agreement: Dice per
organ between edgeseg's and nnU-Net's label maps (organs present in either), averaged per case.

Usage::

    python benchmarks/bench_vs_nnunet.py [--results reference_models/nnunet_results]
        [--model edge_seg/models/flare_ct_plain] [--cases 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_predict import (  # noqa: E402
    DEFAULT_MODEL,
    command_line,
    cpu_description,
    dice_per_organ,
    pinned,
)

from edge_seg.profiling import run_monitored  # noqa: E402
from evaluator.atomic import write_text_atomic  # noqa: E402

SEED = 8000
REFERENCE_LABEL = "nnU-Net v2 (nnUNetv2_predict, fp32)"


def write_cases(folder: Path, count: int, matrix: int) -> list[str]:
    import SimpleITK as sitk

    from edge_seg.io import Volume
    from edge_seg.synth import generate_phantom
    from evaluator.atomic import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"phantom_{SEED + i}"
        names.append(name)
        target = folder / f"{name}_0000.nii.gz"
        if target.is_file():
            continue
        phantom = generate_phantom(SEED + i, "ct", shape_yx=(matrix, matrix))
        volume = Volume(
            phantom.image,
            tuple(phantom.spacing_mm),
            tuple(phantom.origin),
            tuple(phantom.direction),
        )
        with atomic_path(target) as tmp:
            sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
    return names


def mean_organ_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the organ labels present in either label map."""
    values = [int(v) for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    return float(np.mean(list(dice_per_organ(a, b, values).values())))


def agreement(a_dir: Path, b_dir: Path, names: list[str]) -> list[float]:
    import SimpleITK as sitk

    scores = []
    for name in names:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_dir / f"{name}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_dir / f"{name}.nii.gz")))
        scores.append(mean_organ_dice(a, b))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "reference_models" / "nnunet_results"
    )
    parser.add_argument("--dataset", default="900")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeseg_vs_nnunet"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_vs_nnunet.md"
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="runs of every predictor, interleaved; the table gives the median time",
    )
    parser.add_argument("--note", default="", help="model description for the table")
    args = parser.parse_args()

    images = args.work / "imagesTs"
    names = write_cases(images, args.cases, args.matrix)
    env = dict(
        os.environ,
        nnUNet_results=str(args.results.resolve()),
        nnUNet_raw=str(args.work / "raw"),
        nnUNet_preprocessed=str(args.work / "pre"),
    )
    bin_dir = Path(sys.executable).parent
    jobs: dict[str, tuple[list[str], Path]] = {
        REFERENCE_LABEL: (
            [
                str(bin_dir / "nnUNetv2_predict"),
                "-i",
                str(images),
                "-o",
                str(args.work / "nnunet"),
                "-d",
                args.dataset,
                "-c",
                "3d_fullres",
                "-f",
                "0",
                "-device",
                "cpu",
                "--disable_tta",
            ],
            args.work / "nnunet",
        )
    }
    edgeseg = [sys.executable, "-m", "edge_seg", "predict", str(images)]
    from edge_seg.backends.base import choose_model
    from edge_seg.bundle import load_bundle
    from edge_seg.errors import EdgesegError

    bundle = load_bundle(args.model)
    for precision in ("fp32", "int8"):
        try:
            choose_model(bundle, "openvino", precision)
        except EdgesegError as exc:
            print(f"skipped {precision}: {exc}", flush=True)
            continue
        for label, extra in (
            ("default", []),
            ("crop auto, no LCC", ["--no-lcc", "--min-component-ml", "0"]),
            ("exact", ["--crop", "none", "--no-lcc", "--min-component-ml", "0"]),
        ):
            out = args.work / f"edgeseg_{precision}_{label.replace(', ', '_').replace(' ', '_')}"
            argv = [*edgeseg, str(out), "--model", str(args.model), "--precision", precision,
                    "--threads", "2", "-q", *extra]
            jobs[f"edgeseg {precision}, {label}"] = (argv, out)

    times: dict[str, list[float]] = {label: [] for label in jobs}
    peaks: dict[str, list[float]] = {label: [] for label in jobs}
    order = list(jobs)
    for round_index in range(args.repeats):
        # Rotate the order each round so that drift of the shared machine hits all alike.
        shift = round_index % len(order)
        for label in order[shift:] + order[:shift]:
            argv, out = jobs[label]
            if out.exists():
                for stale in out.iterdir():
                    stale.unlink()
            result = run_monitored(pinned(argv), env=env, time_limit_s=7200)
            if not result.ok:
                raise SystemExit(f"{label} failed: {result.stderr_tail}")
            times[label].append(result.time_s)
            peaks[label].append(result.peak_rss_mb)
            print(f"round {round_index + 1}/{args.repeats} {label}: {result.time_s:.1f} s, "
                  f"peak {result.peak_rss_mb:.0f} MB", flush=True)
    runs = {label: (jobs[label][1], statistics.median(times[label]), max(peaks[label]))
            for label in jobs}

    reference_label = REFERENCE_LABEL
    _, nn_time, _ = runs[reference_label]
    lines = [
        "# edgeseg vs nnU-Net v2's predictor (same checkpoint, same cases, 2 cores)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Model: `{args.model}` exported from `{args.results}`"
        + (f" ({args.note})" if args.note else ""),
        "",
        f"Machine: {cpu_description()}.",
        "",
        f"{args.cases} phantom CTs (seeds {SEED}..{SEED + args.cases - 1}, {args.matrix}x"
        f"{args.matrix} in-plane, protocol slice count). Whole folder per fresh process, pinned "
        f"to 2 cores; nnU-Net: `nnUNetv2_predict -d {args.dataset} -c 3d_fullres -f 0 -device cpu "
        "--disable_tta`. `default` = edgeseg's defaults (`--crop auto`, LCC, specks under "
        "0.5 ml removed); `crop auto, no LCC` = `--no-lcc --min-component-ml 0` (nnU-Net "
        "applies neither clean-up); `exact` = `--crop none --no-lcc --min-component-ml 0`. "
        "Agreement = per-case mean over organs of Dice(edgeseg, nnU-Net)."
        + (f" Times: median of {args.repeats} runs of each predictor, rounds interleaved (the "
           "order rotating), min-max in brackets; peak RSS: the largest." if args.repeats > 1
           else ""),
        "",
        "| predictor | total s | s per case | speed-up vs nnU-Net | peak RSS MB "
        "| agreement mean | agreement min |",
        "|---|---|---|---|---|---|---|",
    ]
    per_case: dict[str, list[float]] = {}
    for label, (out, seconds, peak) in runs.items():
        if label == reference_label:
            agree = "-", "-"
        else:
            scores = agreement(out, runs[reference_label][0], names)
            per_case[label] = scores
            agree = f"{np.mean(scores):.4f}", f"{min(scores):.4f}"
        spread = (f" ({min(times[label]):.1f}-{max(times[label]):.1f})"
                  if args.repeats > 1 else "")
        lines.append(
            f"| {label} | {seconds:.1f}{spread} | {seconds / args.cases:.1f} "
            f"| {nn_time / seconds:.1f}x | {peak:.0f} | {agree[0]} | {agree[1]} |"
        )
    lines += ["", "Targets (issue 5): >= 10x faster; agreement >= 0.99 (fp32), >= 0.98 (INT8).", ""]
    # The table rounds to four places; a mean close to a bar needs the unrounded figures.
    lines += ["Agreement per case (" + ", ".join(names) + ") and unrounded mean:", ""]
    lines += [f"- {label}: " + ", ".join(f"{x:.5f}" for x in scores)
              + f"; mean {np.mean(scores):.6f}" for label, scores in per_case.items()]
    lines.append("")
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
