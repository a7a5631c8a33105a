"""FLARE-style efficiency benchmark: every case in a fresh process, timed and sampled.

Each (case, configuration) pair runs one child command - normally ``edgeseg predict`` - under
:func:`edge_seg.profiling.run_monitored`, so the wall time includes interpreter start-up and
model loading, as FLARE's per-case container time does. Configurations (backend, precision,
crop, step, ...) are interleaved case by case, so slow drifts of a shared machine hit all of
them alike and their ratios stay meaningful.

Before every round of cases a fixed *reference workload* (a single-threaded NumPy/Python job in
a fresh interpreter) is timed the same way. Dividing case times by its median gives times in
"reference units", which compare across runs on machines of different or drifting speed far
better than seconds do; the regression gate uses those and the in-run ratios between
configurations, never absolute seconds.

Timed-out, memory-killed and crashed cases are recorded with their status (and the tail of
stderr) and the benchmark goes on; with ground truth they score DSC = NSD = 0, as in FLARE. A
case that finished but whose ground truth cannot be scored (unreadable, or not on the scan's
grid) is different: it is recorded as not scored, with the reason, and left out of the means.

This module holds the data model, the runner and the summary statistics; the regression gate
is in :mod:`edge_seg.benchmark_gate`, the CSV/JSON/table/plot writers in
:mod:`edge_seg.benchmark_report`.
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.channels import first_channel_scans
from edge_seg.errors import EdgesegError, require_folder
from edge_seg.profiling import (
    DEFAULT_INTERVAL_S,
    STATUS_OK,
    RunResult,
    run_monitored,
)

#: Image files a case folder may hold (DICOM series are sub-folders).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

#: Predict options a configuration may set, with the values each accepts (None = free text).
CONFIG_KEYS: dict[str, tuple[str, ...] | None] = {
    "backend": ("openvino", "onnxruntime"),
    "precision": ("auto", "int8", "fp32", "bf16"),
    "crop": None,  # auto | none | middle:N - checked by predict itself
    "step": None,  # float in (0, 1]
    "threads": None,  # positive int
    "lcc": ("on", "off"),  # predict --lcc / --no-lcc
    "min-component-ml": None,  # volume >= 0 in ml
}

#: Predict's on/off flags among the configuration keys: ``lcc=off`` becomes ``--no-lcc``.
SWITCH_KEYS = ("lcc",)

#: Configuration keys whose values are numbers, with the type ``PredictOptions`` takes.
NUMBER_KEYS: dict[str, type] = {"step": float, "threads": int, "min-component-ml": float}

#: Name of the configuration made of the plain command-line options.
BASE_CONFIG = "base"

# A fixed CPU workload (single-threaded NumPy and pure Python) in a fresh interpreter. Its time
# tracks how fast this machine runs right now; case times are also reported in its units.
REFERENCE_WORKLOAD = textwrap.dedent(
    """
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((192, 192, 96)).astype(np.float32)
    for _ in range(6):
        a = np.sort(np.tanh(a * 1.01), axis=0)
    total = 0
    for i in range(1_500_000):
        total += i % 7
    """
)


@dataclass(frozen=True)
class BenchmarkCase:
    """One input volume of the benchmark.

    ``case_id`` is the image name without extension and nnU-Net's ``_0000`` channel suffix;
    ``label`` is the matching ground truth, if any; ``shape`` (z, y, x) from the header.
    """

    case_id: str
    image: Path
    label: Path | None = None
    shape: tuple[int, ...] | None = None

    @property
    def voxels(self) -> int | None:
        return math.prod(self.shape) if self.shape else None


@dataclass(frozen=True)
class Config:
    """A predict configuration: option overrides applied on top of the command line's."""

    name: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class CaseRecord:
    """The measurement of one case under one configuration (one row of the CSV)."""

    case_id: str
    config: str
    image: str
    voxels: int | None
    shape: list[int] | None
    status: str
    exit_code: int | None
    time_s: float
    peak_rss_mb: float
    memory_auc_mb_s: float
    mean_cpu_percent: float
    cpu_time_s: float
    kernel_max_rss_mb: float
    time_ref_units: float | None = None
    prediction: str | None = None
    stderr_tail: str = ""
    dsc: float | None = None
    nsd: float | None = None
    organ_dsc: dict[str, float] = field(default_factory=dict)
    organ_nsd: dict[str, float] = field(default_factory=dict)
    score_error: str | None = None  # why a case with ground truth was not scored
    samples: list[list[float]] = field(default_factory=list)  # [t_s, rss_mb, cpu_percent]

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


@dataclass
class BenchmarkRun:
    """Everything one ``edgeseg benchmark`` invocation measured."""

    configs: list[Config]
    records: list[CaseRecord]
    reference_times_s: list[float]
    settings: dict[str, Any]
    unmatched_cases: list[str] = field(default_factory=list)

    @property
    def reference_time_s(self) -> float | None:
        """Median time of the reference workload in this run (None if not measured)."""
        times = [t for t in self.reference_times_s if t > 0]
        return float(np.median(times)) if times else None

    def records_for(self, config: str) -> list[CaseRecord]:
        return [r for r in self.records if r.config == config]


# --- cases -------------------------------------------------------------------------------------


def strip_image_suffix(name: str) -> str:
    """File name without its image extension (``.nii.gz`` counts as one)."""
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_id_of(path: Path) -> str:
    """Case name of an image file: extension and nnU-Net's ``_0000`` channel suffix removed."""
    return re.sub(r"_\d{4}$", "", strip_image_suffix(path.name))


def case_ids(paths: Sequence[Path]) -> list[str]:
    """Case names of a folder's images.

    nnU-Net names images ``<case>_<channel>`` (``case_0007_0000.nii.gz``), but many folders
    hold plain ``case_0007.nii.gz``. The channel suffix is removed only where the names stay
    distinct; otherwise ``case_0000``/``case_0001`` would both become ``case``. (Ground-truth
    matching also tries the full name, so a lone ``case_0007.nii.gz`` still finds its label.)
    """
    stripped = [case_id_of(p) for p in paths]
    if len(set(stripped)) == len(stripped):
        return stripped
    return [strip_image_suffix(p.name) for p in paths]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) and \
        not path.name.startswith(".")


def _is_dicom_series(path: Path) -> bool:
    return path.is_dir() and any(
        f.is_file() and (f.suffix.lower() == ".dcm" or f.suffix == "") for f in path.iterdir()
    )


def image_shape(path: Path) -> tuple[int, ...] | None:
    """Volume shape (z, y, x) read from the header only; None where it cannot be read."""
    import SimpleITK as sitk

    try:
        if path.is_dir():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
            if not files:
                return None
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            x, y = reader.GetSize()[:2]
            return (len(files), int(y), int(x))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(int(s) for s in reversed(reader.GetSize()))
    except RuntimeError:
        return None  # unreadable: the child will report the real problem


def discover_cases(cases_dir: Path, channels: int = 1) -> list[BenchmarkCase]:
    """Image files (or DICOM series folders) of a case folder, sorted by case name.

    A FLARE/nnU-Net dataset folder is accepted too: its ``imagesTs`` (or ``imagesTr``) is used.
    For a model of several input ``channels`` a case is its ``_0000`` file, the others read
    beside it by ``edgeseg predict`` (:mod:`edge_seg.channels`).

    Raises
    ------
    EdgesegError
        When the folder does not exist or holds no image.
    """
    require_folder(cases_dir, "case folder")
    folder = cases_dir
    if not any(_is_image(p) for p in folder.iterdir()):
        for sub in ("imagesTs", "imagesTr"):
            if (cases_dir / sub).is_dir():
                folder = cases_dir / sub
                break
    entries = sorted(folder.iterdir())
    images = [p for p in entries if _is_image(p)]
    if not images:
        images = [p for p in entries if _is_dicom_series(p)]
    images = first_channel_scans(images, channels)
    if not images:
        raise EdgesegError(
            f"{cases_dir}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files "
            "or DICOM series folders)"
        )
    return [
        BenchmarkCase(case_id, path, None, image_shape(path))
        for case_id, path in zip(case_ids(images), images, strict=True)
    ]


def match_ground_truth(
    cases: Sequence[BenchmarkCase], gt_dir: Path
) -> tuple[list[BenchmarkCase], list[str]]:
    """Attach ground-truth label files (same case name) to cases.

    Returns the cases with ``label`` set where a match exists, and the names of cases without
    one (their accuracy is not scored; the caller lists them).
    """
    require_folder(gt_dir, "ground-truth folder")
    # Label files carry no channel suffix: match on the name without extension only.
    labels = {strip_image_suffix(p.name): p for p in sorted(gt_dir.iterdir()) if _is_image(p)}
    if not labels:
        raise EdgesegError(f"{gt_dir}: no label files found")
    matched: list[BenchmarkCase] = []
    unmatched: list[str] = []
    for case in cases:
        label = labels.get(case.case_id) or labels.get(strip_image_suffix(case.image.name))
        if label is None:
            unmatched.append(case.case_id)
        matched.append(BenchmarkCase(case.case_id, case.image, label, case.shape))
    return matched, unmatched


# --- configurations ----------------------------------------------------------------------------


def parse_config(spec: str) -> Config:
    """Parse a ``--compare`` specification such as ``"precision=fp32,backend=onnxruntime"``.

    The configuration's name is the normalised specification itself (keys in the order given),
    so results of two runs can be matched by it.
    """
    options: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise EdgesegError(f"--compare {spec!r}: expected key=value pairs, got {part!r}")
        if key not in CONFIG_KEYS:
            raise EdgesegError(
                f"--compare {spec!r}: unknown option {key!r} (use {', '.join(CONFIG_KEYS)})"
            )
        allowed = CONFIG_KEYS[key]
        if allowed is not None and value not in allowed:
            raise EdgesegError(
                f"--compare {spec!r}: {key} must be one of {', '.join(allowed)}, got {value!r}"
            )
        if key in options:
            raise EdgesegError(f"--compare {spec!r}: {key} given twice")
        options[key] = value
    if not options:
        raise EdgesegError(f"--compare {spec!r}: empty configuration")
    return Config(",".join(f"{k}={v}" for k, v in options.items()), options)


def build_configs(compare: Iterable[str]) -> list[Config]:
    """The base configuration (command-line options as given) followed by each ``--compare``."""
    configs = [Config(BASE_CONFIG)]
    for spec in compare:
        config = parse_config(spec)
        if any(c.name == config.name for c in configs):
            raise EdgesegError(f"--compare {spec!r}: configuration given twice")
        configs.append(config)
    return configs


def config_slug(config: Config) -> str:
    """A folder-safe name for a configuration's predictions."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", config.name.replace("=", "-")) or BASE_CONFIG


# --- running -----------------------------------------------------------------------------------

#: Builds the child command line for (case, config, prediction path).
CommandBuilder = Callable[[BenchmarkCase, Config, Path], list[str]]


def reference_command() -> list[str]:
    """The reference workload's command line."""
    return [sys.executable, "-c", REFERENCE_WORKLOAD]


def _record(
    case: BenchmarkCase, config: Config, result: RunResult, prediction: Path
) -> CaseRecord:
    status = result.status
    stderr_tail = result.stderr_tail
    if status == STATUS_OK and not prediction.is_file():
        # Exit status 0 but nothing written is a failure of the case, not a success.
        status, stderr_tail = "failed", (stderr_tail + f"\nno output written to {prediction}")
    return CaseRecord(
        case_id=case.case_id,
        config=config.name,
        image=str(case.image),
        voxels=case.voxels,
        shape=list(case.shape) if case.shape else None,
        status=status,
        exit_code=result.exit_code,
        time_s=result.time_s,
        peak_rss_mb=result.peak_rss_mb,
        memory_auc_mb_s=result.memory_auc_mb_s,
        mean_cpu_percent=result.mean_cpu_percent,
        cpu_time_s=result.cpu_time_s,
        kernel_max_rss_mb=result.kernel_max_rss_mb,
        prediction=str(prediction) if status == STATUS_OK else None,
        stderr_tail="" if status == STATUS_OK else stderr_tail.strip()[-1000:],
        samples=[[s.t_s, s.rss_mb, s.cpu_percent] for s in result.samples],
    )


def run_benchmark(
    cases: Sequence[BenchmarkCase],
    configs: Sequence[Config],
    command_for: CommandBuilder,
    predictions_dir: Path,
    *,
    time_limit_s: float,
    memory_limit_mb: float | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    reference: bool = True,
    on_record: Callable[[CaseRecord], None] | None = None,
) -> BenchmarkRun:
    """Run every case under every configuration, interleaved, each in a fresh process.

    Parameters
    ----------
    cases, configs
        What to run; for each case all configurations run back to back (interleaving).
    command_for
        Builds the child command for (case, config, prediction path); tests pass ordinary
        ``python -c`` children here, the CLI passes ``edgeseg predict``.
    predictions_dir
        Predictions go to ``predictions_dir/<config slug>/<case>.nii.gz``.
    time_limit_s, memory_limit_mb, interval_s
        Passed to :func:`edge_seg.profiling.run_monitored`.
    reference
        Time the reference workload before each round of cases.
    on_record
        Called after each case (progress display).
    """
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):  # NaN would never stop a case
        raise EdgesegError(f"--time-limit must be a positive number, got {time_limit_s:g}")
    if not cases:
        raise EdgesegError("no cases to benchmark")
    records: list[CaseRecord] = []
    reference_times: list[float] = []
    for case in cases:
        if reference:
            ref = run_monitored(reference_command(), time_limit_s=120, interval_s=interval_s)
            reference_times.append(ref.time_s if ref.ok else -1.0)
        for config in configs:
            prediction = predictions_dir / config_slug(config) / f"{case.case_id}.nii.gz"
            prediction.parent.mkdir(parents=True, exist_ok=True)
            prediction.unlink(missing_ok=True)  # a stale file must not pass as this run's output
            result = run_monitored(
                command_for(case, config, prediction),
                time_limit_s=time_limit_s,
                memory_limit_mb=memory_limit_mb,
                interval_s=interval_s,
            )
            record = _record(case, config, result, prediction)
            records.append(record)
            if on_record is not None:
                on_record(record)
    run = BenchmarkRun(
        configs=list(configs),
        records=records,
        reference_times_s=reference_times,
        settings={
            "time_limit_s": time_limit_s,
            "memory_limit_mb": memory_limit_mb,
            "interval_s": interval_s,
        },
    )
    ref_time = run.reference_time_s
    for record in records:
        record.time_ref_units = record.time_s / ref_time if ref_time else None
    return run


# --- accuracy ----------------------------------------------------------------------------------

#: Scores one prediction against its ground truth: returns ({organ: DSC}, {organ: NSD}).
Scorer = Callable[[Path, Path], tuple[dict[str, float], dict[str, float]]]


def apply_accuracy(
    run: BenchmarkRun, cases: Sequence[BenchmarkCase], score: Scorer
) -> list[str]:
    """Fill DSC/NSD of every record whose case has ground truth.

    Failed, timed-out and memory-killed cases score DSC = NSD = 0 for every organ, as FLARE
    scores a missing prediction. A finished case whose scoring fails (unreadable ground truth,
    ground truth off the scan's grid, unknown label values) is *not scored*: its DSC/NSD stay
    None and ``score_error`` holds the reason, so that it enters neither the count of scored
    cases nor the means (a zero there would be a measurement that never happened).

    Returns
    -------
    list of str
        One message per case that could not be scored, naming the case and the reason.
    """
    labels = {case.case_id: case.label for case in cases if case.label is not None}
    problems: list[str] = []
    for record in run.records:
        label = labels.get(record.case_id)
        if label is None:
            continue
        organ_dsc: dict[str, float] = {}
        organ_nsd: dict[str, float] = {}
        record.score_error = None
        if record.ok and record.prediction:
            try:
                organ_dsc, organ_nsd = score(Path(record.prediction), label)
            except (EdgesegError, ValueError, OSError, RuntimeError) as exc:
                # EvaluationError is a ValueError: geometry mismatch, unknown labels.
                record.score_error = " ".join(str(exc).split()) or type(exc).__name__
                record.organ_dsc, record.organ_nsd = {}, {}
                record.dsc = record.nsd = None
                problems.append(
                    f"{record.case_id} ({record.config}): not scored: {record.score_error}"
                )
                continue
        record.organ_dsc, record.organ_nsd = organ_dsc, organ_nsd
        record.dsc = _mean(organ_dsc.values())
        record.nsd = _mean(organ_nsd.values())
    return problems


def _mean(values: Iterable[float]) -> float:
    items = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(items)) if items else 0.0


# --- summaries ---------------------------------------------------------------------------------

#: Per-case figures summarised as median and 90th percentile.
SUMMARY_FIELDS = ("time_s", "peak_rss_mb", "memory_auc_mb_s", "mean_cpu_percent")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation) or None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summarise(run: BenchmarkRun) -> dict[str, dict[str, Any]]:
    """Per configuration: counts by status, median and p90 of time/memory/CPU over the cases
    that finished, time in reference units, and mean DSC/NSD over scored cases (failures 0;
    cases whose ground truth could not be scored are counted in ``not_scored`` only)."""
    summary: dict[str, dict[str, Any]] = {}
    for config in run.configs:
        records = run.records_for(config.name)
        done = [r for r in records if r.ok]
        entry: dict[str, Any] = {
            "cases": len(records),
            "ok": len(done),
            "status_counts": _count(r.status for r in records),
        }
        for name in SUMMARY_FIELDS:
            values = [getattr(r, name) for r in done]
            entry[f"median_{name}"] = percentile(values, 50)
            entry[f"p90_{name}"] = percentile(values, 90)
        units = [r.time_ref_units for r in done if r.time_ref_units is not None]
        entry["median_time_ref_units"] = percentile(units, 50)
        scored = [r for r in records if r.dsc is not None]
        entry["scored"] = len(scored)
        entry["not_scored"] = sum(1 for r in records if r.score_error is not None)
        entry["mean_dsc"] = _mean(r.dsc for r in scored) if scored else None  # type: ignore[misc]
        entry["mean_nsd"] = _mean(r.nsd for r in scored) if scored else None  # type: ignore[misc]
        summary[config.name] = entry
    return summary


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def compare_to_first(run: BenchmarkRun) -> dict[str, dict[str, float | None]]:
    """Ratios of every configuration against the first, over cases both finished.

    ``time_ratio`` and ``peak_rss_ratio`` are medians of per-case ratios (each pair measured
    back to back, so machine drift mostly cancels); ``dsc_delta`` is the difference of mean DSC.
    """
    if not run.configs:
        return {}
    first = run.configs[0].name
    by_case = {r.case_id: r for r in run.records_for(first)}
    summary = summarise(run)
    out: dict[str, dict[str, float | None]] = {}
    for config in run.configs[1:]:
        pairs = [
            (by_case[r.case_id], r)
            for r in run.records_for(config.name)
            if r.ok and r.case_id in by_case and by_case[r.case_id].ok
        ]
        time_ratios = [r.time_s / b.time_s for b, r in pairs if b.time_s > 0]
        peak_ratios = [r.peak_rss_mb / b.peak_rss_mb for b, r in pairs if b.peak_rss_mb > 0]
        base_dsc, dsc = summary[first]["mean_dsc"], summary[config.name]["mean_dsc"]
        out[config.name] = {
            "cases_compared": len(pairs),
            "time_ratio": percentile(time_ratios, 50),
            "peak_rss_ratio": percentile(peak_ratios, 50),
            "dsc_delta": (dsc - base_dsc) if dsc is not None and base_dsc is not None else None,
        }
    return out
