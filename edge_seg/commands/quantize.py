"""``edgeseg quantize BUNDLE --calib IMAGES``: add validated INT8 models to a bundle.

Needs the ``export`` extra (NNCF for the OpenVINO route, onnx for both); imported inside the
command so the runtime CLI starts without them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edge_seg.errors import EdgesegError, MissingExtraError


def _require(backends: list[str], distill: bool) -> None:
    needed = [("onnx", "onnx")]
    if "openvino" in backends:
        needed.append(("nncf", "nncf"))
    if distill:  # trains the network
        needed.append(("torch", "torch"))
    for module, label in needed:
        try:
            __import__(module)
        except ImportError as exc:
            raise MissingExtraError("export", label) from exc


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize(
        bundle: Path = typer.Argument(..., help="Model bundle folder (from edgeseg export)."),
        calib: Path = typer.Option(
            ..., "--calib", help="Folder of real images; calibration patches are cut from "
            "them after the bundle's preprocessing."
        ),
        holdout: Path | None = typer.Option(
            None, "--holdout", help="Held-out images for the fidelity report (default: the "
            "last quarter of --calib, not used for calibration)."
        ),
        backend: list[str] = typer.Option(
            ["openvino", "onnxruntime"], "--backend",
            help="openvino (NNCF -> OpenVINO IR INT8) and/or onnxruntime (QDQ INT8 ONNX)."
        ),
        patches_per_image: int = typer.Option(
            4, "--patches-per-image", min=1, help="Calibration patches per image."
        ),
        bar: float = typer.Option(
            0.98, "--bar", min=0.0, max=1.0,
            help="Mean per-organ Dice (INT8 vs fp32) a variant needs to be shipped."
        ),
        no_mixed: bool = typer.Option(
            False, "--no-mixed", help="Do not try the mixed-precision fallback."
        ),
        threads: int | None = typer.Option(None, "--threads", min=1, help="Inference threads."),
        no_accuracy_aware: bool = typer.Option(
            False, "--no-accuracy-aware", help="Skip NNCF's accuracy-aware fallback (slow: "
            "minutes per model)."
        ),
        distill: bool = typer.Option(
            False, "--distill", help="Quantise a copy of the network first fine-tuned to "
            "track fp32 under simulated INT8 (needs PyTorch and the network the bundle was "
            "exported from; minutes to an hour on a CPU)."
        ),
        distill_source: Path | None = typer.Option(
            None, "--distill-source", help="The nnU-Net results folder or weights file the "
            "bundle was exported from, if not where its provenance says."
        ),
        distill_steps: int | None = typer.Option(
            None, "--distill-steps", min=1, help="Distillation steps, one patch each "
            "(default: 300, the measured recipe)."
        ),
        distill_class_balance: float = typer.Option(
            0.0, "--distill-class-balance", min=0.0, help="Weight the voxels of small organs "
            "(and their rims) up by (share of an average class / share of the organ) ** this "
            "in the distillation loss; 0 (default) is off."
        ),
        distill_float_convs: str = typer.Option(
            "0", "--distill-float-convs", help="Convolutions the student simulates in float, "
            "as a mixed level: N or FIRST,LAST (e.g. 1,2 for the level the INT8 model will "
            "ship at; default 0: all INT8)."
        ),
        distill_objective: str = typer.Option(
            "logits", "--distill-objective", help="logits: the student matches the fp32 "
            "logits (default); labels: also a hinge on the lead of fp32's winning class."
        ),
    ) -> None:
        """Post-training INT8 (OpenVINO via NNCF, ONNX Runtime QDQ) with a fidelity report."""
        backends = [part for value in backend for part in value.split(",") if part]
        _require(backends, distill)
        from export.distill import DistillSettings
        from export.fidelity import format_report
        from export.quantize_bundle import quantize_bundle

        settings = None
        if not distill and (distill_class_balance or distill_float_convs != "0"
                            or distill_objective != "logits"):
            raise EdgesegError("--distill-class-balance, --distill-float-convs and "
                               "--distill-objective need --distill")
        if distill:
            from export.quantize import float_ends, parse_level

            try:
                float_convs = float_ends(parse_level(distill_float_convs))
            except EdgesegError as exc:
                raise EdgesegError(f"--distill-float-convs: {exc}") from exc
            try:
                settings = DistillSettings(
                    **({"steps": distill_steps} if distill_steps else {}),
                    class_balance=distill_class_balance, float_convs=float_convs,
                    objective=distill_objective)
            except ValueError as exc:
                raise EdgesegError(f"--distill-objective: {exc}") from exc
        result = quantize_bundle(bundle, calib, holdout, backends, patches_per_image, bar,
                                 not no_mixed, threads, not no_accuracy_aware, log=typer.echo,
                                 distill=settings, distill_source=distill_source)
        typer.echo(format_report(result.fidelity))
        typer.echo(f"validated precisions: {', '.join(result.validated_precisions)}")
