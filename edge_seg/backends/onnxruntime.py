"""ONNX Runtime CPU backend (fp32 ONNX or INT8 QDQ ONNX)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from edge_seg.backends.base import ModelChoice, first_line
from edge_seg.backends.ports import Port, Shape, check_ports
from edge_seg.bundle import DEFAULT_IO_NAMES, Bundle
from edge_seg.errors import EdgesegError


class OnnxRuntimeSession:
    """An ONNX Runtime inference session on the CPU execution provider."""

    def __init__(self, bundle: Bundle, choice: ModelChoice, threads: int | None) -> None:
        import onnxruntime as ort

        self.choice = choice
        self.names = {**DEFAULT_IO_NAMES, **bundle.io_names}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        # Fatal only: ORT logs each error to stderr before raising it, and edgeseg reports
        # the raised error itself, as one line.
        options.log_severity_level = 4
        # ORT's worker threads spin-wait after each run by default. Between patches the
        # sliding window's NumPy work needs those cores, and so does an OpenVINO session in
        # the same process: on 2 cores, OpenVINO patches timed right after ORT ones ran about
        # 15 % slower (benchmarks/bench_quantize.py) until spinning was turned off.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(choice.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise EdgesegError(
                f"{choice.path}: ONNX Runtime cannot load the model ({exc})"
            ) from exc
        check_ports(
            bundle,
            choice.path,
            [_port(i) for i in self.session.get_inputs()],
            [_port(o) for o in self.session.get_outputs()],
        )
        # check_ports made sure the graph has what the manifest declares.
        self.has_presence_output = bundle.presence_output
        self.has_presence_input = bool(bundle.presence_input)
        self.inference_precision = "f32" if choice.precision == "fp32" else choice.precision

    def run(
        self, image: np.ndarray, presence: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {self.names["image"]: image}
        if self.has_presence_input:
            if presence is None:
                raise EdgesegError(f"{self.choice.path}: model needs a presence prior input")
            feed[self.names["presence"]] = presence
        wanted = [self.names["logits"]]
        if self.has_presence_output:
            wanted.append(self.names["presence_logits"])
        try:
            outputs = self.session.run(wanted, feed)
        except MemoryError:
            raise
        except Exception as exc:  # ORT's own exception types derive from Exception only
            # With dynamic spatial axes the first patch is where a patch_size the network
            # cannot take (not divisible by its strides) shows: say so in one line.
            raise EdgesegError(
                f"{self.choice.path}: ONNX Runtime cannot run the model on a "
                f"{'x'.join(map(str, image.shape))} patch ({first_line(exc)}); check "
                "patch_size in the bundle's edgeseg.json"
            ) from exc
        presence_logits = outputs[1].reshape(-1) if self.has_presence_output else None
        return outputs[0][0], presence_logits

    def run_many(
        self,
        images: Iterable[np.ndarray],
        presence: np.ndarray | None = None,
        copy: bool = True,
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Run patches one after the other (the session's threads share each one); every
        result is a new array, whatever ``copy`` says."""
        for image in images:
            yield self.run(image, presence)


def _port(arg) -> Port:
    """An ORT ``NodeArg`` as a :class:`Port` (symbolic dimensions are dynamic)."""
    shape: Shape = None
    if isinstance(arg.shape, list):
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return Port(frozenset({arg.name}), shape)
