"""The INT8 fidelity report: does the quantised model label the same voxels as fp32?

Agreement is measured where it matters to users, on whole-image label maps produced by the
runtime (:class:`edge_seg.predict.Predictor`: preprocessing, sliding window, argmax, the
default clean-up of :func:`label_cleanup`), on held-out images that were not used for
calibration. Per organ we compute the Dice overlap of the INT8 and fp32 label maps (both
empty counts as 1, the FLARE convention), then the mean over organs and the worst organ, and
the latency ratio of the two runs on the same backend in the same process.

A variant below the bar may be the quantiser's fault or the model's: a class the fp32 model
itself barely decides (most of its voxels within a fraction of a logit of the runner-up) loses
voxels to any perturbation. So the report also gives, per organ, the share of the voxels fp32
labels with it whose lead over the runner-up is below :data:`UNDECIDED_MARGIN` logit, on the
network's grid (:mod:`export.margins`; ``benchmarks/bench_int8_margins.py`` has the INT8 side).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from export.distill import STUDENT_ORIGIN

if TYPE_CHECKING:
    from edge_seg.backends.base import Session
    from edge_seg.bundle import Bundle

#: Mean per-organ Dice (INT8 vs fp32 labels) a variant needs to enter validated_precisions.
AGREEMENT_BAR = 0.98
#: fp32 lead (logits) of the winner over the runner-up below which a voxel counts as undecided.
UNDECIDED_MARGIN = 0.5


def label_cleanup() -> dict[str, Any]:
    """The clean-up ``edgeseg predict`` applies by default, under which agreement is measured.

    Largest component per organ, and no component under
    :data:`edge_seg.options.DEFAULT_MIN_COMPONENT_ML`: a speck of a few voxels that fp32 and
    INT8 label differently would otherwise decide a whole organ's Dice for that image.
    """
    from edge_seg.options import PredictOptions

    defaults = PredictOptions()
    return {"largest_component": defaults.lcc, "min_component_ml": defaults.min_component_ml}


def cleanup_text(cleanup: Mapping[str, Any] | None) -> str:
    """``label_cleanup()`` in words; a stored report without the key predates speck removal."""
    if cleanup is None:
        return "largest component per organ, no speck removal"
    parts = ["largest component per organ" if cleanup.get("largest_component") else "no LCC"]
    minimum = cleanup.get("min_component_ml") or 0
    parts.append(f"components under {minimum:g} ml removed" if minimum else "no speck removal")
    return ", ".join(parts)


def dice_agreement(reference: np.ndarray, candidate: np.ndarray,
                   organs: Mapping[str, int]) -> dict[str, float]:
    """Per-organ Dice between two label maps (1.0 where both are empty)."""
    scores = {}
    for name, value in organs.items():
        a = reference == value
        b = candidate == value
        total = int(a.sum()) + int(b.sum())
        scores[name] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


@dataclass
class Run:
    """Label maps and per-image times of one (backend, precision) on the held-out set.

    ``seconds`` is the whole prediction (preprocessing to label map); ``network_seconds`` the
    time spent inside the inference engine, where INT8 makes its difference.
    """

    labels: list[np.ndarray]
    seconds: list[float]
    network_seconds: list[float]


def predict_all(bundle_dir: Path, backend: str, precision: str,
                volumes: Sequence[Volume], threads: int | None = None) -> Run:
    """Full-image label maps from the runtime's predictor (one untimed warm-up patch first).

    No test-time cropping: the whole image goes through the sliding window, so the comparison
    covers every voxel the network could label.
    """
    from edge_seg.predict import PredictOptions, Predictor
    from export.calibration import presence_prior

    options = PredictOptions(backend=backend, precision=precision, crop="none", threads=threads)
    predictor = Predictor(bundle_dir, options)
    # One patch first: compilation and first-call allocations are not part of the latency.
    bundle = predictor.bundle
    patch = np.zeros((1, len(bundle.channels), *bundle.patch_size), dtype=np.float32)
    predictor.session.run(patch, presence_prior(bundle))
    run = Run(labels=[], seconds=[], network_seconds=[])
    for volume in volumes:
        start = time.perf_counter()
        prediction = predictor.predict(volume)
        run.seconds.append(time.perf_counter() - start)
        if prediction.precision != precision:
            raise EdgesegError(
                f"{bundle_dir}: asked the {backend} runtime for {precision}, it ran "
                f"{prediction.precision}"
            )
        run.network_seconds.append(float(prediction.timings.get("network", 0.0)))
        run.labels.append(np.asarray(prediction.labels))
    return run


def network_logits(bundle: Bundle, session: Session, volume: Volume,
                   threads: int | None = None) -> np.ndarray:
    """Averaged sliding-window logits (classes, z, y, x) of the whole preprocessed image.

    No crop, no post-processing; a network with a presence input gets the all-present prior.
    """
    from edge_seg.channels import channel_volumes
    from edge_seg.preprocess import preprocess
    from edge_seg.window import sliding_window
    from export.calibration import presence_prior

    image, _ = preprocess(channel_volumes(volume), bundle, threads)
    prior = presence_prior(bundle)

    def run_patches(tiles: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for logits, _ in session.run_many(tiles, prior, copy=True):
            yield logits

    out = np.empty((bundle.num_classes, *image.shape[1:]), dtype=np.float32)
    for z0, slab in sliding_window(image, bundle.patch_size, 0.5, run_patches,
                                   bundle.num_classes, threads):
        out[:, z0:z0 + slab.shape[1]] = slab
    return out


def fp32_undecided_shares(bundle_dir: Path, backend: str, volumes: Sequence[Volume],
                          threads: int | None = None,
                          margin: float = UNDECIDED_MARGIN) -> dict[str, float | None]:
    """Per organ, the share of its fp32 voxels led by less than ``margin`` logit.

    Pooled over ``volumes`` on the network's grid; None for an organ fp32 never labels.
    OpenVINO runs with the f32 precision hint, so an AMX CPU does not answer in bf16.
    """
    from edge_seg.backends.base import open_session
    from edge_seg.bundle import load_bundle
    from export.margins import MarginTally

    bundle = load_bundle(bundle_dir)
    session = open_session(bundle, backend, "fp32", threads,
                           "f32" if backend == "openvino" else None)
    tally = MarginTally(bundle.organs, (margin,))
    for volume in volumes:
        logits = network_logits(bundle, session, volume, threads)
        tally.add(logits, logits)  # fp32 against itself: only its own margins are counted
    return {name: (entry.share_below(margin) if entry.voxels else None)
            for name, entry in tally.classes.items()}


def compare(reference: Run, candidate: Run, organs: Mapping[str, int],
            names: Sequence[str], bar: float = AGREEMENT_BAR) -> dict[str, Any]:
    """The report for one variant: per-organ Dice averaged over images, mean, worst, latency."""
    per_image = [dice_agreement(r, c, organs)
                 for r, c in zip(reference.labels, candidate.labels, strict=True)]
    per_organ = {organ: float(np.mean([d[organ] for d in per_image])) for organ in organs}
    mean = float(np.mean(list(per_organ.values()))) if per_organ else 1.0
    worst_organ = min(per_organ, key=per_organ.__getitem__) if per_organ else None
    ref_s, cand_s = float(np.sum(reference.seconds)), float(np.sum(candidate.seconds))
    ref_net = float(np.sum(reference.network_seconds))
    cand_net = float(np.sum(candidate.network_seconds))
    return {
        "holdout_images": list(names),
        "dice_per_class": {k: round(v, 5) for k, v in per_organ.items()},
        # Per image, the mean over organs: one image with a near-empty organ can decide the
        # verdict, and this shows which.
        "mean_dice_per_image": {
            name: round(float(np.mean(list(d.values()))) if d else 1.0, 5)
            for name, d in zip(names, per_image, strict=True)
        },
        "mean_dice": round(mean, 5),
        "worst_class": worst_organ,
        "worst_dice": round(per_organ[worst_organ], 5) if worst_organ else 1.0,
        "seconds_fp32": round(ref_s, 4),
        "seconds_int8": round(cand_s, 4),
        "latency_ratio_int8_vs_fp32": round(cand_s / ref_s, 4) if ref_s > 0 else None,
        "speedup_int8_vs_fp32": round(ref_s / cand_s, 3) if cand_s > 0 else None,
        "network_seconds_fp32": round(ref_net, 4),
        "network_seconds_int8": round(cand_net, 4),
        "network_speedup_int8_vs_fp32": round(ref_net / cand_net, 3) if cand_net > 0 else None,
        "bar": bar,
        "passed": bool(mean >= bar),
    }


#: Bundle file key of each INT8 model and the backend it was validated on.
INT8_BACKENDS = {"int8_openvino": "openvino", "int8_onnx": "onnxruntime"}


def shipped_int8(bundle: Bundle) -> list[str]:
    """The bundle's INT8 file keys that it ships (in its files and validated)."""
    return [key for key in INT8_BACKENDS
            if key in bundle.files and key in bundle.validated_precisions]


def recheck_bundle(bundle: Bundle, volumes: Sequence[Volume], threads: int | None = None,
                   bar: float = AGREEMENT_BAR) -> dict[str, dict[str, Any]]:
    """Measure every shipped INT8 model of a bundle against its fp32 model on this CPU.

    The stored report was measured on the CPU that ran ``edgeseg quantize``. INT8 kernels
    differ between CPUs (with VNNI or without, with bf16 or without), so the same model can
    agree differently elsewhere: the plain reference model agrees 0.978 with nnU-Net on an
    AVX2 CPU and 0.981 on an AVX-512 VNNI one. Nothing in the bundle changes.

    Returns
    -------
    dict
        Per shipped INT8 file key, the :func:`compare` report on ``volumes``, plus
        ``variant`` (the stored variant that shipped in that file, e.g. a mixed level) and
        ``stored_mean_dice`` (its quantise-time figure; None if the report lacks it).
    """
    shipped = shipped_int8(bundle)
    if not shipped:
        raise EdgesegError(f"{bundle.root}: the bundle ships no validated INT8 model to check")
    names = [volume.name for volume in volumes]
    reports = {}
    cleanup = label_cleanup()
    for key in shipped:
        backend = INT8_BACKENDS[key]
        reference = predict_all(bundle.root, backend, "fp32", volumes, threads)
        candidate = predict_all(bundle.root, backend, "int8", volumes, threads)
        name, report = next(((name, variant) for name, variant in
                             bundle.fidelity.get("variants", {}).items()
                             if variant.get("file") == bundle.files[key]), (key, {}))
        reports[key] = {**compare(reference, candidate, bundle.organs, names, bar),
                        "variant": name, "stored_mean_dice": report.get("mean_dice"),
                        "label_cleanup": cleanup}
    return reports


def format_recheck(reports: Mapping[str, Mapping[str, Any]],
                   stored: Mapping[str, Any]) -> str:
    """Plain-text table of :func:`recheck_bundle`, with the bundle's stored figures."""
    lines = [f"{'model':<14} {'variant':<24} {'mean Dice':>9} {'worst (class)':>28} "
             f"{'int8/fp32 time':>15} {'stored':>7}  meets bar here"]
    for key, report in reports.items():
        worst = f"{report['worst_dice']:.4f} ({report['worst_class']})"
        ratio = report.get("latency_ratio_int8_vs_fp32")
        before = report.get("stored_mean_dice")
        lines.append(
            f"{key:<14} {report['variant']:<24} {report['mean_dice']:>9.4f} {worst:>28} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>15} "
            f"{'-' if before is None else f'{before:.4f}':>7}  "
            f"{'yes' if report['passed'] else 'NO (below ' + str(report['bar']) + ')'}"
        )
    for key, report in reports.items():
        images = report.get("mean_dice_per_image") or {}
        if len(images) > 1:
            lines.append(f"{key} per image: "
                         + ", ".join(f"{name} {value:.4f}" for name, value in images.items()))
    here = next((r["label_cleanup"] for r in reports.values() if "label_cleanup" in r), None)
    if here is not None:
        lines.append(f"label maps here: {cleanup_text(here)}")
    if stored.get("measured_at") or stored.get("cpu"):
        lines.append(f"stored: measured by edgeseg quantize on {stored.get('cpu', '?')}, "
                     f"{stored.get('measured_at', '?')}; "
                     f"label maps: {cleanup_text(stored.get('label_cleanup'))}")
    return "\n".join(lines)


def format_report(fidelity: Mapping[str, Any]) -> str:
    """Plain-text table of a bundle's fidelity section (printed by ``edgeseg quantize``)."""
    lines = [f"{'variant':<22} {'mean Dice':>9} {'worst (class)':>26} {'int8/fp32 time':>15}  "
             "validated"]
    for variant, report in fidelity.get("variants", {}).items():
        worst = f"{report['worst_dice']:.4f} ({report['worst_class']})"
        ratio = report.get("latency_ratio_int8_vs_fp32")
        ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
        lines.append(
            f"{variant:<22} {report['mean_dice']:>9.4f} {worst:>26} {ratio_text:>15}  "
            f"{'yes' if report['passed'] else 'NO (below bar)'}"
        )
    distillation = fidelity.get("distillation")
    distilled = [variant for variant, report in fidelity.get("variants", {}).items()
                 if report.get("quantised_from") == STUDENT_ORIGIN]
    if distillation and distilled:
        lines.append(f"{', '.join(distilled)}: quantised from a student distilled for INT8 "
                     f"({distillation['steps']} steps on {distillation['patches']} patches, "
                     f"{distillation['seconds']:.0f} s); agreement is with the fp32 model")
    lines += undecided_lines(fidelity)
    return "\n".join(lines)


def undecided_lines(fidelity: Mapping[str, Any]) -> list[str]:
    """For the worst classes of variants below the bar: how clearly fp32 decides them."""
    section = fidelity.get("fp32_undecided")
    if not section:
        return []
    shares = section["share_per_class"]
    known = [v for v in shares.values() if v is not None]
    worst = []
    for report in fidelity.get("variants", {}).values():
        name = report.get("worst_class")
        if not report["passed"] and shares.get(name) is not None and name not in worst:
            worst.append(name)
    if not worst or not known:
        return []
    margin = section["margin_logit"]
    lines = [f"fp32 voxels led by < {margin} logit over the runner-up (network grid; median "
             f"organ {float(np.median(known)):.0%}):"]
    lines += [f"  {name}: {shares[name]:.0%}" for name in worst]
    return lines
