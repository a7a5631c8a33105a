"""``edgeseg export nnunet|torch``: turn a trained PyTorch model into a model bundle.

Needs the ``export`` extra (torch, onnx); torch is imported inside the commands only, so the
runtime CLI starts without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from edge_seg.bundle import Bundle
from edge_seg.errors import EdgesegError, MissingExtraError


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("export", "torch") from exc
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("export", "onnx") from exc


def _folds(values: list[str]) -> list[str]:
    # Accept both "--fold 0 --fold 1" and "--fold 0,1,2".
    return [part for value in values for part in value.split(",") if part.strip()]


def _images(folder: Path | None) -> list[Path] | None:
    if folder is None:
        return None
    from export.calibration import list_images

    found = list_images(folder)
    if not found:
        raise EdgesegError(f"{folder}: no images found (NIfTI, MHA, NRRD or DICOM folders)")
    return found


def _summary(bundle: Bundle) -> str:
    check = bundle.provenance.get("onnx_check", {})
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in check.get("max_abs_diff", {}).items())
    return (
        f"wrote {bundle.root}: {len(bundle.organs)} organs, patch {bundle.patch_size}, "
        f"spacing {bundle.spacing_mm} mm; ONNX checker passed; max |ONNX Runtime - PyTorch| "
        f"{diffs} on {check.get('patch_source', 'a patch')}"
    )


def register(app: typer.Typer) -> None:
    export_app = typer.Typer(
        help="Export a trained network (nnU-Net v2 results folder or PyTorch module) to a "
        "model bundle: edgeseg.json + model.onnx.",
        no_args_is_help=True,
    )

    @export_app.command("nnunet")
    def nnunet(
        results_dir: Path = typer.Argument(
            ..., help="nnU-Net v2 results folder (Trainer__Plans__configuration) holding "
            "plans.json, dataset.json and fold_X/checkpoint_final.pth."
        ),
        output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to create."),
        fold: list[str] = typer.Option(
            ["0"], "--fold", "-f", help="Fold(s) to export; several (--fold 0,1,2,3,4) give "
            "one ONNX graph averaging the folds' logits, as nnU-Net ensembles them."
        ),
        checkpoint: str = typer.Option(
            "checkpoint_final.pth", "--checkpoint",
            help="Checkpoint file name inside fold_X/ (or a path, with a single fold)."
        ),
        configuration: str | None = typer.Option(
            None, "--configuration", help="Plans configuration (default: from the checkpoint)."
        ),
        name: str | None = typer.Option(None, "--name", help="Bundle name."),
        images: Path | None = typer.Option(
            None, "--images", help="Folder of real images; the export check runs on a "
            "preprocessed patch of the first (default: a synthetic phantom)."
        ),
        trust_checkpoint: bool = typer.Option(
            False, "--trust-checkpoint", help="Load checkpoints with full pickle semantics "
            "(runs code stored in the file; only for files you trust)."
        ),
        onnx_norm: str = typer.Option(
            "native", "--onnx-norm", help="native: InstanceNormalization ops (fastest on "
            "OpenVINO); axiswise: reduce one axis at a time (ONNX Runtime within ~1e-5 of "
            "PyTorch, for ONNX Runtime deployments; ~2x slower on OpenVINO)."
        ),
        postprocessing: Path | None = typer.Option(
            None, "--postprocessing", help="nnU-Net's postprocessing.json (or .pkl) from "
            "nnUNetv2_find_best_configuration: predict then keeps the largest components as "
            "nnU-Net determined, instead of the largest component of every organ."
        ),
    ) -> None:
        """Export an nnU-Net v2 model (plans + dataset + checkpoint) to a bundle."""
        _require_torch()
        from export.bundle_writer import export_nnunet
        from export.nnunet_postprocessing import find_postprocessing

        bundle = export_nnunet(results_dir, output, _folds(fold), checkpoint, configuration,
                               name, _images(images), trust_checkpoint, onnx_norm,
                               postprocessing)
        typer.echo(_summary(bundle))
        if postprocessing is not None:
            groups = bundle.largest_component_groups or []
            typer.echo(f"post-processing from {postprocessing}: largest component of "
                       + ("; ".join(" + ".join(group) for group in groups) or "nothing"))
        elif found := find_postprocessing(results_dir):
            typer.echo(f"note: {found[0]} holds nnU-Net's post-processing for this model; "
                       "without --postprocessing predict keeps the largest component of "
                       "every organ", err=True)

    @export_app.command("torch")
    def torch_(
        spec: Path = typer.Argument(
            ..., help="JSON spec: modality, channels, labels, spacing_mm, normalization, "
            "patch_size (+ presence_input, presence_output, factory_kwargs)."
        ),
        output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to create."),
        factory: str | None = typer.Option(
            None, "--factory", help="'package.module:function' returning the nn.Module."
        ),
        weights: Path | None = typer.Option(None, "--weights", help="State-dict file."),
        torchscript: Path | None = typer.Option(
            None, "--torchscript", help="TorchScript file (instead of --factory/--weights)."
        ),
        name: str | None = typer.Option(None, "--name", help="Bundle name."),
        images: Path | None = typer.Option(
            None, "--images", help="Folder of real images for the export check."
        ),
        trust_checkpoint: bool = typer.Option(
            False, "--trust-checkpoint", help="Load the weights file with full pickle "
            "semantics (runs code stored in the file; only for files you trust)."
        ),
        onnx_norm: str = typer.Option(
            "native", "--onnx-norm", help="native or axiswise instance norm (see export nnunet)."
        ),
    ) -> None:
        """Export a PyTorch network (module:factory + weights, or TorchScript) to a bundle."""
        _require_torch()
        from export.bundle_writer import export_torch

        bundle = export_torch(spec, output, factory, weights, torchscript, name,
                              _images(images), trust_checkpoint, onnx_norm)
        typer.echo(_summary(bundle))

    app.add_typer(export_app, name="export")
