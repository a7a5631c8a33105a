"""``edgeseg predict``: segment a scan (or a folder of scans) with a model bundle."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from edge_seg.errors import EdgesegError
from edge_seg.options import DEFAULT_MIN_COMPONENT_ML


def _default_output(scan: Path) -> Path:
    from edge_seg.io import strip_volume_suffix

    base = scan.name.rstrip("/") if scan.is_dir() else strip_volume_suffix(scan.name)
    return scan.parent / f"{base}_seg.nii.gz"


def _summary(name: str, volumes: dict[str, float], seconds: float, what: str, out: Path) -> str:
    organs = ", ".join(f"{organ} {ml:.0f} ml" for organ, ml in volumes.items() if ml > 0)
    return f"{name}: {organs or 'no organs found'} | {seconds:.1f} s ({what}) -> {out}"


def predict(
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help="Scan (.nii/.nii.gz/.mha/.nrrd), DICOM series folder, or a folder of scans.",
    ),
    out_dir: Path | None = typer.Argument(
        None, metavar="[OUT_DIR]", help="Output folder when INPUT is a folder of scans."
    ),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Label map to write (default: <name>_seg.nii.gz beside the input).",
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Model bundle folder (default: the embedded FLARE CT model)."
    ),
    backend: str = typer.Option("openvino", "--backend", help="openvino or onnxruntime."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, int8, fp32 or bf16 (auto: fastest validated)."
    ),
    step: float = typer.Option(
        0.5, "--step", help="Sliding-window step as a fraction of the patch."
    ),
    crop: str = typer.Option(
        "auto", "--crop", help="auto, none or middle:N (test-time slice cropping)."
    ),
    lcc: bool = typer.Option(
        True, "--lcc/--no-lcc", help="Keep the largest connected component per organ."
    ),
    min_component_ml: float = typer.Option(
        DEFAULT_MIN_COMPONENT_ML,
        "--min-component-ml",
        help="Remove organ components smaller than this many ml (0: keep every speck).",
    ),
    absent: list[str] = typer.Option(
        [], "--absent", help="Organ known to be absent (name or label number); repeatable."
    ),
    present: list[str] = typer.Option(
        [],
        "--present",
        help="Organ known to be present (for models with a presence input); repeatable.",
    ),
    presence: str = typer.Option(
        "prior", "--presence", help="prior, or auto to use the model's presence head."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Inference threads (default: all cores)."
    ),
    streams: int | None = typer.Option(
        None,
        "--streams",
        min=1,
        help="OpenVINO patches in flight at once, sharing the threads (default: 2 from 2 "
        "threads up).",
    ),
    preview: Path | None = typer.Option(
        None, "--preview", help="Save an axial + coronal overlay PNG (a folder in batch mode)."
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Cases segmented in parallel (batch mode)."
    ),
    shard: str | None = typer.Option(
        None, "--shard", metavar="K/N",
        help="Segment only part K of N of the folder's cases (batch mode; one part per "
        "machine or cluster job, all writing to the same OUT_DIR).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Segment abdominal organs in a CT/MR scan with a model bundle, on the CPU."""
    from edge_seg.batch import case_name, folder_kind, survey_folder
    from edge_seg.bundle import model_channels
    from edge_seg.options import PredictOptions
    from edge_seg.shards import parse_shard, select

    options = PredictOptions(
        backend=backend,
        precision=precision,
        step=step,
        crop=crop,
        lcc=lcc,
        min_component_ml=min_component_ml,
        absent_organs=tuple(absent),
        present_organs=tuple(present),
        presence=presence,
        threads=threads,
        streams=streams,
    )
    part = parse_shard(shard) if shard is not None else None
    if not input_path.exists():
        raise EdgesegError(f"{input_path}: no such file or folder")
    kind = folder_kind(input_path) if input_path.is_dir() else None
    if kind == "none":
        raise EdgesegError(
            f"{input_path}: folder holds no scans (no NIfTI, MHA/MHD or NRRD files, no DICOM "
            "series, no sub-folders with one)"
        )
    if part is not None and kind != "batch":
        raise EdgesegError(f"{input_path}: --shard splits a folder of scans; this is one scan")
    if kind == "batch":
        target = out_dir or output
        if target is None:
            raise EdgesegError(f"{input_path}: a folder of scans needs an output folder (OUT_DIR)")
        if target.exists() and not target.is_dir():
            raise EdgesegError(f"{target}: output for a folder of scans must be a folder")
        found = survey_folder(input_path)
        if found.ignored and not quiet:
            names = ", ".join(p.name for p in found.ignored)
            typer.echo(
                f"note: {input_path}: skipped sub-folders without DICOM files: {names}", err=True
            )
        from edge_seg.channels import first_channel_scans

        channels = model_channels(model)
        every = scans = first_channel_scans(found.scans, channels)
        if part is not None:
            scans = select(every, part, case_name)
            if not quiet:
                typer.echo(f"shard {part}: {len(scans)} of the {len(every)} scans in "
                           f"{input_path}", err=True)
            if not scans:
                return  # more shards than scans: this part has nothing to do
        _run_batch(scans, target, model, options, workers, preview, quiet)
        return
    if out_dir is not None and output is not None:
        raise EdgesegError("give the output either as -o or as a second argument, not both")
    _run_single(
        input_path, output or out_dir or _default_output(input_path), model, options, preview, quiet
    )


def _run_single(
    scan: Path, out: Path, model: Path | None, options, preview: Path | None, quiet: bool
) -> None:
    from edge_seg.bundle import model_channels
    from edge_seg.io import check_output_path, check_writable_location, write_label_map
    from edge_seg.launch import open_predictor_and_read

    started = time.perf_counter()
    if out.resolve() == scan.resolve():
        raise EdgesegError(f"{out}: output would overwrite the input scan")
    check_output_path(out)
    if preview is not None:
        if preview.is_dir():
            raise EdgesegError(
                f"{preview}: preview path is a folder; give a file name such as case.png"
            )
        # Checked now: the label map is written before the preview, and a preview that
        # cannot be written must not leave a label map behind an error exit.
        check_writable_location(preview)
    predictor, volume = open_predictor_and_read(model, options, scan, model_channels(model))
    prediction = predictor.predict(volume)
    write_label_map(prediction.labels, volume, out)
    if preview is not None:
        from edge_seg.preview import save_preview

        save_preview(volume, prediction.labels, preview, predictor.bundle.modality)
    if not quiet:
        for note in [*volume.notes, *prediction.notes]:  # how it was read, then segmented
            typer.echo(f"note: {note}", err=True)
        what = f"{prediction.backend} {prediction.precision}"
        seconds = time.perf_counter() - started
        typer.echo(
            _summary(scan.name, prediction.volumes_ml(volume.spacing_mm), seconds, what, out)
        )


def _run_batch(
    scans,
    out_dir: Path,
    model: Path | None,
    options,
    workers: int,
    preview: Path | None,
    quiet: bool,
) -> None:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from edge_seg.batch import run_batch

    if not scans:
        raise EdgesegError("no scans found in the input folder")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("segmenting", total=len(scans))

        def advance(result) -> None:
            for note in [] if quiet else result.notes:
                progress.console.print(
                    f"note: {escape(note)}", highlight=False, markup=True, soft_wrap=True
                )
            if result.status == "failed":
                progress.console.print(
                    f"[red]failed[/red] {escape(result.message)}",
                    highlight=False,
                    markup=True,
                    soft_wrap=True,
                )
            progress.advance(task)

        report = run_batch(scans, out_dir, model, options, workers, preview, advance)
    if not quiet:
        typer.echo(
            f"{report.count('done')} segmented, {report.count('skipped')} already done, "
            f"{report.count('failed')} failed -> {out_dir}"
        )
    if report.failed:
        names = ", ".join(dict.fromkeys(r.name for r in report.failed))  # clashes share one
        raise EdgesegError(f"{len(report.failed)} of {len(scans)} cases failed: {names}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
