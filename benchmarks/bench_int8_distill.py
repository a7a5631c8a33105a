"""INT8-aware distillation (export.distill) on a bundle: agreement before and after.

In one process: rebuild the bundle's PyTorch network from its provenance (nnU-Net results
folder, or ``module:factory`` + weights), check it against the bundle's fp32 model, distil a
student under simulated INT8 on calibration patches, export the student to ONNX and quantise
it with NNCF exactly as ``edgeseg quantize`` quantises the fp32 model (same calibration
patches, at each mixed level ``--level`` (repeatable; 0 all convolutions INT8, 1 the first
and last in float, ``1,2`` the first and the last 2; one student serves every level). Then,
for the shipped INT8 model and, at each level, the fp32 model and the student quantised:

* agreement with the bundle's fp32 model on held-out images (whole-image label maps from the
  runtime's Predictor, default LCC; the fidelity report's measure);
* optionally, agreement with nnU-Net's own label maps on the cases of
  ``bench_vs_nnunet.py`` (crop none, no LCC, as that benchmark's "exact" rows).

Usage::

    python benchmarks/bench_int8_distill.py edge_seg/models/flare_ct_plain \\
        --calib /tmp/edgeseg_ref/calib --holdout /tmp/edgeseg_ref/holdout \\
        --vs-nnunet /tmp/edgeseg_vs_nnunet [--source RESULTS_DIR_OR_WEIGHTS]
    python benchmarks/bench_int8_distill.py edge_seg/models/halos_ct --level 0 \\
        --calib /tmp/edgeseg_ref/calib --holdout /tmp/edgeseg_ref/holdout

``--source`` defaults to the location recorded in the bundle's provenance.
``--vs-nnunet`` is the work folder of ``bench_vs_nnunet.py`` (``imagesTs/``, ``nnunet/``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import cpu_description
from bench_vs_nnunet import mean_organ_dice

from edge_seg.bundle import load_bundle
from edge_seg.io import read_volume
from evaluator.atomic import write_text_atomic
from export.calibration import list_images, patch_set, read_images
from export.distill import DistillSettings
from export.fidelity import compare, predict_all
from export.quantize import mixed_suffix, parse_level
from export.quantize_bundle import bundle_with_int8, distilled_student


def vs_nnunet(bundle_dir: Path, folder: Path, threads: int | None) -> dict[str, float]:
    """Per case: mean organ Dice of INT8 labels (crop none, no LCC) vs nnU-Net's."""
    import SimpleITK as sitk

    from edge_seg.options import PredictOptions
    from edge_seg.predict import Predictor

    predictor = Predictor(bundle_dir, PredictOptions(precision="int8", crop="none", lcc=False,
                                                     threads=threads))
    scores = {}
    for image in sorted((folder / "imagesTs").glob("*.nii.gz")):
        case = image.name.replace("_0000.nii.gz", "")
        ours = np.asarray(predictor.predict(read_volume(image)).labels)
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "nnunet" / f"{case}.nii.gz")))
        scores[case] = mean_organ_dice(ours, theirs)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--source", type=Path, default=None,
                        help="the nnU-Net results folder or weights file the bundle was "
                        "exported from (default: the one its provenance records)")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--holdout", type=Path, required=True)
    parser.add_argument("--vs-nnunet", type=Path, default=None)
    parser.add_argument("--level", action="append", default=None,
                        help="mixed level of the rebuilt INT8 models: 0, N or FIRST,LAST "
                        "(repeatable; default 0)")
    parser.add_argument("--calib-patches-per-image", type=int, default=6)
    parser.add_argument("--distill-patches-per-image", type=int, default=12)
    parser.add_argument("--steps", type=int, default=DistillSettings.steps)
    parser.add_argument("--lr", type=float, default=DistillSettings.learning_rate)
    parser.add_argument("--focus", type=float, default=DistillSettings.focus_logit)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    levels = args.level or ["0"]
    keep_fps = [parse_level(level) for level in levels]
    bundle = load_bundle(args.bundle)
    calib, _ = read_images(list_images(args.calib), args.calib)
    holdout, _ = read_images(list_images(args.holdout), args.holdout)
    samples = patch_set(calib, bundle, args.calib_patches_per_image).inputs
    settings = DistillSettings(args.steps, args.lr, args.focus,
                               patches_per_image=args.distill_patches_per_image)
    work = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # holds links to bundle files
    student_onnx, report = distilled_student(bundle, calib, samples, work, settings,
                                             args.source, lambda line: print(line, flush=True))
    match = report["source_max_abs_diff"]
    candidates: list[tuple[str, Path]] = []
    if "int8_openvino" in bundle.files:
        candidates.append((f"shipped ({bundle.files['int8_openvino']})", args.bundle))
    for keep_fp in keep_fps:
        level = mixed_suffix(keep_fp).lstrip("_") or "all-INT8"
        for role, onnx_path in (("fp32 model", bundle.model_path("fp32")),
                                ("distilled", student_onnx)):
            folder = work / f"{role.split()[0]}{mixed_suffix(keep_fp)}"
            folder.mkdir()
            built = bundle_with_int8(bundle, folder, onnx_path, samples, keep_fp=keep_fp)
            candidates.append((f"{role}, {level}", built.root))

    names = [v.name for v in holdout]
    reference = predict_all(args.bundle, "openvino", "fp32", holdout, args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for label, where in candidates:
        candidate = predict_all(where, "openvino", "int8", holdout, args.threads)
        rep = compare(reference, candidate, bundle.organs, names)
        rows[label] = {"holdout_mean_dice": rep["mean_dice"], "worst_class": rep["worst_class"],
                       "worst_dice": rep["worst_dice"]}
        if args.vs_nnunet:
            cases = vs_nnunet(where, args.vs_nnunet, args.threads)
            rows[label]["vs_nnunet"] = cases
            rows[label]["vs_nnunet_mean"] = float(np.mean(list(cases.values())))
        print(label, json.dumps(rows[label]), flush=True)

    command = " ".join(["python benchmarks/bench_int8_distill.py", str(args.bundle),
                        f"--calib {args.calib}",
                        f"--holdout {args.holdout}"] + [f"--level {level}" for level in levels]
                       + ([f"--vs-nnunet {args.vs_nnunet}"] if args.vs_nnunet else [])
                       + ([f"--source {args.source}"] if args.source else [])
                       + [f"--steps {args.steps}", f"--lr {args.lr}", f"--focus {args.focus}",
                          f"--distill-patches-per-image {args.distill_patches_per_image}"])
    lines = [f"# INT8-aware distillation: {bundle.name}", "", f"Command: `{command}`", "",
             f"Host: {cpu_description()}. Student trained {report['steps']} steps on "
             f"{report['patches']} calibration patches in {report['seconds']:.0f} s (weighted "
             f"logit MSE {report['loss_first_tenth']:.5f} in the first tenth of the steps, "
             f"{report['loss_last_tenth']:.5f} in the last). Rebuilt INT8 models: OpenVINO "
             f"(NNCF, {len(samples)} calibration patches).", "",
             "| INT8 model | vs fp32, held out (mean / worst) | vs nnU-Net per case | "
             "vs nnU-Net mean |", "|---|---|---|---|"]
    for label, row in rows.items():
        cases = ", ".join(f"{k} {v:.4f}" for k, v in row.get("vs_nnunet", {}).items())
        mean = f"**{row['vs_nnunet_mean']:.4f}**" if "vs_nnunet_mean" in row else "-"
        lines.append(f"| {label} | {row['holdout_mean_dice']:.4f} / {row['worst_class']} "
                     f"{row['worst_dice']:.3f} | {cases or '-'} | {mean} |")
    text = "\n".join(lines) + "\n"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"int8_distill_{bundle.name}" + ("" if levels == ["0"] else "_level" + "_".join(
        level.replace(",", "_") for level in levels))
    write_text_atomic(args.output_dir / f"{stem}.md", text)
    write_text_atomic(args.output_dir / f"{stem}.json", json.dumps(
        {"command": command, "match_max_abs_diff": match, "distill": report, "rows": rows},
        indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
