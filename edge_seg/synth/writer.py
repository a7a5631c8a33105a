"""Writing a whole synthetic dataset in one layout, atomically.

Everything goes into a temporary sibling folder that is renamed onto the output folder only
when every case is written; an interrupted or failed run leaves no output folder behind (and,
with ``overwrite``, the previous folder untouched).
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_seg.errors import EdgesegError
from edge_seg.synth.phantom import Phantom, generate_phantom
from edge_seg.synth.protocols import sample_case_params
from evaluator.atomic import atomic_dir

LAYOUTS = ("flare", "chaos", "ukb")
DEFAULT_MODALITY = {"flare": "ct", "chaos": "ct", "ukb": "mr"}
MANIFEST = "synth_cases.csv"

# Limits of the command line (the API takes any grid): beyond them a run is surely a typo.
MAX_CASES = 10_000
SLICE_RANGE = (8, 1000)
SIZE_RANGE = (16, 1024)


@dataclass(frozen=True)
class SynthRequest:
    """What ``edgeseg synth`` was asked for."""

    out_dir: Path
    layout: str = "flare"
    modality: str | None = None
    cases: int = 5
    slices: int | None = None
    size_yx: tuple[int, int] | None = None
    resection_rate: float = 0.0
    seed: int = 0
    labels: bool = False  # UKB layout: also write voxel labels
    overwrite: bool = False


def protocol_for(layout: str, modality: str) -> str:
    """The scan protocol that draws grids for ``layout`` and ``modality``."""
    if layout == "ukb":
        return "ukb_dixon"
    if layout == "chaos":
        return "chaos_ct" if modality == "ct" else "chaos_mr"
    return "flare_ct" if modality == "ct" else "chaos_mr"


def case_seed(base_seed: int, index: int) -> int:
    """Seed of case ``index`` of a run with ``base_seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def parse_number(option: str, text: str, kind: type) -> int | float:
    """``text`` as an int or float for ``option``; EdgesegError (one line) if it is not one."""
    try:
        return kind(text.strip())
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise EdgesegError(f"{option}: expected {noun}, got {text!r}") from None


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` or ``"64x48"`` (rows x columns) -> (rows, columns)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise EdgesegError(
            f"--size: expected N or ROWSxCOLUMNS (e.g. 64 or 64x48), got {text!r}"
        ) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise EdgesegError(f"--size: expected N or ROWSxCOLUMNS (e.g. 64 or 64x48), got {text!r}")
    return values[0], values[1]


def validate(request: SynthRequest) -> SynthRequest:
    """Check a request; return it with the modality filled in. Raises EdgesegError."""
    if request.layout not in LAYOUTS:
        raise EdgesegError(
            f"--layout: unknown layout {request.layout!r}; expected one of {', '.join(LAYOUTS)}"
        )
    modality = request.modality or DEFAULT_MODALITY[request.layout]
    if modality not in ("ct", "mr"):
        raise EdgesegError(f"--modality: unknown modality {modality!r}; expected ct or mr")
    if request.layout == "ukb" and modality != "mr":
        raise EdgesegError("--modality: the ukb layout holds Dixon MR only; use --modality mr")
    if not 1 <= request.cases <= MAX_CASES:
        raise EdgesegError(f"--cases: expected 1 to {MAX_CASES}, got {request.cases}")
    if request.slices is not None and not SLICE_RANGE[0] <= request.slices <= SLICE_RANGE[1]:
        raise EdgesegError(
            f"--slices: expected {SLICE_RANGE[0]} to {SLICE_RANGE[1]}, got {request.slices}"
        )
    if request.size_yx is not None and not all(
        SIZE_RANGE[0] <= v <= SIZE_RANGE[1] for v in request.size_yx
    ):
        raise EdgesegError(
            f"--size: each side must be {SIZE_RANGE[0]} to {SIZE_RANGE[1]} pixels, got "
            f"{request.size_yx[0]}x{request.size_yx[1]}"
        )
    if not 0.0 <= request.resection_rate <= 1.0 or request.resection_rate != request.resection_rate:
        raise EdgesegError(
            f"--resection-rate: expected a fraction within [0, 1], got {request.resection_rate}"
        )
    if request.seed < 0:
        raise EdgesegError(f"--seed: expected a non-negative integer, got {request.seed}")
    if request.labels and request.layout != "ukb":
        raise EdgesegError(
            "--labels: only the ukb layout has optional voxel labels (the others always have them)"
        )
    out = request.out_dir
    if out.exists() and not out.is_dir():
        raise EdgesegError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not request.overwrite:
        raise EdgesegError(f"{out}: folder exists and is not empty (use --overwrite to replace it)")
    return SynthRequest(**{**request.__dict__, "modality": modality})


def _case_id(layout: str, index: int) -> str:
    if layout == "chaos":
        return str(index + 1)
    if layout == "ukb":
        from edge_seg.synth.layout_ukb import subject_id

        return subject_id(index)
    return f"case_{index:04d}"


def _manifest_row(case_id: str, p: Phantom) -> list[object]:
    return [
        case_id,
        p.seed,
        p.modality,
        p.params.protocol,
        *p.labels.shape,
        *(repr(float(v)) for v in p.spacing_mm),
        ";".join(p.resected),
        ";".join(p.organs_in_view),
    ]


def write_dataset(
    request: SynthRequest, on_case: Callable[[int, Phantom], None] | None = None
) -> Path:
    """Generate and write every case of ``request``; return the output folder."""
    request = validate(request)
    out = request.out_dir
    protocol = protocol_for(request.layout, request.modality)
    try:
        context = (
            atomic_dir(out) if not (out.is_dir() and any(out.iterdir())) else _replacing_dir(out)
        )
        with context as tmp:
            rows, presence = [], []
            for index in range(request.cases):
                seed = case_seed(request.seed, index)
                params = sample_case_params(
                    seed,
                    request.modality,
                    protocol=protocol,
                    n_slices=request.slices,
                    shape_yx=request.size_yx,
                    resection_rate=request.resection_rate,
                )
                phantom = generate_phantom(
                    seed,
                    request.modality,
                    n_slices=params.n_slices,
                    spacing_mm=params.spacing_mm,
                    shape_yx=params.shape_yx,
                    resected=params.resected,
                    protocol=protocol,
                )
                case_id = _case_id(request.layout, index)
                _write_case(request, phantom, tmp, case_id)
                rows.append(_manifest_row(case_id, phantom))
                presence.append((case_id, phantom.present_organs))
                if on_case is not None:
                    on_case(index, phantom)
            _finish(request, tmp, presence)
            with open(tmp / MANIFEST, "w", newline="") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(
                    [
                        "case_id",
                        "seed",
                        "modality",
                        "protocol",
                        "slices",
                        "rows",
                        "columns",
                        "spacing_z_mm",
                        "spacing_y_mm",
                        "spacing_x_mm",
                        "resected",
                        "organs_in_view",
                    ]
                )
                writer.writerows(rows)
    except OSError as exc:
        where = exc.filename or out
        raise EdgesegError(f"{where}: cannot write ({exc.strerror or exc})") from None
    return out


def _write_case(request: SynthRequest, phantom: Phantom, root: Path, case_id: str) -> None:
    if request.layout == "flare":
        from edge_seg.synth import layout_nnunet

        layout_nnunet.write_case(phantom, root, case_id)
    elif request.layout == "chaos":
        from edge_seg.synth import layout_chaos

        layout_chaos.write_case(phantom, root, case_id)
    else:
        from edge_seg.synth import layout_ukb

        layout_ukb.write_case(phantom, root, case_id, with_labels=request.labels)


def _finish(request: SynthRequest, root: Path, presence: list[tuple[str, tuple[str, ...]]]) -> None:
    if request.layout == "flare":
        from edge_seg.synth import layout_nnunet

        layout_nnunet.finish(
            root,
            request.modality,
            request.cases,
            f"{request.cases} synthetic abdominal {request.modality.upper()} phantoms "
            f"(edgeseg synth --seed {request.seed})",
        )
    elif request.layout == "ukb":
        from edge_seg.synth import layout_ukb

        layout_ukb.write_presence_csv(root, presence)


class _replacing_dir:
    """Like :func:`atomic_dir` for a non-empty target: the old folder is swapped out only after
    the new one is complete, then deleted; on failure the old folder stays as it was."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        )
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".old", dir=self.target.parent)
        )
        old.rmdir()
        os.replace(self.target, old)
        try:
            os.replace(self.tmp, self.target)
        except BaseException:
            os.replace(old, self.target)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return False
