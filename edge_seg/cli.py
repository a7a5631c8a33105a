"""The ``edgeseg`` command line.

Each subcommand lives in ``edge_seg/commands/<name>.py`` and exposes ``register(app)``. Heavy
imports (OpenVINO, torch, SciPy) happen inside the command functions so that ``edgeseg --help``
and process start-up stay fast - FLARE-style timing counts start-up.
"""

from __future__ import annotations

import importlib
import sys

import typer

from edge_seg.errors import EdgesegError

app = typer.Typer(
    name="edgeseg",
    help="Abdominal organ segmentation on CPUs: synthesise phantoms, export and quantise "
    "nnU-Net models, predict, benchmark and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("synth", "predict", "evaluate", "benchmark", "export", "quantize")


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"edge_seg.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edge_seg.commands.{name}":
                continue  # subcommand not built yet
            raise
        module.register(app)


_register_commands()


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EdgesegError]
    try:
        from evaluator.errors import EvaluationError

        errors.append(EvaluationError)
    except ImportError:  # pragma: no cover - evaluator ships with edgeseg
        pass
    return tuple(errors)


def fail(message: str, exit_code: int = 2) -> None:
    """Print a one-line error on stderr and exit."""
    typer.echo(f"edgeseg: error: {message}", err=True)
    raise SystemExit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    try:
        app(args=argv, prog_name="edgeseg", standalone_mode=True)
    except _user_errors() as exc:
        fail(str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        fail("interrupted", 130)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
