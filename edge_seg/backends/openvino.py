"""OpenVINO CPU backend.

OpenVINO runs float32 models in bfloat16 on CPUs with bf16 support (AMX, AVX-512 BF16) unless
told otherwise, so fp32 sets ``INFERENCE_PRECISION_HINT=f32`` explicitly and bf16 sets
``bf16``. INT8 models set ``f32`` too, for the layers they keep in floating point: those
layers (instance-norm inputs, the mixed-precision fallback convolutions) stay out of INT8
because they need the precision, and ``edgeseg quantize`` measures agreement with them in f32.
Left to the plugin on an AVX-512 BF16 CPU, the HALOS-style reference bundle's INT8 model fell
from 0.986 to 0.959 agreement with fp32 on its held-out phantoms (the oesophagus from 0.93 to
0.58), for 6 % more speed; the plain model's INT8 ran as fast in f32 as in bf16.

Bundles export their models with dynamic spatial axes, but the sliding window only ever feeds
one patch shape, so the model is reshaped to that static shape before compiling: the CPU
plugin then plans its memory and picks its kernels once instead of per inference.

Patches go through several inference streams at once (:meth:`OpenVinoSession.run_many`), each
with its share of the threads: on 2 cores, 2 streams of 1 thread ran 20-25 % more patches per
second than 1 stream of 2 threads (fp32 and INT8), since one thread per convolution spends no
time on synchronisation and the NumPy work between patches overlaps the network.

Compiled models are cached on disk (OpenVINO's ``CACHE_DIR``; see :func:`model_cache_dir`):
compiling takes a sizeable share of a one-scan run (0.5 s of about 6 s for a 512x512x300 CT
on 2 cores), loading the cached blob half of that.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np

from edge_seg.backends.base import ModelChoice
from edge_seg.backends.ports import Port, Shape, check_ports
from edge_seg.bundle import DEFAULT_IO_NAMES, Bundle
from edge_seg.errors import EdgesegError

_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


#: OpenVINO's model-conversion API, which ``import openvino`` loads although a runtime that
#: only reads IR and ONNX files never uses it.
_CONVERSION_API = "openvino.tools.ovc"


def import_openvino() -> ModuleType:
    """``import openvino``, without loading its model-conversion API until it is used.

    The package imports ``openvino.tools.ovc`` (``convert_model``) and OpenVINO's telemetry
    on import, inside ``try/except ImportError``: 0.18 s of every ``edgeseg predict`` on
    2 cores. Blocked for the import, the conversion API is left out; ``openvino.convert_model``
    then imports it on first use, so export code in the same process still works.
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    sys.modules[_CONVERSION_API] = None  # type: ignore[assignment]  # makes its import fail
    try:
        import openvino
    finally:
        if sys.modules.get(_CONVERSION_API, False) is None:
            del sys.modules[_CONVERSION_API]
    if "convert_model" not in vars(openvino):

        def convert_on_first_use(name: str) -> object:
            if name != "convert_model":
                raise AttributeError(f"module 'openvino' has no attribute {name!r}")
            from openvino.tools.ovc import convert_model

            openvino.convert_model = convert_model
            return convert_model

        openvino.__getattr__ = convert_on_first_use  # type: ignore[attr-defined]
    return openvino


class OpenVinoSession:
    """A compiled OpenVINO model with one infer request per stream, reused for every patch."""

    def __init__(
        self,
        bundle: Bundle,
        choice: ModelChoice,
        threads: int | None,
        precision_hint: str | None = None,
        streams: int | None = None,
    ) -> None:
        """``precision_hint``: override of INFERENCE_PRECISION_HINT (``"default"`` sets none,
        as a plain OpenVINO user would; benchmarks use it to show what that costs).
        ``streams``: patches in flight at once (None: :func:`default_streams`)."""
        ov = import_openvino()
        self.choice = choice
        self.names = {**DEFAULT_IO_NAMES, **bundle.io_names}
        core = ov.Core()
        cache = model_cache_dir()
        if cache is not None:
            core.set_property({"CACHE_DIR": str(cache)})
        total_threads = int(threads) if threads else (os.cpu_count() or 1)
        self.streams = int(streams) if streams else default_streams(total_threads)
        if self.streams < 1:
            raise EdgesegError(f"--streams: {streams} is not a positive number")
        config: dict[str, object] = {
            "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": self.streams,
            # OpenVINO shares these between the streams.
            "INFERENCE_NUM_THREADS": max(total_threads, self.streams),
        }
        hint = precision_hint or _HINTS.get(choice.precision)
        if hint and hint != "default":
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            model = core.read_model(str(choice.path))
        except RuntimeError as exc:
            raise EdgesegError(
                f"{choice.path}: OpenVINO cannot load the model ({_short(exc)})"
            ) from exc
        # Before the reshape, which would hide a static patch shape that disagrees.
        check_ports(bundle, choice.path, _ports(model.inputs), _ports(model.outputs))
        static = _static_shapes(model, bundle)
        if static:
            _reshape(model, static, choice.path)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise EdgesegError(
                f"{choice.path}: OpenVINO cannot load the model ({_short(exc)})"
            ) from exc
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self.request = self.requests[0]
        # check_ports made sure the graph has what the manifest declares.
        self.has_presence_output = bundle.presence_output
        self.has_presence_input = bool(bundle.presence_input)
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def run(
        self, image: np.ndarray, presence: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One patch on the first stream: with several streams it gets that stream's share of
        the threads only (:meth:`run_many` keeps them all busy)."""
        self.request.infer(self._feed(image, presence))
        return self._outputs(self.request)

    def run_many(
        self,
        images: Iterable[np.ndarray],
        presence: np.ndarray | None = None,
        copy: bool = True,
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Run patches in order with up to ``streams`` of them in flight; yields as ``run``.

        With ``copy`` each result is a copy, so it stays valid while its request runs the next
        patch. Without, the logits are a view of the request's output: the request that
        produced a result is the next one to be given a patch, which happens when the next
        result is asked for.
        """
        # Requests are used in turn, so the oldest one in flight is always the next to reuse.
        busy: deque = deque()
        for i, image in enumerate(images):
            if len(busy) == len(self.requests):
                yield self._collect(busy.popleft(), copy)
            request = self.requests[i % len(self.requests)]
            request.start_async(self._feed(image, presence))
            busy.append(request)
        while busy:
            yield self._collect(busy.popleft(), copy)

    def _feed(self, image: np.ndarray, presence: np.ndarray | None) -> dict[str, np.ndarray]:
        feed = {self.names["image"]: image}
        if self.has_presence_input:
            if presence is None:
                raise EdgesegError(f"{self.choice.path}: model needs a presence prior input")
            feed[self.names["presence"]] = presence
        return feed

    def _collect(self, request, copy: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        request.wait()
        return self._outputs(request, copy)

    def _outputs(self, request, copy: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        tensor = request.get_tensor(self.compiled.output(self.names["logits"]))
        logits = np.array(tensor.data[0], copy=True) if copy else tensor.data[0]
        presence_logits = None
        if self.has_presence_output:
            out = request.get_tensor(self.compiled.output(self.names["presence_logits"]))
            presence_logits = np.array(out.data, copy=True).reshape(-1)
        return logits, presence_logits


def default_streams(threads: int) -> int:
    """Inference streams for ``threads`` threads: 2 where there are 2 threads or more.

    More streams than 2 pay little more on CPUs of a few cores and each holds its own
    activations (the second one added 120-140 MB of peak memory for the reference model's
    48x128x128 patch, ``benchmarks/bench_predict.py``).
    """
    return 2 if threads >= 2 else 1


#: Environment variable naming the folder for compiled models; empty or ``off``: no cache.
CACHE_ENV = "EDGESEG_CACHE_DIR"


def model_cache_dir() -> Path | None:
    """Where compiled OpenVINO models are cached, or None for no cache.

    ``$EDGESEG_CACHE_DIR`` if set (empty or ``off`` turns caching off), else
    ``$XDG_CACHE_HOME/edgeseg/openvino`` (``~/.cache/edgeseg/openvino``). OpenVINO keys each
    blob by a hash of the model, its shapes and the compile options, so a changed model or
    setting never loads a stale blob. A folder that cannot be created or written is skipped.
    """
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        if chosen.strip().lower() in ("", "off"):
            return None
        folder = Path(chosen).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "edgeseg" / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None


def _static_shapes(model, bundle: Bundle) -> dict[str, list[int]]:
    """Static shapes for the inputs that have dynamic dimensions: one patch, batch 1."""
    io = {**DEFAULT_IO_NAMES, **bundle.io_names}
    wanted = {io["image"]: [1, len(bundle.channels), *bundle.patch_size]}
    if bundle.presence_input:
        wanted[io["presence"]] = [1, len(bundle.presence_input)]
    shapes = {}
    for port in model.inputs:
        name = next((n for n in port.get_names() if n in wanted), None)
        if name is not None and port.get_partial_shape().is_dynamic:
            shapes[name] = wanted[name]
    return shapes


def _reshape(model, shapes: dict[str, list[int]], path: Path) -> None:
    """Fix the model's dynamic inputs to one patch; a network whose strides do not divide
    ``patch_size`` fails here (the ONNX Runtime backend finds out at its first patch)."""
    try:
        model.reshape(shapes)
    except RuntimeError as exc:
        wanted = "; ".join(f"{name} {'x'.join(map(str, s))}" for name, s in shapes.items())
        raise EdgesegError(
            f"{path}: OpenVINO cannot reshape the model to {wanted} ({_short(exc)}); check "
            "patch_size in the bundle's edgeseg.json"
        ) from exc


def _ports(ports) -> list[Port]:
    """OpenVINO graph ports as :class:`Port` lists (dynamic and bounded dimensions: None)."""
    found = []
    for port in ports:
        partial = port.get_partial_shape()
        shape: Shape = None
        if partial.rank.is_static:
            shape = tuple(d.get_length() if d.is_static else None for d in partial)
        found.append(Port(frozenset(port.get_names()), shape))
    return found


def _short(exc: BaseException) -> str:
    """The reason in an OpenVINO exception, without the source locations around it.

    OpenVINO's messages start with ``Exception from src/...cpp:84:`` and ``Check '...'
    failed at src/...:219:`` lines and say what is wrong only after them ("Start-end tags
    mismatch at offset 299"); those come first, then the rest as a fallback.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    located = ("Exception from ", "Check '")
    reasons = [line for line in lines if not line.startswith(located)]
    chosen = "; ".join(reasons) if reasons else (lines[0] if lines else type(exc).__name__)
    return chosen[:200]
