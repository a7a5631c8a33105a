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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_seg.errors import EdgesegError
from edge_seg.io import _dicom_series_files, is_volume_file, strip_volume_suffix
from edge_seg.predict import PredictOptions, Predictor

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


def _remove_stale_temporaries(out_dir: Path, name: str) -> None:
    # Left by a run killed mid-write (atomic_path names them ".<case>.<random>.tmp.nii.gz").
    for stale in out_dir.glob(f".{name}.*.tmp.nii.gz"):
        stale.unlink(missing_ok=True)


_WORKER: Predictor | None = None


def _init_worker(bundle_dir: str | None, options: PredictOptions) -> None:
    global _WORKER
    _WORKER = Predictor(bundle_dir, options)


def _run_case(scan: str, target: str, preview_dir: str | None) -> CaseResult:
    from edge_seg.io import read_volume, write_label_map

    assert _WORKER is not None
    start = time.perf_counter()
    name = case_name(Path(scan))
    try:
        volume = read_volume(scan)
        prediction = _WORKER.predict(volume)
        write_label_map(prediction.labels, volume, target)
        if preview_dir:
            from edge_seg.preview import save_preview

            save_preview(
                volume,
                prediction.labels,
                Path(preview_dir) / f"{name}.png",
                _WORKER.bundle.modality,
            )
    except EdgesegError as exc:
        return CaseResult(name, "failed", str(exc), time.perf_counter() - start)
    except Exception as exc:  # an unexpected fault in one case must not stop the batch
        return CaseResult(
            name, "failed", f"{scan}: {type(exc).__name__}: {exc}", time.perf_counter() - start
        )
    return CaseResult(name, "done", "", time.perf_counter() - start)


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
    for scan in scans:
        target = output_path(out_dir, scan)
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
    # Built here even for a pool: a bad bundle or option fails once, before any case runs.
    _init_worker(bundle, options)
    if workers == 1:
        results: Iterator[CaseResult] = (_run_case(str(s), str(t), preview) for s, t in todo)
        for result in results:
            report.results.append(result)
            if on_result:
                on_result(result)
        return report
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
