"""Segment a folder of scans: resumable, parallel, and a bad case never stops the rest.

Outputs are written atomically, so a case whose output exists is complete and is skipped on the
next run; an interrupted run leaves no half-written file. Failures are collected and reported at
the end (the command then exits non-zero). SIGINT and SIGTERM stop the batch promptly, worker
processes included, with :class:`BatchInterrupted`.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import (
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edge_seg.channels import read_channels, stray_channel_files
from edge_seg.dicom import _dicom_series_files, looks_like_dicom
from edge_seg.errors import EdgesegError, NotEnoughMemoryError
from edge_seg.io import (
    Volume,
    check_itk_name,
    is_volume_file,
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
    notes: list[str] = field(default_factory=list)  # how the scan was read (Volume.notes)


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


class BatchInterrupted(EdgesegError):
    """SIGINT or SIGTERM stopped the batch; ``exit_code`` is the shell's 128 + signal number.

    Finished cases are complete on disk (written atomically), so running the batch again
    resumes where it stopped.
    """

    def __init__(self, signal_number: int, finished: int, failed: int, total: int) -> None:
        self.exit_code = 128 + signal_number
        failed_text = f" ({failed} failed)" if failed else ""
        super().__init__(
            f"interrupted; {finished} of {total} cases finished{failed_text}, the rest stopped or "
            "not started; run again to resume"
        )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt, so that one path
    (which no ``except Exception`` swallows) stops the batch for both."""


@dataclass
class FolderScans:
    """What a batch folder holds.

    Attributes
    ----------
    scans : list of Path
        Image files and sub-folders holding DICOM files, in name order.
    ignored : list of Path
        Sub-folders without any DICOM file (nor a series ITK can read), not segmented.
    """

    scans: list[Path]
    ignored: list[Path]


def _holds_dicom(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files: ``*.dcm`` or preamble first (cheap), else a series
    GDCM finds (files without either, as some scanners write them)."""
    try:
        if any(looks_like_dicom(p) for p in folder.iterdir()):
            return True
    except OSError:
        return False
    return bool(_dicom_series_files(folder))


def survey_folder(folder: Path) -> FolderScans:
    """Scans in a batch folder: image files and sub-folders holding a DICOM series, both.

    Files named ``*_seg.*`` are label maps written by ``edgeseg predict`` and are not scans.
    A sub-folder whose DICOM files cannot be read is still a case, so that it is reported as
    failed rather than silently left out; hidden sub-folders (``.git``) are passed over.
    """
    files, series, ignored = [], [], []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            if entry.name.startswith("."):
                continue
            (series if _holds_dicom(entry) else ignored).append(entry)
        elif is_volume_file(entry) and not strip_volume_suffix(entry.name).endswith("_seg"):
            files.append(entry)
    return FolderScans(sorted(files + series), ignored)


def folder_kind(folder: Path) -> Literal["batch", "series", "none"]:
    """What an input folder is: ``"batch"`` (a folder of scans), ``"series"`` (itself one
    DICOM series, or DICOM files the reader will report as unreadable) or ``"none"``.

    One pass decides all three, so that the GDCM scan of a series folder (every header read)
    runs once here and once in the reader, not again for each question.
    """
    if any(is_volume_file(p) for p in folder.iterdir()):
        return "batch"
    if _dicom_series_files(folder):
        return "series"
    if any(p.is_dir() and not p.name.startswith(".") and _holds_dicom(p)
           for p in folder.iterdir()):
        return "batch"
    if any(looks_like_dicom(p) for p in folder.iterdir()):
        return "series"
    return "none"


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


def _remove_temporaries(target: Path) -> None:
    """Remove the temporary files an atomic write of ``target`` left behind.

    A run killed mid-write leaves them: atomic_path names them ``.<stem>.<random>.tmp<suffixes>``
    (``.case.x1y2.tmp.nii.gz``), with the stem cut at the first dot.
    """
    prefix = glob.escape(f".{target.name.split('.')[0]}.")
    suffix = glob.escape(".tmp" + "".join(target.suffixes))
    for stale in target.parent.glob(f"{prefix}*{suffix}"):
        stale.unlink(missing_ok=True)


def _remove_case_temporaries(target: Path, preview_dir: Path | None) -> None:
    """Remove a case's leftover temporaries: its label map's and its preview's."""
    _remove_temporaries(target)
    if preview_dir is not None and preview_dir.is_dir():
        _remove_temporaries(preview_dir / f"{strip_volume_suffix(target.name)}.png")


_WORKER: Predictor | None = None


def _channel_count(bundle_dir: str | Path | None) -> int:
    """The model's input channels (1 where its manifest cannot be read: the Predictor then
    reports the bundle's problem, against every case)."""
    from edge_seg.bundle import model_channels

    try:
        return model_channels(bundle_dir)
    except EdgesegError:
        return 1


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
        volume = read_channels(scan, len(_WORKER.bundle.channels))
        prediction = _WORKER.predict(volume)
        _write_outputs(prediction.labels, volume, target, preview_dir, _WORKER.bundle.modality)
    except Exception as exc:
        return CaseResult(name, "failed", _failure(scan, exc), time.perf_counter() - start)
    return CaseResult(name, "done", "", time.perf_counter() - start, volume.notes)


@dataclass
class _Writing:
    """A case whose label map is being written in the background."""

    name: str
    scan: str
    seconds: float  # read + segment
    job: Future[float]
    notes: list[str]

    def finish(self) -> CaseResult:
        try:
            seconds = self.seconds + self.job.result()
        except Exception as exc:
            return CaseResult(self.name, "failed", _failure(self.scan, exc), self.seconds)
        return CaseResult(self.name, "done", "", seconds, self.notes)


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
    channels = len(predictor.bundle.channels)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="edgeseg-write") as writer,
    ):
        writing: _Writing | None = None
        for index, (scan, target) in enumerate(todo):
            start = time.perf_counter()
            ahead = reading
            if index + 1 < len(todo):
                reading = reader.submit(read_channels, str(todo[index + 1][0]), channels)
            message = None
            volume = prediction = None
            try:
                try:
                    volume = ahead.result()
                except NotEnoughMemoryError:
                    _wait_for(writing)  # it was read beside the last case's work: read alone
                    volume = read_channels(scan, channels)
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
            writing = _Writing(name, str(scan), time.perf_counter() - start, job, volume.notes)
            del volume, prediction
        if writing is not None:
            yield writing.finish()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`_Terminated` while the batch runs, then restore the handler.

    Python's default for SIGTERM is to die on the spot: worker processes would be orphaned
    and go on writing cases. Only the main thread can install handlers; elsewhere (a batch
    run from a thread) SIGTERM keeps its handler.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signal_number: int, frame: object) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def _signals_ignored(*signals: signal.Signals) -> Iterator[None]:
    """Ignore ``signals`` for a moment (main thread only), then restore their handlers.

    SIGINT is ignored while worker processes are started, which inherit the ignored SIGINT
    (Python keeps an ignored SIGINT ignored at start-up): Ctrl-C reaches the whole process
    group, and the parent alone must decide, stop the workers and report, instead of each
    worker dying with a traceback of its own. SIGTERM stays as it is there, so that the
    workers can be terminated. Both are ignored while an interrupted batch cleans up, so that
    a second Ctrl-C cannot cut the cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the cases not started and terminate the worker processes, waiting for them.

    ``ProcessPoolExecutor.shutdown`` would let the running cases finish (and, on SIGINT, the
    queued ones too); before Python 3.14's ``terminate_workers`` the processes are reachable
    only through the executor's ``_processes``.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():  # stuck in native code that ignores SIGTERM
            process.kill()
            process.join()
    if manager is not None:
        # It sees the workers gone, closes the queues and ends. Its queues hold semaphores:
        # still alive when this process exits, they make multiprocessing's resource tracker
        # print a multi-line "leaked semaphore" warning after the one-line error.
        manager.join(timeout=30)


def _run_in_process(
    todo: list[tuple[Path, Path]],
    bundle: str | None,
    options: PredictOptions,
    preview: str | None,
    record: Callable[[CaseResult], None],
    channels: int,
) -> None:
    """Segment ``todo`` in this process, pipelined (see :func:`_run_pipelined`); ``channels``:
    the model's input channels, for the first read, made while the model compiles."""
    with ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as first:
        # The first scan is read while the model compiles.
        first_read = first.submit(read_channels, str(todo[0][0]), channels)
        _init_worker(bundle, options)
        pipeline = _run_pipelined(todo, first_read, preview)
        del first_read
        try:
            for result in pipeline:
                record(result)
        finally:
            # On an interrupt between two results the generator is suspended: closing it
            # now waits for its reading and writing threads, before temporaries are removed.
            pipeline.close()


def _run_in_pool(
    todo: list[tuple[Path, Path]],
    bundle: str | None,
    options: PredictOptions,
    preview: str | None,
    record: Callable[[CaseResult], None],
    workers: int,
) -> None:
    """Segment ``todo`` in ``workers`` processes; an interrupt terminates them at once."""
    # Built here even for a pool: a bad bundle or option fails once, before any case runs.
    _init_worker(bundle, options)
    if options.threads is None:
        options = replace(options, threads=max(1, (os.cpu_count() or 1) // workers))
    global _WORKER
    _WORKER = None
    # "spawn": forking a process that holds a compiled OpenVINO model can deadlock.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(bundle, options)
    )
    try:
        with _signals_ignored(signal.SIGINT):  # the workers start on the first submissions
            futures = [pool.submit(_run_case, str(s), str(t), preview) for s, t in todo]
        for future in as_completed(futures):
            record(future.result())
    except BaseException:
        with _signals_ignored(signal.SIGINT, signal.SIGTERM):
            _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def run_batch(
    scans: list[Path],
    out_dir: Path,
    bundle_dir: str | Path | None,
    options: PredictOptions,
    workers: int = 1,
    preview_dir: Path | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> BatchReport:
    """Segment ``scans`` into ``out_dir`` (``<case>.nii.gz``), skipping finished cases.

    For a model of several input channels each scan is a case's channel-0 file, the others
    read beside it (:mod:`edge_seg.channels`); files of channels the model does not take
    fail as cases of their own.

    Raises
    ------
    BatchInterrupted
        On SIGINT or SIGTERM: pending cases are cancelled, worker processes terminated and
        temporary files removed; the finished outputs stay, and a rerun resumes.
    """
    check_itk_name(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()

    def record(result: CaseResult) -> None:
        report.results.append(result)
        if on_result:
            on_result(result)

    todo: list[tuple[Path, Path]] = []
    clashes = _name_clashes(scans)
    channels = _channel_count(bundle_dir) if scans else 1
    stray = stray_channel_files(scans, channels)
    for scan in scans:
        target = output_path(out_dir, scan)
        if scan in clashes or scan in stray:
            record(CaseResult(case_name(scan), "failed", clashes.get(scan) or stray[scan]))
            continue
        _remove_case_temporaries(target, preview_dir)
        if target.exists():
            record(CaseResult(case_name(scan), "skipped", "output exists"))
        else:
            todo.append((scan, target))
    if not todo:
        return report
    bundle = str(bundle_dir) if bundle_dir is not None else None
    preview = str(preview_dir) if preview_dir else None
    workers = max(1, min(workers, len(todo)))
    try:
        with _sigterm_as_interrupt():
            if workers == 1:
                _run_in_process(todo, bundle, options, preview, record, channels)
            else:
                _run_in_pool(todo, bundle, options, preview, record, workers)
    except KeyboardInterrupt as exc:
        with _signals_ignored(signal.SIGINT, signal.SIGTERM):
            for _, target in todo:
                _remove_case_temporaries(target, preview_dir)
        number = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        # Counted on disk: the pipelined path reports a written case only after the next one.
        finished = report.count("skipped") + sum(target.exists() for _, target in todo)
        raise BatchInterrupted(number, finished, report.count("failed"), len(scans)) from None
    return report
