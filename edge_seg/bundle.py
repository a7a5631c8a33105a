"""The model bundle: a folder holding ``edgeseg.json`` beside the model files.

A bundle is self-describing: the runtime needs nothing else to reproduce the trained model's
preprocessing. ``export/`` writes bundles, ``edge_seg`` reads them; this module is the contract
between the two and must stay torch-free.

Schema of ``edgeseg.json`` (format versions 1 and 2)
----------------------------------------------------
``format_version`` : int
    Bundles with a newer version than :data:`FORMAT_VERSION` are refused, and so is any
    version below 1. Version 2 adds ``largest_component_groups``; a bundle is written with
    the lowest version that holds its fields, so that a runtime too old for one of them
    refuses the bundle ("upgrade edgeseg") instead of silently running without it.
``name`` : str
``modality`` : ``"CT"`` or ``"MR"``
``channels`` : list of str
    One entry per network input channel, e.g. ``["CT"]``.
``labels`` : dict[str, int]
    Organ name -> integer value, ``"background": 0`` included. FLARE numbering where the organ
    exists in FLARE (see :mod:`evaluator.labels`). Value ``v`` is the network's output channel
    ``v``, so the values are exactly 0..N-1 for a network with N output channels.
``axis_order`` : ``"zyx"``
    Arrays are in SimpleITK/NumPy order (slowest axis first), as nnU-Net's ``SimpleITKIO``
    hands them to the network; no reorientation is applied (nnU-Net applies none either).
``transpose_forward`` : list[int]
    Axis permutation applied after reading (nnU-Net plans' ``transpose_forward``).
``spacing_mm`` : list[float]
    Target voxel spacing in the transposed axis order.
``normalization`` : list of dict, one per channel
    ``{"scheme": "ct", "lower": p00_5, "upper": p99_5, "mean": m, "std": s}`` (clip, then
    z-score with the training foreground statistics, nnU-Net's ``CTNormalization``) or
    ``{"scheme": "zscore"}`` (per-image z-score, nnU-Net's ``ZScoreNormalization``) or
    ``{"scheme": "none"}``.
``patch_size`` : list[int]
    Sliding-window patch in the transposed axis order.
``resampling`` : dict
    ``{"anisotropy_threshold": 3.0}`` - nnU-Net resamples the out-of-plane axis separately
    (with order 0) when the spacing ratio exceeds this threshold.
``presence_input`` : list of str or null
    Organ order of the network's presence-prior input (1 = present, 0 = absent), organs of
    ``labels``, or null for a network without one.
``presence_output`` : bool
    Whether the network returns presence logits as a second output (same organ order as
    ``presence_input``, or as ``labels`` without background when there is no input).
``io_names`` : dict
    ``{"image": "image", "presence": "presence", "logits": "logits",
    "presence_logits": "presence_logits"}``.
``files`` : dict[str, str]
    Precision -> path relative to the bundle, inside its folder: ``"fp32"`` (ONNX, always
    present), ``"int8_openvino"`` (OpenVINO IR ``.xml``; ``.bin`` beside it), ``"int8_onnx"``
    (QDQ ONNX), and optionally ``"int8_openvino_mixed"``.
``validated_precisions`` : list of str
    Precisions whose fidelity report met the bar; ``--precision auto`` picks among these.
``mirror_axes`` : list[int]
    Axes the source model allowed for test-time mirroring (informational; edgeseg runs without
    TTA, like ``nnUNetv2_predict --disable_tta``).
``largest_component_groups`` : list of list of str, optional
    The model's own connected-component post-processing, as nnU-Net determines it on the
    cross-validation (``postprocessing.json``, imported by ``edgeseg export nnunet
    --postprocessing``): for each group in order, the union of its organs keeps only its
    largest component. Applied instead of the default largest component per organ; ``[]``
    means nnU-Net found none that helps. Absent or null: the runtime's default.
``provenance`` : dict
    Source checkpoint path and SHA-256, export tool and version, calibration set, ONNX max abs
    difference vs PyTorch, and anything else the exporter knows.
``fidelity`` : dict
    The quantisation report (per-class Dice INT8 vs fp32, latency ratios).

What the runtime checks on loading (types, lengths, ranges; see :mod:`edge_seg.bundle_checks`)
and what it checks against the model file when a backend compiles it (input and output names,
class count, presence input; see :mod:`edge_seg.backends.ports`) is refused with one line
naming ``edgeseg.json`` and the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_seg.bundle_checks import check_manifest, parse_manifest
from edge_seg.errors import EdgesegError, require_folder

#: The newest manifest version this runtime reads.
FORMAT_VERSION = 2
MANIFEST_NAME = "edgeseg.json"
#: The bundle ``edgeseg predict`` uses when no ``--model`` is given.
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "flare_ct_plain"

DEFAULT_IO_NAMES = {
    "image": "image",
    "presence": "presence",
    "logits": "logits",
    "presence_logits": "presence_logits",
}


@dataclass
class Bundle:
    """In-memory form of ``edgeseg.json``; ``root`` is the bundle folder."""

    name: str
    modality: str
    channels: list[str]
    labels: dict[str, int]
    spacing_mm: list[float]
    normalization: list[dict[str, Any]]
    patch_size: list[int]
    files: dict[str, str]
    transpose_forward: list[int] = field(default_factory=lambda: [0, 1, 2])
    axis_order: str = "zyx"
    resampling: dict[str, Any] = field(default_factory=lambda: {"anisotropy_threshold": 3.0})
    presence_input: list[str] | None = None
    presence_output: bool = False
    io_names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IO_NAMES))
    validated_precisions: list[str] = field(default_factory=lambda: ["fp32"])
    mirror_axes: list[int] = field(default_factory=list)
    largest_component_groups: list[list[str]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1

    @property
    def organs(self) -> dict[str, int]:
        """Labels without background."""
        return {name: value for name, value in self.labels.items() if value != 0}

    @property
    def presence_names(self) -> list[str]:
        """The organs of the presence input and head, in order (the labels' order where the
        model has no presence input)."""
        organs = self.organs
        return list(self.presence_input or sorted(organs, key=organs.get))

    @property
    def graph_inputs(self) -> list[str]:
        """The model graph's input names in call order: image, then presence if it has one."""
        io = {**DEFAULT_IO_NAMES, **self.io_names}
        return [io["image"]] + ([io["presence"]] if self.presence_input else [])

    @property
    def graph_outputs(self) -> list[str]:
        """The model graph's output names: logits, then presence logits if it has a head."""
        io = {**DEFAULT_IO_NAMES, **self.io_names}
        return [io["logits"]] + ([io["presence_logits"]] if self.presence_output else [])

    def model_path(self, precision: str) -> Path:
        """Absolute path of the model file for ``precision`` (raises if the bundle lacks it)."""
        if precision not in self.files:
            have = ", ".join(sorted(self.files))
            raise EdgesegError(f"{self._where()}: no '{precision}' model in bundle (has: {have})")
        assert self.root is not None
        return self.root / self.files[precision]

    @property
    def required_format_version(self) -> int:
        """The lowest manifest version that holds this bundle's fields."""
        return 2 if self.largest_component_groups is not None else 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("root")
        data["format_version"] = max(self.format_version, self.required_format_version)
        return data

    def save(self, folder: str | Path) -> Path:
        """Write ``edgeseg.json`` into ``folder`` (atomically) and return its path."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        self.root = folder
        return path

    def _where(self) -> str:
        return str(self.root / MANIFEST_NAME) if self.root else MANIFEST_NAME


def default_bundle_dir() -> Path:
    """The embedded default bundle (raises if this installation has none)."""
    if not (DEFAULT_BUNDLE / MANIFEST_NAME).is_file():
        raise EdgesegError(
            f"{DEFAULT_BUNDLE}: no default model bundle is installed; pass --model BUNDLE/"
        )
    return DEFAULT_BUNDLE


def model_channels(folder: str | Path | None) -> int:
    """The input channels of the bundle in ``folder`` (the embedded default if None), from its
    manifest alone: callers need it before the model compiles (to read a scan's channel
    files beside it)."""
    return len(load_bundle(folder if folder is not None else default_bundle_dir()).channels)


def load_bundle(folder: str | Path) -> Bundle:
    """Read and check a bundle folder.

    Raises :class:`EdgesegError` (one line, naming the manifest and the field) when the
    manifest is missing, unreadable, of an unsupported format version, has a field of the
    wrong type, length or range (see :mod:`edge_seg.bundle_checks`), or refers to model files
    outside the bundle folder or not there.
    """
    folder = require_folder(folder, "model bundle folder")
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise EdgesegError(f"{folder}: not a model bundle ({MANIFEST_NAME} is missing)")
    try:
        text = manifest.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgesegError(f"{manifest}: unreadable bundle manifest ({exc})") from exc
    data = parse_manifest(text, str(manifest))
    fields = check_manifest(data, str(manifest), FORMAT_VERSION, {"io_names": DEFAULT_IO_NAMES})
    known = set(Bundle.__dataclass_fields__) - {"root"}
    try:
        bundle = Bundle(**{k: v for k, v in fields.items() if k in known})
    except TypeError as exc:
        raise EdgesegError(f"{manifest}: incomplete bundle manifest ({exc})") from exc
    bundle.root = folder
    _check_model_files(bundle, folder)
    return bundle


def _check_model_files(bundle: Bundle, folder: Path) -> None:
    """Every listed model file (and an IR's weights) must be a file in the bundle."""
    for precision, rel in bundle.files.items():
        path = folder / rel
        if not path.is_file():
            raise EdgesegError(f"{path}: model file for '{precision}' is missing from the bundle")
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise EdgesegError(f"{path.with_suffix('.bin')}: OpenVINO weights file is missing")
