"""Export a PyTorch segmentation network to ONNX and check the result.

The graph gets dynamic batch and spatial axes (the runtime feeds patches of the bundle's patch
size, but users may pick another), the names the bundle records (inputs ``image`` and, for a
HALOS-style network, ``presence``; outputs ``logits`` and optionally ``presence_logits``), and
two checks: the ONNX checker, and the largest absolute difference between ONNX Runtime's and
PyTorch's outputs on a real preprocessed patch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.errors import EdgesegError

OPSET = 17
SPATIAL_AXES = {2: "z", 3: "y", 4: "x"}


def fold_ensemble(networks: Sequence[Any]) -> Any:
    """One module whose output is the mean of the member networks' logits.

    nnU-Net's predictor ensembles folds the same way: it sums the folds' logits and divides by
    the number of folds before the softmax/argmax.
    """
    import torch

    class FoldEnsemble(torch.nn.Module):
        def __init__(self, members: Sequence[torch.nn.Module]) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, *inputs: torch.Tensor) -> Any:
            outputs = [member(*inputs) for member in self.members]
            if isinstance(outputs[0], (tuple, list)):
                return tuple(
                    torch.stack([out[i] for out in outputs]).mean(0)
                    for i in range(len(outputs[0]))
                )
            return torch.stack(outputs).mean(0)

    if len(networks) == 1:
        return networks[0]
    return FoldEnsemble(networks).eval()


def axiswise_instance_norm(module: Any) -> Any:
    """A copy of ``module`` whose instance norms reduce one spatial axis at a time.

    ONNX Runtime's InstanceNormalization (and ReduceMean) sums all voxels of a channel in one
    float32 pass; over a 48x128x128 patch that loses ~1e-4 per layer, ~5e-3 in the logits of
    a plain nnU-Net. Averaging x, then y, then z keeps every partial sum short and brings ONNX
    Runtime within ~1e-5 of PyTorch at the same speed; OpenVINO, however, no longer recognises
    the pattern as one MVN kernel and runs about 2x slower - hence an option, not the default.
    """
    import copy

    import torch

    class AxiswiseInstanceNorm(torch.nn.Module):
        def __init__(self, norm: torch.nn.Module) -> None:
            super().__init__()
            self.eps = float(norm.eps)
            self.weight = norm.weight
            self.bias = norm.bias

        @staticmethod
        def _mean(x: torch.Tensor) -> torch.Tensor:
            for axis in range(x.dim() - 1, 1, -1):
                x = x.mean(dim=axis, keepdim=True)
            return x

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centred = x - self._mean(x)
            y = centred / torch.sqrt(self._mean(centred * centred) + self.eps)
            if self.weight is None:
                return y
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return y * self.weight.view(shape) + self.bias.view(shape)

    def swap(parent: torch.nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.modules.instancenorm._InstanceNorm):
                if child.track_running_stats:
                    continue  # uses running statistics at inference: nothing to reduce
                setattr(parent, name, AxiswiseInstanceNorm(child))
            else:
                swap(child)

    copied = copy.deepcopy(module).eval()
    swap(copied)
    return copied


def _dynamic_axes(input_names: Sequence[str], output_names: Sequence[str],
                  image_name: str, logits_name: str) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in [*input_names, *output_names]:
        if name in (image_name, logits_name):
            axes[name] = {0: "batch", **SPATIAL_AXES}
        else:  # presence vectors: (batch, organs)
            axes[name] = {0: "batch"}
    return axes


def export_onnx(
    module: Any,
    example_inputs: Sequence[np.ndarray],
    path: str | Path,
    input_names: Sequence[str] = ("image",),
    output_names: Sequence[str] = ("logits",),
    opset: int = OPSET,
) -> Path:
    """Trace ``module`` on ``example_inputs`` and write a single-file ONNX model to ``path``."""
    import torch

    path = Path(path)
    module = module.eval()
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example_inputs)
    axes = _dynamic_axes(input_names, output_names, input_names[0], output_names[0])
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter warns about instance norm in eval mode and about
        # deprecation; neither affects the graph (checked numerically below).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                tensors,
                str(path),
                dynamo=False,  # the dynamo exporter needs onnxscript; the classic one suffices
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        except Exception as exc:
            raise EdgesegError(f"{path}: ONNX export failed ({str(exc).splitlines()[0]})") from exc
    return path


def check_onnx(path: str | Path) -> None:
    """Run the ONNX checker (full check, with shape inference) on the saved file."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise EdgesegError(f"{path}: ONNX checker rejected the model ({exc})") from exc


def torch_outputs(module: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The module's outputs as float32 NumPy arrays (one or several outputs)."""
    import torch

    with torch.no_grad():
        out = module.eval()(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
    if isinstance(out, (tuple, list)):
        return [o.detach().float().numpy() for o in out]
    return [out.detach().float().numpy()]


def onnxruntime_outputs(
    path: str | Path, inputs: Sequence[np.ndarray], input_names: Sequence[str]
) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(input_names, inputs, strict=True)))


def max_abs_difference(
    module: Any, path: str | Path, inputs: Sequence[np.ndarray], input_names: Sequence[str],
    output_names: Sequence[str],
) -> dict[str, float]:
    """Largest |ONNX Runtime - PyTorch| per output on the same inputs."""
    return compare_with_torch(module, path, inputs, input_names, output_names)[0]


def compare_with_torch(
    module: Any, path: str | Path, inputs: Sequence[np.ndarray], input_names: Sequence[str],
    output_names: Sequence[str], expected: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per output: largest |ONNX Runtime - PyTorch|, and largest |PyTorch| (the scale).

    ``expected``: the module's outputs on ``inputs`` if already computed (one forward less).
    """
    if expected is None:
        expected = torch_outputs(module, inputs)
    got = onnxruntime_outputs(path, inputs, input_names)
    if len(expected) != len(got) or len(got) != len(output_names):
        raise EdgesegError(
            f"{path}: ONNX model has {len(got)} outputs, PyTorch {len(expected)}, expected "
            f"{len(output_names)} ({', '.join(output_names)})"
        )
    diffs, scales = {}, {}
    for name, want, have in zip(output_names, expected, got, strict=True):
        if want.shape != have.shape:
            raise EdgesegError(
                f"{path}: output '{name}' shape {have.shape} differs from PyTorch {want.shape}"
            )
        diffs[name] = float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64))))
        scales[name] = float(np.max(np.abs(want)))
    return diffs, scales
