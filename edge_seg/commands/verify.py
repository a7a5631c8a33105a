"""``edgeseg verify BUNDLE IMAGES``: check a bundle's INT8 models on this CPU.

``edgeseg quantize`` validates INT8 on the CPU it runs on; this command re-measures the
shipped INT8 models against the bundle's fp32 model on another machine, with the runtime only
(no export extra), and exits 1 if one falls below the bar there. The bundle is only read.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        bundle: Path = typer.Argument(..., help="Model bundle folder."),
        images: Path = typer.Argument(
            ..., help="Folder of images not used for calibration (NIfTI, MHA/NRRD, DICOM)."
        ),
        bar: float = typer.Option(
            0.98, "--bar", min=0.0, max=1.0,
            help="Mean per-organ Dice (INT8 vs fp32) each INT8 model must reach here."
        ),
        threads: int | None = typer.Option(None, "--threads", min=1, help="Inference threads."),
    ) -> None:
        """Re-measure the bundle's INT8 models against its fp32 model on this CPU."""
        from edge_seg.bundle import load_bundle
        from edge_seg.host import cpu_description
        from export.calibration import list_images, read_images
        from export.fidelity import format_recheck, recheck_bundle

        loaded = load_bundle(bundle)
        channels = len(loaded.channels)
        volumes, problems = read_images(list_images(images, channels), images, channels)
        for problem in problems:
            typer.echo(f"skipped: {problem}", err=True)
        reports = recheck_bundle(loaded, volumes, threads, bar)
        typer.echo(f"{len(volumes)} images from {images}; this CPU: {cpu_description()}")
        typer.echo(format_recheck(reports, loaded.fidelity))
        if not all(report["passed"] for report in reports.values()):
            raise typer.Exit(code=1)
