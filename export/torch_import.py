"""Import a plain PyTorch network (MONAI-style or home-grown) for export.

Two ways in:

* ``module:factory`` + a weights file: ``factory(**spec["factory_kwargs"])`` must return an
  ``nn.Module``; the weights file is a state dict (or a dict holding one under ``state_dict``,
  ``network_weights`` or ``model``), loaded safely (see :mod:`export.safe_checkpoint`).
* a TorchScript file (``torch.jit.save``), which carries its own code and weights.

Either way a small JSON spec file supplies what the bundle needs and the network cannot tell:

.. code-block:: json

    {"name": "my_unet", "modality": "CT", "channels": ["CT"],
     "labels": {"background": 0, "liver": 1, "spleen": 3},
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

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError
from evaluator.labels import canonical_organ_name
from export.safe_checkpoint import load_checkpoint, sha256_of

REQUIRED_SPEC_KEYS = ("modality", "channels", "labels", "spacing_mm", "normalization", "patch_size")
NORMALIZATION_KEYS = {"ct": ("lower", "upper", "mean", "std"), "zscore": (), "none": ()}
STATE_DICT_KEYS = ("state_dict", "network_weights", "model", "model_state_dict")


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read and check the JSON spec file."""
    path = Path(path)
    if not path.is_file():
        raise EdgesegError(f"{path}: spec file does not exist")
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable spec file ({exc})") from exc
    if not isinstance(spec, dict):
        raise EdgesegError(f"{path}: spec must be a JSON object")
    missing = [key for key in REQUIRED_SPEC_KEYS if key not in spec]
    if missing:
        raise EdgesegError(f"{path}: spec lacks {', '.join(missing)}")
    if spec["modality"] not in ("CT", "MR"):
        raise EdgesegError(f"{path}: modality must be 'CT' or 'MR', not {spec['modality']!r}")
    if len(spec["spacing_mm"]) != 3 or len(spec["patch_size"]) != 3:
        raise EdgesegError(f"{path}: spacing_mm and patch_size need 3 entries (z, y, x)")
    if len(spec["normalization"]) != len(spec["channels"]):
        raise EdgesegError(f"{path}: one normalization entry per channel is needed")
    for entry in spec["normalization"]:
        scheme = entry.get("scheme")
        if scheme not in NORMALIZATION_KEYS:
            raise EdgesegError(
                f"{path}: normalization scheme {scheme!r} unknown (ct, zscore, none)"
            )
        lacking = [k for k in NORMALIZATION_KEYS[scheme] if k not in entry]
        if lacking:
            raise EdgesegError(f"{path}: '{scheme}' normalization lacks {', '.join(lacking)}")
    if 0 not in spec["labels"].values():
        raise EdgesegError(f"{path}: labels need a background entry with value 0")
    return spec


def bundle_from_spec(spec: dict[str, Any], source: dict[str, Any], name: str | None) -> Bundle:
    """The manifest (without model files) described by a spec file."""
    labels = {
        ("background" if int(v) == 0 else canonical_organ_name(str(k))): int(v)
        for k, v in spec["labels"].items()
    }
    return Bundle(
        name=name or spec.get("name", "torch_model"),
        modality=spec["modality"],
        channels=[str(c) for c in spec["channels"]],
        labels=labels,
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


def _import_factory(factory: str) -> Any:
    if ":" not in factory:
        raise EdgesegError(f"{factory}: expected 'package.module:function'")
    module_name, _, attr = factory.partition(":")
    # Home-grown networks usually live beside the user's scripts, not in an installed package.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EdgesegError(f"{factory}: cannot import module '{module_name}' ({exc})") from exc
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
        raise EdgesegError(f"{factory}: factory call failed ({exc})") from exc
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
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgesegError(f"{path}: not a TorchScript archive ({reason})") from exc
    source = {"torchscript": str(path.resolve()),
              "checkpoints": [{"path": str(path.resolve()), "sha256": sha256_of(path)}]}
    return module.eval(), source
