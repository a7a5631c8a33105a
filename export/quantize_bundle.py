"""``edgeseg quantize``: add validated INT8 variants to a bundle.

Steps: split the images into calibration and held-out sets; cut calibration patches (real,
preprocessed); quantise for each backend; predict the held-out images with fp32 and with the
INT8 candidate through the runtime; keep a variant only if its label agreement meets the bar,
and when it does not, try the mixed-precision fallbacks - the first/last convolution in floating
point, then also the last full-resolution decoder convolution, then the first/last 2 and 3 -,
then (OpenVINO) NNCF's accuracy-aware quantisation, which reverts the layers that cost
agreement - and report every attempt. With ``--distill`` every INT8 model is quantised from a
student distilled from the bundle's PyTorch network (:func:`distilled_student`) instead of
from the fp32 model. Work happens in a hidden
temporary folder inside the bundle; validated files are renamed into place and
``edgeseg.json`` is rewritten last, atomically, so an interrupted run leaves the bundle as it
was.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_seg.bundle import Bundle, load_bundle
from edge_seg.errors import EdgesegError
from edge_seg.host import cpu_description
from export.calibration import DEFAULT_PATCHES_PER_IMAGE, list_images, patch_set, read_images
from export.distill import STUDENT_ORIGIN, DistillSettings
from export.fidelity import (
    AGREEMENT_BAR,
    INT8_BACKENDS,
    UNDECIDED_MARGIN,
    Run,
    compare,
    fp32_undecided_shares,
    label_cleanup,
    predict_all,
)
from export.quantize import (
    ACCURACY_AWARE,
    BACKENDS,
    MIXED_LEVELS,
    OPENVINO,
    FloatEnds,
    mixed_suffix,
    quantize_variant,
)

#: Bundle ``files`` key of each backend's INT8 model.
FILE_KEYS = {backend: key for key, backend in INT8_BACKENDS.items()}


def split_images(
    calib: str | Path, holdout: str | Path | None, channels: int = 1
) -> tuple[list[Path], list[Path], str]:
    """Calibration and held-out image paths (a quarter of ``calib`` is held out if needed);
    for a model of several ``channels`` one path per case, so a case is never split."""
    calib_paths = list_images(calib, channels)
    if not calib_paths:
        raise EdgesegError(f"{calib}: no images found (NIfTI, MHA, NRRD or DICOM folders)")
    if holdout is not None:
        holdout_paths = list_images(holdout, channels)
        if not holdout_paths:
            raise EdgesegError(f"{holdout}: no images found (NIfTI, MHA, NRRD or DICOM folders)")
        overlap = {p.resolve() for p in calib_paths} & {p.resolve() for p in holdout_paths}
        if overlap:
            raise EdgesegError(
                f"{holdout}: held-out images must not be calibration images "
                f"({sorted(overlap)[0].name} is in both)"
            )
        return calib_paths, holdout_paths, f"--holdout {holdout}"
    if len(calib_paths) < 2:
        raise EdgesegError(
            f"{calib}: one image cannot be split into calibration and held-out sets; "
            "add images or pass --holdout"
        )
    n_hold = max(1, math.ceil(len(calib_paths) / 4))
    return calib_paths[:-n_hold], calib_paths[-n_hold:], f"last {n_hold} of {calib} held out"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def candidate_bundle(work: Path, bundle: Bundle, files: dict[str, str]) -> Path:
    """Write a manifest in ``work`` so the runtime predictor can load a candidate variant."""
    candidate = Bundle(**{**bundle.to_json(), "files": files})
    candidate.save(work)
    return work


def model_file_parts(name: str) -> list[str]:
    """The files one bundle model consists of (an OpenVINO IR ``.xml`` has its ``.bin``)."""
    return [name, name[: -len(".xml")] + ".bin"] if name.endswith(".xml") else [name]


def bundle_with_int8(
    bundle: Bundle,
    work: Path,
    onnx_path: Path,
    samples: Sequence[Sequence[Any]],
    backend: str = OPENVINO,
    keep_fp: FloatEnds = 0,
    keep_files: Sequence[str] = ("fp32",),
) -> Bundle:
    """A candidate bundle in ``work``: ``bundle``'s ``keep_files`` models (linked, or copied)
    and the INT8 model for ``backend`` quantised from ``onnx_path`` at mixed level ``keep_fp``.

    ``onnx_path`` is usually the bundle's fp32 model; a distilled student's ONNX gives an
    INT8 model trained to track the unchanged fp32 one. The candidate is never validated
    here: benchmarks time or score it, ``quantize_bundle`` decides what ships.
    """
    files = {key: bundle.files[key] for key in keep_files if key in bundle.files}
    for name in files.values():
        for part in model_file_parts(name):
            if not (work / part).exists():  # ``work`` may be the bundle's own folder
                _link_or_copy(bundle.root / part, work / part)
    files[FILE_KEYS[backend]], _ = quantize_variant(backend, onnx_path, samples, work, keep_fp)
    return load_bundle(candidate_bundle(work, bundle, files))


def distilled_student(
    bundle: Bundle,
    calib_volumes: Sequence[Any],
    calib_inputs: Sequence[Sequence[Any]],
    work: Path,
    settings: DistillSettings,
    source: str | Path | None,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """Distil a student from the bundle's PyTorch network; return its ONNX path and report."""
    from export.distill import distill_for_int8, export_student
    from export.source_network import SourceMissingError, check_matches_bundle, source_network

    try:
        network = source_network(bundle, source)
    except SourceMissingError as exc:
        if source is not None:
            raise
        raise EdgesegError(f"{exc}; pass --distill-source with where the bundle's source "
                           "network is now") from exc
    match = check_matches_bundle(network, bundle, calib_inputs[0])
    train = patch_set(calib_volumes, bundle, settings.patches_per_image).inputs
    log(f"distillation: the source network matches the bundle's model (max abs logit "
        f"difference {match:.2g}); {settings.steps} steps on {len(train)} patches")
    student, report = distill_for_int8(network, train, settings, log)
    path = export_student(bundle, student, calib_inputs[0], work / "student.onnx")
    return path, {**report, "source_max_abs_diff": match}


def check_fp32_model(bundle: Bundle) -> None:
    """Refuse a damaged fp32 model by its path in the bundle before the work starts; found
    later, the error would name its copy in the temporary work folder, removed by then."""
    import onnx

    path = bundle.model_path("fp32")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise EdgesegError(
            f"{path}: the fp32 model is not a readable ONNX file ({reason})") from exc


def quantize_bundle(
    bundle_dir: str | Path,
    calib: str | Path,
    holdout: str | Path | None = None,
    backends: Sequence[str] = BACKENDS,
    patches_per_image: int = DEFAULT_PATCHES_PER_IMAGE,
    bar: float = AGREEMENT_BAR,
    mixed_fallback: bool = True,
    threads: int | None = None,
    accuracy_aware: bool = True,
    log: Callable[[str], None] = print,
    distill: DistillSettings | None = None,
    distill_source: str | Path | None = None,
) -> Bundle:
    """Quantise ``bundle_dir`` in place and return the updated bundle (see module doc).

    With ``distill``, the INT8 models are quantised from a student distilled from the bundle's
    network (:mod:`export.distill`; rebuilt from its provenance, or from ``distill_source``)
    instead of from the fp32 model itself; agreement is still measured against the fp32 model,
    which stays as it is.
    """
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    for backend in backends:
        if backend not in BACKENDS:
            raise EdgesegError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    # No backend would rewrite the report and calibration set with nothing quantised.
    backends = list(dict.fromkeys(backends))
    if not backends:
        raise EdgesegError(f"--backend: give one or more of {', '.join(BACKENDS)}")
    check_fp32_model(bundle)
    channels = len(bundle.channels)
    calib_paths, holdout_paths, split_note = split_images(calib, holdout, channels)
    calib_volumes, calib_problems = read_images(calib_paths, calib, channels)
    # Without --holdout the held-out images are the folder's last ones: say so when none of
    # them reads, rather than that the folder has no readable image.
    held_out = holdout or f"{calib} (held out: the last {len(holdout_paths)} of its images)"
    holdout_volumes, holdout_problems = read_images(holdout_paths, held_out, channels)
    for problem in calib_problems + holdout_problems:
        log(f"skipped: {problem}")
    patches = patch_set(calib_volumes, bundle, patches_per_image)
    log(f"calibration: {len(patches.inputs)} patches from {len(calib_volumes)} images; "
        f"held out: {len(holdout_volumes)} images")
    names = [v.name for v in holdout_volumes]

    for stale in bundle_dir.glob(".quantize.*"):  # left by a killed run; never listed in files
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".quantize.", dir=bundle_dir))
    try:
        fp32_name = bundle.files["fp32"]
        _link_or_copy(bundle.model_path("fp32"), work / fp32_name)
        onnx_path = work / fp32_name
        distillation = None
        if distill is not None:
            onnx_path, distillation = distilled_student(bundle, calib_volumes, patches.inputs,
                                                        work, distill, distill_source, log)
        variants: dict[str, dict[str, Any]] = {}
        undecided: dict[str, float | None] | None = None
        chosen: dict[str, str] = {}
        for backend in backends:
            key = FILE_KEYS[backend]
            candidate_bundle(work, bundle, {"fp32": fp32_name})
            reference = predict_all(work, backend, "fp32", holdout_volumes, threads)
            if undecided is None:
                undecided = fp32_undecided_shares(work, backend, holdout_volumes, threads)
            attempts = [(key, 0)]
            if mixed_fallback:
                attempts += [(f"{key}{mixed_suffix(n)}", n) for n in MIXED_LEVELS]
                if backend == OPENVINO and accuracy_aware:
                    attempts.append((f"{key}_accuracy_aware", ACCURACY_AWARE))
            for variant, keep_fp in attempts:
                log(f"{variant}: quantising ({backend})")
                file_name, info = quantize_variant(backend, onnx_path, patches.inputs, work,
                                                   keep_fp)
                candidate_bundle(work, bundle, {"fp32": fp32_name, key: file_name})
                candidate: Run = predict_all(work, backend, "int8", holdout_volumes, threads)
                report = {**compare(reference, candidate, bundle.organs, names, bar),
                          "backend": backend, "file": file_name, "quantization": info,
                          "quantised_from": STUDENT_ORIGIN if distillation else "fp32"}
                variants[variant] = report
                log(f"{variant}: mean Dice vs fp32 {report['mean_dice']:.4f}, worst "
                    f"{report['worst_dice']:.4f} ({report['worst_class']}), int8/fp32 time "
                    f"{report['latency_ratio_int8_vs_fp32']}")
                if report["passed"]:
                    # The runtime looks INT8 models up under the backend's key; the report
                    # says whether the shipped one is the plain or the mixed-precision variant.
                    chosen[key] = file_name
                    report["shipped_as"] = key
                    break
                share = undecided.get(report["worst_class"]) if undecided else None
                why = ("" if share is None else
                       f" (fp32 leads {share:.0%} of its {report['worst_class']} voxels by "
                       f"< {UNDECIDED_MARGIN} logit)")
                log(f"{variant}: below the {bar} bar - not added to the bundle{why}")

        for file_name in chosen.values():
            for part in model_file_parts(file_name):
                os.replace(work / part, bundle_dir / part)
        stale = {FILE_KEYS[b] for b in backends} | set(variants)
        files = {k: v for k, v in bundle.files.items() if k not in stale}
        files.update(chosen)
        bundle.files = files
        # A run over some backends keeps what earlier runs validated and reported for the others.
        kept = [p for p in bundle.validated_precisions if p != "fp32" and p not in stale]
        bundle.validated_precisions = ["fp32", *kept, *chosen]
        earlier = {
            name: report for name, report in bundle.fidelity.get("variants", {}).items()
            if report.get("backend") not in backends
        }
        variants = {**earlier, **variants}
        previous = bundle.fidelity
        bundle.fidelity = {
            "bar_mean_dice": bar,
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_description(),
            "split": split_note,
            "calibration_images": [v.name for v in calib_volumes],
            "calibration_patches": len(patches.inputs),
            "holdout_images": names,
            "label_cleanup": label_cleanup(),
            "variants": variants,
        }
        if distillation is None and any(r.get("quantised_from") == STUDENT_ORIGIN
                                        for r in earlier.values()):
            distillation = previous.get("distillation")  # the kept variants' student
        if distillation is not None:
            bundle.fidelity["distillation"] = distillation
        if undecided is not None:
            bundle.fidelity["fp32_undecided"] = {"margin_logit": UNDECIDED_MARGIN,
                                                 "share_per_class": undecided}
        bundle.provenance = {**bundle.provenance, "calibration_set": patches.sources}
        bundle.save(bundle_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_bundle(bundle_dir)
