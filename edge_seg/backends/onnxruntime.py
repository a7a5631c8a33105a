"""ONNX Runtime CPU backend (fp32 ONNX or INT8 QDQ ONNX)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from edge_seg.backends.base import ModelChoice
from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError


class OnnxRuntimeSession:
    """An ONNX Runtime inference session on the CPU execution provider."""

    def __init__(self, bundle: Bundle, choice: ModelChoice, threads: int | None) -> None:
        import onnxruntime as ort

        self.choice = choice
        self.names = bundle.io_names
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_presence_output = self.names["presence_logits"] in self.output_names
        self.has_presence_input = self.names["presence"] in {
            i.name for i in self.session.get_inputs()
        }
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
        outputs = self.session.run(wanted, feed)
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
