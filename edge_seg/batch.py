"""Segment a folder of scans: resumable, parallel, and a bad case never stops the rest.

Outputs are written atomically, so a case whose output exists is complete and is skipped on the
next run; an interrupted run leaves no half-written file. Failures are collected and reported at
the end (the command then exits non-zero).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import (
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_seg.errors import EdgesegError, NotEnoughMemoryError
from edge_seg.io import (
    Volume,
    _dicom_series_files,
    is_volume_file,
    read_volume,
    strip_volume_suffix,
    write_label_map,
)
from edge_seg.options import PredictOptions

if TYPE_CHECKING:
    from edge_seg.predict import Predictor

#: Channel suffix of nnU-Net raw image names; predictions are named without it.
_CHANNEL_SUFFIX = "_0000"


@dataclass
class CaseResult:
    """Outcome of one case."""

    name: str
    status: str  # "done" | "skipped" | "failed"
    message: str = ""
    seconds: float = 0.0


@dataclass
class BatchReport:
    results: list[CaseResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]


def case_name(scan: Path) -> str:
    """Output case name: file name without image suffix or nnU-Net's ``_0000`` channel tag."""
    name = strip_volume_suffix(scan.name)
    return name[: -len(_CHANNEL_SUFFIX)] if name.endswith(_CHANNEL_SUFFIX) else name


def find_scans(folder: Path) -> list[Path]:
    """Scans in a batch folder: image files, else sub-folders holding a DICOM series.

    Files named ``*_seg.*`` are label maps written by ``edgeseg predict`` and are not scans.
    """
    files = sorted(
        p
        for p in folder.iterdir()
        if is_volume_file(p) and not strip_volume_suffix(p.name).endswith("_seg")
    )
    if files:
        return files
    return sorted(p for p in folder.iterdir() if p.is_dir() and _dicom_series_files(p))


def is_batch_folder(folder: Path) -> bool:
    """A folder of scans (not itself a DICOM series)."""
    if not folder.is_dir():
        return False
    if any(is_volume_file(p) for p in folder.iterdir()):
        return True
    return not _dicom_series_files(folder) and bool(find_scans(folder))


def output_path(out_dir: Path, scan: Path) -> Path:
    return out_dir / f"{case_name(scan)}.nii.gz"


def _name_clashes(scans: list[Path]) -> dict[Path, str]:
    """Scans whose output name another scan shares (``a.nii`` and ``a.nii.gz``, ``b.nii.gz``
    and ``b_0000.nii.gz``), each with a one-line message.

    None of them is segmented: writing one would silently drop the other's result, and a
    resumed run would take the survivor for the other case's output.
    """
    by_name: dict[str, list[Path]] = {}
    for scan in scans:
        by_name.setdefault(case_name(scan), []).append(scan)
    clashes: dict[Path, str] = {}
    for name, group in by_name.items():
        if len(group) > 1:
            files = ", ".join(p.name for p in group)
            for scan in group:
                clashes[scan] = (
                    f"{scan}: {files} would all be written as {name}.nii.gz; "
                    "rename all but one and run again"
                )
    return clashes


def _remove_stale_temporaries(out_dir: Path, name: str) -> None:
    # Left by a run killed mid-write (atomic_path names them ".<case>.<random>.tmp.nii.gz").
    for stale in out_dir.glob(f".{name}.*.tmp.nii.gz"):
        stale.unlink(missing_ok=True)


_WORKER: Predictor | None = None


def _init_worker(bundle_dir: str | None, options: PredictOptions) -> None:
    from edge_seg.predict import Predictor

    global _WORKER
    _WORKER = Predictor(bundle_dir, options)


def _failure(scan: str, exc: BaseException) -> str:
    if isinstance(exc, EdgesegError):
        return str(exc)
    # An unexpected fault in one case must not stop the batch; it is reported with the scan.
    return f"{scan}: {type(exc).__name__}: {exc}"


def _write_outputs(
    labels: np.ndarray, volume: Volume, target: str, preview_dir: str | None, modality: str
) -> float:
    """Write a case's preview (if asked) and then its label map; return the seconds taken.

    The label map goes last: its existence marks the case as finished for a resumed run, so a
    case whose preview failed is done again rather than skipped.
    """
    start = time.perf_counter()
    if preview_dir:
        from edge_seg.preview import save_preview

        # The target is already named by case (channel suffix gone): strip only the suffix.
        name = strip_volume_suffix(Path(target).name)
        save_preview(volume, labels, Path(preview_dir) / f"{name}.png", modality)
    write_label_map(labels, volume, target)
    return time.perf_counter() - start


def _run_case(scan: str, target: str, preview_dir: str | None) -> CaseResult:
    assert _WORKER is not None
    start = time.perf_counter()
    name = case_name(Path(scan))
    try:
        volume = read_volume(scan)
        prediction = _WORKER.predict(volume)
        _write_outputs(prediction.labels, volume, target, preview_dir, _WORKER.bundle.modality)
    except Exception as exc:
        return CaseResult(name, "failed", _failure(scan, exc), time.perf_counter() - start)
    return CaseResult(name, "done", "", time.perf_counter() - start)


@dataclass
class _Writing:
    """A case whose label map is being written in the background."""

    name: str
    scan: str
    seconds: float  # read + segment
    job: Future[float]

    def finish(self) -> CaseResult:
        try:
            seconds = self.seconds + self.job.result()
        except Exception as exc:
            return CaseResult(self.name, "failed", _failure(self.scan, exc), self.seconds)
        return CaseResult(self.name, "done", "", seconds)


def _wait_for(writing: _Writing | None) -> None:
    """Let a background write finish (its outcome is reported later, in order)."""
    if writing is not None:
        wait([writing.job])


def _run_pipelined(
    todo: list[tuple[Path, Path]],
    reading: Future[Volume],
    preview_dir: str | None,
) -> Iterator[CaseResult]:
    """Segment ``todo`` in this process, reading the next scan and writing the last label map
    while the current one is segmented (``reading``: the first scan's read, already started).

    Reading (decompression) and writing (compression) run on one core each and release the
    GIL, while the network's threads wait on the single-threaded stages between patches, so
    overlapping them shortens a batch by most of its I/O time. At most one scan is read ahead
    and one label map is in writing. A memory check that fails beside that extra work is
    tried again once the write is done, so that pipelining never fails a case that would run
    on its own. Results come out in input order; a case that fails at any stage is reported
    and the batch goes on.
    """
    assert _WORKER is not None
    predictor, modality = _WORKER, _WORKER.bundle.modality
    with (
        ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="edgeseg-write") as writer,
    ):
        writing: _Writing | None = None
        for index, (scan, target) in enumerate(todo):
            start = time.perf_counter()
            ahead = reading
            if index + 1 < len(todo):
                reading = reader.submit(read_volume, str(todo[index + 1][0]))
            message = None
            volume = prediction = None
            try:
                try:
                    volume = ahead.result()
                except NotEnoughMemoryError:
                    _wait_for(writing)  # it was read beside the last case's work: read alone
                    volume = read_volume(scan)
                try:
                    prediction = predictor.predict(volume)
                except NotEnoughMemoryError:
                    if writing is None:
                        raise
                    _wait_for(writing)
                    prediction = predictor.predict(volume)
            except Exception as exc:
                message = _failure(str(scan), exc)
            del ahead  # the Future would keep this volume alive for the whole batch
            if writing is not None:
                yield writing.finish()
                writing = None
            name = case_name(scan)
            if message is not None:
                yield CaseResult(name, "failed", message, time.perf_counter() - start)
                continue
            assert prediction is not None and volume is not None
            job = writer.submit(
                _write_outputs, prediction.labels, volume, str(target), preview_dir, modality
            )
            writing = _Writing(name, str(scan), time.perf_counter() - start, job)
            del volume, prediction
        if writing is not None:
            yield writing.finish()


def run_batch(
    scans: list[Path],
    out_dir: Path,
    bundle_dir: str | Path | None,
    options: PredictOptions,
    workers: int = 1,
    preview_dir: Path | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> BatchReport:
    """Segment ``scans`` into ``out_dir`` (``<case>.nii.gz``), skipping finished cases."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    todo: list[tuple[Path, Path]] = []
    clashes = _name_clashes(scans)
    for scan in scans:
        target = output_path(out_dir, scan)
        if scan in clashes:
            result = CaseResult(case_name(scan), "failed", clashes[scan])
            report.results.append(result)
            if on_result:
                on_result(result)
            continue
        _remove_stale_temporaries(out_dir, case_name(scan))
        if target.exists():
            result = CaseResult(case_name(scan), "skipped", "output exists")
            report.results.append(result)
            if on_result:
                on_result(result)
        else:
            todo.append((scan, target))
    if not todo:
        return report
    bundle = str(bundle_dir) if bundle_dir is not None else None
    preview = str(preview_dir) if preview_dir else None
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        with ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as first:
            # The first scan is read while the model compiles.
            first_read = first.submit(read_volume, str(todo[0][0]))
            _init_worker(bundle, options)
            pipeline = _run_pipelined(todo, first_read, preview)
            del first_read
            for result in pipeline:
                report.results.append(result)
                if on_result:
                    on_result(result)
        return report
    # Built here even for a pool: a bad bundle or option fails once, before any case runs.
    _init_worker(bundle, options)
    if options.threads is None:
        options = replace(options, threads=max(1, (os.cpu_count() or 1) // workers))
    global _WORKER
    _WORKER = None
    # "spawn": forking a process that holds a compiled OpenVINO model can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(bundle, options)
    ) as pool:
        futures = [pool.submit(_run_case, str(s), str(t), preview) for s, t in todo]
        for future in as_completed(futures):
            result = future.result()
            report.results.append(result)
            if on_result:
                on_result(result)
    return report
