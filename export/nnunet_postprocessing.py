"""nnU-Net v2's determined post-processing (``postprocessing.json`` / ``.pkl``) as bundle groups.

``nnUNetv2_find_best_configuration`` tries, on the cross-validation predictions, keeping only
the largest component of the whole foreground and then of each class, keeps each step that
raised the Dice, and saves the steps as ``postprocessing.pkl`` (the functions and their
keyword arguments, pickled) with a readable ``postprocessing.json`` beside it, in
``crossval_results_folds_*/`` of the trainer folder. ``nnUNetv2_apply_postprocessing`` runs
them on predictions. Every step is ``remove_all_but_largest_component_from_segmentation`` with
``labels_or_regions`` one label or a list of labels (whose union is cleaned); this module turns
them into the bundle's ``largest_component_groups`` (organ names, in nnU-Net's order), which
``edgeseg predict`` runs in place of its default largest component per organ.

The ``.pkl`` is read with an unpickler that knows only that one function, by name, plain
Python values and NumPy integer scalars (nnU-Net's label lists hold ``np.int64``): a pickle can
run code, and this one never needs to.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.errors import EdgesegError

#: The only post-processing function nnU-Net v2 determines.
STEP_MODULE = "nnunetv2.postprocessing.remove_connected_components"
STEP_NAME = "remove_all_but_largest_component_from_segmentation"
#: Where ``nnUNetv2_find_best_configuration`` writes the files, inside the trainer folder.
CROSSVAL_GLOB = "crossval_results_folds_*/postprocessing.json"


def _integer_dtype(name: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` for the unpickler, integer types only."""
    dtype = np.dtype(name)
    if dtype.kind not in "iu":
        raise pickle.UnpicklingError(f"a NumPy {dtype} value, not a label")
    return np.dtype(name, align, copy)


def _integer_scalar(dtype: Any, data: Any = b"") -> int:
    """``numpy.core.multiarray.scalar`` for the unpickler: a NumPy integer, as a Python int."""
    if not (isinstance(dtype, np.dtype) and dtype.kind in "iu" and isinstance(data, bytes)
            and len(data) == dtype.itemsize):
        raise pickle.UnpicklingError("a NumPy scalar that is not an integer label")
    return int(np.frombuffer(data, dtype)[0])


#: The globals a postprocessing.pkl may name, and what the unpickler returns for them.
_ALLOWED = {
    (STEP_MODULE, STEP_NAME): STEP_NAME,
    ("numpy", "dtype"): _integer_dtype,
    ("numpy.core.multiarray", "scalar"): _integer_scalar,  # NumPy < 2
    ("numpy._core.multiarray", "scalar"): _integer_scalar,
}


class _StepOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain values, NumPy integers and nnU-Net's component step (as its name);
    refuses the rest."""

    def __init__(self, handle: Any, path: Path) -> None:
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        raise EdgesegError(
            f"{self.path}: holds {module}.{name}, not only nnU-Net's post-processing step; "
            "unpickling it could run code, so it is not loaded (pass the postprocessing.json "
            "beside it instead)"
        )


def _read_steps(path: Path) -> tuple[list[Any], list[Any]]:
    """(function names, keyword arguments) of a postprocessing.json or .pkl."""
    try:
        if path.suffix.lower() == ".pkl":
            with path.open("rb") as handle:
                data = _StepOnlyUnpickler(handle, path).load()
            if not (isinstance(data, (tuple, list)) and len(data) == 2):
                raise EdgesegError(f"{path}: not an nnU-Net postprocessing.pkl (expected the "
                                   "pair (functions, keyword arguments))")
            return list(data[0]), list(data[1])
        data = json.loads(path.read_text())
    except OSError as exc:
        raise EdgesegError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise EdgesegError(f"{path}: unreadable post-processing file ({exc})") from None
    if not (isinstance(data, dict) and isinstance(data.get("postprocessing_fns"), list)
            and isinstance(data.get("postprocessing_kwargs"), list)):
        raise EdgesegError(f"{path}: not an nnU-Net postprocessing.json (needs the lists "
                           "postprocessing_fns and postprocessing_kwargs)")
    return data["postprocessing_fns"], data["postprocessing_kwargs"]


def _labels_of(value: Any, path: Path, index: int) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise EdgesegError(
            f"{path}: step {index}: labels_or_regions {value!r:.60} is not a label or a list "
            "of labels (region-based models are not supported)"
        )
    return [int(v) for v in items]


def read_postprocessing(path: Path, labels: Mapping[str, int]) -> list[list[str]]:
    """The largest-component groups of an nnU-Net post-processing file, as organ names.

    Parameters
    ----------
    path : Path
        ``postprocessing.json`` or ``postprocessing.pkl`` written by nnU-Net v2.
    labels : mapping of str to int
        The bundle's labels (``dataset.json`` names -> values), background included.

    Returns
    -------
    list of list of str
        One group per step, in nnU-Net's order; ``[]`` when nnU-Net kept no step.

    Raises
    ------
    EdgesegError
        One line naming ``path``: unreadable, not nnU-Net's format, another function, a
        region or a label the model does not have, or (``.pkl``) any object besides the step.

    Examples
    --------
    >>> read_postprocessing(Path("crossval_results_folds_0_1_2_3_4/postprocessing.json"),
    ...                     {"background": 0, "liver": 1, "spleen": 2})  # doctest: +SKIP
    [['liver', 'spleen'], ['spleen']]
    """
    if not path.is_file():
        raise EdgesegError(f"{path}: post-processing file not found")
    functions, kwargs = _read_steps(path)
    if len(functions) != len(kwargs):
        raise EdgesegError(f"{path}: {len(functions)} post-processing functions but "
                           f"{len(kwargs)} sets of keyword arguments")
    name_of = {value: name for name, value in labels.items() if value != 0}
    groups: list[list[str]] = []
    for index, (function, arguments) in enumerate(zip(functions, kwargs, strict=True)):
        if function != STEP_NAME:
            raise EdgesegError(f"{path}: step {index} is {function!r:.60}; edgeseg runs only "
                               f"nnU-Net's {STEP_NAME}")
        if not isinstance(arguments, dict) or "labels_or_regions" not in arguments:
            raise EdgesegError(f"{path}: step {index}: keyword arguments {arguments!r:.60} "
                               "lack labels_or_regions")
        extra = set(arguments) - {"labels_or_regions", "background_label"}
        if extra or arguments.get("background_label", 0) != 0:
            raise EdgesegError(f"{path}: step {index}: unsupported keyword arguments "
                               f"{arguments!r:.60}")
        values = _labels_of(arguments["labels_or_regions"], path, index)
        unknown = [v for v in values if v not in name_of]
        if unknown:
            raise EdgesegError(f"{path}: step {index}: label {unknown[0]} is not a foreground "
                               f"label of the model ({', '.join(map(str, sorted(name_of)))})")
        groups.append([name_of[v] for v in dict.fromkeys(values)])
    return groups


def find_postprocessing(results_dir: Path) -> list[Path]:
    """The ``postprocessing.json`` files nnU-Net's model selection left in a trainer folder."""
    return sorted(results_dir.glob(CROSSVAL_GLOB))
