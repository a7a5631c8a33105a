"""Organ names, FLARE label numbers and per-organ NSD tolerances.

This is the single table of abdominal organs used across edgeseg: the phantom generator, the
runtime and the evaluator all name organs by the keys of :data:`FLARE_LABELS`. The names follow
TotalSegmentator's spelling (``kidney_right``, ``inferior_vena_cava``) so that label maps from
that tool map by name without a translation table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: FLARE21-24 label numbers (FLARE23 adds 14 = lesion).
FLARE_LABELS: dict[str, int] = {
    "liver": 1,
    "kidney_right": 2,
    "spleen": 3,
    "pancreas": 4,
    "aorta": 5,
    "inferior_vena_cava": 6,
    "adrenal_gland_right": 7,
    "adrenal_gland_left": 8,
    "gallbladder": 9,
    "esophagus": 10,
    "stomach": 11,
    "duodenum": 12,
    "kidney_left": 13,
}

#: FLARE22-24 Normalised Surface Dice tolerances in mm (lesion: 2 mm).
FLARE_NSD_TOLERANCE_MM: dict[str, float] = {
    "liver": 5.0,
    "kidney_right": 3.0,
    "spleen": 3.0,
    "pancreas": 5.0,
    "aorta": 2.0,
    "inferior_vena_cava": 2.0,
    "adrenal_gland_right": 2.0,
    "adrenal_gland_left": 2.0,
    "gallbladder": 2.0,
    "esophagus": 3.0,
    "stomach": 5.0,
    "duodenum": 7.0,
    "kidney_left": 3.0,
    "lesion": 2.0,
}

#: Common spellings users type on the command line, mapped to the canonical name.
ORGAN_ALIASES: dict[str, str] = {
    "right_kidney": "kidney_right",
    "left_kidney": "kidney_left",
    "rk": "kidney_right",
    "lk": "kidney_left",
    "ivc": "inferior_vena_cava",
    "vena_cava": "inferior_vena_cava",
    "rag": "adrenal_gland_right",
    "lag": "adrenal_gland_left",
    "right_adrenal_gland": "adrenal_gland_right",
    "left_adrenal_gland": "adrenal_gland_left",
    "gall_bladder": "gallbladder",
    "oesophagus": "esophagus",
}


def canonical_organ_name(name: str) -> str:
    """Return the canonical spelling of an organ name (case, spaces and hyphens ignored).

    Names that are neither canonical nor a known alias are returned normalised but unchanged,
    so that label sets with extra structures (e.g. ``lesion``) still work.

    Examples
    --------
    >>> canonical_organ_name("Right Kidney")
    'kidney_right'
    >>> canonical_organ_name("IVC")
    'inferior_vena_cava'
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return ORGAN_ALIASES.get(key, key)


def resolve_organs(requested: Iterable[str | int], labels: Mapping[str, int]) -> list[str]:
    """Resolve organ names or label numbers against a ``{name: value}`` label table.

    Raises
    ------
    ValueError
        Naming the unknown entry and listing the valid organ names.
    """
    by_value = {value: name for name, value in labels.items()}
    resolved: list[str] = []
    for item in requested:
        text = str(item).strip()
        if text.isdigit() and int(text) in by_value and int(text) != 0:
            resolved.append(by_value[int(text)])
            continue
        name = canonical_organ_name(text)
        if name not in labels or labels[name] == 0:
            valid = ", ".join(n for n, v in labels.items() if v != 0)
            raise ValueError(f"unknown organ {text!r}; this label set has: {valid}")
        resolved.append(name)
    return resolved
