"""Start a one-scan run: read the scan while the runtime loads and the model compiles.

Inflating a gzipped CT takes most of a second and releases the GIL; importing the runtime's
libraries (SciPy, OpenVINO, cc3d) and compiling the model take about as long and mostly hold
it. Run side by side on two cores they overlap; this module imports nothing heavy itself, so
that the overlap starts before those imports.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from edge_seg.channels import read_channels
from edge_seg.errors import EdgesegError
from edge_seg.io import Volume
from edge_seg.options import PredictOptions

if TYPE_CHECKING:
    from edge_seg.predict import Predictor


def open_predictor_and_read(
    bundle_dir: str | Path | None, options: PredictOptions, scan: str | Path,
    channels: int = 1,
) -> tuple[Predictor, Volume]:
    """Read ``scan`` in a background thread while the bundle compiles; return both.

    ``channels``: the model's input channels (``scan`` is then the channel-0 file).

    When both fail, the problem with the model or the options is the one reported, as it
    would be if they ran in turn.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="edgeseg-read") as pool:
        reading = pool.submit(read_channels, scan, channels)
        try:
            from edge_seg.predict import Predictor

            predictor = Predictor(bundle_dir, options)
        except EdgesegError:
            reading.exception()  # let the read finish; the model's problem is the one raised
            raise
        return predictor, reading.result()
