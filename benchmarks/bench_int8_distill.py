"""INT8-aware distillation (export.distill) on a bundle: agreement before and after.

In one process: rebuild the bundle's PyTorch network from its provenance (nnU-Net results
folder, or ``module:factory`` + weights), check it against the bundle's fp32 model, distil a
student under simulated INT8 on calibration patches, export the student to ONNX and quantise
it with NNCF exactly as ``edgeseg quantize`` quantises the fp32 model (same calibration
patches, at each mixed level ``--level`` (repeatable; 0 all convolutions INT8, 1 the first
and last in float, ``1,2`` the first and the last 2; one student serves every level). Then,
for the shipped INT8 model and, at each level, the fp32 model and the student quantised:

* agreement with the bundle's fp32 model on held-out images (whole-image label maps from the
  runtime's Predictor, default LCC; the fidelity report's measure), on each ``--holdout``
  folder (repeatable: the quantise-time set and fresh phantoms) and on all of them pooled;
* optionally, agreement with nnU-Net's own label maps on the cases of
  ``bench_vs_nnunet.py`` (crop none, no LCC, as that benchmark's "exact" rows).

Usage::

    python benchmarks/bench_int8_distill.py edge_seg/models/flare_ct_plain \\
        --calib /tmp/edgeseg_ref/calib --holdout /tmp/edgeseg_ref/holdout \\
        --vs-nnunet /tmp/edgeseg_vs_nnunet [--source RESULTS_DIR_OR_WEIGHTS]
    python benchmarks/bench_int8_distill.py edge_seg/models/halos_ct --level 0 \\
        --calib /tmp/edgeseg_ref/calib --holdout /tmp/edgeseg_ref/holdout

``--source`` defaults to the location recorded in the bundle's provenance. ``--class-balance``,
``--float-convs`` and ``--objective`` set the student's rare-class weight, the convolutions it
simulates in float and its loss (:class:`export.distill.DistillSettings`); ``--no-baseline``
skips the INT8 models rebuilt from the fp32 model (their figures are in earlier result files).
``--vs-nnunet`` is the work folder of ``bench_vs_nnunet.py`` (``imagesTs/``, ``nnunet/``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
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
from export.distill import OBJECTIVES, DistillSettings
from export.fidelity import Run, cleanup_text, compare, label_cleanup, predict_all
from export.quantize import float_ends, mixed_suffix, parse_level
from export.quantize_bundle import bundle_with_int8, distilled_student


def vs_nnunet(bundle_dir: Path, folder: Path, threads: int | None) -> dict[str, float]:
    """Per case: mean organ Dice of INT8 labels (crop none, no clean-up) vs nnU-Net's."""
    import SimpleITK as sitk

    from edge_seg.options import PredictOptions
    from edge_seg.predict import Predictor

    predictor = Predictor(bundle_dir, PredictOptions(precision="int8", crop="none", lcc=False,
                                                     min_component_ml=0.0, threads=threads))
    scores = {}
    for image in sorted((folder / "imagesTs").glob("*.nii.gz")):
        case = image.name.replace("_0000.nii.gz", "")
        ours = np.asarray(predictor.predict(read_volume(image)).labels)
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "nnunet" / f"{case}.nii.gz")))
        scores[case] = mean_organ_dice(ours, theirs)
    return scores


def _concat(runs: Iterable[Run]) -> Run:
    """One run over the images of several."""
    runs = list(runs)
    return Run(labels=[x for r in runs for x in r.labels],
               seconds=[x for r in runs for x in r.seconds],
               network_seconds=[x for r in runs for x in r.network_seconds])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--source", type=Path, default=None,
                        help="the nnU-Net results folder or weights file the bundle was "
                        "exported from (default: the one its provenance records)")
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--holdout", type=Path, action="append", required=True,
                        help="held-out images (repeatable)")
    parser.add_argument("--vs-nnunet", type=Path, default=None)
    parser.add_argument("--level", action="append", default=None,
                        help="mixed level of the rebuilt INT8 models: 0, N or FIRST,LAST "
                        "(repeatable; default 0)")
    parser.add_argument("--calib-patches-per-image", type=int, default=6)
    parser.add_argument("--distill-patches-per-image", type=int, default=12)
    parser.add_argument("--steps", type=int, default=DistillSettings.steps)
    parser.add_argument("--lr", type=float, default=DistillSettings.learning_rate)
    parser.add_argument("--focus", type=float, default=DistillSettings.focus_logit)
    parser.add_argument("--class-balance", type=float, default=DistillSettings.class_balance)
    parser.add_argument("--float-convs", default="0",
                        help="convolutions the student simulates in float: N or FIRST,LAST")
    parser.add_argument("--objective", choices=OBJECTIVES, default=DistillSettings.objective)
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not rebuild INT8 models from the fp32 model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    levels = args.level or ["0"]
    keep_fps = [parse_level(level) for level in levels]
    bundle = load_bundle(args.bundle)
    calib, _ = read_images(list_images(args.calib), args.calib)
    holdout_sets = {str(folder): read_images(list_images(folder), folder)[0]
                    for folder in args.holdout}
    samples = patch_set(calib, bundle, args.calib_patches_per_image).inputs
    settings = DistillSettings(args.steps, args.lr, args.focus,
                               patches_per_image=args.distill_patches_per_image,
                               class_balance=args.class_balance,
                               float_convs=float_ends(parse_level(args.float_convs)),
                               objective=args.objective)
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
        roles = [("distilled", student_onnx)]
        if not args.no_baseline:
            roles.insert(0, ("fp32 model", bundle.model_path("fp32")))
        for role, onnx_path in roles:
            folder = work / f"{role.split()[0]}{mixed_suffix(keep_fp)}"
            folder.mkdir()
            built = bundle_with_int8(bundle, folder, onnx_path, samples, keep_fp=keep_fp)
            candidates.append((f"{role}, {level}", built.root))

    references = {folder: predict_all(args.bundle, "openvino", "fp32", volumes, args.threads)
                  for folder, volumes in holdout_sets.items()}
    rows: dict[str, dict[str, Any]] = {}
    for label, where in candidates:
        rows[label] = {"holdout": {}}
        runs = {folder: predict_all(where, "openvino", "int8", volumes, args.threads)
                for folder, volumes in holdout_sets.items()}
        for folder, volumes in holdout_sets.items():
            rep = compare(references[folder], runs[folder], bundle.organs,
                          [v.name for v in volumes])
            rows[label]["holdout"][folder] = {
                "mean_dice": rep["mean_dice"], "worst_class": rep["worst_class"],
                "worst_dice": rep["worst_dice"], "per_image": rep["mean_dice_per_image"]}
        # Pooled: every held-out image, organs averaged over all of them (the same measure).
        pooled = compare(_concat(references.values()), _concat(runs.values()), bundle.organs,
                         [v.name for vs in holdout_sets.values() for v in vs])
        rows[label].update({"holdout_mean_dice": pooled["mean_dice"],
                            "worst_class": pooled["worst_class"],
                            "worst_dice": pooled["worst_dice"]})
        if args.vs_nnunet:
            cases = vs_nnunet(where, args.vs_nnunet, args.threads)
            rows[label]["vs_nnunet"] = cases
            rows[label]["vs_nnunet_mean"] = float(np.mean(list(cases.values())))
        print(label, json.dumps(rows[label]), flush=True)

    command = " ".join(["python benchmarks/bench_int8_distill.py", str(args.bundle),
                        f"--calib {args.calib}"]
                       + [f"--holdout {folder}" for folder in args.holdout]
                       + [f"--level {level}" for level in levels]
                       + ([f"--vs-nnunet {args.vs_nnunet}"] if args.vs_nnunet else [])
                       + ([f"--source {args.source}"] if args.source else [])
                       + [f"--steps {args.steps}", f"--lr {args.lr}", f"--focus {args.focus}",
                          f"--distill-patches-per-image {args.distill_patches_per_image}"]
                       + ([f"--class-balance {args.class_balance}"] if args.class_balance else [])
                       + ([f"--float-convs {args.float_convs}"] if args.float_convs != "0"
                          else [])
                       + ([f"--objective {args.objective}"] if args.objective != "logits"
                          else [])
                       + (["--no-baseline"] if args.no_baseline else []))
    lines = [f"# INT8-aware distillation: {bundle.name}", "", f"Command: `{command}`", "",
             f"Host: {cpu_description()}. Student trained {report['steps']} steps on "
             f"{report['patches']} calibration patches in {report['seconds']:.0f} s (objective "
             f"{report['objective']}; weighted loss {report['loss_first_tenth']:.5f} in the first "
             f"tenth of the steps, {report['loss_last_tenth']:.5f} in the last; rare-class "
             f"weight exponent {report['class_balance']}, convolutions simulated in float "
             f"(first, last) {tuple(report['float_convs'])}). Rebuilt INT8 models: OpenVINO "
             f"(NNCF, {len(samples)} calibration patches). Label maps: "
             f"{cleanup_text(label_cleanup())}.", "",
             "| INT8 model | " + " | ".join(f"vs fp32, {f} (mean / worst)" for f in holdout_sets)
             + " | all held out | vs nnU-Net per case | vs nnU-Net mean |",
             "|---|" + "---|" * (len(holdout_sets) + 3)]
    for label, row in rows.items():
        cases = ", ".join(f"{k} {v:.4f}" for k, v in row.get("vs_nnunet", {}).items())
        mean = f"**{row['vs_nnunet_mean']:.4f}**" if "vs_nnunet_mean" in row else "-"
        per_set = " | ".join(f"{r['mean_dice']:.4f} / {r['worst_class']} {r['worst_dice']:.3f}"
                             for r in row["holdout"].values())
        lines.append(f"| {label} | {per_set} | {row['holdout_mean_dice']:.4f} / "
                     f"{row['worst_class']} {row['worst_dice']:.3f} | {cases or '-'} | {mean} |")
    text = "\n".join(lines) + "\n"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"int8_distill_{bundle.name}" + ("" if levels == ["0"] else "_level" + "_".join(
        level.replace(",", "_") for level in levels))
    if args.class_balance or args.float_convs != "0":
        stem += f"_balance{args.class_balance:g}_float{args.float_convs.replace(',', '_')}"
    if args.objective != "logits":
        stem += f"_{args.objective}"
    write_text_atomic(args.output_dir / f"{stem}.md", text)
    write_text_atomic(args.output_dir / f"{stem}.json", json.dumps(
        {"command": command, "match_max_abs_diff": match, "distill": report, "rows": rows},
        indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
