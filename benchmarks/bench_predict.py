"""End-to-end speed and memory of ``edgeseg predict`` on a FLARE-size phantom CT.

A 512x512x300 synthetic CT (0.8 x 0.8 x 2.5 mm) is segmented in a fresh process per run, timed
from process start until the label map is written, memory sampled every 0.1 s over the whole
process tree (edge_seg.profiling, FLARE's method). Rows: the INT8 model (its float layers in
f32, as the runtime runs it, and with no hint: the plugin's own choice), the fp32 model with
OpenVINO's f32 precision hint, with the bf16 hint, and with no hint at all (what a plain
OpenVINO user gets: bf16 on CPUs with AMX), ONNX Runtime fp32/int8, the ``edgeseg predict`` CLI
itself, and the I/O floor (read + write alone). Processes are pinned to 2 cores where the
machine has more. Dice against the phantom's truth shows that every row segments the same.

Usage::

    python benchmarks/bench_predict.py [--model edge_seg/models/flare_ct_plain] [--runs 3]
        [--out benchmarks/results/predict.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_seg.host import cpu_description  # noqa: E402
from edge_seg.profiling import run_monitored  # noqa: E402
from evaluator.atomic import write_text_atomic  # noqa: E402

DEFAULT_MODEL = ROOT / "edge_seg" / "models" / "flare_ct_plain"
PHANTOM_SEED = 5000
CORES = 2

#: name, backend, precision, OpenVINO precision hint, OpenVINO streams (None: the default).
CONFIGS = [
    ("openvino int8", "openvino", "int8", None, None),
    ("openvino int8 (1 stream)", "openvino", "int8", None, 1),
    ("openvino int8 (no hint)", "openvino", "int8", "default", None),
    ("openvino fp32 (f32 hint)", "openvino", "fp32", None, None),
    ("openvino bf16 (bf16 hint)", "openvino", "bf16", None, None),
    ("openvino fp32 (no hint)", "openvino", "fp32", "default", None),
    ("onnxruntime int8", "onnxruntime", "int8", None, None),
    ("onnxruntime fp32", "onnxruntime", "fp32", None, None),
]


def pinned(argv: list[str], cores: int = CORES) -> list[str]:
    """Prefix ``argv`` with taskset to ``cores`` CPUs where the machine has more."""
    if (os.cpu_count() or 1) > cores and shutil.which("taskset"):
        return ["taskset", "-c", ",".join(str(i) for i in range(cores)), *argv]
    return argv


def write_phantom_ct(
    folder: Path,
    seed: int,
    n_slices: int = 300,
    matrix: int = 512,
    spacing_mm: tuple[float, float, float] = (2.5, 0.8, 0.8),
    **kwargs,
) -> Path:
    """Write ``ct.nii.gz`` and ``truth.nii.gz`` of one phantom into ``folder`` (once)."""
    from edge_seg.io import Volume, write_label_map
    from edge_seg.synth import generate_phantom

    scan = folder / "ct.nii.gz"
    if scan.is_file() and (folder / "truth.nii.gz").is_file():
        return scan
    folder.mkdir(parents=True, exist_ok=True)
    phantom = generate_phantom(
        seed, "ct", n_slices=n_slices, spacing_mm=spacing_mm, shape_yx=(matrix, matrix), **kwargs
    )
    volume = Volume(
        phantom.image, tuple(phantom.spacing_mm), tuple(phantom.origin), tuple(phantom.direction)
    )
    import SimpleITK as sitk

    from evaluator.atomic import atomic_path

    with atomic_path(scan) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True)
    write_label_map(phantom.labels, volume, folder / "truth.nii.gz")
    return scan


def dice_per_organ(pred: np.ndarray, truth: np.ndarray, values: list[int]) -> dict[int, float]:
    out = {}
    for value in values:
        a, b = pred == value, truth == value
        total = int(a.sum()) + int(b.sum())
        out[value] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    return out


def mean_dice(pred_path: Path, truth_path: Path) -> float:
    import SimpleITK as sitk

    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_path)))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
    values = [int(v) for v in np.union1d(np.unique(truth), np.unique(pred)) if v != 0]
    return float(np.mean(list(dice_per_organ(pred, truth, values).values())))


def run_once(args: argparse.Namespace) -> None:
    """Child process: read -> predict -> write, print stage timings as JSON.

    Mirrors ``edgeseg predict``: the scan is read while the runtime loads and compiles.
    """
    start = time.perf_counter()
    from edge_seg.io import read_volume, write_label_map

    if args.io_only:
        volume = read_volume(args.scan)
        labels = np.zeros(volume.shape, np.uint8)
        write_label_map(labels, volume, args.output)
        print(json.dumps({"total": time.perf_counter() - start}))
        return
    from edge_seg.launch import open_predictor_and_read
    from edge_seg.options import PredictOptions

    options = PredictOptions(
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        crop=args.crop,
        openvino_precision_hint=args.hint or None,
        streams=args.streams,
    )
    predictor, volume = open_predictor_and_read(args.model, options, args.scan)
    t_open = time.perf_counter() - start
    prediction = predictor.predict(volume)
    t = time.perf_counter()
    write_label_map(prediction.labels, volume, args.output)
    timings = dict(
        prediction.timings,
        read_and_compile=t_open,
        write=time.perf_counter() - t,
        total=time.perf_counter() - start,
    )
    ran = str(getattr(predictor.session, "inference_precision", "?"))
    print(json.dumps({**timings, "ran": ran.replace("<Type: ", "").strip("'>")}), flush=True)
    # Leave as the edgeseg executable does (edge_seg.cli.run): without the interpreter's
    # teardown, which only unloads libraries once the file is written.
    os._exit(0)


def measure_in_turn(
    commands: list[list[str]], runs: int
) -> list[tuple[list[float], list[float], list[dict]]]:
    """Run every command ``runs`` times, one run of each per round.

    Rounds rather than row after row: a shared VM has slow spells of a minute or more, and
    taking the rows in turn spreads them over all rows instead of penalising whichever row
    happened to run then. Returns (times, peak RSS, stage timings) per command.
    """
    results: list[tuple[list[float], list[float], list[dict]]] = [([], [], []) for _ in commands]
    for _ in range(runs):
        for argv, (times, peaks, stages) in zip(commands, results, strict=True):
            result = run_monitored(pinned(argv), time_limit_s=1800)
            if not result.ok:
                raise SystemExit(f"{' '.join(argv)} failed: {result.stderr_tail}")
            times.append(result.time_s)
            peaks.append(result.peak_rss_mb)
            try:
                stages.append(json.loads(result.stdout_tail.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                stages.append({})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeseg_bench_predict"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.md")
    parser.add_argument("--note", default="", help="model description for the table")
    parser.add_argument("--configs", default="", help="comma-separated row names (default all)")
    # child-process mode
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--io-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="openvino", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="int8", help=argparse.SUPPRESS)
    parser.add_argument("--hint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--crop", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=CORES, help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        run_once(args)
        return

    scan = write_phantom_ct(args.work / "case", PHANTOM_SEED)
    truth = args.work / "case" / "truth.nii.gz"
    # Compiled models are cached on disk; an empty cache at the start makes the first run of
    # each row a cold start (compile) and the others warm (load), as for a user.
    cache = args.work / "openvino_cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["EDGESEG_CACHE_DIR"] = str(cache)
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--once",
        "--scan",
        str(scan),
        "--model",
        str(args.model),
    ]
    wanted = {c.strip() for c in args.configs.split(",") if c.strip()}
    from edge_seg.backends.base import choose_model
    from edge_seg.bundle import load_bundle
    from edge_seg.errors import EdgesegError

    bundle = load_bundle(args.model)
    # (row name, command, label map it writes or None)
    jobs: list[tuple[str, list[str], Path | None]] = [
        (
            "I/O floor (read + write only)",
            [*me, "--io-only", "--output", str(args.work / "io.nii.gz")],
            None,
        )
    ]
    missing = []
    for name, backend, precision, hint, streams in CONFIGS:
        if wanted and name not in wanted:
            continue
        try:
            choose_model(bundle, backend, precision)
        except EdgesegError as exc:
            missing.append(f"{name}: {exc}")
            continue
        out = args.work / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.nii.gz"
        argv = [*me, "--backend", backend, "--precision", precision, "--output", str(out)]
        if hint:
            argv += ["--hint", hint]
        if streams:
            argv += ["--streams", str(streams)]
        jobs.append((name, argv, out))
    cli_out = args.work / "cli_seg.nii.gz"
    cli = [
        sys.executable,
        "-m",
        "edge_seg",
        "predict",
        str(scan),
        "-o",
        str(cli_out),
        "--model",
        str(args.model),
        "--threads",
        str(CORES),
        "-q",
    ]
    auto = choose_model(bundle, "openvino", "auto").precision
    jobs.append((f"`edgeseg predict` CLI, defaults (openvino {auto})", cli, cli_out))
    measured = measure_in_turn([argv for _, argv, _ in jobs], args.runs)
    rows = []
    for (name, _, out), (times, peaks, stages) in zip(jobs, measured, strict=True):
        rows.append((name, times, peaks, stages, None if out is None else mean_dice(out, truth)))
        print(f"{name}: median {statistics.median(times):.2f} s", flush=True)

    lines = [
        "# `edgeseg predict`: end to end on a 512x512x300 phantom CT",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Model: `{_rel(args.model)}`" + (f" ({args.note})" if args.note else ""),
        "",
        f"Machine: {cpu_description()}; "
        f"every run pinned to {CORES} cores (fresh process, read to written file, "
        f"{CORES} inference threads). Phantom: `generate_phantom({PHANTOM_SEED})`, "
        "512x512x300 voxels, 0.8x0.8x2.5 mm. Default options (`--crop auto`, LCC on). "
        "The rows are measured in turn, one run of each per round. "
        "OpenVINO's compiled-model cache starts empty: the first run of each row compiles "
        "the model, the others load it from the cache (the CLI row shares the first row's "
        "compiled model). OpenVINO runs 2 inference streams (patches in flight) of 1 thread "
        "each unless the row says otherwise. `network s` is "
        "the time spent waiting for patch results; `window+argmax s` includes it.",
        "",
        "| configuration | OpenVINO ran | median s | min s | max s | peak RSS MB "
        "| read+compile s | preprocess s | localise s | network s | window+argmax s "
        "| postprocess s | write s | mean Dice vs truth |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, times, peaks, stages, dice in rows:

        def stage(key: str, stages=stages) -> str:
            values = [s[key] for s in stages if key in s]
            return f"{statistics.median(values):.2f}" if values else "-"

        ran = stages[0].get("ran", "-") if stages and "onnxruntime" not in name else "-"
        lines.append(
            f"| {name} | {ran} | {statistics.median(times):.2f} | {min(times):.2f} "
            f"| {max(times):.2f} | {max(peaks):.0f} | {stage('read_and_compile')} "
            f"| {stage('preprocess')} | {stage('localise')} | {stage('network')} "
            f"| {stage('sliding_window')} | {stage('postprocess')} | {stage('write')} "
            f"| {'-' if dice is None else f'{dice:.3f}'} |"
        )
    if missing:
        lines += ["", "Not measured (the bundle has no such model):", ""]
        lines += [f"- {m}" for m in missing]
    lines += ["", "Targets (issue 5): int8 median <= 5 s, peak RSS <= 1500 MB.", ""]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


def command_line() -> str:
    """The command that produced a table, as typed from the repository root."""
    import shlex

    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return " ".join(["python", script_text, *(shlex.quote(a) for a in sys.argv[1:])])


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
