"""Import a plain PyTorch network (MONAI-style or home-grown) for export.

Two ways in:

* ``module:factory`` + a weights file: ``factory(**spec["factory_kwargs"])`` must return an
  ``nn.Module``; the weights file is a state dict (or a dict holding one under ``state_dict``,
  ``network_weights`` or ``model``), loaded safely (see :mod:`export.safe_checkpoint`).
* a TorchScript file (``torch.jit.save``), which carries its own code and weights.

Either way a small JSON spec file supplies what the bundle needs and the network cannot tell:

.. code-block:: json

    {"name": "my_unet", "modality": "CT", "channels": ["CT"],
     "labels": {"background": 0, "liver": 1, "spleen": 2},
     "spacing_mm": [2.5, 1.5, 1.5], "patch_size": [64, 128, 128],
     "normalization": [{"scheme": "ct", "lower": -958, "upper": 327, "mean": 82.9, "std": 136.9}],
     "presence_input": null, "presence_output": false, "factory_kwargs": {}}

``transpose_forward`` (default ``[0, 1, 2]``) and ``mirror_axes`` are optional.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from edge_seg.bundle import DEFAULT_IO_NAMES, FORMAT_VERSION, Bundle
from edge_seg.bundle_checks import check_manifest
from edge_seg.errors import EdgesegError
from evaluator.labels import canonical_organ_name
from export.safe_checkpoint import load_checkpoint, sha256_of

REQUIRED_SPEC_KEYS = ("modality", "channels", "labels", "spacing_mm", "normalization", "patch_size")
#: Optional spec keys; any other key is refused (a misspelt "presence_inputs" would otherwise
#: export a bundle without the presence input, silently).
OPTIONAL_SPEC_KEYS = ("name", "presence_input", "presence_output", "factory_kwargs",
                      "transpose_forward", "mirror_axes")
STATE_DICT_KEYS = ("state_dict", "network_weights", "model", "model_state_dict")


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read and check the JSON spec file."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: spec file does not exist")
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable spec file ({exc})") from exc
    if not isinstance(spec, dict):
        raise EdgesegError(f"{path}: spec must be a JSON object")
    missing = [key for key in REQUIRED_SPEC_KEYS if key not in spec]
    if missing:
        raise EdgesegError(f"{path}: spec lacks {', '.join(missing)}")
    unknown = [key for key in spec if key not in (*REQUIRED_SPEC_KEYS, *OPTIONAL_SPEC_KEYS)]
    if unknown:
        raise EdgesegError(f"{path}: unknown spec key(s) {', '.join(map(repr, unknown))} "
                           f"(known: {', '.join((*REQUIRED_SPEC_KEYS, *OPTIONAL_SPEC_KEYS))})")
    if not isinstance(spec.get("factory_kwargs", {}), dict):
        raise EdgesegError(f"{path}: factory_kwargs is not an object of argument -> value")
    # The manifest's own check (types, lengths, label values 0..N-1, one normalisation per
    # channel, presence organs among the labels) on the labels as the bundle will name them,
    # naming the spec: without it a wrong type is a traceback, and a gap in the label values
    # is refused only after the export, naming the temporary bundle folder.
    labels = _bundle_labels(spec["labels"]) if isinstance(spec["labels"], dict) else None
    if labels is not None and len(labels) != len(spec["labels"]):
        raise EdgesegError(f"{path}: labels: two names spell the same organ "
                           f"({', '.join(spec['labels'])})")
    check_manifest({**spec, "labels": labels if labels is not None else spec["labels"],
                    "name": spec.get("name", "torch_model"), "files": {"fp32": "model.onnx"},
                    "format_version": FORMAT_VERSION},
                   str(path), FORMAT_VERSION, {"io_names": DEFAULT_IO_NAMES})
    return spec


def bundle_from_spec(spec: dict[str, Any], source: dict[str, Any], name: str | None) -> Bundle:
    """The manifest (without model files) described by a spec file (checked by read_spec)."""
    return Bundle(
        name=name or spec.get("name", "torch_model"),
        modality=spec["modality"],
        channels=[str(c) for c in spec["channels"]],
        labels={k: int(v) for k, v in _bundle_labels(spec["labels"]).items()},
        spacing_mm=[float(s) for s in spec["spacing_mm"]],
        normalization=[dict(n) for n in spec["normalization"]],
        patch_size=[int(p) for p in spec["patch_size"]],
        files={},
        transpose_forward=[int(a) for a in spec.get("transpose_forward", [0, 1, 2])],
        presence_input=spec.get("presence_input"),
        presence_output=bool(spec.get("presence_output", False)),
        mirror_axes=[int(a) for a in spec.get("mirror_axes", [])],
        provenance={"source": "torch", **source},
    )


def _bundle_labels(labels: dict[str, Any]) -> dict[str, Any]:
    """The spec's labels as the bundle names them: value 0 is "background", organ names in
    the canonical (FLARE/TotalSegmentator) spelling; values as given."""
    return {("background" if v == 0 and not isinstance(v, bool) else
             canonical_organ_name(str(k))): v for k, v in labels.items()}


def _import_factory(factory: str) -> Any:
    if ":" not in factory:
        raise EdgesegError(f"{factory}: expected 'package.module:function'")
    module_name, _, attr = factory.partition(":")
    # Home-grown networks usually live beside the user's scripts, not in an installed package.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if not module_name or not attr:
        raise EdgesegError(f"{factory}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgesegError(f"{factory}: cannot import module '{module_name}' ({exc})") from exc
    except Exception as exc:  # the user's module itself fails: a syntax error, a raise
        where = f" at {exc.filename}:{exc.lineno}" if isinstance(exc, SyntaxError) else ""
        raise EdgesegError(f"{factory}: importing module '{module_name}' failed"
                           f"{where} ({type(exc).__name__}: {_first_line(exc)})") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise EdgesegError(f"{factory}: module '{module_name}' has no '{attr}'")
    if not callable(target):
        raise EdgesegError(f"{factory}: '{attr}' is not callable")
    return target


def _state_dict_in(checkpoint: Any, path: Path) -> dict[str, Any]:
    import torch

    if isinstance(checkpoint, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise EdgesegError(
        f"{path}: no state dict found (expected a dict of tensors, or one under "
        f"{', '.join(STATE_DICT_KEYS)})"
    )


def load_factory_network(
    factory: str, weights: str | Path, spec: dict[str, Any], trust_checkpoint: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Build ``factory(**factory_kwargs)``, load the weights strictly; return (module, source)."""
    import torch

    weights = Path(weights)
    build = _import_factory(factory)
    try:
        module = build(**spec.get("factory_kwargs", {}))
    except Exception as exc:
        raise EdgesegError(f"{factory}: factory call failed ({_first_line(exc)})") from exc
    if not isinstance(module, torch.nn.Module):
        raise EdgesegError(f"{factory}: returned {type(module).__name__}, not a torch.nn.Module")
    state = _state_dict_in(load_checkpoint(weights, trust=trust_checkpoint), weights)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])
        raise EdgesegError(f"{weights}: weights do not fit {factory} ({detail[:300]})") from exc
    # The kwargs go into the provenance so that the network can be rebuilt from the bundle
    # alone (export.source_network), also after the spec file is gone.
    source = {"factory": factory, "factory_kwargs": dict(spec.get("factory_kwargs", {})),
              "weights": str(weights.resolve()),
              "checkpoints": [{"path": str(weights.resolve()), "sha256": sha256_of(weights)}]}
    return module.eval(), source


def load_torchscript(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load a TorchScript archive onto the CPU; return (module, source)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: TorchScript file does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        reason = _first_line(exc)
        raise EdgesegError(f"{path}: not a TorchScript archive ({reason})") from exc
    source = {"torchscript": str(path.resolve()),
              "checkpoints": [{"path": str(path.resolve()), "sha256": sha256_of(path)}]}
    return module.eval(), source


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (errors are one line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
