"""Does the model file agree with its manifest? Checked when a backend compiles it.

The manifest says what the network takes and returns (``io_names``, ``channels``,
``labels``, ``presence_input``, ``presence_output``, ``patch_size``); the model graph has the
final word. A disagreement that would go unnoticed at run time is the dangerous kind: a model
with one more output channel than the manifest has labels puts that organ's voxels on another
organ, and a presence input the manifest does not declare is fed nothing (``--absent``
ignored). Both backends expose their graph's input and output names and (partial) shapes;
each turns them into :class:`Port` lists for :func:`check_ports`.

Dimensions that the graph leaves dynamic cannot be compared: bundles export their models with
dynamic spatial axes, so a wrong but plausible ``patch_size`` is caught only by a model with
static spatial dimensions (or, if the network cannot take it, by the first patch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_seg.bundle import DEFAULT_IO_NAMES, MANIFEST_NAME, Bundle
from edge_seg.errors import EdgesegError

#: A tensor shape as a graph declares it: None for a dimension it leaves dynamic; the whole
#: shape None where even the rank is dynamic.
Shape = tuple[int | None, ...] | None


@dataclass(frozen=True)
class Port:
    """One graph input or output: its names (OpenVINO ports may have several) and shape."""

    names: frozenset[str]
    shape: Shape


def check_ports(
    bundle: Bundle, model: Path, inputs: Sequence[Port], outputs: Sequence[Port]
) -> None:
    """Refuse a model whose inputs or outputs disagree with the bundle's manifest.

    Parameters
    ----------
    bundle : Bundle
    model : Path
        The model file, named in the error message.
    inputs, outputs : sequence of Port
        The graph's inputs and outputs as the backend reads them (before any reshape).

    Raises
    ------
    EdgesegError
        One line naming the model file, the manifest field and the disagreement.
    """
    io = {**DEFAULT_IO_NAMES, **bundle.io_names}
    where = f"{model}: model disagrees with {_manifest(bundle)}"
    image = _find(inputs, io["image"], "io_names.image", "input", where)
    _check_image(image.shape, bundle, where)
    _check_presence_input(inputs, io, bundle, where)
    logits = _find(outputs, io["logits"], "io_names.logits", "output", where)
    _check_logits(logits.shape, bundle, where)
    if bundle.presence_output:
        head = _find(outputs, io["presence_logits"], "presence_output", "output", where)
        _check_last(head.shape, len(bundle.presence_names), "presence_output", where,
                    "presence logits")


def _manifest(bundle: Bundle) -> str:
    return str(bundle.root / MANIFEST_NAME) if bundle.root else MANIFEST_NAME


def _find(ports: Sequence[Port], name: str, field: str, kind: str, where: str) -> Port:
    for port in ports:
        if name in port.names:
            return port
    have = ", ".join(sorted(n for port in ports for n in port.names)) or "none"
    raise EdgesegError(f"{where}: {field}: the model has no {kind} {name!r} (its {kind}s: {have})")


def _check_image(shape: Shape, bundle: Bundle, where: str) -> None:
    if shape is None:
        return
    if len(shape) != 5:
        raise EdgesegError(
            f"{where}: the image input has {len(shape)} dimensions, not 5 (batch, channels, "
            "z, y, x)"
        )
    if shape[1] is not None and shape[1] != len(bundle.channels):
        raise EdgesegError(
            f"{where}: channels: the model takes {shape[1]} input channel(s), the manifest "
            f"lists {len(bundle.channels)}"
        )
    _check_spatial(shape[2:], bundle, where, "input")


def _check_logits(shape: Shape, bundle: Bundle, where: str) -> None:
    if shape is None:
        return
    if len(shape) != 5:
        raise EdgesegError(
            f"{where}: the logits output has {len(shape)} dimensions, not 5 (batch, classes, "
            "z, y, x)"
        )
    if shape[1] is not None and shape[1] != len(bundle.labels):
        raise EdgesegError(
            f"{where}: labels: the model outputs {shape[1]} classes, the manifest has "
            f"{len(bundle.labels)} labels (background included)"
        )
    _check_spatial(shape[2:], bundle, where, "output")


def _check_spatial(dims: tuple[int | None, ...], bundle: Bundle, where: str, kind: str) -> None:
    """A model with static spatial dimensions runs one patch shape only: the manifest's."""
    for dim, patch in zip(dims, bundle.patch_size, strict=True):
        if dim is not None and dim != patch:
            fixed = "x".join("?" if d is None else str(d) for d in dims)
            wanted = "x".join(map(str, bundle.patch_size))
            raise EdgesegError(
                f"{where}: patch_size: {wanted} does not match the model's fixed {kind} "
                f"shape {fixed}"
            )


def _check_presence_input(
    inputs: Sequence[Port], io: dict[str, str], bundle: Bundle, where: str
) -> None:
    """The presence input exists exactly when the manifest declares one, with one entry per
    declared organ; any other input would be left unfed."""
    if bundle.presence_input:
        port = _find(inputs, io["presence"], "presence_input", "input", where)
        _check_last(port.shape, len(bundle.presence_input), "presence_input", where,
                    "presence input")
    expected = {io["image"]} | ({io["presence"]} if bundle.presence_input else set())
    for port in inputs:
        if not port.names & expected:
            name = sorted(port.names)[0] if port.names else "?"
            what = (
                "presence_input is null, but the model has a presence input"
                if io["presence"] in port.names
                else f"io_names: the model has an input {name!r} the manifest does not name"
            )
            raise EdgesegError(f"{where}: {what} ({name!r})")


def _check_last(shape: Shape, count: int, field: str, where: str, what: str) -> None:
    if shape and shape[-1] is not None and shape[-1] != count:
        raise EdgesegError(
            f"{where}: {field}: the model's {what} has {shape[-1]} entries, the manifest "
            f"names {count} organs"
        )
