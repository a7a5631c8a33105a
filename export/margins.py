"""Why an INT8 model relabels voxels: how clearly the fp32 model had decided them.

A voxel's label is the argmax of its class logits ``z``. Let ``w`` be the fp32 winner and
``r`` the runner-up; the voxel's *margin* is

.. math:: m = z_w - z_r \\ge 0.

Quantisation adds an error ``e_k`` to every logit. The voxel keeps its label against the
runner-up as long as

.. math:: (z_w + e_w) - (z_r + e_r) > 0 \\iff e_r - e_w < m,

so what decides a flip is the error of the margin, ``Δm = e_w - e_r``, against the margin
itself. A class whose voxels the fp32 model labels with margins well above the spread of
``Δm`` survives INT8 whatever the rounding; a class it barely decides (most voxels within a
fraction of a logit of the runner-up) loses voxels to any perturbation, INT8 or otherwise.

These functions work on logits at the network's resolution (class axis first), e.g. the
averaged sliding-window logits of one image under two precisions.

Example
-------
>>> import numpy as np
>>> fp32 = np.array([[[2.0, 0.1]], [[0.0, 0.0]]])   # 2 classes, 1 x 2 voxels
>>> top_two_margin(fp32)
array([[2. , 0.1]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Margins (in logits) at which the share of a class's voxels is reported.
MARGIN_THRESHOLDS: tuple[float, ...] = (0.25, 0.5)


def top_two_margin(logits: np.ndarray) -> np.ndarray:
    """Winner minus runner-up logit per voxel (``logits``: classes on axis 0)."""
    if logits.shape[0] < 2:
        raise ValueError("need at least two classes for a margin")
    top = np.partition(logits, -2, axis=0)
    return top[-1] - top[-2]


def margin_error(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """``Δm``: the change of the reference winner's lead over the reference runner-up.

    Negative where the candidate narrows the lead; a voxel flips away from its reference label
    when ``Δm < -m`` for some rival (the runner-up being the nearest one).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    order = np.argpartition(reference, -2, axis=0)[-2:]
    first = np.take_along_axis(reference, order, axis=0)
    # argpartition leaves the two largest unordered: put the winner first.
    swap = first[0] > first[1]
    winner = np.where(swap, order[0], order[1])[None]
    runner_up = np.where(swap, order[1], order[0])[None]

    def lead(logits: np.ndarray) -> np.ndarray:
        return (np.take_along_axis(logits, winner, axis=0)
                - np.take_along_axis(logits, runner_up, axis=0))[0]

    return lead(candidate) - lead(reference)


@dataclass
class ClassMargins:
    """Pooled counts for one class over any number of images (reference = fp32)."""

    voxels: int = 0
    candidate_voxels: int = 0
    both: int = 0
    flipped: int = 0
    below: dict[float, int] = field(default_factory=dict)
    squared_margin_error: float = 0.0

    @property
    def dice(self) -> float:
        """Dice of the class's reference and candidate voxels (1.0 where both are empty)."""
        total = self.voxels + self.candidate_voxels
        return 1.0 if total == 0 else 2.0 * self.both / total

    def share_below(self, threshold: float) -> float:
        """Share of the reference voxels whose fp32 margin is below ``threshold``."""
        return self.below.get(threshold, 0) / self.voxels if self.voxels else 0.0

    @property
    def flip_rate(self) -> float:
        """Share of the reference voxels the candidate labels otherwise."""
        return self.flipped / self.voxels if self.voxels else 0.0

    @property
    def margin_error_rms(self) -> float:
        """Root mean square of ``Δm`` over the reference voxels."""
        return float(np.sqrt(self.squared_margin_error / self.voxels)) if self.voxels else 0.0


@dataclass
class MarginTally:
    """Per-class margins and flips pooled over images; see :func:`tally_margins`."""

    organs: Mapping[str, int]
    thresholds: Sequence[float] = MARGIN_THRESHOLDS
    classes: dict[str, ClassMargins] = field(default_factory=dict)
    flipped: int = 0
    flipped_below: dict[float, int] = field(default_factory=dict)

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Add one image's logits (reference fp32, candidate e.g. INT8), classes first."""
        margin = top_two_margin(reference)
        delta = margin_error(reference, candidate)
        ref_labels = reference.argmax(axis=0)
        cand_labels = candidate.argmax(axis=0)
        changed = ref_labels != cand_labels
        self.flipped += int(changed.sum())
        for t in self.thresholds:
            self.flipped_below[t] = self.flipped_below.get(t, 0) + int(
                (changed & (margin < t)).sum())
        for name, value in self.organs.items():
            mine = ref_labels == value
            entry = self.classes.setdefault(name, ClassMargins())
            entry.voxels += int(mine.sum())
            entry.candidate_voxels += int((cand_labels == value).sum())
            entry.both += int((mine & (cand_labels == value)).sum())
            entry.flipped += int((mine & changed).sum())
            for t in self.thresholds:
                entry.below[t] = entry.below.get(t, 0) + int((mine & (margin < t)).sum())
            entry.squared_margin_error += float(np.square(delta[mine], dtype=np.float64).sum())

    def share_of_flips_below(self, threshold: float) -> float:
        """Share of all relabelled voxels whose fp32 margin was below ``threshold``."""
        return self.flipped_below.get(threshold, 0) / self.flipped if self.flipped else 0.0


def tally_margins(pairs: Sequence[tuple[np.ndarray, np.ndarray]], organs: Mapping[str, int],
                  thresholds: Sequence[float] = MARGIN_THRESHOLDS) -> MarginTally:
    """Pool :class:`MarginTally` over ``(reference, candidate)`` logit pairs.

    >>> import numpy as np
    >>> # voxel 0: class 0 by 3 logits; voxel 1: class 1 by 0.2
    >>> ref = np.array([[[3.0, 0.0]], [[0.0, 0.2]]])
    >>> cand = ref + np.array([[[0.0, 0.3]], [[0.0, 0.0]]])   # INT8 nudges voxel 1 to class 0
    >>> tally = tally_margins([(ref, cand)], {"organ": 1})
    >>> tally.classes["organ"].flip_rate, tally.share_of_flips_below(0.25)
    (1.0, 1.0)
    """
    tally = MarginTally(organs, tuple(thresholds))
    for reference, candidate in pairs:
        tally.add(reference, candidate)
    return tally
