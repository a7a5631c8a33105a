"""Label conventions: which integer values (or value ranges) mean which organ.

Predictions and ground truth are matched by organ *name*, so a FLARE-numbered prediction can be
scored against CHAOS grey values or TotalSegmentator numbers. A label set is a preset name
(:data:`PRESETS`, plus ``chaos`` which picks ``chaos_ct`` or ``chaos_mr`` per case) or a JSON
file, in any of these forms::

    {"liver": 1, "spleen": 3}                                  # name -> value
    {"labels": {"liver": 1}, "ignore_unlisted": true}          # values outside the table -> 0
    {"labels": {"0": "background", "1": "liver"}}              # MSD dataset.json style
    {"liver": [55, 70]}                                        # inclusive grey-value range

Values that are neither background (0) nor listed are an error ("unknown label value") unless
the set says ``ignore_unlisted`` (TotalSegmentator maps hold ~100 structures besides the
abdominal organs).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluator.errors import EvaluationError
from evaluator.labels import FLARE_LABELS, canonical_organ_name


@dataclass(frozen=True)
class LabelSet:
    """Organ name -> inclusive range of label values.

    ``nominal`` holds the value a convention writes for an organ whose range is wider than one
    value (CHAOS MR: liver 63 in 55-70); organs not in it are reported by the lower end of
    their range.
    """

    name: str
    ranges: Mapping[str, tuple[int, int]]
    ignore_unlisted: bool = False
    nominal: Mapping[str, int] = field(default_factory=dict)

    @property
    def organs(self) -> list[str]:
        return list(self.ranges)

    def representative_value(self, organ: str) -> int:
        """The value written for ``organ`` (its nominal value, else the lower end of its range).

        This is the ``label`` column of ``cases.csv``.
        """
        return self.nominal.get(organ, self.ranges[organ][0])


def _exact(table: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    return {name: (value, value) for name, value in table.items()}


_TOTALSEG_CT = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5,
    "stomach": 6, "pancreas": 7, "adrenal_gland_right": 8, "adrenal_gland_left": 9,
    "esophagus": 15, "duodenum": 19, "aorta": 52, "inferior_vena_cava": 63,
}
_TOTALSEG_MR = {
    "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5,
    "stomach": 6, "pancreas": 7, "adrenal_gland_right": 8, "adrenal_gland_left": 9,
    "esophagus": 12, "duodenum": 14, "aorta": 23, "inferior_vena_cava": 24,
}

#: Built-in label sets (see the data README for the sources of these numbers).
PRESETS: dict[str, LabelSet] = {
    "flare": LabelSet("flare", _exact(FLARE_LABELS)),
    "flare23": LabelSet("flare23", _exact({**FLARE_LABELS, "lesion": 14})),
    # CHAOS CT ground truth is liver only; any value > 0 is liver.
    "chaos_ct": LabelSet("chaos_ct", {"liver": (1, 255)}),
    # CHAOS MR grey values: liver 63, right kidney 126, left kidney 189, spleen 252.
    "chaos_mr": LabelSet("chaos_mr", {
        "liver": (55, 70), "kidney_right": (110, 135), "kidney_left": (175, 200),
        "spleen": (240, 255),
    }, nominal={"liver": 63, "kidney_right": 126, "kidney_left": 189, "spleen": 252}),
    "totalsegmentator": LabelSet("totalsegmentator", _exact(_TOTALSEG_CT), ignore_unlisted=True),
    "totalsegmentator_mr": LabelSet("totalsegmentator_mr", _exact(_TOTALSEG_MR),
                                    ignore_unlisted=True),
}

PRESET_NAMES = (*PRESETS, "chaos")


def labelset_from_mapping(mapping: Mapping[str, object], name: str) -> LabelSet:
    """Build a label set from a JSON-like mapping (forms listed in the module docstring)."""
    ignore = False
    table: object = mapping
    if "labels" in mapping:
        # Without this a list would fall through and the file's other keys ("name", ...)
        # would be read as organs, giving a misleading "unsupported value" message.
        if not isinstance(mapping["labels"], Mapping):
            raise EvaluationError(
                f"{name}: 'labels' must be an object mapping names to values "
                f'({{"liver": 1}}) or values to names ({{"1": "liver"}}), got '
                f"{type(mapping['labels']).__name__}")
        table = mapping["labels"]
        ignore = bool(mapping.get("ignore_unlisted", False))
    if not isinstance(table, Mapping) or not table:
        raise EvaluationError(f"{name}: label table is empty or not an object")
    ranges: dict[str, tuple[int, int]] = {}
    for key, value in table.items():
        if str(key).strip().lstrip("-").isdigit() and isinstance(value, str):
            key, value = value, int(key)  # MSD style: "1": "liver"
        organ = canonical_organ_name(str(key))
        if organ in ("background", "bg"):
            continue
        if isinstance(value, bool):
            raise EvaluationError(f"{name}: label {key!r} has a non-integer value {value!r}")
        if isinstance(value, int):
            low = high = value
        elif (isinstance(value, list) and len(value) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            low, high = value
        else:
            raise EvaluationError(f"{name}: label {key!r} has an unsupported value {value!r} "
                                  "(expected an integer or [low, high])")
        if low < 1 or high < low:
            raise EvaluationError(f"{name}: label {key!r} has an invalid value {value!r}")
        ranges[organ] = (low, high)
    _check_overlaps(ranges, name)
    return LabelSet(name, ranges, ignore)


def _check_overlaps(ranges: Mapping[str, tuple[int, int]], name: str) -> None:
    ordered = sorted(ranges.items(), key=lambda item: item[1])
    for (a, (_, a_high)), (b, (b_low, _)) in itertools.pairwise(ordered):
        if b_low <= a_high:
            raise EvaluationError(f"{name}: organs {a!r} and {b!r} share label values")


def load_labelset(spec: str) -> LabelSet:
    """A preset name or the path of a JSON label file."""
    key = spec.strip().lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    path = Path(spec)
    if path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise EvaluationError(f"{path}: label file not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{path}: not a valid JSON label file ({exc})") from None
        if not isinstance(data, Mapping):
            raise EvaluationError(f"{path}: expected a JSON object of organ labels")
        return labelset_from_mapping(data, str(path))
    raise EvaluationError(
        f"unknown label set {spec!r}; use one of {', '.join(PRESET_NAMES)} or a JSON file"
    )


def evaluation_ids(organs: Iterable[str]) -> dict[str, int]:
    """Internal label value of each evaluated organ: FLARE numbers first, then 14, 15, ..."""
    ids: dict[str, int] = {}
    next_id = max(FLARE_LABELS.values()) + 1
    for organ in organs:
        if organ in FLARE_LABELS:
            ids[organ] = FLARE_LABELS[organ]
        else:
            ids[organ] = next_id
            next_id += 1
    if next_id > 255:
        raise EvaluationError("too many organs to evaluate (at most 242 beyond FLARE's 13)")
    return ids


def to_evaluation_labels(
    array: np.ndarray, labelset: LabelSet, ids: Mapping[str, int], source: str
) -> np.ndarray:
    """Map a label map onto the evaluation ids (uint8); organs not evaluated become 0.

    Raises
    ------
    EvaluationError
        For values that the label set does not know (unless it ignores unlisted values).
    """
    top = int(array.max(initial=0))
    unknown_marker = 255 if max(ids.values(), default=0) < 255 else 0
    lut = np.full(top + 1, 0 if labelset.ignore_unlisted else unknown_marker, dtype=np.uint8)
    lut[0] = 0
    for organ, (low, high) in labelset.ranges.items():
        if low <= top:
            lut[low:min(high, top) + 1] = ids.get(organ, 0)
    identity = np.arange(top + 1)
    if array.dtype == np.uint8 and np.array_equal(lut, identity):
        return array  # already in evaluation numbering: no copy of a large volume
    mapped = np.take(lut, array)
    if not labelset.ignore_unlisted and unknown_marker and (lut == unknown_marker).any():
        bad_mask = mapped == unknown_marker
        if bad_mask.any():
            bad = np.unique(array[bad_mask])[:6]
            listed = ", ".join(str(int(v)) for v in bad)
            raise EvaluationError(
                f"{source}: unknown label value(s) {listed} for label set {labelset.name!r}"
            )
    return mapped
