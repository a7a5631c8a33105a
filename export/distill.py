"""INT8-aware distillation: fine-tune a copy of the network so that its INT8 form tracks fp32.

Post-training INT8 leaves every logit with an error of a few tenths; a voxel changes label
where that error eats its lead over the runner-up class (:mod:`export.margins`). A class the
network decides by small margins (a small, hard organ) then loses voxels however well the
quantiser is calibrated. Distillation lowers the error itself:

* the *teacher* is the fp32 network, unchanged - it stays the bundle's fp32 model and the
  reference every agreement is measured against;
* the *student* is a copy that runs with simulated INT8 as NNCF's OpenVINO INT8 runs it:
  per-output-channel symmetric 8-bit weights and per-tensor asymmetric 8-bit activations at
  the input of every (transposed) convolution, with ranges taken from the teacher on the
  patches; instance norms and everything outside the convolutions stay float;
* the loss is the squared logit difference, weighted per voxel by
  ``0.1 + exp(-m / focus)`` where ``m`` is the teacher's lead of its winner over its runner-up,
  because voxels with small leads are the ones that flip;
* optionally (``class_balance`` a > 0) that weight is multiplied by ``(N / (K n_c)) ** a``
  for the rarer of the voxel's two leading classes ``c`` (``n_c`` voxels of the patch won by
  ``c``, ``K`` classes won anywhere in it, ``N`` voxels): the agreement bar averages organs
  with equal weight, so the 15 voxels of an adrenal gland count as much as the liver, yet
  without it they are a rounding error of the loss. The runner-up counts too because the
  voxels that flip *into* a small organ are the teacher's background next to it;
* optionally (``float_convs``) the student keeps the first / last convolutions, in the order
  the forward pass calls them, in float, as the mixed-precision level it will be quantised
  at does;
* optionally (``objective="labels"``) each voxel's loss also has a hinge on the student's
  lead of the teacher's winning class (:func:`voxel_loss`), under the same weight. The logit
  error alone spends the student's capacity on every class's logit alike, the agreement bar
  only asks for the same winner; the squared error stays in so that the logits keep the
  teacher's scale where the winner is already right (the sliding window averages them).

Gradients pass the rounding unchanged (straight-through estimator, PyTorch's fake-quantise
ops). No labels are used: the calibration images suffice. The student's weights are exported to
ONNX and quantised by the usual post-training route; only the INT8 model comes from it.

``edgeseg quantize --distill`` runs it before quantising (the PyTorch network is rebuilt from
the bundle's provenance by :mod:`export.source_network`); ``benchmarks/bench_int8_distill.py``
measures it against plain post-training INT8.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_seg.bundle import Bundle

#: ``quantised_from`` of an INT8 variant quantised from the student (fidelity report).
STUDENT_ORIGIN = "distilled student"
#: What the student's loss compares with the teacher (:class:`DistillSettings`).
OBJECTIVES = ("logits", "labels")
#: Lead (logits) of the teacher's winner in the student beyond which the ``labels`` hinge is 0.
LABEL_MARGIN = 0.25


@dataclass(frozen=True)
class DistillSettings:
    """How long and how hard the student is trained (defaults: the measured recipe)."""

    steps: int = 300
    learning_rate: float = 1e-4
    focus_logit: float = 0.5
    seed: int = 0
    #: Training patches cut from each calibration image (the quantiser's own set is smaller).
    patches_per_image: int = 12
    #: Exponent of the rare-class weight (0: off, the measured default recipe).
    class_balance: float = 0.0
    #: ``(first, last)`` convolutions the student simulates in float (a mixed level).
    float_convs: tuple[int, int] = (0, 0)
    #: ``logits`` (squared logit error) or ``labels`` (plus cross-entropy on the teacher's
    #: winner; see the module docstring).
    objective: str = "logits"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"distillation objective {self.objective!r} is not one of "
                             f"{', '.join(OBJECTIVES)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _conv_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d)


def activation_ranges(network: Any,
                      batches: Sequence[Sequence[Any]]) -> dict[int, tuple[float, float]]:
    """Per convolution (by ``id``, in the order the forward pass first calls them): mean over
    batches of the input's min and max, min <= 0.

    Convolutions the forward pass never calls (nnU-Net's deep-supervision heads with deep
    supervision off) get no entry.
    """
    import torch

    seen: dict[int, list[tuple[float, float]]] = {}

    def record(module: Any, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        seen.setdefault(id(module), []).append((float(x.min()), float(x.max())))

    hooks = [m.register_forward_pre_hook(record) for m in network.modules()
             if isinstance(m, _conv_types())]
    try:
        with torch.no_grad():
            for batch in batches:
                network(*batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (min(0.0, float(np.mean([lo for lo, _ in values]))),
                  float(np.mean([hi for _, hi in values])))
            for key, values in seen.items()}


def without_float_ends(ranges: Mapping[int, tuple[float, float]], first: int,
                       last: int) -> dict[int, tuple[float, float]]:
    """``ranges`` less its ``first`` and ``last`` entries (in call order): the convolutions a
    mixed-precision level keeps in float (the quantiser's own rule,
    :func:`export.quantize.sensitive_layers`), which :func:`simulated_int8` then leaves alone."""
    from export.quantize import sensitive_layers

    kept_float = set(sensitive_layers(list(ranges), (first, last)))
    return {key: value for key, value in ranges.items() if key not in kept_float}


def _fake_quantised_forward(module: Any, low: float, high: float) -> Callable[[Any], Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    scale = max(high - low, 1e-8) / 255.0
    zero_point = round(-low / scale)
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    out_axis = 1 if transposed else 0

    def weights() -> Any:
        w = module.weight
        others = [d for d in range(w.dim()) if d != out_axis]
        w_scale = (w.detach().abs().amax(dim=others) / 127.0).clamp_min(1e-12)
        zeros = torch.zeros_like(w_scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, w_scale, zeros, out_axis, -128, 127)

    def forward(x: Any) -> Any:
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
        if transposed:
            conv = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
            return conv(x, weights(), module.bias, module.stride, module.padding,
                        module.output_padding, module.groups, module.dilation)
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
        return conv(x, weights(), module.bias, module.stride, module.padding, module.dilation,
                    module.groups)

    return forward


def voxel_loss(student_logits: Any, teacher_logits: Any, objective: str = "logits") -> Any:
    """Per voxel: the mean squared logit error, plus for ``labels`` the hinge
    ``max(0, LABEL_MARGIN - (s_t - max_{k != t} s_k))`` on the student's logits ``s``, ``t``
    the teacher's winner (classes on dim 1; the result drops that dim).

    The hinge is zero once the student's winner is the teacher's by :data:`LABEL_MARGIN`, so
    unlike a cross-entropy it does not keep inflating the logits of voxels already right.

    >>> import torch
    >>> teacher = torch.tensor([[[2.0], [0.0]]])  # one voxel, class 0 wins
    >>> student = torch.tensor([[[0.0], [2.0]]])  # class 1 wins: a flipped voxel
    >>> float(voxel_loss(student, teacher)[0, 0])
    4.0
    >>> float(voxel_loss(student, teacher, "labels")[0, 0])  # 4 + (0.25 + 2)
    6.25
    """
    import torch

    error = (student_logits - teacher_logits).square().mean(dim=1)
    if objective == "labels":
        winner = teacher_logits.argmax(dim=1, keepdim=True)
        own = student_logits.gather(1, winner).squeeze(1)
        rival = student_logits.scatter(1, winner, float("-inf")).amax(dim=1)
        error = error + torch.relu(LABEL_MARGIN - (own - rival))
    return error


def focus_weights(teacher_logits: Any, focus_logit: float) -> Any:
    """``0.1 + exp(-m / focus)`` per voxel, ``m`` the teacher's top-two lead (classes on dim 1)."""
    import torch

    top = teacher_logits.topk(2, dim=1).values
    return 0.1 + torch.exp(-(top[:, 0] - top[:, 1]) / focus_logit)


def rare_class_weights(teacher_logits: Any, exponent: float) -> Any:
    """Per voxel ``(N / (K n_c)) ** exponent`` for the rarer of its two leading classes.

    ``n_c``: voxels of the patch whose teacher winner is ``c``; ``K``: classes that win at
    least one voxel; ``N``: voxels. A class that wins nowhere counts as one voxel, so a
    runner-up that never wins (a small organ the teacher only nearly labels) gets the
    largest weight.

    >>> import torch
    >>> logits = torch.zeros(1, 2, 4)
    >>> logits[0, 1, 0] = 1.0  # class 1 wins one voxel of four, class 0 the other three
    >>> [round(float(w), 3) for w in rare_class_weights(logits, 1.0)[0]]
    [2.0, 2.0, 2.0, 2.0]
    """
    import torch

    classes = teacher_logits.shape[1]
    top = teacher_logits.topk(2, dim=1).indices  # (B, 2, *spatial)
    counts = torch.bincount(top[:, 0].reshape(-1), minlength=classes).float()
    voxels = float(top[:, 0].numel())
    per_class = (voxels / (int((counts > 0).sum()) * counts.clamp_min(1.0))) ** exponent
    return torch.maximum(per_class[top[:, 0]], per_class[top[:, 1]])


@contextmanager
def simulated_int8(network: Any, ranges: Mapping[int, tuple[float, float]]) -> Iterator[Any]:
    """Run ``network``'s convolutions with fake-quantised inputs and weights inside the block.

    ``ranges``: input (min, max) per convolution, from :func:`activation_ranges` on this very
    network object; convolutions without a range stay float. The float forwards come back on
    exit, also after an error.
    """
    convs = [m for m in network.modules() if isinstance(m, _conv_types()) and id(m) in ranges]
    for module in convs:
        module.forward = _fake_quantised_forward(module, *ranges[id(module)])
    try:
        yield network
    finally:
        for module in convs:
            module.__dict__.pop("forward", None)


def distill_for_int8(
    network: Any,
    inputs: Sequence[Sequence[np.ndarray]],
    settings: DistillSettings = DistillSettings(),
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Return a student copy of ``network`` fine-tuned to track it under simulated INT8.

    Parameters
    ----------
    network
        The fp32 PyTorch network; not modified.
    inputs
        Network inputs per sample (``[image]`` or ``[image, presence]``), as
        :func:`export.calibration.patch_set` gives them.
    settings
        Steps, learning rate (Adam, decayed linearly to 0), focus margin, seed, rare-class
        weight, convolutions kept float, objective.

    Returns
    -------
    student, report
        The student in eval mode with its ordinary (float) forward; the report gives the
        weighted loss of the first and last tenth of the steps.
    """
    import torch

    if not inputs:
        raise ValueError("distillation needs at least one input patch")
    torch.manual_seed(settings.seed)
    teacher = network.eval()
    batches = [[torch.from_numpy(np.ascontiguousarray(a)) for a in sample] for sample in inputs]

    def logits_of(output: Any) -> Any:
        return output[0] if isinstance(output, (tuple, list)) else output

    with torch.no_grad():
        targets = [logits_of(teacher(*batch)).to(torch.float16) for batch in batches]
    student = copy.deepcopy(teacher)
    ranges = without_float_ends(activation_ranges(student, batches), *settings.float_convs)
    optimiser = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    losses: list[float] = []
    started = time.perf_counter()
    with simulated_int8(student, ranges):
        for step in range(settings.steps):
            i = int(rng.integers(len(batches)))
            target = targets[i].float()
            weight = focus_weights(target, settings.focus_logit)
            if settings.class_balance > 0:
                weight = weight * rare_class_weights(target, settings.class_balance)
            error = voxel_loss(logits_of(student(*batches[i])), target, settings.objective)
            loss = (error * weight).sum() / weight.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate * (1.0 - (step + 1) / settings.steps)
            losses.append(float(loss.detach()))
            if (step + 1) % max(1, settings.steps // 10) == 0:
                log(f"distill: step {step + 1}/{settings.steps}, loss {losses[-1]:.5f}, "
                    f"{time.perf_counter() - started:.0f} s")
    tenth = max(1, len(losses) // 10)
    report = {
        **settings.to_json(),
        "patches": len(batches),
        "loss_first_tenth": float(np.mean(losses[:tenth])) if losses else None,
        "loss_last_tenth": float(np.mean(losses[-tenth:])) if losses else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return student.eval(), report


def export_student(bundle: Bundle, student: Any, sample: Sequence[np.ndarray],
                   path: Path) -> Path:
    """Write the student as ONNX with the bundle's input and output names; return ``path``."""
    from export.onnx_export import export_onnx

    return export_onnx(student, sample, path, bundle.graph_inputs, bundle.graph_outputs)
