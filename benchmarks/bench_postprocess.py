"""Time and memory of the connected-component post-processing on a FLARE-size label map.

Compares the runtime's default (largest component of every organ, ``keep_largest_component``)
with nnU-Net's determined post-processing as a bundle carries it
(``largest_component_groups``: the whole foreground, then every organ on its own, the most
steps ``nnUNetv2_find_best_configuration`` can keep), each in a fresh process on the same
map: 13 ball-shaped organs in a 300x512x512 volume with 2000 stray voxels of random organs.

    python benchmarks/bench_postprocess.py [--runs 3] [--out benchmarks/results/postprocess.md]

Reported per rule: median seconds and the growth of the process's peak resident memory over
the label map itself (``ru_maxrss`` after minus before the step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from edge_seg.postprocess import apply_component_groups, keep_largest_component

rng = np.random.default_rng(0)
labels = np.zeros((300, 512, 512), np.uint8)
zz, yy, xx = np.ogrid[:300, :512, :512]
for value in range(1, 14):
    centre = rng.integers([60, 120, 120], [240, 390, 390])
    radius = int(rng.integers(15, 45))
    box = tuple(slice(max(0, c - radius), c + radius) for c in centre)
    ball = ((zz[box[0]] - centre[0]) ** 2 + (yy[:, box[1]] - centre[1]) ** 2
            + (xx[:, :, box[2]] - centre[2]) ** 2) < radius ** 2
    labels[box][ball] = value
spots = rng.integers(0, [300, 512, 512], size=(2000, 3))
labels[spots[:, 0], spots[:, 1], spots[:, 2]] = rng.integers(1, 14, 2000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if {rule!r} == "default":
    keep_largest_component(labels, list(range(1, 14)))
else:
    apply_component_groups(labels, [list(range(1, 14))] + [[v] for v in range(1, 14)])
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({{"seconds": seconds, "peak_growth_mb": grown}}))
"""

RULES = {
    "default": "largest component of every organ (the runtime's default)",
    "nnunet": "nnU-Net groups: foreground, then each of the 13 organs",
}


def _run(rule: str) -> dict[str, float]:
    code = _CHILD.format(root=str(ROOT), rule=rule)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "postprocess.md")
    args = parser.parse_args()
    rows = []
    for rule, what in RULES.items():
        runs = [_run(rule) for _ in range(args.runs)]
        seconds = statistics.median(r["seconds"] for r in runs)
        growth = max(r["peak_growth_mb"] for r in runs)
        rows.append(f"| {what} | {seconds:.2f} | {growth:.0f} |")
        print(rows[-1], flush=True)
    sys.path.insert(0, str(ROOT))
    from edge_seg.host import cpu_description

    text = "\n".join([
        "# Connected-component post-processing on a 300x512x512 label map",
        "",
        f"Command: `python benchmarks/bench_postprocess.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {cpu_description()}. Each run in a fresh process; median seconds, largest "
        "growth of peak RSS over the label map.",
        "",
        "| rule | median s | peak growth MB |",
        "|---|---:|---:|",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
