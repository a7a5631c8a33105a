"""``edgeseg benchmark``: FLARE-style time and memory per case, each in a fresh process."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import typer

MEMORY_UNITS_MB = {"": 1.0, "k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024.0}


def parse_memory_mb(text: str) -> float:
    """``"4GB"``, ``"4g"``, ``"512MB"``, ``"4096"`` (MiB) -> MiB; powers of 1024 throughout."""
    from edge_seg.errors import EdgesegError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise EdgesegError(f"--memory-limit: cannot read {text!r} (use e.g. 4GB or 512MB)")
    value = float(match.group(1)) * MEMORY_UNITS_MB[match.group(2)]
    if value <= 0:
        raise EdgesegError(f"--memory-limit must be positive, got {text!r}")
    return value


def default_model_dir() -> Path:
    """The embedded reference model shipped inside the package."""
    import edge_seg

    return Path(edge_seg.__file__).parent / "models" / "flare_ct_plain"


def predict_command(
    model: Path, base_options: dict[str, str]
):  # -> CommandBuilder
    """Child command: ``python -m edge_seg predict IMAGE --output PRED --model M --quiet ...``.

    The interpreter running this benchmark runs the child too, so the child sees the same
    installation; start-up and model loading are inside the measured time, as in FLARE.
    """
    from edge_seg.benchmark import SWITCH_KEYS, BenchmarkCase, Config

    def build(case: BenchmarkCase, config: Config, prediction: Path) -> list[str]:
        options = {**base_options, **config.options}
        argv = [sys.executable, "-m", "edge_seg", "predict", str(case.image),
                "--output", str(prediction), "--model", str(model), "--quiet"]
        for key, value in options.items():
            if key in SWITCH_KEYS:
                argv.append(f"--{key}" if value == "on" else f"--no-{key}")
            else:
                argv += [f"--{key}", value]
        return argv

    return build


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        cases_dir: Path = typer.Argument(
            ..., metavar="CASES", help="Folder of scans (or a FLARE/nnU-Net dataset folder)."
        ),
        time_limit: float = typer.Option(
            60.0, "--time-limit", help="Seconds per case; a case past it is killed (timeout)."
        ),
        model: Path | None = typer.Option(
            None, "--model", help="Model bundle folder (default: the embedded reference model)."
        ),
        gt: Path | None = typer.Option(
            None, "--gt", help="Ground-truth label folder: adds DSC/NSD (FLARE tolerances)."
        ),
        memory_limit: str | None = typer.Option(
            None, "--memory-limit", help="Kill a case whose process tree exceeds this, e.g. 4GB."
        ),
        output: Path = typer.Option(
            Path("benchmark_results"), "--output", "-o", help="Folder for tables and plots."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite",
            help="Replace the results of an earlier run in OUTPUT (refused without it).",
        ),
        backend: str | None = typer.Option(None, "--backend", help="openvino | onnxruntime"),
        precision: str | None = typer.Option(
            None, "--precision", help="auto | int8 | fp32 | bf16"
        ),
        crop: str | None = typer.Option(None, "--crop", help="auto | none | middle:N"),
        step: float | None = typer.Option(None, "--step", help="Sliding-window step (0-1]."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads per case."),
        lcc: bool | None = typer.Option(
            None, "--lcc/--no-lcc", help="Largest component per organ (predict's default: on)."
        ),
        min_component_ml: float | None = typer.Option(
            None, "--min-component-ml",
            help="Remove organ components under this volume (predict's default: 0.5 ml).",
        ),
        compare: list[str] = typer.Option(
            [], "--compare",
            help='Extra configuration run on the same cases, interleaved, e.g. '
            '--compare "precision=fp32,backend=onnxruntime" (keys: backend, precision, crop, '
            "step, threads, lcc=on|off, min-component-ml). Repeatable; ratios are against "
            "the plain options.",
        ),
        baseline: Path | None = typer.Option(
            None, "--baseline",
            help="benchmark.json of an earlier run: exit 1 on regression (exit 2 when, without "
            "one, a case did not finish ok).",
        ),
        max_slowdown: float = typer.Option(
            1.25, "--max-slowdown", help="Largest allowed time ratio against the baseline."
        ),
        max_drop: float = typer.Option(
            0.005, "--max-drop", help="Largest allowed drop of mean DSC / NSD."
        ),
        time_gate: bool = typer.Option(
            True, "--time-gate/--no-time-gate", help="Gate on time ratios (accuracy always)."
        ),
        interval: float = typer.Option(0.1, "--interval", help="Memory sampling interval (s)."),
        reference: bool = typer.Option(
            True, "--reference/--no-reference",
            help="Time a fixed reference workload per round (machine-speed units for gates).",
        ),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
        keep_predictions: bool = typer.Option(
            False, "--keep-predictions", help="Keep the label maps in OUTPUT/predictions/."
        ),
    ) -> None:
        """Time each case in a fresh `edgeseg predict` process, as FLARE does: wall time from
        start to the written output, peak memory and memory-time AUC of the whole process tree
        (sampled every 0.1 s), CPU use; optional accuracy and regression gate.

        Exit status: 0 every case finished ok (and was scored, with --gt) and no regression;
        1 a regression against --baseline; 2 bad input (nothing run or written) or, once all
        results are written, a case that did not finish ok or could not be scored."""
        from edge_seg.benchmark_cli import run_benchmark_command

        run_benchmark_command(
            cases_dir=cases_dir, time_limit=time_limit, model=model or default_model_dir(),
            gt=gt, memory_limit_mb=parse_memory_mb(memory_limit) if memory_limit else None,
            output=output,
            predict_options={k: str(v) for k, v in {
                "backend": backend, "precision": precision, "crop": crop, "step": step,
                "threads": threads, "min-component-ml": min_component_ml,
                "lcc": None if lcc is None else ("on" if lcc else "off"),
            }.items() if v is not None},
            compare=compare, baseline=baseline,
            max_slowdown=max_slowdown if time_gate else None, max_drop=max_drop,
            interval=interval, reference=reference, plots=plots,
            keep_predictions=keep_predictions, overwrite=overwrite,
        )
