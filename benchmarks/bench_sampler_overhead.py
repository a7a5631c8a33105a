"""What does sampling a case every 0.1 s cost the case?

A fixed CPU-bound child (a pure-Python loop of a fixed number of iterations, in a fresh
interpreter) is run repeatedly, alternately with the FLARE-style sampler of
``edge_seg.profiling.run_monitored`` (psutil every 0.1 s, whole process tree) and without it
(the same call with ``sample=False``: only waiting for the exit). The order of the pair flips
every repetition, so drift of the shared machine hits both arms alike.

Two figures are reported:

* wall-time overhead: median over repetitions of the paired ratio (with / without) - 1;
* sampler CPU: CPU seconds the measuring process itself spent (user + system, all threads) per
  second of the child's run, with sampling minus without. On a machine with a spare core this
  is what sampling could take away from the case at worst; it is far less noisy than wall time.

Usage::

    python benchmarks/bench_sampler_overhead.py [--reps 8] [--iterations 30000000] \
        [--output benchmarks/results/benchmark_sampler_overhead.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

from edge_seg.profiling import run_monitored
from evaluator.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def workload(iterations: int) -> list[str]:
    code = f"total = 0\nfor i in range({iterations}):\n    total += i % 7\n"
    return [sys.executable, "-c", code]


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(sample: bool, iterations: int, interval_s: float) -> tuple[float, float, int]:
    """(child wall time s, this process's CPU s during the run, number of samples)."""
    before = _self_cpu_s()
    result = run_monitored(workload(iterations), sample=sample, interval_s=interval_s,
                           time_limit_s=600)
    if not result.ok:
        raise SystemExit(f"workload failed: {result.status} {result.stderr_tail}")
    return result.time_s, _self_cpu_s() - before, len(result.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=30_000_000)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--output", type=Path,
                        default=REPO / "benchmarks/results/benchmark_sampler_overhead.md")
    args = parser.parse_args()

    measure(True, 1_000_000, args.interval)  # warm caches (interpreter, psutil) before timing
    rows: list[tuple[int, float, float, float, float, int]] = []
    for rep in range(args.reps):
        arms: dict[bool, tuple[float, float, int]] = {}
        for sample in ((True, False) if rep % 2 == 0 else (False, True)):
            arms[sample] = measure(sample, args.iterations, args.interval)
        (t_on, cpu_on, n), (t_off, cpu_off, _) = arms[True], arms[False]
        rows.append((rep + 1, t_off, t_on, cpu_off, cpu_on, n))
        print(f"rep {rep + 1}: without {t_off:.3f} s, with {t_on:.3f} s "
              f"({n} samples), sampler CPU {cpu_on - cpu_off:.4f} s", flush=True)

    t_off = np.array([r[1] for r in rows])
    t_on = np.array([r[2] for r in rows])
    cpu_extra = np.array([r[4] - r[3] for r in rows])
    ratio = t_on / t_off
    overhead_pct = 100.0 * (np.median(ratio) - 1.0)
    cpu_pct = 100.0 * np.median(cpu_extra / t_on)
    lines = [
        "# Sampler overhead (edge_seg.profiling.run_monitored)",
        "",
        f"Command: `python benchmarks/bench_sampler_overhead.py --reps {args.reps} "
        f"--iterations {args.iterations} --interval {args.interval:g}`",
        "",
        f"Host: {platform.platform()}, {os.cpu_count()} logical CPUs, Python "
        f"{sys.version.split()[0]}. Child: fixed pure-Python loop in a fresh interpreter; "
        f"sampling every {args.interval:g} s (whole process tree, psutil) vs waiting only; "
        "pairs interleaved, order alternating.",
        "",
        "| rep | without sampling (s) | with sampling (s) | ratio | samples | sampler CPU (s) |",
        "|---|---|---|---|---|---|",
    ]
    for (rep, off, on, c_off, c_on, n), r in zip(rows, ratio, strict=True):
        lines.append(f"| {rep} | {off:.3f} | {on:.3f} | {r:.4f} | {n} | {c_on - c_off:.4f} |")
    lines += [
        f"| **median** | {np.median(t_off):.3f} | {np.median(t_on):.3f} | "
        f"{np.median(ratio):.4f} | | {np.median(cpu_extra):.4f} |",
        "",
        f"- Wall-time overhead (median paired ratio - 1): **{overhead_pct:+.2f} %** "
        f"(spread of ratios: {ratio.min():.3f} - {ratio.max():.3f}).",
        f"- Sampler CPU per second of case: **{cpu_pct:.2f} %** of one core.",
        f"- Target: < 2 % of a case's run time -> "
        f"{'met' if max(overhead_pct, cpu_pct) < 2.0 else 'NOT met'}.",
        "",
    ]
    text = "\n".join(lines)
    write_text_atomic(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
