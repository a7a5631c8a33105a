"""Write a model bundle (``edgeseg.json`` + ``model.onnx``) from a PyTorch network.

The manifest for nnU-Net models is derived from ``plans.json`` and ``dataset.json``: target
spacing, ``transpose_forward``, per-channel normalisation with the training foreground
intensity statistics (CT), patch size, labels and mirror axes, so that the runtime reproduces
nnU-Net's preprocessing for that configuration without nnU-Net. The bundle is written into a
temporary folder and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.bundle import DEFAULT_IO_NAMES, FORMAT_VERSION, Bundle, load_bundle
from edge_seg.bundle_checks import check_manifest
from edge_seg.errors import EdgesegError
from edge_seg.io import check_writable_location
from evaluator.atomic import atomic_dir
from evaluator.labels import canonical_organ_name
from export.nnunet_reader import NnunetResults
from export.onnx_export import (
    OPSET,
    axiswise_instance_norm,
    check_onnx,
    compare_with_torch,
    export_onnx,
)

ONNX_NAME = "model.onnx"
# nnU-Net's ANISO_THRESHOLD: resample the out-of-plane axis separately beyond this ratio.
ANISOTROPY_THRESHOLD = 3.0
# Largest ONNX-vs-PyTorch output difference accepted at export, relative to the output's
# range (at least 1): float32 reductions over a whole patch legitimately differ by ~1e-4 of
# the logit range between engines; a wrong graph differs by far more.
MAX_ABS_DIFF = 1e-3
NORM_CHOICES = ("native", "axiswise")


def normalization_from_plans(results: NnunetResults) -> list[dict[str, Any]]:
    """Per-channel normalisation in the bundle's form, from the configuration's schemes."""
    schemes = results.configuration.get("normalization_schemes")
    where = results.folder / "plans.json"
    if not schemes:
        raise EdgesegError(f"{where}: configuration has no 'normalization_schemes'")
    properties = results.plans.get(
        "foreground_intensity_properties_per_channel",
        results.plans.get("foreground_intensity_properties_by_modality", {}),
    )
    masks = results.configuration.get("use_mask_for_norm", [False] * len(schemes))
    out: list[dict[str, Any]] = []
    for channel, scheme in enumerate(schemes):
        if scheme == "CTNormalization":
            stats = properties.get(str(channel)) if isinstance(properties, dict) else None
            if stats is None:
                raise EdgesegError(
                    f"{where}: CTNormalization for channel {channel} but no "
                    "foreground_intensity_properties_per_channel entry"
                )
            keys = ("percentile_00_5", "percentile_99_5", "mean", "std")
            lacking = [key for key in keys if not isinstance(stats, dict) or key not in stats]
            if lacking:
                raise EdgesegError(f"{where}: foreground_intensity_properties_per_channel "
                                   f"channel {channel} lacks {', '.join(lacking)}")
            try:  # NaN, a zero std or lower > upper: refused by the manifest check
                lower, upper, mean, std = (float(stats[key]) for key in keys)
            except (TypeError, ValueError) as exc:
                raise EdgesegError(f"{where}: foreground_intensity_properties_per_channel "
                                   f"channel {channel}: not a number ({exc})") from exc
            out.append({"scheme": "ct", "lower": lower, "upper": upper, "mean": mean,
                        "std": std})
        elif scheme == "ZScoreNormalization":
            entry: dict[str, Any] = {"scheme": "zscore"}
            if channel < len(masks) and masks[channel]:
                # nnU-Net z-scores inside the nonzero mask when cropping shrank the image a lot.
                entry["use_mask"] = True
            out.append(entry)
        elif scheme == "NoNormalization":
            out.append({"scheme": "none"})
        else:
            raise EdgesegError(
                f"{where}: normalisation scheme '{scheme}' is not supported by the edgeseg runtime "
                "(supported: CTNormalization, ZScoreNormalization, NoNormalization)"
            )
    return out


def labels_from_dataset(dataset: dict[str, Any]) -> dict[str, int]:
    """dataset.json labels with organ names in the canonical (FLARE/TotalSegmentator) spelling.

    The integer values stay as trained: they are the network's output channels. nnU-Net's
    ``ignore`` label (unannotated voxels, the highest value) marks training data only: the
    network has no output channel for it, so it is not a label of the bundle.
    """
    labels = {}
    for name, value in dataset["labels"].items():
        if name == "ignore":
            continue
        key = "background" if int(value) == 0 else canonical_organ_name(str(name))
        labels[key] = int(value)
    return labels


def bundle_from_nnunet(results: NnunetResults, name: str | None = None) -> Bundle:
    """The manifest (without model files) for an nnU-Net results folder, checked as the
    runtime will check it (:func:`check_new_manifest`)."""
    plans_path = results.folder / "plans.json"
    lacking = [key for key in ("spacing", "patch_size") if key not in results.configuration]
    if lacking:
        raise EdgesegError(f"{plans_path}: configuration '{results.configuration_name}' lacks "
                           f"{', '.join(lacking)}")
    normalization = normalization_from_plans(results)
    channels_raw = results.dataset.get("channel_names", results.dataset.get("modality", {}))
    channels = [str(channels_raw[k]) for k in sorted(channels_raw, key=int)]
    modality = "CT" if normalization[0]["scheme"] == "ct" else "MR"
    dataset_name = results.plans.get("dataset_name", results.folder.parent.name)
    arch = results.configuration.get("architecture")  # checked when the network is built
    resampling = results.configuration.get("resampling_fn_data_kwargs")
    bundle = Bundle(
        name=name or f"{dataset_name}_{results.configuration_name}",
        modality=modality,
        channels=channels,
        labels=labels_from_dataset(results.dataset),
        # Taken as they are: the manifest check below refuses wrong lengths and types.
        spacing_mm=results.configuration["spacing"],
        normalization=normalization,
        patch_size=results.configuration["patch_size"],
        files={},
        transpose_forward=results.plans.get("transpose_forward", [0, 1, 2]),
        resampling={
            "anisotropy_threshold": ANISOTROPY_THRESHOLD,
            **{k: v for k, v in (resampling if isinstance(resampling, dict) else {}).items()
               if isinstance(v, (int, float, bool)) or v is None},
        },
        mirror_axes=list(results.mirror_axes),
        provenance={
            "source": "nnunetv2",
            "results_folder": str(results.folder.resolve()),
            "dataset_name": dataset_name,
            "plans_name": results.plans.get("plans_name"),
            "configuration": results.configuration_name,
            "trainer": results.trainer_name,
            "folds": list(results.folds),
            "ensemble": "mean of fold logits" if len(results.folds) > 1 else None,
            "checkpoints": [
                {"path": str(path.resolve()), "sha256": digest}
                for path, digest in zip(results.checkpoint_paths, results.checkpoint_sha256,
                                        strict=True)
            ],
            "network_class": arch.get("network_class_name") if isinstance(arch, dict) else None,
        },
    )
    check_new_manifest(bundle, f"{plans_path} (with dataset.json, as the bundle's manifest)")
    return bundle


def check_new_manifest(bundle: Bundle, where: str) -> None:
    """Check the manifest derived from the user's plans or spec file as ``load_bundle`` will.

    Done before the export work, naming the source: otherwise a bad field (two spacings, a
    gap in the label values, a zero std) surfaces as a traceback in preprocessing, or as an
    error about the temporary bundle folder once the ONNX file is written. The spacing and
    patch size come back as floats and ints, as the runtime reads them.
    """
    fields = check_manifest({**bundle.to_json(), "files": {"fp32": ONNX_NAME}}, where,
                            FORMAT_VERSION, {"io_names": DEFAULT_IO_NAMES})
    bundle.spacing_mm = [float(s) for s in fields["spacing_mm"]]
    bundle.patch_size = [int(p) for p in fields["patch_size"]]


def _tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    import edge_seg

    return {
        "edgeseg": getattr(edge_seg, "__version__", "unknown"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def check_output_folder(out: str | Path) -> Path:
    """Refuse an output path that exists (an empty folder is accepted and replaced)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgesegError(f"{out}: output bundle path already exists; choose a new folder")
    # Checked before the (minutes of) export work, not when the bundle is renamed into place.
    check_writable_location(out)
    return out


#: Provenance keys whose paths locate the PyTorch source (rebuilt for ``quantize --distill``).
SOURCE_PATH_KEYS = ("results_folder", "weights")


def source_paths_from_bundle(provenance: dict[str, Any], out: Path) -> dict[str, str]:
    """The source paths of ``provenance`` relative to the bundle folder ``out``
    (``<key>_from_bundle``), so that a checkout or copy that moves both together still finds
    the source (:mod:`export.source_network`); the absolute path stays the first choice."""
    relative = {}
    for key in SOURCE_PATH_KEYS:
        if provenance.get(key):
            relative[f"{key}_from_bundle"] = os.path.relpath(
                Path(provenance[key]).resolve(), Path(out).resolve())
    return relative


def network_source(bundle: Bundle) -> str:
    """The file or factory the network came from, to name it in error messages."""
    provenance = bundle.provenance
    for key in ("torchscript", "factory", "results_folder"):
        if provenance.get(key):
            return str(provenance[key])
    return bundle.name


def check_network_outputs(module: Any, inputs: Sequence[np.ndarray],
                          bundle: Bundle) -> list[np.ndarray]:
    """Run the PyTorch network once on the validation inputs; return its outputs.

    A network that does not fit the manifest (another number of input channels or classes
    than the spec or plans say, no presence input where one is declared, one output where two
    are) otherwise fails inside the ONNX exporter, with an error about the temporary bundle
    folder, or - a class count that differs - writes a bundle the runtime then refuses.
    """
    from export.onnx_export import torch_outputs

    source = network_source(bundle)
    shapes = " + ".join(f"({', '.join(map(str, x.shape))})" for x in inputs)
    try:
        outputs = torch_outputs(module, inputs)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # TorchScript puts its interpreter's traceback first and the error itself last.
        reason = lines[-1] if len(lines) > 1 and "TorchScript" in lines[0] else (
            f"{type(exc).__name__}: {lines[0] if lines else ''}")
        raise EdgesegError(
            f"{source}: the network fails on the bundle's input {shapes} (channels, patch "
            f"size, presence input as declared) ({reason})"
        ) from exc
    names = bundle.graph_outputs
    if len(outputs) != len(names):
        raise EdgesegError(f"{source}: the network returns {len(outputs)} output(s), the "
                           f"bundle declares {len(names)} ({', '.join(names)}; see "
                           "presence_output)")
    logits = outputs[0]
    want = (inputs[0].shape[0], bundle.num_classes, *inputs[0].shape[2:])
    if logits.shape != want:
        raise EdgesegError(
            f"{source}: the network's logits have shape {tuple(logits.shape)} for input "
            f"{shapes}; the bundle needs {want} ({bundle.num_classes} classes: the labels, "
            "background included, on the input's grid)"
        )
    if len(outputs) > 1 and outputs[1].shape[-1] != len(bundle.presence_names):
        raise EdgesegError(f"{source}: the presence head returns {outputs[1].shape[-1]} "
                           f"values, the bundle has {len(bundle.presence_names)} organs")
    return outputs


def write_bundle(
    out: str | Path,
    bundle: Bundle,
    module: Any,
    validation_inputs: Sequence[np.ndarray],
    validation_source: str,
    max_abs_diff: float = MAX_ABS_DIFF,
    norm: str = "native",
) -> Bundle:
    """Export ``module`` to ONNX, validate it, and write the bundle folder atomically.

    Parameters
    ----------
    out
        Bundle folder to create (must not exist, or be empty).
    bundle
        Manifest without ``files``; ``io_names``, ``presence_input`` and ``presence_output``
        decide the graph's inputs and outputs.
    module
        The PyTorch network (eval mode), called as ``module(image[, presence])``.
    validation_inputs
        A real preprocessed patch ``(1, C, *patch_size)`` (and the presence vector ``(1, K)``
        for a network with a presence input); used for tracing and for the ONNX Runtime check.
    validation_source
        Where the patch came from (recorded in the provenance).
    max_abs_diff
        Tolerance of the ONNX Runtime check, relative to max(1, largest |PyTorch output|).
    norm
        ``"native"``: instance norms as ONNX InstanceNormalization (fastest on OpenVINO);
        ``"axiswise"``: reduced one axis at a time (ONNX Runtime numerics within ~1e-5 of
        PyTorch; see :func:`export.onnx_export.axiswise_instance_norm`).
    """
    if norm not in NORM_CHOICES:
        raise EdgesegError(f"--onnx-norm {norm}: expected one of {', '.join(NORM_CHOICES)}")
    out = check_output_folder(out)
    input_names, output_names = bundle.graph_inputs, bundle.graph_outputs
    if len(validation_inputs) != len(input_names):
        raise EdgesegError(
            f"validation inputs: got {len(validation_inputs)} arrays for inputs {input_names}"
        )
    expected = check_network_outputs(module, validation_inputs, bundle)
    with atomic_dir(out) as tmp:
        graph = axiswise_instance_norm(module) if norm == "axiswise" else module
        onnx_path = export_onnx(graph, validation_inputs, tmp / ONNX_NAME, input_names,
                                output_names)
        check_onnx(onnx_path)
        # Always against the untouched PyTorch module: the reference is the trained network.
        diffs, scales = compare_with_torch(module, onnx_path, validation_inputs, input_names,
                                           output_names, expected)
        for name, diff in diffs.items():
            limit = max_abs_diff * max(1.0, scales[name])
            if not np.isfinite(diff) or diff > limit:
                raise EdgesegError(
                    f"{out}: ONNX Runtime '{name}' differs from PyTorch by {diff:.3g} (limit "
                    f"{limit:.3g} = {max_abs_diff:g} x output range); the export is not faithful"
                )
        bundle.files = {"fp32": ONNX_NAME}
        bundle.validated_precisions = ["fp32"]
        bundle.provenance = {
            **bundle.provenance,
            **source_paths_from_bundle(bundle.provenance, out),
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "tools": _tool_versions(),
            "onnx_opset": OPSET,
            "onnx_check": {
                "checker": "passed",
                "max_abs_diff": diffs,
                "max_abs_output": scales,
                "relative_tolerance": max_abs_diff,
                "instance_norm": norm,
                "patch_shape": list(validation_inputs[0].shape),
                "patch_source": validation_source,
            },
        }
        bundle.save(tmp)
        load_bundle(tmp)  # the runtime must accept what we wrote
    return load_bundle(out)


def export_nnunet(
    results_dir: str | Path,
    out: str | Path,
    folds: Sequence[str] = ("0",),
    checkpoint_name: str = "checkpoint_final.pth",
    configuration: str | None = None,
    name: str | None = None,
    images: Sequence[Path] | None = None,
    trust_checkpoint: bool = False,
    norm: str = "native",
    postprocessing: str | Path | None = None,
) -> Bundle:
    """``edgeseg export nnunet``: results folder -> bundle (ensemble of folds when several).

    ``postprocessing``: nnU-Net's ``postprocessing.json`` (or ``.pkl``) from its model
    selection; its largest-component steps become the bundle's ``largest_component_groups``.
    """
    from export.calibration import validation_inputs
    from export.nnunet_postprocessing import read_postprocessing
    from export.nnunet_reader import build_fold_networks, read_results
    from export.onnx_export import fold_ensemble
    from export.safe_checkpoint import sha256_of

    check_output_folder(out)
    results = read_results(results_dir, folds, checkpoint_name, trust_checkpoint, configuration)
    bundle = bundle_from_nnunet(results, name)  # plans and dataset errors before the build
    if postprocessing is not None:
        path = Path(postprocessing)
        bundle.largest_component_groups = read_postprocessing(path, bundle.labels)
        bundle.provenance["postprocessing"] = {"path": str(path.resolve()),
                                               "sha256": sha256_of(path)}
    module = fold_ensemble(build_fold_networks(results))
    inputs, source = validation_inputs(bundle, images)
    return write_bundle(out, bundle, module, inputs, source, norm=norm)


def export_torch(
    spec_path: str | Path,
    out: str | Path,
    factory: str | None = None,
    weights: str | Path | None = None,
    torchscript: str | Path | None = None,
    name: str | None = None,
    images: Sequence[Path] | None = None,
    trust_checkpoint: bool = False,
    norm: str = "native",
) -> Bundle:
    """``edgeseg export torch``: ``module:factory`` + weights (or TorchScript) + spec -> bundle."""
    from export.calibration import validation_inputs
    from export.torch_import import (
        bundle_from_spec,
        load_factory_network,
        load_torchscript,
        read_spec,
    )

    check_output_folder(out)
    spec = read_spec(spec_path)
    if torchscript is not None:
        if factory is not None or weights is not None:
            raise EdgesegError(
                "--torchscript: give either a TorchScript file or --factory with --weights"
            )
        module, source = load_torchscript(torchscript)
    elif factory is not None and weights is not None:
        module, source = load_factory_network(factory, weights, spec, trust_checkpoint)
    else:
        raise EdgesegError("export torch: give --factory module:function with --weights, "
                           "or --torchscript FILE")
    source["spec"] = str(Path(spec_path).resolve())
    bundle = bundle_from_spec(spec, source, name)
    inputs, patch_source = validation_inputs(bundle, images)
    return write_bundle(out, bundle, module, inputs, patch_source, norm=norm)
