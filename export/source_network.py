"""Rebuild the PyTorch network a bundle was exported from, and check that it is that network.

A bundle carries ONNX, not PyTorch; steps that train (INT8-aware distillation,
:mod:`export.distill`) need the source network back. Its provenance says where it came from:

* ``"source": "nnunetv2"`` - the results folder, the fold and the checkpoint file;
* ``"source": "torch"`` - ``module:factory``, the weights file and the spec file (whose
  ``factory_kwargs`` build the module). TorchScript exports are not trainable here.

``source`` overrides the recorded location (a results folder or a weights file), for a bundle
that was moved to another machine. Whatever is loaded is then run next to the bundle's fp32
ONNX model on one input; a network whose logits differ by more than the export tolerance is
refused, so a wrong fold or a retrained checkpoint cannot pass for the bundle's network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError

# The export check's tolerance (relative to the output range), widened for the float
# summation order of another machine or thread count.
MATCH_TOLERANCE = 5e-3


class SourceMissingError(EdgesegError):
    """The results folder or weights file that a bundle's provenance records is not on disk
    (the bundle was moved or the training output deleted); ``source`` can point elsewhere."""


def source_network(bundle: Bundle, source: str | Path | None = None,
                   trust_checkpoint: bool = False) -> Any:
    """The bundle's PyTorch network in eval mode, rebuilt from its provenance (or ``source``)."""
    provenance = bundle.provenance
    kind = provenance.get("source")
    if kind == "nnunetv2":
        return _nnunet_network(provenance, bundle.root, source, trust_checkpoint)
    if kind == "torch" and provenance.get("factory"):
        return _factory_network(provenance, bundle.root, source, trust_checkpoint)
    if kind == "torch":
        raise EdgesegError(f"{bundle.name}: exported from TorchScript; distillation needs the "
                           "module:factory and weights it was built from")
    raise EdgesegError(f"{bundle.name}: its provenance names no PyTorch source "
                       f"(source {kind!r}); nothing to rebuild")


def recorded_path(bundle_root: Path, provenance: dict[str, Any], key: str) -> Path:
    """Where the provenance says the source is: its absolute path if that exists, else the
    same place relative to the bundle (``<key>_from_bundle``; a moved checkout), else the
    absolute path (which the caller reports as missing)."""
    recorded = Path(provenance.get(key, ""))
    relative = provenance.get(f"{key}_from_bundle")
    if not recorded.exists() and relative and (Path(bundle_root) / relative).exists():
        return Path(bundle_root) / relative
    return recorded


def _nnunet_network(provenance: dict[str, Any], bundle_root: Path, source: str | Path | None,
                    trust_checkpoint: bool) -> Any:
    from export.nnunet_reader import DEFAULT_CHECKPOINT, build_fold_networks, read_results

    folds = [str(f) for f in provenance.get("folds") or ["0"]]
    if len(folds) != 1:
        raise EdgesegError(f"the bundle is an ensemble of folds {', '.join(folds)}; "
                           "distillation trains one network")
    folder = Path(source) if source else recorded_path(bundle_root, provenance, "results_folder")
    if not folder.is_dir():
        raise SourceMissingError(f"{folder}: nnU-Net results folder does not exist")
    recorded = provenance.get("checkpoints") or [{}]
    checkpoint = Path(recorded[0].get("path", DEFAULT_CHECKPOINT)).name
    results = read_results(folder, folds, checkpoint, trust_checkpoint,
                           provenance.get("configuration"))
    return build_fold_networks(results)[0]


def _factory_network(provenance: dict[str, Any], bundle_root: Path,
                     source: str | Path | None, trust_checkpoint: bool) -> Any:
    from export.torch_import import load_factory_network, read_spec

    if "factory_kwargs" in provenance:
        spec = {"factory_kwargs": provenance["factory_kwargs"]}
    else:  # bundles exported before the kwargs were recorded
        spec = read_spec(provenance.get("spec", ""))
    weights = Path(source) if source else recorded_path(bundle_root, provenance, "weights")
    if not weights.is_file():
        raise SourceMissingError(f"{weights}: weights file does not exist")
    network, _ = load_factory_network(provenance["factory"], weights, spec, trust_checkpoint)
    return network


def check_matches_bundle(network: Any, bundle: Bundle, inputs: Sequence[np.ndarray]) -> float:
    """Max abs logit difference between ``network`` and the bundle's fp32 ONNX on ``inputs``.

    Every output is compared, as at export (:func:`export.onnx_export.compare_with_torch`);
    raises :class:`EdgesegError` when one differs by more than :data:`MATCH_TOLERANCE` x its
    range.
    """
    from export.onnx_export import compare_with_torch

    diffs, scales = compare_with_torch(network, bundle.model_path("fp32"), inputs,
                                       bundle.graph_inputs, bundle.graph_outputs)
    for name, diff in diffs.items():
        allowed = MATCH_TOLERANCE * max(1.0, scales[name])
        if not np.isfinite(diff) or diff > allowed:
            raise EdgesegError(f"{bundle.name}: the source network is not the bundle's model "
                               f"(max abs '{name}' difference {diff:.3g} > {allowed:.3g}); "
                               "wrong fold or checkpoint?")
    return diffs[bundle.graph_outputs[0]]
