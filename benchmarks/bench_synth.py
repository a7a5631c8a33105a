"""Phantom generation speed: how long ``generate_phantom`` takes per case, by grid size.

Grids measured (median of ``--repeats`` runs, different seeds, one process):

* FLARE-size CT, 512 x 512 x 300 at 0.8 x 0.8 x 2.5 mm (the issue's target: a few seconds);
* the same case written in the FLARE / nnU-Net layout (compressed NIfTI image + labels);
* a 3 mm isotropic training phantom (130 x 130 x 80), as the reference-model trainer uses;
* a CHAOS-size MR case (256 x 256 x 40, T1 in-phase, opposed-phase and T2).

Writes ``benchmarks/results/synth.md`` (table) and ``synth.json`` (raw timings).

Usage::

    python benchmarks/bench_synth.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_seg.synth import generate_phantom  # noqa: E402
from edge_seg.synth.layout_nnunet import write_case  # noqa: E402
from evaluator.atomic import write_text_atomic  # noqa: E402

CASES = {
    "FLARE CT 512x512x300 (0.8x0.8x2.5 mm)": dict(
        modality="ct", n_slices=300, spacing_mm=(2.5, 0.8, 0.8), shape_yx=(512, 512)
    ),
    "training CT 130x130x80 (3 mm iso)": dict(
        modality="ct", n_slices=80, spacing_mm=(3.0, 3.0, 3.0), shape_yx=(130, 130)
    ),
    "CHAOS MR 256x256x40, 3 images (1.6x1.6x7 mm)": dict(
        modality="mr", n_slices=40, spacing_mm=(7.0, 1.6, 1.6), shape_yx=(256, 256)
    ),
}
WRITE_CASE = "FLARE CT 512x512x300 (0.8x0.8x2.5 mm)"


def _time(fn, cpu: list[float]) -> float:
    """Wall seconds of ``fn()``; its CPU seconds are appended to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    generate_phantom(0, "ct", n_slices=8, spacing_mm=(3.0, 3.0, 3.0), shape_yx=(32, 32))  # warm-up
    results: dict[str, dict] = {}
    for name, kw in CASES.items():
        cpu: list[float] = []
        times = [
            _time(lambda s=seed, kw=kw: generate_phantom(1000 + s, **kw), cpu)
            for seed in range(args.repeats)
        ]
        voxels = kw["n_slices"] * kw["shape_yx"][0] * kw["shape_yx"][1]
        results[name] = {
            "what": "generate_phantom",
            "seconds": times,
            "cpu_seconds": cpu,
            "voxels": voxels,
        }
        print(f"{name}: median {statistics.median(times):.2f} s", flush=True)

    kw = CASES[WRITE_CASE]
    times, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):

            def generate_and_write(seed=seed) -> None:
                phantom = generate_phantom(1000 + seed, **kw)
                write_case(phantom, Path(tmp), f"case_{seed}")

            times.append(_time(generate_and_write, cpu))
    name = WRITE_CASE + " + write .nii.gz"
    results[name] = {
        "what": "generate_phantom + FLARE layout write",
        "seconds": times,
        "cpu_seconds": cpu,
        "voxels": results[WRITE_CASE]["voxels"],
    }
    print(f"{name}: median {statistics.median(times):.2f} s", flush=True)

    machine = {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_1min": os.getloadavg()[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    lines = [
        "# Phantom generation speed",
        "",
        f"Command: `python benchmarks/bench_synth.py --repeats {args.repeats}`. Median of "
        f"{args.repeats} runs (seeds 1000-{999 + args.repeats}), single process, "
        f"{machine['usable_cores']} usable of {machine['cpu_count']} cores "
        f"({machine['processor']}), 1-min load average {machine['load_average_1min']:.1f} "
        "at the end (the machine is shared).",
        "",
        "| case | what is timed | median wall s | min s | max s | median CPU s | Mvoxel/s (wall) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        med = statistics.median(r["seconds"])
        lines.append(
            f"| {name} | {r['what']} | {med:.2f} | {min(r['seconds']):.2f} | "
            f"{max(r['seconds']):.2f} | {statistics.median(r['cpu_seconds']):.2f} | "
            f"{r['voxels'] / med / 1e6:.0f} |"
        )
    lines += ["", f"Peak RSS of the benchmark process: {machine['peak_rss_mb']:.0f} MB.", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "synth.md", "\n".join(lines))
    write_text_atomic(
        args.out / "synth.json",
        json.dumps({"machine": machine, "repeats": args.repeats, "results": results}, indent=2)
        + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
