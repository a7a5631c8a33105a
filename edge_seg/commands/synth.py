"""``edgeseg synth OUT_DIR``: write a dataset of synthetic abdominal phantoms.

Only parses options and calls :mod:`edge_seg.synth.writer`. Invalid options give a one-line
``edgeseg: error:`` message and exit code 2, and leave no output folder.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="Folder to create."),
        layout: str = typer.Option(
            "flare",
            "--layout",
            help="flare (nnU-Net v2 raw) | chaos (DICOM + PNG) | ukb (Dixon NIfTI + presence CSV).",
        ),
        modality: str | None = typer.Option(
            None, "--modality", help="ct | mr (default: ct for flare/chaos, mr for ukb)."
        ),
        # Numbers are parsed here, not by Typer, so that a typo gets the one-line error too.
        cases: str = typer.Option(
            "5", "--cases", metavar="N", help="Number of cases (1 to 10000)."
        ),
        slices: str | None = typer.Option(
            None,
            "--slices",
            metavar="N",
            help="Slices per case (8 to 1000; default: drawn per case).",
        ),
        size: str | None = typer.Option(
            None,
            "--size",
            help="In-plane matrix N or ROWSxCOLUMNS (16 to 1024); the field of view is kept, "
            "so fewer pixels means larger pixels. Default: the protocol's (512 for CT).",
        ),
        resection_rate: str = typer.Option(
            "0",
            "--resection-rate",
            metavar="R",
            help="Share of cases without gallbladder or one kidney (0 to 1).",
        ),
        seed: str = typer.Option(
            "0", "--seed", metavar="S", help="Base seed; same seed, identical dataset."
        ),
        labels: bool = typer.Option(
            False, "--labels", help="ukb layout: also write voxel label maps."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace OUT_DIR if it exists and is not empty."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Synthetic abdominal CT/MR phantoms with FLARE organ labels."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from edge_seg.synth.writer import (
            SynthRequest,
            parse_number,
            parse_size,
            validate,
            write_dataset,
        )

        request = validate(
            SynthRequest(
                out_dir=out_dir,
                layout=layout.lower(),
                modality=modality.lower() if modality else None,
                cases=parse_number("--cases", cases, int),
                slices=parse_number("--slices", slices, int) if slices is not None else None,
                size_yx=parse_size(size) if size else None,
                resection_rate=parse_number("--resection-rate", resection_rate, float),
                seed=parse_number("--seed", seed, int),
                labels=labels,
                overwrite=overwrite,
            )
        )
        with Progress(
            TextColumn("synth"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            disable=quiet,
        ) as progress:
            task = progress.add_task("cases", total=request.cases)
            write_dataset(request, on_case=lambda _i, _p: progress.advance(task))
        if not quiet:
            typer.echo(
                f"wrote {request.cases} {request.modality.upper()} case(s) in the "
                f"{request.layout} layout to {out_dir}"
            )
