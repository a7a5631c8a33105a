"""Splitting a cohort between machines: ``edgeseg predict IN OUT --shard K/N``.

A cohort of tens of thousands of scans (UK Biobank) is segmented by many machines or cluster
jobs at once, each given the same input and output folders (a shared file system) and its own
``--shard K/N``. A case belongs to shard ``1 + h mod N``, with ``h`` a SHA-256 hash of its case
name, so that:

* every machine decides alone, with no coordinator and no list to hand out, and the N shards
  together take every case exactly once;
* a case stays in its shard when scans are added to or removed from the folder (a position in
  the sorted list would move every later case to another shard, and two machines would then
  segment the same case while another case waits);
* a rerun of one shard resumes it, as any batch resumes, since finished outputs are skipped.

Scans whose output names clash (``a.nii`` and ``a.nii.gz``) share a case name, hence a shard,
and are reported there.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from edge_seg.errors import EdgesegError

T = TypeVar("T")

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, case: str) -> bool:
        """Whether the case named ``case`` (the output name without suffix) is in this shard.

        Examples
        --------
        >>> shards = [Shard(k, 3) for k in (1, 2, 3)]
        >>> [sum(s.holds(name) for s in shards) for name in ("1000001", "case_0007")]
        [1, 1]
        """
        # fsencode: the bytes of the name on disk, also for names that are not valid UTF-8
        # (Python holds those with surrogate escapes, which str.encode refuses).
        digest = hashlib.sha256(os.fsencode(case)).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard`; K counts from 1, as in "part 3 of 10".

    Raises
    ------
    EdgesegError
        For anything but two integers with 1 <= K <= N, naming the option.
    """
    match = _SHARD.match(text)
    if not match:
        raise EdgesegError(f"--shard: {text!r} is not K/N (this machine's part K of N, e.g. 3/10)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        hint = (" (K counts from 1: for a 0-based array job id pass $((ID + 1))/N)"
                if index == 0 else "")
        raise EdgesegError(f"--shard: {text!r}: K must be 1 to N{hint}")
    return Shard(index, count)


def select(items: Sequence[T], shard: Shard, name: Callable[[T], str]) -> list[T]:
    """The items whose case name (``name(item)``) is in ``shard``, in their order."""
    return [item for item in items if shard.holds(name(item))]
