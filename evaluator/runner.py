"""Run an evaluation: find cases, read and map labels, score (optionally in parallel), collect.

Run-level problems (missing or empty folders, no matching predictions, unknown CSV subjects,
bad options) raise :class:`~evaluator.errors.EvaluationError` before anything is scored.
Case-level problems (an unreadable or truncated file, a geometry mismatch, unknown label
values) are recorded in :attr:`EvaluationResult.failures` and the batch goes on: a broken
*prediction* is scored as the worst case (like a missing one); a case with a broken or missing
*ground truth* (also a CHAOS case folder without ``Ground/`` or ``DICOM_anon/``, an MSD
``training`` entry without its label map) cannot be scored, has no rows and is listed.
Ground-truth structures that no prediction label set holds are not scored and are named in
:attr:`EvaluationResult.warnings`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator.adapters import chaos, nifti
from evaluator.adapters.base import CaseSpec, describe, load_volume
from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_LABELS, FLARE_NSD_TOLERANCE_MM, canonical_organ_name
from evaluator.labelsets import (
    PRESETS,
    LabelSet,
    evaluation_ids,
    load_labelset,
    to_evaluation_labels,
)
from evaluator.presence import read_presence_csv
from evaluator.protocols import DEFAULT_PROTOCOL, Protocol, get_protocol
from evaluator.scoring import OrganScore, presence_only_rows, score_organs, worst_case_rows
from evaluator.volumes import resample_to, same_geometry

FORMATS = ("auto", "flare", "nnunet", "msd", "chaos", "ukb")


@dataclass
class EvaluationOptions:
    """Options of one evaluation run (the CLI flags of ``edgeseg evaluate``).

    ``nsd_tolerance_mm`` overrides the protocol's NSD tolerance per organ (any spelling that
    :func:`~evaluator.labels.canonical_organ_name` knows); an organ that no label table knows
    is refused by :func:`evaluate` (see :func:`check_nsd_overrides`).
    """

    format: str = "auto"
    protocol: str = DEFAULT_PROTOCOL
    gt_labels: str = "auto"
    pred_labels: str = "auto"
    presence_csv: Path | None = None
    organs: Sequence[str] = ()
    nsd_tolerance_mm: dict[str, float] = field(default_factory=dict)
    resample_pred: bool = False
    workers: int = 1


@dataclass
class CaseFailure:
    case: str
    side: str  # "prediction" or "ground truth"
    message: str


@dataclass
class EvaluationResult:
    """Everything the reports need."""

    gt_root: Path
    pred_root: Path
    format: str
    protocol: Protocol
    rows: list[OrganScore]
    cases: list[str]
    missing_predictions: list[str]
    failures: list[CaseFailure]
    ignored_predictions: int
    #: Case ids of the predictions without ground truth (not scored), sorted.
    unscored_predictions: list[str] = field(default_factory=list)
    #: Run-level warnings, one line each (ground-truth structures left unscored, voxels two
    #: masks of a mask folder share).
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _CaseJob:
    spec: CaseSpec
    gt_labels: LabelSet | None
    pred_labels: LabelSet
    organ_ids: dict[str, int]
    protocol: Protocol
    resample_pred: bool
    check_position: bool
    threads: int = 1


@dataclass
class _CaseOutcome:
    rows: list[OrganScore]
    failure: CaseFailure | None = None
    notes: list[str] = field(default_factory=list)


def detect_format(gt_root: Path, presence_csv: Path | None) -> str:
    """Guess the ground-truth layout (see :data:`FORMATS`)."""
    if chaos.looks_like_chaos(gt_root):
        return "chaos"
    if presence_csv is not None:
        return "ukb"
    json_path = nifti.dataset_json(nifti.label_folder(gt_root))
    if json_path is not None:
        import json

        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError):
            return "nnunet"
        return "msd" if isinstance(data, dict) and "training" in data else "nnunet"
    return "flare"


def _check_folder(path: Path, role: str) -> None:
    if not path.exists():
        raise EvaluationError(f"{path}: {role} folder not found")
    if not path.is_dir():
        raise EvaluationError(f"{path}: {role} path is not a folder")
    if not any(path.iterdir()):
        raise EvaluationError(f"{path}: {role} folder is empty")


def discover_cases(gt_root: Path, pred_root: Path,
                   options: EvaluationOptions) -> tuple[str, list[CaseSpec], int]:
    """(format, cases, number of predictions without ground truth) for two folders."""
    fmt, cases, unscored = _discover(gt_root, pred_root, options)
    return fmt, cases, len(unscored)


def _discover(gt_root: Path, pred_root: Path,
              options: EvaluationOptions) -> tuple[str, list[CaseSpec], list[str]]:
    """(format, cases, sorted ids of the predictions without ground truth)."""
    if options.format not in FORMATS:
        raise EvaluationError(f"unknown format {options.format!r}; choose from "
                              f"{', '.join(FORMATS)}")
    _check_folder(gt_root, "ground-truth")
    _check_folder(pred_root, "prediction")
    fmt = options.format if options.format != "auto" else detect_format(
        gt_root, options.presence_csv)
    if fmt == "chaos":
        cases = chaos.discover(gt_root, pred_root)
        if not cases:
            raise EvaluationError(f"{gt_root}: no CHAOS case folders (DICOM_anon/ + Ground/)")
    else:
        cases = nifti.discover(gt_root, pred_root)
    if fmt == "msd":
        cases += nifti.listed_but_missing(gt_root, pred_root, cases)
    if options.presence_csv is not None:
        cases = _add_presence_cases(cases, pred_root, options.presence_csv)
    if not cases:
        raise EvaluationError(f"{gt_root}: no ground-truth label maps found")
    matched_ids = {c.case_id for c in cases if c.pred is not None}
    if not matched_ids:
        raise EvaluationError(f"{pred_root}: no prediction matches a ground-truth case "
                              f"(expected e.g. {cases[0].case_id}.nii.gz)")
    available = set(nifti.label_refs(pred_root))
    return fmt, cases, sorted(available - {c.case_id for c in cases})


def _add_presence_cases(cases: list[CaseSpec], pred_root: Path,
                        csv_path: Path) -> list[CaseSpec]:
    if not csv_path.is_file():
        raise EvaluationError(f"{csv_path}: presence CSV not found")
    known = set(FLARE_LABELS) | {o for s in PRESETS.values() for o in s.organs}
    presence = read_presence_csv(csv_path, known)
    predictions = nifti.label_refs(pred_root)
    by_id = {c.case_id: c for c in cases}
    unknown = sorted(s for s in presence if s not in by_id and s not in predictions)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise EvaluationError(f"{csv_path}: {len(unknown)} subject(s) have neither a prediction "
                              f"nor a ground truth: {shown}")
    extra = [
        CaseSpec(case_id=subject, gt=None, pred=predictions[subject],
                 presence=values)
        for subject, values in presence.items() if subject not in by_id
    ]
    return cases + extra


def _resolve_labelset(option: str, inferred: str, modality: str,
                      cache: dict[str, LabelSet]) -> LabelSet:
    name = inferred if option == "auto" else option
    if name.strip().lower() == "chaos":
        name = "chaos_mr" if modality == "MR" else "chaos_ct"
    if name not in cache:
        cache[name] = load_labelset(name)
    return cache[name]


def _case_organs(spec: CaseSpec, gt_set: LabelSet | None, pred_set: LabelSet,
                 wanted: set[str] | None) -> list[str]:
    gt_organs = gt_set.organs if gt_set is not None else list(spec.presence or {})
    organs = [o for o in gt_organs if o in pred_set.ranges]
    return [o for o in organs if wanted is None or o in wanted]


def known_organs(label_sets: Iterable[LabelSet | None]) -> set[str]:
    """Organ names any label table knows: FLARE's, the presets' and those of ``label_sets``.

    A JSON label file may add structures, so the label sets of the run count too.
    """
    known = set(FLARE_NSD_TOLERANCE_MM) | set(FLARE_LABELS)
    known |= {o for s in PRESETS.values() for o in s.organs}
    for label_set in label_sets:
        if label_set is not None:
            known |= set(label_set.organs)
    return known


def _check_organ_option(requested: Sequence[str], known: set[str],
                        in_run: Sequence[str]) -> None:
    """Refuse ``--organ`` names that no label table knows (most likely a typo)."""
    unknown = [name for name in requested if canonical_organ_name(name) not in known]
    if unknown:
        raise EvaluationError(
            f"--organ: unknown organ {unknown[0]!r}; organs in this run: {', '.join(in_run)} "
            "(aliases such as rk, ivc work)"
        )


def plan_jobs(cases: list[CaseSpec], options: EvaluationOptions, protocol: Protocol,
              fmt: str) -> list[_CaseJob]:
    """Resolve label sets and the organs of every case.

    Raises
    ------
    EvaluationError
        For an ``organs`` entry that no label table knows, or when no organ is left to score.
    """
    cache: dict[str, LabelSet] = {}
    wanted = {canonical_organ_name(o) for o in options.organs} if options.organs else None
    plans = []
    all_organs: list[str] = []
    for spec in cases:
        gt_set = (_resolve_labelset(options.gt_labels, spec.gt_labels, spec.modality, cache)
                  if spec.gt is not None else None)
        pred_set = _resolve_labelset(options.pred_labels, spec.pred_labels, spec.modality, cache)
        organs = _case_organs(spec, gt_set, pred_set, wanted)
        plans.append((spec, gt_set, pred_set, organs))
        all_organs += [o for o in organs if o not in all_organs]
    if options.organs:
        in_run = list(dict.fromkeys(
            o for spec, gt_set, pred_set, _ in plans
            for o in _case_organs(spec, gt_set, pred_set, None)))
        known = known_organs(s for _, gt_set, pred_set, _ in plans for s in (gt_set, pred_set))
        _check_organ_option(options.organs, known, in_run)
    if not all_organs:
        raise EvaluationError("no organ is shared by the ground-truth and prediction label sets"
                              + (" and --organs" if wanted else ""))
    ordered = sorted(all_organs, key=lambda o: (FLARE_LABELS.get(o, 1000), o))
    ids = evaluation_ids(ordered)
    return [
        _CaseJob(spec, gt_set, pred_set, {o: ids[o] for o in ordered if o in organs},
                 protocol, options.resample_pred, check_position=fmt != "chaos")
        for spec, gt_set, pred_set, organs in plans
    ]


def unscored_structures(jobs: Sequence[_CaseJob], organs: Sequence[str]) -> list[str]:
    """One warning per ground-truth structure that is left unscored for want of a prediction.

    Organs are matched by name, so a ground-truth name that the prediction label set lacks
    (a misspelt MSD ``{"1": "hepar"}``, a FLARE23 lesion against FLARE predictions) would
    otherwise silently vanish from the scores. Structures left out by ``--organ`` are meant.
    """
    wanted = {canonical_organ_name(o) for o in organs} if organs else None
    # Organs the tables know without this run's own label files (which hold the odd name).
    known = known_organs(())
    warnings: dict[tuple[str, str, str], str] = {}
    for job in jobs:
        gt_set, pred_set = job.gt_labels, job.pred_labels
        if gt_set is None or job.spec.gt_problem is not None:
            continue
        for organ in gt_set.organs:
            key = (gt_set.name, pred_set.name, organ)
            if organ in job.organ_ids or (wanted and organ not in wanted) or key in warnings:
                continue
            reason = (f"the prediction label set {pred_set.name!r} has no {organ!r}"
                      if organ in known else
                      "no label table knows that name (aliases such as 'right kidney' or "
                      "'ivc' work)")
            warnings[key] = (f"{gt_set.name}: label {organ!r} (value "
                             f"{gt_set.representative_value(organ)}) is not scored: {reason}")
    return list(warnings.values())


def check_nsd_overrides(overrides: Mapping[str, float], jobs: Sequence[_CaseJob]) -> None:
    """Refuse an NSD tolerance override for an organ nobody knows (most likely a typo).

    An organ is known if it has a FLARE tolerance or label, or belongs to a preset or to a
    label set of this run (a JSON label file may add structures). A known organ that this run
    does not evaluate is accepted, so one command line can serve several datasets.
    """
    known = known_organs(s for job in jobs for s in (job.gt_labels, job.pred_labels))
    unknown = [organ for organ in overrides if organ not in known]
    if unknown:
        evaluated = list(dict.fromkeys(o for job in jobs for o in job.organ_ids))
        raise EvaluationError(
            f"NSD tolerance given for unknown organ {unknown[0]!r}; organs in this run: "
            f"{', '.join(evaluated)}"
        )


def protocol_overrides(options: EvaluationOptions) -> dict[str, float]:
    """The ``nsd_tolerance_mm`` overrides keyed by canonical organ name."""
    return {canonical_organ_name(organ): mm for organ, mm in options.nsd_tolerance_mm.items()}


def resolve_protocol(options: EvaluationOptions) -> Protocol:
    """The protocol a run scores with, overrides applied (known before anything is read).

    Raises
    ------
    EvaluationError
        For an unknown protocol or a negative or non-finite tolerance.
    """
    return get_protocol(options.protocol, protocol_overrides(options))


def score_job(job: _CaseJob) -> _CaseOutcome:
    """Read, map and score one case (runs in a worker process when --workers > 1)."""
    spec = job.spec
    if spec.gt_problem is not None:
        return _CaseOutcome([], CaseFailure(spec.case_id, "ground truth", spec.gt_problem))
    if spec.gt is None:
        return _score_presence_only(job)
    assert job.gt_labels is not None
    try:
        gt_volume = load_volume(spec.gt, job.gt_labels, job.organ_ids)
        gt = to_evaluation_labels(gt_volume.array, job.gt_labels, job.organ_ids,
                                  describe(spec.gt))
    except EvaluationError as exc:
        return _CaseOutcome([], CaseFailure(spec.case_id, "ground truth", str(exc)))
    gt_values = {o: job.gt_labels.representative_value(o) for o in job.organ_ids}

    def worst(status: str) -> list[OrganScore]:
        return worst_case_rows(spec.case_id, gt, gt_volume.spacing_mm, job.organ_ids,
                               job.protocol, status, gt_label_values=gt_values)

    notes = list(gt_volume.notes)
    if spec.pred is None:
        return _CaseOutcome(worst("missing_prediction"), notes=notes)
    try:
        pred_volume = load_volume(spec.pred, job.pred_labels, job.organ_ids)
        notes += pred_volume.notes
        problem = same_geometry(gt_volume, pred_volume, check_position=job.check_position)
        if problem and job.resample_pred:
            pred_volume = resample_to(gt_volume, pred_volume)
        elif problem:
            raise EvaluationError(f"{describe(spec.pred)}: geometry does not match the ground "
                                  f"truth: {problem} (use --resample-pred to resample)")
        pred = to_evaluation_labels(pred_volume.array, job.pred_labels, job.organ_ids,
                                    describe(spec.pred))
    except EvaluationError as exc:
        return _CaseOutcome(worst("failed_prediction"),
                            CaseFailure(spec.case_id, "prediction", str(exc)), notes)
    rows = score_organs(spec.case_id, gt, pred, gt_volume.spacing_mm, job.organ_ids,
                        job.protocol, gt_label_values=gt_values, workers=job.threads)
    return _CaseOutcome(rows, notes=notes)


def _score_presence_only(job: _CaseJob) -> _CaseOutcome:
    spec = job.spec
    assert spec.presence is not None
    pred = None
    failure = None
    if spec.pred is not None:
        try:
            volume = load_volume(spec.pred, job.pred_labels, job.organ_ids)
            pred = to_evaluation_labels(volume.array, job.pred_labels, job.organ_ids,
                                        describe(spec.pred))
        except EvaluationError as exc:
            failure = CaseFailure(spec.case_id, "prediction", str(exc))
    rows = presence_only_rows(spec.case_id, spec.presence, pred, job.organ_ids)
    if failure is not None:
        for row in rows:
            row.status = "failed_prediction"
    return _CaseOutcome(rows, failure)


def evaluate(
    gt_root: Path,
    pred_root: Path,
    options: EvaluationOptions,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate every ground-truth case in ``gt_root`` against ``pred_root``.

    ``progress`` is called with each case id once it is scored.
    """
    protocol = resolve_protocol(options)
    fmt, cases, unscored = _discover(gt_root, pred_root, options)
    jobs = plan_jobs(cases, options, protocol, fmt)
    check_nsd_overrides(protocol_overrides(options), jobs)
    cpus = os.cpu_count() or 1
    workers = max(1, min(int(options.workers), len(jobs), cpus))
    # Cores not used by case processes score organs in threads.
    threads = max(1, min(4, cpus // workers))
    jobs = [dataclasses.replace(job, threads=threads) for job in jobs]
    outcomes: list[_CaseOutcome] = []
    if workers == 1:
        for job in jobs:
            outcomes.append(score_job(job))
            if progress:
                progress(job.spec.case_id)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for job, outcome in zip(jobs, pool.map(score_job, jobs), strict=True):
                outcomes.append(outcome)
                if progress:
                    progress(job.spec.case_id)
    rows = [row for outcome in outcomes for row in outcome.rows]
    failures = [o.failure for o in outcomes if o.failure is not None]
    # A case whose ground truth failed is not scored, so it is no worst-case "missing" one.
    unscorable = {f.case for f in failures if f.side == "ground truth"}
    return EvaluationResult(
        gt_root=gt_root,
        pred_root=pred_root,
        format=fmt,
        protocol=protocol,
        rows=rows,
        cases=[job.spec.case_id for job in jobs],
        missing_predictions=[job.spec.case_id for job in jobs
                             if job.spec.pred is None and job.spec.case_id not in unscorable],
        failures=failures,
        ignored_predictions=len(unscored),
        unscored_predictions=unscored,
        warnings=unscored_structures(jobs, options.organs)
        + [note for outcome in outcomes for note in outcome.notes],
    )


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe number: NaN and infinities become None."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)
