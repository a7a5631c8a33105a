"""The ``edgeseg`` command line.

Each subcommand lives in ``edge_seg/commands/<name>.py`` and exposes ``register(app)``. Heavy
imports (OpenVINO, torch, SciPy) happen inside the command functions so that ``edgeseg --help``
and process start-up stay fast - FLARE-style timing counts start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
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

COMMAND_MODULES = ("synth", "predict", "evaluate", "benchmark", "export", "quantize", "verify")


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


def _os_error_line(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def fail(message: str, exit_code: int = 2) -> None:
    """Print a one-line error on stderr and exit.

    A file name that is not valid UTF-8 reaches here with surrogate escapes, which a strict
    stream cannot print; its bytes are shown escaped instead (``case_\xe4``).
    """
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    typer.echo(f"edgeseg: error: {message}", err=True)
    raise SystemExit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors into one-line messages."""
    try:
        app(args=argv, prog_name="edgeseg", standalone_mode=True)
    except _user_errors() as exc:
        fail(str(exc), getattr(exc, "exit_code", 2))
    except OSError as exc:
        # The file system refused (a path under /proc, a full disk, a read-only mount): the
        # user's environment, not a fault of edgeseg, so one line naming the path.
        fail(_os_error_line(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except SystemExit as exc:
        if _interrupted_by_typer(exc):
            fail("interrupted", 130)
        raise


def _interrupted_by_typer(exc: SystemExit) -> bool:
    """Whether typer turned a Ctrl-C into this exit: it raises ``Exit(130)`` from the
    KeyboardInterrupt and exits with that code, without a word, before :func:`main` sees it."""
    context = exc.__context__
    return exc.code == 130 and context is not None and isinstance(
        context.__cause__, KeyboardInterrupt)


def run() -> None:
    """The ``edgeseg`` executable: :func:`main`, then leave without tearing the interpreter down.

    Unloading OpenVINO's plugins and freeing its thread pools at interpreter exit took 0.3-0.4 s
    after every one-scan ``edgeseg predict`` on 2 cores, a sizeable share of a 5-6 s run, with
    every file already written and closed. So once a command has finished, the streams are
    flushed and the process ends with ``os._exit``. Where a child process is still alive
    (nothing of edgeseg's leaves one) the normal exit runs, so that it is joined as usual.
    """
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    if multiprocessing.active_children():
        raise SystemExit(code)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed stream or broken pipe: nothing more can be said.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
