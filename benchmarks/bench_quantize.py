"""INT8 vs fp32: latency per patch on every CPU route, and label agreement on held-out phantoms.

For each bundle given (after ``edgeseg export`` + ``edgeseg quantize``), in one process:

* latency per patch of the runtime's own sessions (:func:`edge_seg.backends.base.open_session`)
  for ONNX Runtime fp32 and INT8 (QDQ), OpenVINO fp32 (``INFERENCE_PRECISION_HINT=f32``),
  bf16 and INT8 (the runtime's: the layers kept in float run in f32), plus OpenVINO INT8 with
  no precision hint (the plugin's default for those layers: bf16 on CPUs with bf16 support).
  Patches are real preprocessed windows of synthetic phantoms (seeds not used for
  calibration). Configurations run round-robin, the order rotating every repetition,
  so drift of the shared machine hits all alike; the table gives the median per patch
  and the speed ratios measured in this run.
* label agreement: whole-image label maps of held-out phantoms from
  :class:`edge_seg.predict.Predictor`, INT8 vs fp32 on the same backend; per-organ Dice, mean
  and worst organ (the bar is mean >= 0.98).

Usage::

    python benchmarks/bench_quantize.py edge_seg/models/flare_ct_plain edge_seg/models/halos_ct \
        [--patches 4] [--reps 5] [--threads 2] [--agreement-phantoms 3] \
        [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_description

from edge_seg.backends.base import open_session
from edge_seg.bundle import Bundle, load_bundle
from edge_seg.io import Volume
from edge_seg.synth import generate_phantom
from evaluator.atomic import write_text_atomic
from export.calibration import network_inputs, patches_from_array, preprocessed_array
from export.fidelity import AGREEMENT_BAR, recheck_bundle, shipped_int8

PATCH_SEED = 5000
PLUGIN_DEFAULT_INT8 = "OV int8 (float layers: plugin default)"
AGREEMENT_SEED = 7000


def phantom_volume(seed: int, modality: str, slices: int, matrix: int) -> Volume:
    phantom = generate_phantom(seed, modality=modality.lower(), n_slices=slices,
                               shape_yx=(matrix, matrix))
    return Volume(phantom.image, tuple(phantom.spacing_mm), tuple(phantom.origin),
                  tuple(phantom.direction), Path(f"phantom_{seed}.nii.gz"))


def unshipped_int8(bundle: Bundle, calib: Path, work: Path) -> Bundle:
    """A copy of ``bundle`` with INT8 models for the backends it ships none for.

    Latency does not depend on whether a model met the agreement bar, so an INT8 model that
    was not shipped is rebuilt here (same calibration as ``edgeseg quantize``) to time it.
    """
    from export.calibration import list_images, patch_set, read_images
    from export.quantize_bundle import FILE_KEYS, bundle_with_int8

    missing = [backend for backend, key in FILE_KEYS.items() if key not in bundle.files]
    if not missing:
        return bundle
    volumes, _ = read_images(list_images(calib), calib)
    samples = patch_set(volumes, bundle, 3).inputs
    for backend in missing:
        bundle = bundle_with_int8(bundle, work, bundle.model_path("fp32"), samples, backend,
                                  keep_files=tuple(bundle.files))
    return bundle


def sessions(bundle: Bundle, threads: int | None) -> dict[str, Any]:
    """Every (backend, precision) route the bundle supports, as the runtime opens it.

    OpenVINO sessions get one stream: this measures the latency of one patch on all threads
    (with the runtime's 2 streams a lone patch runs on one stream's single thread).
    """

    routes: dict[str, Any] = {
        "ORT fp32": open_session(bundle, "onnxruntime", "fp32", threads),
        "OV fp32 (f32 hint)": open_session(bundle, "openvino", "fp32", threads, streams=1),
        "OV bf16": open_session(bundle, "openvino", "bf16", threads, streams=1),
    }
    if "int8_onnx" in bundle.files:
        routes["ORT int8 (QDQ)"] = open_session(bundle, "onnxruntime", "int8", threads)
    if "int8_openvino" in bundle.files:
        # The runtime's INT8: the layers kept in float run in f32 (as validated).
        routes["OV int8"] = open_session(bundle, "openvino", "int8", threads, streams=1)
        # Same IR with no hint: the plugin's own choice for those layers (bf16 on CPUs with
        # AMX or AVX-512 BF16, f32 elsewhere).
        routes[PLUGIN_DEFAULT_INT8] = open_session(bundle, "openvino", "int8", threads,
                                                   openvino_precision_hint="default", streams=1)
    return routes


def _precision_name(session: Any) -> str:
    text = str(getattr(session, "inference_precision", "?"))
    for long, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16")):
        if long in text:
            return short
    return text


def time_routes(routes: dict[str, Any], inputs: list[list[np.ndarray]], reps: int
                ) -> dict[str, list[float]]:
    names = list(routes)
    for name in names:  # warm-up: first-call allocations and JIT are not latency
        routes[name].run(*inputs[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            for sample in inputs:
                start = time.perf_counter()
                routes[name].run(*sample)
                times[name].append(time.perf_counter() - start)
    return times


def round_speedups(times: dict[str, list[float]], base: str, other: str,
                   patches: int) -> list[float]:
    """Per repetition: ``base``'s time over ``other``'s for the same patches in that round.

    Both routes ran within seconds of each other in every round, so a slow spell of a shared
    machine moves both and their ratio much less than either time.
    """
    rounds = len(times[base]) // patches
    return [sum(times[base][r * patches:(r + 1) * patches])
            / sum(times[other][r * patches:(r + 1) * patches]) for r in range(rounds)]


def render(bundle: Bundle, command: str, lat: dict[str, Any], agree: dict[str, Any],
           host: str) -> str:
    lines = [
        f"# INT8 vs fp32: {bundle.name}",
        "",
        f"Command: `{command}`",
        "",
        f"Host: {host}. Patch {bundle.patch_size} (z, y, x), {lat['patches']} real preprocessed "
        f"phantom patches x {lat['reps']} repetitions per route, interleaved.",
        "",
        "| route | precision run | median ms / patch | vs its fp32 |",
        "|---|---|---|---|",
    ]
    for name, row in lat["routes"].items():
        ratio = row.get("speedup_vs_fp32")
        lines.append(f"| {name} | {row['inference_precision']} | {row['median_ms']:.1f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    if lat.get("int8_not_shipped"):
        lines += ["", f"INT8 models not shipped in the bundle (below the agreement bar), rebuilt "
                      f"for timing only: {', '.join(lat['int8_not_shipped'])}."]
    lines += ["", "Speed-ups measured in this run (ratio of the medians; in brackets the "
                  f"same ratio per repetition, over {lat['reps']} rounds: median, min-max):", ""]
    for key, value in lat["ratios"].items():
        spread = lat.get("per_round", {}).get(key)
        extra = (f" (per round {spread['median']:.2f}x, {spread['min']:.2f}-"
                 f"{spread['max']:.2f}x)" if spread else "")
        lines.append(f"- {key}: **{value:.2f}x**{extra}")
    if agree:
        lines += ["", f"Label agreement INT8 vs fp32 (Predictor, whole images, "
                      f"{len(next(iter(agree.values()))['holdout_images'])} held-out phantoms; "
                      f"bar: mean Dice >= {AGREEMENT_BAR}):", "",
                  "| INT8 model | mean Dice | worst organ | per organ |", "|---|---|---|---|"]
        for key, rep in agree.items():
            per = ", ".join(f"{k} {v:.3f}" for k, v in rep["dice_per_class"].items())
            lines.append(f"| {key} | **{rep['mean_dice']:.4f}** | {rep['worst_class']} "
                         f"{rep['worst_dice']:.4f} | {per} |")
    fid = bundle.fidelity.get("variants", {})
    if fid:
        lines += ["", "Fidelity report stored in the bundle by `edgeseg quantize`:", "",
                  "| variant | mean Dice | worst | shipped |", "|---|---|---|---|"]
        for key, rep in fid.items():
            lines.append(f"| {key} | {rep['mean_dice']:.4f} | {rep['worst_class']} "
                         f"{rep['worst_dice']:.4f} | {'yes' if rep['passed'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--agreement-phantoms", type=int, default=3)
    parser.add_argument("--phantom-slices", type=int, default=64)
    parser.add_argument("--phantom-matrix", type=int, default=256)
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--calib", type=Path, default=None,
                        help="images to build INT8 models the bundle does not ship (timing only)")
    args = parser.parse_args()
    command = "python benchmarks/bench_quantize.py " + " ".join(
        [str(b) for b in args.bundles] + [f"--patches {args.patches}", f"--reps {args.reps}",
         f"--agreement-phantoms {args.agreement_phantoms}",
         f"--phantom-slices {args.phantom_slices}", f"--phantom-matrix {args.phantom_matrix}"]
        + ([f"--threads {args.threads}"] if args.threads else [])
        + ([f"--calib {args.calib}"] if args.calib else []))
    host = f"{platform.platform()}, {cpu_description()}"
    for bundle_dir in args.bundles:
        bundle = load_bundle(bundle_dir)
        inputs: list[list[np.ndarray]] = []
        seed = PATCH_SEED
        while len(inputs) < args.patches:
            volume = phantom_volume(seed, bundle.modality, args.phantom_slices,
                                    args.phantom_matrix)
            array = preprocessed_array(volume, bundle)
            for patch, _ in patches_from_array(array, bundle.patch_size, 2):
                inputs.append(network_inputs(patch, bundle))
            seed += 1
        inputs = inputs[: args.patches]
        work = Path(tempfile.mkdtemp(prefix="bench_quantize_"))
        shipped = set(bundle.files)
        timed = unshipped_int8(bundle, args.calib, work) if args.calib else bundle
        routes = sessions(timed, args.threads)
        times = time_routes(routes, inputs, args.reps)
        medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
        fp32_of = {"ORT": "ORT fp32", "OV": "OV fp32 (f32 hint)"}
        rows = {}
        for name, ms in medians.items():
            base = medians[fp32_of[name.split()[0]]]
            rows[name] = {
                "median_ms": round(ms, 3),
                "inference_precision": _precision_name(routes[name]),
                "speedup_vs_fp32": None if "fp32" in name else round(base / ms, 3),
            }
        pairs = [(name, "OV fp32 (f32 hint)") for name in ("OV int8", "OV bf16",
                                                             PLUGIN_DEFAULT_INT8)]
        pairs += [("ORT int8 (QDQ)", "ORT fp32"), ("OV fp32 (f32 hint)", "ORT fp32")]
        ratios, per_round = {}, {}
        for name, base in pairs:
            if name in medians:
                key = f"{name.replace(' (QDQ)', '')} vs {base}"
                ratios[key] = round(medians[base] / medians[name], 3)
                speedups = round_speedups(times, base, name, len(inputs))
                per_round[key] = {"median": round(statistics.median(speedups), 3),
                                  "min": round(min(speedups), 3),
                                  "max": round(max(speedups), 3)}
        lat = {"patches": len(inputs), "reps": args.reps, "routes": rows,
               "ratios": ratios, "per_round": per_round,
               "int8_not_shipped": sorted(set(timed.files) - shipped)}
        del routes
        shutil.rmtree(work, ignore_errors=True)
        agree = {}
        if args.agreement_phantoms:
            volumes = [phantom_volume(AGREEMENT_SEED + i, bundle.modality, args.phantom_slices,
                                      args.phantom_matrix)
                       for i in range(args.agreement_phantoms)]
            agree = (recheck_bundle(bundle, volumes, args.threads, AGREEMENT_BAR)
                     if shipped_int8(bundle) else {})
        text = render(bundle, command, lat, agree, host)
        print(text)
        stem = f"quantize_{bundle_dir.name}"
        args.output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output_dir / f"{stem}.md", text)
        write_text_atomic(args.output_dir / f"{stem}.json", json.dumps(
            {"bundle": bundle.name, "command": command, "host": host, "latency": lat,
             "agreement": agree}, indent=2) + "\n")


if __name__ == "__main__":
    main()
