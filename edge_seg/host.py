"""What CPU a figure was measured on: model name and the instruction sets that decide it.

OpenVINO's speed, and an INT8 model's logits, depend on the CPU: without VNNI, INT8
convolutions multiply in 16-bit intermediates; with AMX or AVX-512 BF16 the plugin runs float
layers in bf16 unless told otherwise. Result tables, the quantise-time fidelity report and
``edgeseg verify`` name the CPU with :func:`cpu_description`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: The instruction sets that change OpenVINO's kernels, in the order they are listed.
DECISIVE_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """CPU model, logical CPU count and the decisive instruction sets present.

    Examples
    --------
    >>> "logical CPUs, ISA:" in cpu_description()
    True
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux, or /proc not mounted: the model from platform only
        pass
    isa = [flag for flag in DECISIVE_ISA if flag in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, ISA: {' '.join(isa) or 'unknown'}"
