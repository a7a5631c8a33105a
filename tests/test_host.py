"""``edge_seg.host.cpu_description``: the CPU line of result tables and fidelity reports."""

from __future__ import annotations

from pathlib import Path

from edge_seg.host import cpu_description


def test_names_the_model_and_only_the_decisive_instruction_sets(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU 9000\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 sha_ni\n"
    )
    text = cpu_description(cpuinfo)
    assert text.startswith("Example CPU 9000, ")
    assert text.endswith("ISA: avx2 avx512f avx512_vnni avx512_bf16")


def test_without_cpuinfo_it_still_says_what_it_knows(tmp_path: Path) -> None:
    text = cpu_description(tmp_path / "missing")
    assert text.endswith("ISA: unknown") and "logical CPUs" in text


def test_docstring_example() -> None:
    import doctest

    import edge_seg.host as host

    assert doctest.testmod(host).failed == 0
