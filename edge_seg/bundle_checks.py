"""Checks of a bundle manifest (``edgeseg.json``) before the runtime trusts any of it.

Every field the runtime reads is checked for type, length and range when the bundle is loaded,
so that a damaged or hand-edited manifest is refused with one line naming the manifest and the
field, instead of a traceback deep in preprocessing or, worse, a label map that looks right.
What only the model file can confirm (its input and output names, its number of classes) is
checked when a backend compiles it, see :mod:`edge_seg.backends.ports`.

This module imports nothing beyond the standard library: loading a bundle stays cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from edge_seg.errors import EdgesegError

#: Modalities the runtime knows how to normalise and preview.
MODALITIES = ("CT", "MR")
#: Normalisation schemes :func:`edge_seg.preprocess.normalize` implements, with their keys.
CT_KEYS = ("lower", "upper", "mean", "std")
SCHEMES = ("ct", "zscore", "none")
#: The only array order the runtime implements (SimpleITK/NumPy order, as nnU-Net's).
AXIS_ORDER = "zyx"
#: Fields ``Bundle`` cannot do without.
REQUIRED = ("name", "modality", "channels", "labels", "spacing_mm", "normalization",
            "patch_size", "files")
#: Label values are stored in uint8 label maps.
MAX_LABEL = 255
#: The longest rendering of a bad value put into an error message (one line, readable).
_SHOWN = 60


def parse_manifest(text: str, where: str) -> Any:
    """Parse ``edgeseg.json`` text, refusing a key given twice in one object.

    Python's JSON reader keeps the last of two equal keys without a word: in ``labels`` that
    silently drops an organ.
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise EdgesegError(f"{where}: key {key!r} is given twice in one JSON object")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise EdgesegError(f"{where}: unreadable bundle manifest ({exc})") from exc


def check_manifest(data: Any, where: str, supported_version: int,
                   defaults: dict[str, Any]) -> dict[str, Any]:
    """Check every field of a parsed manifest; return the fields in the form ``Bundle`` takes.

    Parameters
    ----------
    data : Any
        The parsed JSON.
    where : str
        The manifest path, put at the start of each error message.
    supported_version : int
        The newest ``format_version`` this runtime reads.
    defaults : dict
        Defaults of the optional fields that need one to be checked against (``io_names``).

    Returns
    -------
    dict
        The manifest's fields, with ``io_names`` completed from ``defaults`` and an empty
        ``presence_input`` read as null.

    Raises
    ------
    EdgesegError
        ``"<where>: <field>: <problem>"`` for the first problem found.
    """
    if not isinstance(data, dict):
        raise EdgesegError(f"{where}: bundle manifest must be a JSON object, not {_kind(data)}")
    _check_version(data.get("format_version"), where, supported_version)
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise EdgesegError(f"{where}: incomplete bundle manifest (missing {', '.join(missing)})")
    fields = dict(data)
    for key, check in _CHECKS.items():
        if key in fields:
            fields[key] = check(fields[key], _Field(where, key))
    _check_consistency(fields, where)
    fields["io_names"] = {**defaults["io_names"], **fields.get("io_names", {})}
    return fields


class _Field:
    """Where a field is, for error messages: ``<manifest>: <field>: <problem>``."""

    def __init__(self, where: str, name: str) -> None:
        self.where, self.name = where, name

    def fail(self, problem: str) -> EdgesegError:
        return EdgesegError(f"{self.where}: {self.name}: {problem}")


def _check_version(version: Any, where: str, supported: int) -> None:
    if not _is_int(version):
        raise EdgesegError(f"{where}: format_version missing or not an integer")
    if version > supported:
        raise EdgesegError(
            f"{where}: bundle format version {version} is newer than this edgeseg supports "
            f"({supported}); upgrade edgeseg"
        )
    if version < 1:
        raise EdgesegError(
            f"{where}: format_version: {version} is not a bundle format version "
            f"(this edgeseg reads 1 to {supported})"
        )


def _name(value: Any, field: _Field) -> str:
    if not isinstance(value, str) or not value.strip():
        raise field.fail(f"{_show(value)} is not a non-empty string")
    return value


def _modality(value: Any, field: _Field) -> str:
    if value not in MODALITIES:
        runs = ", ".join(MODALITIES)
        raise field.fail(f"{_show(value)} is not supported (this edgeseg runs {runs})")
    return value


def _channels(value: Any, field: _Field) -> list[str]:
    if not isinstance(value, list) or not value:
        raise field.fail(f"{_show(value)} is not a non-empty list of channel names")
    for item in value:
        if not isinstance(item, str) or not item:
            raise field.fail(f"{_show(item)} is not a channel name")
    return value


def _labels(value: Any, field: _Field) -> dict[str, int]:
    """Organ name -> label value; values are the network's output channels, so they must be
    exactly 0..N-1: a gap is an output channel without a name, whose voxels would silently go
    to other organs, and a value given twice puts two organs on the same voxels."""
    if not isinstance(value, dict) or not value:
        raise field.fail(f"{_show(value)} is not an object of organ name -> label value")
    owner: dict[int, str] = {}
    for name, label in value.items():
        if not name.strip():
            raise field.fail("an organ name is empty")
        if not _is_int(label):
            raise field.fail(f"{name} = {_show(label)} is not an integer label value")
        if not 0 <= label <= MAX_LABEL:
            raise field.fail(f"{name} = {label} is outside 0..{MAX_LABEL}")
        if label in owner:
            raise field.fail(f"{owner[label]} and {name} have the same value {label}")
        owner[label] = name
    if value.get("background") != 0:
        raise field.fail('needs "background": 0')
    gaps = sorted(set(range(len(value))) - set(owner))
    if gaps:
        raise field.fail(
            f"values must be 0..{len(value) - 1}, one per network output channel "
            f"(missing: {', '.join(map(str, gaps))}; highest given: {max(owner)})"
        )
    return value


def _spacing(value: Any, field: _Field) -> list[float]:
    if not (isinstance(value, list) and len(value) == 3
            and all(_is_number(s) and math.isfinite(s) and s > 0 for s in value)):
        raise field.fail(f"{_show(value)} is not 3 finite positive numbers (mm)")
    return [float(s) for s in value]


def _patch(value: Any, field: _Field) -> list[int]:
    if not (isinstance(value, list) and len(value) == 3
            and all(_is_int(p) and p > 0 for p in value)):
        raise field.fail(f"{_show(value)} is not 3 positive integers (voxels)")
    return value


def _transpose(value: Any, field: _Field) -> list[int]:
    if not (isinstance(value, list) and all(_is_int(a) for a in value)
            and sorted(value) == [0, 1, 2]):
        raise field.fail(f"{_show(value)} is not a permutation of 0, 1, 2")
    return value


def _normalization(value: Any, field: _Field) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise field.fail(f"{_show(value)} is not a list with one entry per input channel")
    for index, entry in enumerate(value):
        _norm_entry(entry, _Field(field.where, f"{field.name}[{index}]"))
    return value


def _norm_entry(entry: Any, field: _Field) -> None:
    if not isinstance(entry, dict):
        raise field.fail(f"{_show(entry)} is not an object")
    scheme = str(entry.get("scheme", "")).lower()
    if scheme not in SCHEMES:
        raise field.fail(f"scheme {_show(entry.get('scheme'))} is not one of {', '.join(SCHEMES)}")
    if scheme == "ct":
        for key in CT_KEYS:
            number = entry.get(key)
            if not (_is_number(number) and math.isfinite(number)):
                raise field.fail(f"{key} = {_show(number)} is not a finite number")
        if not entry["std"] > 0:
            # preprocess divides by std: 0 (or less) turns every scan into garbage.
            raise field.fail(f"std = {entry['std']} is not positive")
        if entry["lower"] > entry["upper"]:
            raise field.fail(f"lower = {entry['lower']} is above upper = {entry['upper']}")
    if "use_mask" in entry and not isinstance(entry["use_mask"], bool):
        raise field.fail(f"use_mask = {_show(entry['use_mask'])} is not true or false")


def _files(value: Any, field: _Field) -> dict[str, str]:
    """Precision -> path; each path relative and inside the bundle folder (existence is
    checked by :func:`edge_seg.bundle.load_bundle`, which knows the folder)."""
    if not isinstance(value, dict):
        raise field.fail(f"{_show(value)} is not an object of precision -> model file")
    if "fp32" not in value:
        raise field.fail("lists no fp32 model file")
    for key, rel in value.items():
        if not isinstance(rel, str) or not rel.strip():
            raise field.fail(f"{key} = {_show(rel)} is not a file name")
        if not _inside(rel):
            raise field.fail(f"{key} = {rel!r} is not a path inside the bundle folder")
    return value


def _inside(rel: str) -> bool:
    """Whether ``rel`` is a relative path that stays in its folder (on POSIX and Windows)."""
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(rel)
        if path.is_absolute() or path.anchor or ".." in path.parts:
            return False
    return True


def _presence_input(value: Any, field: _Field) -> list[str] | None:
    if value is None or value == []:
        return None  # [] and null both mean: no presence input
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise field.fail(f"{_show(value)} is not null or a list of organ names")
    if len(set(value)) != len(value):
        raise field.fail(f"{_show(value)} names an organ twice")
    return value


def _flag(value: Any, field: _Field) -> bool:
    if not isinstance(value, bool):
        raise field.fail(f"{_show(value)} is not true or false")
    return value


def _io_names(value: Any, field: _Field) -> dict[str, str]:
    if not isinstance(value, dict):
        raise field.fail(f"{_show(value)} is not an object of role -> graph tensor name")
    roles = ("image", "presence", "logits", "presence_logits")
    for role, name in value.items():
        if role not in roles:
            raise field.fail(f"unknown entry {role!r} (known: {', '.join(roles)})")
        if not isinstance(name, str) or not name:
            raise field.fail(f"{role} = {_show(name)} is not a tensor name")
    return value


def _string_list(value: Any, field: _Field) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise field.fail(f"{_show(value)} is not a list of strings")
    return value


def _component_groups(value: Any, field: _Field) -> list[list[str]] | None:
    """Groups of organ names (checked against ``labels`` in :func:`_check_consistency`)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(group, list) and group and all(isinstance(n, str) for n in group)
            for group in value):
        raise field.fail(f"{_show(value)} is not null or a list of non-empty lists of organ "
                         "names")
    return value


def _axes(value: Any, field: _Field) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_int(a) and 0 <= a <= 2 for a in value):
        raise field.fail(f"{_show(value)} is not a list of axes 0..2")
    return value


def _axis_order(value: Any, field: _Field) -> str:
    if value != AXIS_ORDER:
        raise field.fail(f"{_show(value)} is not supported (this edgeseg reads {AXIS_ORDER!r})")
    return value


def _resampling(value: Any, field: _Field) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise field.fail(f"{_show(value)} is not an object")
    threshold = value.get("anisotropy_threshold", 3.0)
    if not (_is_number(threshold) and math.isfinite(threshold) and threshold > 0):
        raise field.fail(f"anisotropy_threshold = {_show(threshold)} is not a positive number")
    for key in ("order", "order_z"):
        if key in value and not _is_int(value[key]):
            raise field.fail(f"{key} = {_show(value[key])} is not an integer")
    force = value.get("force_separate_z")
    if force is not None and not isinstance(force, bool):
        raise field.fail(f"force_separate_z = {_show(force)} is not null, true or false")
    return value


def _fidelity(value: Any, field: _Field) -> dict[str, Any]:
    """The quantisation report; ``--precision auto`` reads its variants' latency ratios."""
    if not isinstance(value, dict):
        raise field.fail(f"{_show(value)} is not an object")
    variants = value.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise field.fail("variants is not an object of variant name -> report")
    for name, report in variants.items():
        ratio = report.get("latency_ratio_int8_vs_fp32", 0.0)
        if not _is_number(ratio):
            raise field.fail(f"variants.{name}.latency_ratio_int8_vs_fp32 is not a number")
    return value


def _object(value: Any, field: _Field) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise field.fail(f"{_show(value)} is not an object")
    return value


_CHECKS: dict[str, Callable[[Any, _Field], Any]] = {
    "name": _name,
    "modality": _modality,
    "channels": _channels,
    "labels": _labels,
    "spacing_mm": _spacing,
    "normalization": _normalization,
    "patch_size": _patch,
    "files": _files,
    "transpose_forward": _transpose,
    "axis_order": _axis_order,
    "resampling": _resampling,
    "presence_input": _presence_input,
    "presence_output": _flag,
    "io_names": _io_names,
    "validated_precisions": _string_list,
    "mirror_axes": _axes,
    "largest_component_groups": _component_groups,
    "provenance": _object,
    "fidelity": _fidelity,
}


def _check_consistency(fields: dict[str, Any], where: str) -> None:
    """Checks across fields: one normalisation per channel, presence organs among the labels."""
    channels, norms = fields["channels"], fields["normalization"]
    if len(norms) != len(channels):
        raise EdgesegError(
            f"{where}: normalization: {len(norms)} entries for {len(channels)} input "
            f"channel(s) ({', '.join(channels)})"
        )
    organs = {name for name, value in fields["labels"].items() if value != 0}
    unknown = [name for name in fields.get("presence_input") or () if name not in organs]
    if unknown:
        raise EdgesegError(
            f"{where}: presence_input: {', '.join(unknown)} is not an organ of labels"
        )
    if fields.get("largest_component_groups") is not None and fields["format_version"] < 2:
        raise EdgesegError(
            f"{where}: largest_component_groups needs format_version 2 (the manifest says "
            f"{fields['format_version']}; runtimes that read only version 1 would ignore it)"
        )
    grouped = [n for group in fields.get("largest_component_groups") or () for n in group]
    unknown = list(dict.fromkeys(name for name in grouped if name not in organs))
    if unknown:
        raise EdgesegError(
            f"{where}: largest_component_groups: {', '.join(unknown)} is not an organ of labels"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _show(value: Any) -> str:
    """A bad value as it reads in the manifest, cut to fit one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
