"""Export and quantise the two trained reference models into the embedded bundles.

Input: the TRAINER's output (``python -m export.train_reference --out reference_models``):

* ``reference_models/nnunet_results/Dataset900_EdgesegPhantomCT/<trainer folder>`` (a genuine
  nnU-Net v2 results folder, plain 3D U-Net) -> ``edge_seg/models/flare_ct_plain``;
* ``reference_models/halos_ct/{model.pth,model.json}`` (HALOS-style U-Net with a presence input
  and head) -> ``edge_seg/models/halos_ct``.

Both go through the user-facing commands (``edgeseg export nnunet``, ``edgeseg export torch``,
``edgeseg quantize``). Calibration and held-out images are synthetic CT phantoms written as
NIfTI, from seeds disjoint from the training seeds (training: 1000-1047; calibration: 3000+;
held out: 4000+), on a FLARE-like field of view with a 256x256 matrix.

Usage::

    python benchmarks/build_reference_bundles.py [--models reference_models] \
        [--out edge_seg/models] [--calib-cases 6] [--holdout-cases 3] [--work /tmp/edgeseg_ref]
        [--distill] [--phantoms-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk

from edge_seg.synth import generate_phantom
from evaluator.atomic import atomic_path

CALIB_SEED = 3000
HOLDOUT_SEED = 4000
PLAIN_RESULTS = ("nnunet_results/Dataset900_EdgesegPhantomCT/"
                 "nnUNetTrainer__nnUNetPlans__3d_fullres")


def write_phantoms(folder: Path, seed0: int, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(seed0, seed0 + count):
        path = folder / f"phantom_{seed:05d}_0000.nii.gz"
        if path.is_file():
            continue
        phantom = generate_phantom(seed, modality="ct", shape_yx=(256, 256))
        image = sitk.GetImageFromArray(phantom.image)
        image.SetSpacing(tuple(float(s) for s in reversed(phantom.spacing_mm)))
        image.SetOrigin(tuple(float(o) for o in phantom.origin))
        image.SetDirection(tuple(float(d) for d in phantom.direction))
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
    return folder


def halos_spec(model_dir: Path, target: Path) -> Path:
    """The ``edgeseg export torch`` spec for the HALOS-style model, from its model.json."""
    manifest = json.loads((model_dir / "model.json").read_text())
    spec = {
        "name": "halos_ct",
        "modality": manifest["modality"],
        "channels": ["CT"],
        "labels": manifest["labels"],
        "spacing_mm": manifest["spacing_mm"],
        "patch_size": manifest["patch_size"],
        "normalization": [manifest["normalization"]],
        "presence_input": manifest["presence_organs"],
        "presence_output": True,
        "factory_kwargs": manifest["init_kwargs"],
    }
    target.write_text(json.dumps(spec, indent=2) + "\n")
    return target


def edgeseg(*args: str) -> None:
    command = [sys.executable, "-m", "edge_seg", *args]
    print("$ edgeseg " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("reference_models"))
    parser.add_argument("--out", type=Path, default=Path("edge_seg/models"))
    parser.add_argument("--calib-cases", type=int, default=6)
    parser.add_argument("--holdout-cases", type=int, default=3)
    parser.add_argument("--holdout-seed", type=int, default=HOLDOUT_SEED,
                        help="first held-out seed (e.g. 4006 with --phantoms-only: images "
                             "that no quantise-time check has seen, for edgeseg verify)")
    parser.add_argument("--patches-per-image", type=int, default=4)
    parser.add_argument("--only", default="plain,halos")
    parser.add_argument("--no-accuracy-aware", action="store_true",
                        help="skip NNCF's accuracy-aware fallback (minutes per model)")
    parser.add_argument("--distill", action="store_true",
                        help="quantise from an INT8-aware distilled student (edgeseg quantize "
                             "--distill; the fp32 model stays the reference)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeseg_ref"))
    parser.add_argument("--backends", default="openvino,onnxruntime",
                        help="INT8 routes to build (comma list; ONNX Runtime's QDQ attempts "
                             "take minutes each on x86, where they run 3x slower than fp32)")
    parser.add_argument("--phantoms-only", action="store_true",
                        help="write the calibration and held-out phantoms under --work, "
                             "then stop (for edgeseg verify / quantize by hand)")
    args = parser.parse_args()

    calib = write_phantoms(args.work / "calib", CALIB_SEED, args.calib_cases)
    holdout = write_phantoms(args.work / "holdout", args.holdout_seed, args.holdout_cases)
    if args.phantoms_only:
        print(f"calibration phantoms: {calib}\nheld-out phantoms: {holdout}")
        return
    quantize = ["--calib", str(calib), "--holdout", str(holdout),
                "--patches-per-image", str(args.patches_per_image)]
    if args.no_accuracy_aware:
        quantize.append("--no-accuracy-aware")
    if args.distill:
        quantize.append("--distill")
    for backend in args.backends.split(","):
        quantize += ["--backend", backend]
    only = set(args.only.split(","))

    if "plain" in only:
        target = args.out / "flare_ct_plain"
        shutil.rmtree(target, ignore_errors=True)
        edgeseg("export", "nnunet", str(args.models / PLAIN_RESULTS), "-o", str(target),
                "--name", "flare_ct_plain", "--images", str(holdout))
        # The same checkpoint with ONNX Runtime-friendly instance norms, for the export figure
        # (not shipped: OpenVINO runs the native graph about 2x faster).
        axiswise = args.work / "flare_ct_plain_axiswise"
        shutil.rmtree(axiswise, ignore_errors=True)
        edgeseg("export", "nnunet", str(args.models / PLAIN_RESULTS), "-o", str(axiswise),
                "--name", "flare_ct_plain", "--images", str(holdout), "--onnx-norm", "axiswise")
        edgeseg("quantize", str(target), *quantize)

    if "halos" in only:
        target = args.out / "halos_ct"
        shutil.rmtree(target, ignore_errors=True)
        spec = halos_spec(args.models / "halos_ct", args.work / "halos_spec.json")
        edgeseg("export", "torch", str(spec), "-o", str(target), "--name", "halos_ct",
                "--factory", "export.networks.halos_unet:HalosUNet",
                "--weights", str(args.models / "halos_ct" / "model.pth"),
                "--images", str(holdout))
        edgeseg("quantize", str(target), *quantize)

    write_export_report(args, [args.out / "flare_ct_plain", args.work / "flare_ct_plain_axiswise",
                               args.out / "halos_ct"])


def write_export_report(args: argparse.Namespace, bundles: list[Path]) -> None:
    """benchmarks/results/quantize_export_check.md: ONNX vs PyTorch and the fidelity summary."""
    from edge_seg.bundle import load_bundle
    from evaluator.atomic import write_text_atomic

    seed_flag = "" if args.holdout_seed == HOLDOUT_SEED else f" --holdout-seed {args.holdout_seed}"
    lines = ["# Export check and INT8 fidelity of the reference bundles", "",
             "Command: `python benchmarks/build_reference_bundles.py "
             f"--calib-cases {args.calib_cases} --holdout-cases {args.holdout_cases}"
             f"{seed_flag}"
             f" --patches-per-image {args.patches_per_image}"
             f"{' --no-accuracy-aware' if args.no_accuracy_aware else ''}"
             f"{' --distill' if args.distill else ''}"
             f" --only {args.only} --backends {args.backends}`", "",
             "ONNX Runtime vs PyTorch on a real preprocessed patch (held-out phantom), "
             "max abs difference per output:", "",
             "| bundle | instance norm in graph | max abs diff | max abs logit | patch |",
             "|---|---|---|---|---|"]
    loaded = []
    for folder in bundles:
        if not (folder / "edgeseg.json").is_file():
            continue
        bundle = load_bundle(folder)
        loaded.append((folder, bundle))
        check = bundle.provenance["onnx_check"]
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in check["max_abs_diff"].items())
        scale = ", ".join(f"{v:.1f}" for v in check["max_abs_output"].values())
        lines.append(f"| {folder.name} | {check['instance_norm']} | {diffs} | {scale} | "
                     f"{check['patch_source']} |")
    lines += ["", "INT8 vs fp32 label agreement (`edgeseg quantize`, Predictor on whole "
              "held-out phantoms, same backend):", "",
              "| bundle | variant | mean Dice | worst organ | int8/fp32 time (whole case) | "
              "shipped |", "|---|---|---|---|---|---|"]
    for folder, bundle in loaded:
        for name, rep in bundle.fidelity.get("variants", {}).items():
            lines.append(
                f"| {folder.name} | {name} | {rep['mean_dice']:.4f} | {rep['worst_class']} "
                f"{rep['worst_dice']:.4f} | {rep['latency_ratio_int8_vs_fp32']} | "
                f"{'yes' if rep['passed'] else 'no'} |")
    target = Path("benchmarks/results/quantize_export_check.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
