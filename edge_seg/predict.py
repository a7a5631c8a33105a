"""Segment one scan with a model bundle: the whole runtime pipeline behind ``edgeseg predict``.

scan -> (middle:N crop) -> nnU-Net preprocessing -> (auto crop: first pass on non-overlapping
patches) -> Gaussian sliding window on OpenVINO / ONNX Runtime -> absent-organ handling ->
logits resampled to the scan grid and argmaxed slice by slice -> largest component per organ
(specks under 0.5 ml removed).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_seg.backends.base import ModelChoice, Session, open_session, validated_choice
from edge_seg.bundle import DEFAULT_BUNDLE, Bundle, default_bundle_dir, load_bundle
from edge_seg.channels import channel_volumes
from edge_seg.crop import (
    TILE_CACHE_BYTES,
    coarse_foreground,
    middle_slices,
    organ_extent,
    parse_crop,
    plan_tiles,
)
from edge_seg.errors import EdgesegError, NotEnoughMemoryError
from edge_seg.io import Volume, available_memory_bytes
from edge_seg.launch import open_predictor_and_read
from edge_seg.options import PredictOptions
from edge_seg.postprocess import (
    apply_component_groups,
    keep_largest_component,
    min_component_voxels,
    organ_volumes_ml,
    remove_small_components,
)
from edge_seg.preprocess import preprocess, resampling_settings
from edge_seg.resample import logits_to_labels
from edge_seg.window import PatchStream, count_patches, padding_for, sliding_window
from evaluator.labels import resolve_organs

__all__ = [
    "DEFAULT_BUNDLE",
    "PredictOptions",
    "Prediction",
    "Predictor",
    "default_bundle_dir",
    "open_predictor_and_read",
]

#: Presence-prior value meaning "not known" (HALOS convention: 1 present, 0 absent).
PRESENCE_UNKNOWN = 0.5


@dataclass
class Prediction:
    """Result of :meth:`Predictor.predict`.

    Attributes
    ----------
    labels : np.ndarray
        uint8 label map in the input volume's grid (z, y, x).
    timings : dict[str, float]
        Seconds per stage (``preprocess``, ``localise``, ``network``, ``sliding_window``,
        ``postprocess``, ``total``). ``network`` is the time spent waiting for patch results,
        within ``localise`` and ``sliding_window``: with several streams the network also
        runs while the sliding window adds up earlier patches, so that time is not in it.
    presence : dict[str, float] or None
        Presence probability per organ from the model's presence head, if it has one.
    organs : dict[str, int]
        The bundle's organ label table (without background).
    precision, backend : str
        What actually ran.
    notes : list of str
        Anything worth telling the user (fallbacks taken).
    """

    labels: np.ndarray
    timings: dict[str, float]
    presence: dict[str, float] | None
    organs: dict[str, int]
    precision: str
    backend: str
    notes: list[str] = field(default_factory=list)

    def volumes_ml(self, spacing_mm: tuple[float, ...]) -> dict[str, float]:
        return organ_volumes_ml(self.labels, spacing_mm, self.organs)


class Predictor:
    """A compiled bundle, ready to segment any number of scans.

    Parameters
    ----------
    bundle_dir : path-like or None
        Bundle folder (``edgeseg.json`` + model files); None for the embedded default.
    options : PredictOptions or None
    """

    def __init__(self, bundle_dir: str | Path | None = None, options: PredictOptions | None = None):
        self.options = options or PredictOptions()
        self.bundle: Bundle = load_bundle(
            bundle_dir if bundle_dir is not None else default_bundle_dir()
        )
        self.crop = parse_crop(self.options.crop)
        self.options.check()
        try:
            self.absent = resolve_organs(self.options.absent_organs, self.bundle.labels)
        except ValueError as exc:
            raise EdgesegError(f"--absent: {exc}") from exc
        try:
            self.present = resolve_organs(self.options.present_organs, self.bundle.labels)
        except ValueError as exc:
            raise EdgesegError(f"--present: {exc}") from exc
        if set(self.absent) & set(self.present):
            both = ", ".join(sorted(set(self.absent) & set(self.present)))
            raise EdgesegError(f"--absent/--present: {both} given as both absent and present")
        self.session: Session = open_session(
            self.bundle,
            self.options.backend,
            self.options.precision,
            self.options.threads,
            self.options.openvino_precision_hint,
            self.options.streams,
        )
        self.notes: list[str] = []
        ran = str(getattr(self.session, "inference_precision", ""))
        if self.session.choice.precision == "bf16" and "bf" not in ran:
            # OpenVINO falls back silently on CPUs without AVX512-BF16/AMX; say so.
            self.notes.append("--precision bf16: this CPU has no bf16 support; ran float32")
        self.notes += _unvalidated_notes(self.bundle, self.session.choice)
        self.notes += _present_notes(self.bundle, self.present)
        self.organs = self.bundle.organs
        self.presence_names = self.bundle.presence_names

    # -- presence ---------------------------------------------------------------------------

    def _prior(self, present: dict[str, bool] | None = None) -> np.ndarray | None:
        """Presence vector for the network's prior input (HALOS convention): 0 for organs
        known to be absent, 1 for organs known to be present (``present_organs``, or predicted
        present by the presence head), 0.5 ("unknown") for the rest."""
        if not self.bundle.presence_input:
            return None
        prior = np.full((1, len(self.bundle.presence_input)), PRESENCE_UNKNOWN, np.float32)
        for i, name in enumerate(self.bundle.presence_input):
            if name in self.absent:
                prior[0, i] = 0.0
            elif name in self.present:
                prior[0, i] = 1.0
            elif present is not None and name in present:
                prior[0, i] = 1.0 if present[name] else 0.0
        return prior

    def _runner(
        self, prior: np.ndarray | None, seen: dict[str, float], clock: list[float]
    ) -> PatchStream:
        """A patch stream through the session; ``clock[0]`` adds up the time spent waiting
        for the network, and ``seen`` keeps each organ's highest presence logit. Each result
        is valid until the next one is asked for (the first pass copies what it keeps)."""

        def run_patches(tiles: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            results = self.session.run_many(tiles, prior, copy=False)
            while True:
                start = time.perf_counter()
                try:
                    logits, presence_logits = next(results)
                except StopIteration:
                    return
                finally:
                    clock[0] += time.perf_counter() - start
                self._check_logits(logits)
                if presence_logits is not None:
                    for name, value in zip(
                        self.presence_names, presence_logits.tolist(), strict=False
                    ):
                        seen[name] = max(seen.get(name, -np.inf), float(value))
                yield logits

        return run_patches

    def _check_logits(self, logits: np.ndarray) -> None:
        """Each patch's logits must have one channel per label and the patch's shape.

        The backend checked the graph's declared shapes, but dynamic ones are known only now;
        a class count that differs from the labels would shift organs onto each other.
        """
        want = (len(self.bundle.labels), *self.bundle.patch_size)
        if logits.shape != want:
            raise EdgesegError(
                f"{self.session.choice.path}: the model returned logits of shape "
                f"{'x'.join(map(str, logits.shape))}, the bundle's edgeseg.json implies "
                f"{'x'.join(map(str, want))} (labels x patch_size)"
            )

    # -- main entry -------------------------------------------------------------------------

    def predict(self, volume: Volume) -> Prediction:
        """Segment ``volume``; the label map has the volume's exact grid."""
        started = time.perf_counter()
        bundle, options = self.bundle, self.options
        timings: dict[str, float] = {}
        notes: list[str] = list(self.notes)
        constant = single_intensity(volume.array)
        if constant is not None:
            notes.append(
                f"{volume.path or 'volume'}: every voxel has the intensity {constant:g}; "
                "there is no contrast to segment, so any organ in the label map is not real"
            )
        z_keep = slice(0, volume.shape[0])
        if self.crop.mode == "middle":
            z_keep = middle_slices(volume.shape[0], self.crop.slices)
        scan = channel_volumes(volume, z_keep)  # channel 0 first; channels 1.. on its grid

        t = time.perf_counter()
        image, geometry = preprocess(scan, bundle, options.threads)
        timings["preprocess"] = time.perf_counter() - t
        self._check_memory(volume, image)

        clock = [0.0]
        want_auto = options.presence == "auto"
        if want_auto and not bundle.presence_output:
            notes.append("--presence auto: this model has no presence head; using the prior")
            want_auto = False
        box = None
        first = None
        presence_seen: dict[str, float] = {}
        # The main pass can reuse first-pass tiles only if it feeds the network the same
        # prior; with --presence auto a presence input gets the predicted one instead.
        reuse = self.crop.mode == "auto" and not (want_auto and bundle.presence_input)
        t = time.perf_counter()
        if self.crop.mode == "auto" or want_auto:
            coarse_seen: dict[str, float] = {}
            # With --presence auto nothing is known yet about the organs not declared absent.
            prior = self._prior()
            first = coarse_foreground(
                image,
                bundle.patch_size,
                self._runner(prior, coarse_seen, clock),
                options.step,
                keep_tiles=reuse,
            )
            if self.crop.mode == "auto":
                box = organ_extent(first.found, geometry.target_spacing_mm)
                if box is None:
                    notes.append("--crop auto: first pass found no organ; segmented the whole scan")
            presence_seen = coarse_seen
        timings["localise"] = time.perf_counter() - t

        present = None
        if want_auto:
            present = {name: _sigmoid(v) >= 0.5 for name, v in presence_seen.items()}
        # Absent organs go through the presence input where the network has one for them;
        # all others are excluded before the argmax.
        excluded = set(self.absent) - set(bundle.presence_input or ())
        if present is not None and not bundle.presence_input:
            excluded |= {name for name, ok in present.items() if not ok and name in self.organs}
        keep = [
            v
            for name, v in sorted(bundle.labels.items(), key=lambda kv: kv[1])
            if name not in excluded
        ]
        keep_idx = np.asarray(keep, dtype=np.intp)
        run_patches = self._runner(self._prior(present), {} if want_auto else presence_seen, clock)

        def kept(logits: np.ndarray) -> np.ndarray:
            return logits if len(keep) == logits.shape[0] else logits[keep_idx]

        t = time.perf_counter()
        placement: dict[str, object] = {}  # where the main pass puts its patches
        if box is not None:
            assert first is not None
            plan = plan_tiles(
                box,
                image.shape[1:],
                bundle.patch_size,
                options.step,
                first.starts if reuse else None,
            )
            known = {at: kept(first.tiles[at]) for at in plan.reused if at in first.tiles}
            placement = {"starts": plan.starts, "box": box, "precomputed": known}
            first = None  # the reused tiles are in the main pass's hands now
        slabs = sliding_window(
            image,
            bundle.patch_size,
            options.step,
            lambda tiles: map(kept, run_patches(tiles)),
            len(keep),
            options.threads,
            **placement,
        )
        cropped = logits_to_labels(
            slabs,
            geometry.network_shape,
            geometry.shape_after_cropping,
            geometry.target_spacing_mm,
            geometry.spacing_mm,
            keep,
            *resampling_settings(bundle),
            box=box,
        )
        labels_part = geometry.to_scan(cropped)
        timings["sliding_window"] = time.perf_counter() - t
        timings["network"] = clock[0]

        t = time.perf_counter()
        if self.crop.mode == "middle":
            labels = np.zeros(volume.shape, dtype=np.uint8)
            labels[z_keep] = labels_part
        else:
            labels = labels_part
        min_voxels = min_component_voxels(options.min_component_ml, volume.spacing_mm)
        groups = bundle.largest_component_groups
        if options.lcc and groups is None:
            keep_largest_component(labels, sorted(self.organs.values()), min_voxels=min_voxels)
        else:
            if options.lcc:
                # The model's own rule (nnU-Net's, found on its cross-validation), in its order.
                apply_component_groups(
                    labels, [[bundle.labels[n] for n in group] for group in groups or ()])
            if min_voxels:
                remove_small_components(labels, min_voxels, sorted(self.organs.values()))
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started

        presence = None
        if bundle.presence_output and presence_seen:
            presence = {name: _sigmoid(v) for name, v in presence_seen.items()}
        return Prediction(
            labels=labels,
            timings=timings,
            presence=presence,
            organs=dict(self.organs),
            precision=self.session.choice.precision,
            backend=self.session.choice.backend,
            notes=notes,
        )

    def _check_memory(self, volume: Volume, image: np.ndarray) -> None:
        patch = self.bundle.patch_size
        pads = padding_for(image.shape[1:], patch)
        plane = (image.shape[2] + sum(pads[1])) * (image.shape[3] + sum(pads[2]))
        need = (
            volume.array.size * 2  # labels + cropped label map
            + self.bundle.num_classes * 4 * (patch[0] + 8) * plane  # sliding-window accumulator
            + image.nbytes
        )
        if self.crop.mode == "auto":  # first-pass tiles kept for reuse
            tiles = count_patches(image.shape[1:], patch, 1.0) + 1
            need += min(TILE_CACHE_BYTES, tiles * self.bundle.num_classes * 4 * int(np.prod(patch)))
        have = available_memory_bytes()
        if need > have:
            where = volume.path or "volume"
            raise NotEnoughMemoryError(
                f"{where}: segmenting needs about {need / 2**30:.1f} GiB more memory, "
                f"only {have / 2**30:.1f} GiB is available"
            )


def single_intensity(array: np.ndarray, slab_voxels: int = 1 << 20) -> float | None:
    """The one value every voxel of ``array`` has, or None when it has two or more.

    Looks a slab of slices at a time: a real scan differs from its first voxel within the
    first slab, so the check costs a full pass only for a blank (all 0, all -1024) volume.
    """
    if array.size == 0:
        return None
    first = array.flat[0]
    # Slices of the first axis are views whatever the array's memory layout (a reshape of a
    # transposed array would copy all of it).
    rows = max(1, slab_voxels // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], rows):
        if (array[start : start + rows] != first).any():
            return None
    return float(first)


def _unvalidated_notes(bundle: Bundle, choice: ModelChoice) -> list[str]:
    """Say when ``--precision int8`` runs a model the fidelity report did not validate.

    It still runs (export and benchmarks time such candidates on purpose), but a user who asks
    for INT8 on a bundle whose report did not pass it must hear that the labels may differ.
    """
    if validated_choice(bundle, choice):
        return []
    validated = ", ".join(bundle.validated_precisions) or "fp32"
    return [
        f"--precision {choice.precision}: this bundle's {choice.file_key} model was not "
        f"validated on held-out images (validated: {validated}); its labels may differ "
        "from fp32's"
    ]


def _present_notes(bundle: Bundle, present: list[str]) -> list[str]:
    """Say when ``--present`` organs have nowhere to go: only a presence input takes them."""
    if not present:
        return []
    if not bundle.presence_input:
        return [
            f"--present {', '.join(present)}: this model has no presence input, so --present "
            "changes nothing (every organ is segmented where the model finds it)"
        ]
    outside = [name for name in present if name not in bundle.presence_input]
    if not outside:
        return []
    return [
        f"--present {', '.join(outside)}: the model's presence input covers only "
        f"{', '.join(bundle.presence_input)}; ignored for {', '.join(outside)}"
    ]


def _sigmoid(value: float) -> float:
    return float(1.0 / (1.0 + np.exp(-value)))
