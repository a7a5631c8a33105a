"""Accuracy of the two reference models on held-out phantoms: Dice per organ, gallbladder FPR.

The reference models (``export/train_reference.py``) are demonstration models trained on
synthetic CT phantoms; these figures describe them on more phantoms of the same generator and
say nothing about real CT.

Held-out cases: phantom seeds 9000.. (never used in training, whose seeds are 1000..), at the
training spacing (3 mm) on a 96 x 128 x 128 grid, every second case with the gallbladder resected.

Engines
-------
``bundle`` (default when a bundle exists; a condition whose bundle is missing is skipped):
    the shipped bundles through the edgeseg runtime
    (``edge_seg.predict.Predictor``, fp32 unless ``--precision``), so the numbers describe what
    ships. Conditions: plain model; plain model told ``--absent gallbladder`` on resection cases
    (class exclusion); HALOS model with the prior (0 for a resected gallbladder, 1 otherwise);
    HALOS model with ``--presence auto`` (its own presence head decides).
``torch``: the trained PyTorch weights directly (sliding window, step 0.5, no post-processing);
    for the HALOS model with the prior, and with every entry 0.5 ("unknown").

A case counts as a gallbladder false positive when the gallbladder was resected and the
prediction holds any gallbladder voxel. Dice is averaged over the cases where the organ exists.

Usage::

    python benchmarks/bench_reference_models.py [--engine bundle|torch] [--cases 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_seg.synth import generate_phantom  # noqa: E402
from evaluator.atomic import write_text_atomic  # noqa: E402
from evaluator.labels import FLARE_LABELS  # noqa: E402
from evaluator.metrics import dice  # noqa: E402

EVAL_SEED0 = 9000
SPACING = (3.0, 3.0, 3.0)
#: Held-out grid: 29 cm of z (covers the abdominal organs) on a 38 cm field of view.
EVAL_SLICES = 96
EVAL_MATRIX = (128, 128)
GALLBLADDER = FLARE_LABELS["gallbladder"]
PLAIN_SUBFOLDER = ("nnunet_results/Dataset900_EdgesegPhantomCT/"
                   "nnUNetTrainer__nnUNetPlans__3d_fullres")
PLAIN_BUNDLE = REPO / "edge_seg" / "models" / "flare_ct_plain"
HALOS_BUNDLE = REPO / "edge_seg" / "models" / "halos_ct"


def eval_cases(n: int) -> list[dict[str, Any]]:
    cases = []
    for i in range(n):
        seed = EVAL_SEED0 + i
        resected = ("gallbladder",) if i % 2 == 1 else ()
        phantom = generate_phantom(seed, modality="ct", spacing_mm=SPACING, n_slices=EVAL_SLICES,
                                   shape_yx=EVAL_MATRIX, resected=resected)
        cases.append({"seed": seed, "resected": resected, "phantom": phantom})
    return cases


# -- torch engine ---------------------------------------------------------------------------


def _sliding_window(run, image: np.ndarray, patch: tuple[int, ...], n_classes: int) -> np.ndarray:
    """Average softmax over windows at step patch/2 (image padded to at least one patch)."""
    import torch

    pads = [(0, max(0, p - s)) for s, p in zip(image.shape, patch, strict=True)]
    padded = np.pad(image, pads, mode="edge")
    starts = []
    for size, p in zip(padded.shape, patch, strict=True):
        n = max(1, int(np.ceil((size - p) / (p / 2))) + 1)
        starts.append(sorted({round(k * (size - p) / max(1, n - 1)) for k in range(n)}))
    total = np.zeros((n_classes, *padded.shape), np.float32)
    count = np.zeros(padded.shape, np.float32)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                tile = torch.from_numpy(np.ascontiguousarray(padded[window]))[None, None]
                with torch.no_grad():
                    probs = torch.softmax(run(tile), 1)[0].numpy()
                total[(slice(None), *window)] += probs
                count[window] += 1
    crop = tuple(slice(0, s) for s in image.shape)
    return (total[(slice(None), *crop)] / count[crop]).argmax(0).astype(np.uint8)


def torch_predictions(
    cases: list[dict[str, Any]], models: Path
) -> dict[str, list[np.ndarray]]:
    import torch

    from export.networks import build_plain_unet
    from export.nnunet_writer import ct_normalize
    from export.train_reference import load_halos

    torch.set_num_threads(2)
    plain_folder, halos_folder = models / PLAIN_SUBFOLDER, models / "halos_ct"
    plans = json.loads((plain_folder / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    checkpoint = torch.load(plain_folder / "fold_0" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    n_classes = len(json.loads((plain_folder / "dataset.json").read_text())["labels"])
    plain = build_plain_unet(config["architecture"], 1, n_classes)
    plain.load_state_dict(checkpoint["network_weights"])
    plain.eval()
    halos, manifest = load_halos(halos_folder)
    organs = manifest["presence_organs"]
    patch = tuple(config["patch_size"])

    out: dict[str, list[np.ndarray]] = {"plain": [], "halos_prior": [], "halos_unknown": []}
    for case in cases:
        image = ct_normalize(case["phantom"].image, props)
        out["plain"].append(_sliding_window(plain, image, patch, n_classes))
        prior = torch.tensor([[0.0 if o in case["resected"] else 1.0 for o in organs]])
        unknown = torch.full((1, len(organs)), 0.5)
        for name, vector in (("halos_prior", prior), ("halos_unknown", unknown)):
            out[name].append(_sliding_window(
                lambda tile, v=vector: halos(tile, v)[0], image, patch, n_classes))
        print(f"  case {case['seed']} done", flush=True)
    return out


# -- bundle engine --------------------------------------------------------------------------


def bundle_predictions(
    cases: list[dict[str, Any]], precision: str, plain_bundle: Path, halos_bundle: Path
) -> dict[str, list[np.ndarray]]:
    from edge_seg.io import Volume
    from edge_seg.predict import PredictOptions, Predictor

    def volume(case):
        p = case["phantom"]
        return Volume(np.asarray(p.image, np.float32), tuple(p.spacing_mm), tuple(p.origin),
                      tuple(p.direction), None)

    conditions = {
        "plain": (plain_bundle, {}, False),
        "plain_absent_flag": (plain_bundle, {}, True),
        "halos_prior": (halos_bundle, {}, True),
        "halos_auto": (halos_bundle, {"presence": "auto"}, False),
    }
    out: dict[str, list[np.ndarray]] = {}
    for name, (bundle, extra, use_prior) in conditions.items():
        if not (bundle / "edgeseg.json").is_file():
            print(f"  {name}: skipped, no bundle at {bundle}", flush=True)
            continue
        out[name] = []
        for case in cases:
            absent = tuple(case["resected"]) if use_prior else ()
            options = PredictOptions(backend="openvino", precision=precision,
                                     absent_organs=absent, threads=2, **extra)
            out[name].append(Predictor(bundle, options).predict(volume(case)).labels)
        print(f"  {name} done", flush=True)
    return out


# -- scoring --------------------------------------------------------------------------------


def score(cases: list[dict[str, Any]], predictions: list[np.ndarray]) -> dict[str, Any]:
    per_organ: dict[str, list[float]] = {name: [] for name in FLARE_LABELS}
    false_positive = 0
    resected = 0
    for case, pred in zip(cases, predictions, strict=True):
        truth = case["phantom"].labels
        for name, value in FLARE_LABELS.items():
            gt = truth == value
            if gt.any():
                per_organ[name].append(dice(gt, pred == value))
        if "gallbladder" in case["resected"]:
            resected += 1
            false_positive += int((pred == GALLBLADDER).any())
    dice_mean = {k: float(np.mean(v)) for k, v in per_organ.items() if v}
    return {
        "dice": dice_mean,
        "mean_dice": float(np.mean(list(dice_mean.values()))),
        "gallbladder_fp_cases": false_positive,
        "gallbladder_resected_cases": resected,
        "gallbladder_fpr": false_positive / resected if resected else float("nan"),
    }


def markdown(results: dict[str, Any]) -> str:
    conditions = list(results["conditions"])
    lines = [
        f"# Reference models on held-out phantoms ({results['engine']} engine)",
        "",
        f"{results['cases']} synthetic CT phantoms at 3 mm (seeds {EVAL_SEED0}..), "
        f"{results['gallbladder_resected_cases']} with the gallbladder resected. "
        "Demonstration models trained on synthetic phantoms, not clinical models.",
        "",
        "| organ | " + " | ".join(conditions) + " |",
        "|---|" + "---|" * len(conditions),
    ]
    for organ in FLARE_LABELS:
        row = [f"{results['conditions'][c]['dice'].get(organ, float('nan')):.3f}"
               for c in conditions]
        lines.append(f"| {organ} | " + " | ".join(row) + " |")
    lines.append("| **mean Dice** | " + " | ".join(
        f"{results['conditions'][c]['mean_dice']:.3f}" for c in conditions) + " |")
    lines.append("| **gallbladder FPR** | " + " | ".join(
        f"{results['conditions'][c]['gallbladder_fp_cases']}/"
        f"{results['conditions'][c]['gallbladder_resected_cases']}" for c in conditions) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reference-model Dice and gallbladder FPR")
    parser.add_argument("--engine", choices=("auto", "bundle", "torch"), default="auto")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--models", default=str(REPO / "reference_models"),
                        help="trained reference models (torch engine)")
    parser.add_argument("--plain-bundle", default=str(PLAIN_BUNDLE))
    parser.add_argument("--halos-bundle", default=str(HALOS_BUNDLE))
    args = parser.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        have = any((Path(b) / "edgeseg.json").is_file()
                   for b in (args.plain_bundle, args.halos_bundle))
        engine = "bundle" if have else "torch"
    t0 = time.perf_counter()
    cases = eval_cases(args.cases)
    if engine == "bundle":
        predictions = bundle_predictions(
            cases, args.precision, Path(args.plain_bundle), Path(args.halos_bundle)
        )
    else:
        predictions = torch_predictions(cases, Path(args.models))
    results = {
        "engine": engine,
        "precision": args.precision if engine == "bundle" else "fp32 (torch)",
        "cases": len(cases),
        "gallbladder_resected_cases": sum("gallbladder" in c["resected"] for c in cases),
        "seeds": [c["seed"] for c in cases],
        "conditions": {name: score(cases, preds) for name, preds in predictions.items()},
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "note": "synthetic phantoms; demonstration models, not clinical",
    }
    out = Path(args.out)
    stem = f"reference_models_{engine}"
    write_text_atomic(out / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / f"{stem}.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
