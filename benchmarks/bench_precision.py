"""Reduced precision (bfloat16, INT8) against float32: maps, scores, metrics and decisions.

    python benchmarks/bench_precision.py                       # random weights, synthetic set, 256 px
    python benchmarks/bench_precision.py --checkpoint RUN/checkpoint.pt --backends openvino-int8
    python benchmarks/bench_precision.py --checkpoint RUN/checkpoint.pt --sensitivity   # INT8 layer by layer

Without ``--checkpoint``: a random-weight model (no ImageNet weights here) scores the synthetic
dataset's normal training images and its test images with the float32 backend (``fused``) and with
each reduced-precision backend. Thresholds are calibrated per category on the float32 scores of the
normal training images (99th percentile, the tool's default false-positive rate). INT8 is calibrated
on those normal training images.

With ``--checkpoint``: a trained model on its own test set (the data, format and categories of its
configuration, or ``--data``), decided with its own calibrated thresholds; INT8 calibrated on
``--calibration-images`` of its normal training images, as ``minimaxad export`` does.

Prints, per backend: the maps' relative error (max |x - fp32| / max |fp32|), the scores' (and the
largest error of one score relative to itself), I-AUROC, P-AUROC and AUPRO against float32's, and
the decisions that changed, before and after the float32 re-check of the scores within the
backend's default margin of their threshold (``predict --recheck-margin``).

``--sensitivity`` quantizes the network again with one group of layers at a time kept in float32
and prints the maps' error of each: the groups whose float32 copy removes most of the error are the
harmful ones (``HARMFUL_LAYERS`` in minimaxad/inference/quantize.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from minimaxad.data import build_dataset, generate_synthetic_dataset
from minimaxad.engine.thresholds import near_threshold, thresholds_for
from minimaxad.inference.backends import create_backend
from minimaxad.inference.benchmark import randomize_batchnorm
from minimaxad.inference.export import relative_error
from minimaxad.inference.predict import RECHECK_MARGIN, RECHECK_MARGINS
from minimaxad.inference.quantize import DEFAULT_CALIBRATION_IMAGES, INT8_BACKEND
from minimaxad.metrics import evaluate
from minimaxad.models import MiniMaxAD

# groups of layers for --sensitivity: regular expressions over the OpenVINO node names
LAYER_GROUPS = {
    "stem (first conv)": r"/model/encoder/downsample_layers\.0/downsample_layers\.0\.0/.*",
    "encoder downsampling": r"/model/encoder/downsample_layers\..*",
    "encoder stage 0": r"/model/encoder/stages\.0/.*",
    "encoder stage 1": r"/model/encoder/stages\.1/.*",
    "encoder stage 2": r"/model/encoder/stages\.2/.*",
    "bottleneck": r"/model/bottleneck/.*",
    "decoder upsampling": r"/model/decoder/upsample_layers\..*",
    "decoder stage 2 (deepest)": r"/model/decoder/stages\.2/.*",
    "decoder stage 1": r"/model/decoder/stages\.1/.*",
    "decoder stage 0 (last)": r"/model/decoder/stages\.0/.*",
}


def stack(dataset, indices=None) -> dict[str, np.ndarray | torch.Tensor]:
    indices = range(len(dataset)) if indices is None else indices
    items = [dataset[i] for i in indices]
    return {
        "images": torch.stack([it["image"] for it in items]),
        "masks": np.stack([it["mask"][0].numpy() for it in items]),
        "labels": np.asarray([int(it["label"]) for it in items]),
        "categories": np.asarray([it["category"] for it in items]),
    }


def score_all(backend, images: torch.Tensor, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for start in range(0, len(images), batch):
        m, s = backend(images[start : start + batch])
        maps.append(m.float().cpu().numpy())
        scores.append(s.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def metrics(scores, labels, maps, masks) -> dict[str, float]:
    result = evaluate(scores, labels, anomaly_maps=maps, masks=masks) if len(set(labels)) > 1 else {}
    return {k: result.get(k, float("nan")) for k in ("i_auroc", "p_auroc", "aupro")}


def compare(name, maps, scores, reference, limits, margin) -> dict:
    """One backend against float32: errors, metrics, decisions before and after the re-check."""
    ref_maps, ref_scores = reference["maps"], reference["scores"]
    decisions = ref_scores >= limits
    near = near_threshold(scores, list(limits), margin)
    after = np.where(near, decisions, scores >= limits)  # the re-checked images get float32's own decision
    own = metrics(scores, reference["labels"], maps, reference["masks"])
    return {
        "backend": name,
        "map_relative_error": relative_error(maps, ref_maps),
        "score_relative_error": relative_error(scores, ref_scores),
        "largest_score_error": float(np.max(np.abs(scores - ref_scores) / np.abs(ref_scores))),
        **{f"{k}_difference": own[k] - reference["metrics"][k] for k in own},
        "decisions_changed": int(np.sum((scores >= limits) != decisions)),
        "recheck_margin": margin,
        "rechecked": int(near.sum()),
        "decisions_changed_after_recheck": int(np.sum(after != decisions)),
        "images": int(len(scores)),
    }


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'backend':<15}{'map err':>9}{'score err':>10}{'worst score':>12}{'dI-AUROC':>10}{'dP-AUROC':>10}"
        f"{'dAUPRO':>9}{'changed':>9}{'margin':>8}{'rechecked':>10}{'after':>7}"
    )
    for r in rows:
        print(
            f"{r['backend']:<15}{r['map_relative_error']:>9.2e}{r['score_relative_error']:>10.2e}"
            f"{r['largest_score_error']:>12.2e}{r['i_auroc_difference']:>+10.4f}{r['p_auroc_difference']:>+10.4f}"
            f"{r['aupro_difference']:>+9.4f}{r['decisions_changed']:>9}{r['recheck_margin']:>8.2f}"
            f"{r['rechecked']:>10}{r['decisions_changed_after_recheck']:>7}  of {r['images']}"
        )


def random_weights_setup(args, tmp: str):
    torch.manual_seed(0)
    model = MiniMaxAD(args.backbone).eval()
    randomize_batchnorm(model)
    root = generate_synthetic_dataset(
        Path(tmp) / "data",
        categories=("weave", "washer", "grain"),
        n_train=args.train,
        n_test_good=args.test,
        n_test_defect=args.test,
        image_size=args.image_size,
        seed=1,
    )
    train = stack(build_dataset("mvtec", root, split="train", image_size=args.image_size))
    test = stack(build_dataset("mvtec", root, split="test", image_size=args.image_size))
    reference = create_backend("fused", model, image_size=args.image_size, device="cpu")
    _, train_scores = score_all(reference, train["images"])
    thresholds = {c: float(np.quantile(train_scores[train["categories"] == c], 0.99)) for c in set(test["categories"])}
    limits = np.array([thresholds[c] for c in test["categories"]])
    label = f"{args.backbone} (random weights), {args.image_size} px, synthetic set"
    return model, args.image_size, 0.01, train["images"], test, limits, label


def checkpoint_setup(args):
    from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint
    from minimaxad.engine.config import RunConfig
    from minimaxad.engine.runner import open_dataset
    from minimaxad.inference.quantize import calibration_images

    state = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(state).reparameterize()
    config = RunConfig.from_dict(state["config"]).updated(augment=False, cache=False)
    if args.data:
        config = config.updated(data=args.data)
    test_set = open_dataset(config, "test", categories=state["categories"])
    indices = None
    if args.limit and args.limit < len(test_set):
        indices = [int(i) for i in np.linspace(0, len(test_set) - 1, args.limit).round()]
    test = stack(test_set, indices)
    known = state["categories"]
    limits = np.array(
        [thresholds_for(state["thresholds"], c, known_categories=known).image.value for c in test["categories"]]
    )
    calibration, source = calibration_images(state, args.calibration_images)
    size = state.get("crop_size") or state["image_size"]
    label = f"{args.checkpoint} ({state['backbone']}, {size} px) on {config.data}; INT8 calibrated on {source}"
    return model, size, state.get("top_ratio", 0.01), calibration, test, limits, label


def sensitivity(model, size, top_ratio, calibration, test, reference) -> None:
    from minimaxad.inference.backends import OpenVinoBackend
    from minimaxad.inference.pipeline import build_pipeline
    from minimaxad.inference.quantize import quantize_pipeline, write_int8_files

    pipeline = build_pipeline(model, "fused", top_ratio=top_ratio, private_copy=True)
    print(f"{'kept in float32':<28}{'map err':>10}{'score err':>11}{'worst score':>12}{'img/s (b=1)':>12}")
    for name, pattern in [("nothing (defaults only)", None), *LAYER_GROUPS.items()]:
        quantized = quantize_pipeline(pipeline, size, calibration, extra_ignored=[pattern] if pattern else [])
        with tempfile.TemporaryDirectory() as tmp:
            write_int8_files(quantized, Path(tmp) / "m.xml", overwrite=True)
            backend = OpenVinoBackend(Path(tmp) / "m.xml", "f32", name=INT8_BACKEND)
            maps, scores = score_all(backend, test["images"])
            one = test["images"][:1]
            backend(one)
            started, runs = time.perf_counter(), 0
            while time.perf_counter() - started < 2 or runs < 3:
                backend(one)
                runs += 1
            rate = runs / (time.perf_counter() - started)
            backend.close()
        worst = float(np.max(np.abs(scores - reference["scores"]) / np.abs(reference["scores"])))
        print(
            f"{name:<28}{relative_error(maps, reference['maps']):>10.2e}"
            f"{relative_error(scores, reference['scores']):>11.2e}{worst:>12.2e}{rate:>12.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained model, on its own test set (default: random weights)")
    parser.add_argument("--data", help="with --checkpoint: its data root, if it moved")
    parser.add_argument("--limit", type=int, help="with --checkpoint: at most this many test images, spread evenly")
    parser.add_argument("--backbone", default="unireplknet_n")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backends", nargs="+", default=["bf16", "openvino-bf16", INT8_BACKEND])
    parser.add_argument("--train", type=int, default=20, help="normal training images per category")
    parser.add_argument("--test", type=int, default=8, help="normal and defective test images per category")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--sensitivity", action="store_true", help="INT8: the error with each layer group in float32")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            model, size, top_ratio, calibration, test, limits, label = checkpoint_setup(args)
        else:
            model, size, top_ratio, calibration, test, limits, label = random_weights_setup(args, tmp)
        reference_backend = create_backend("fused", model, image_size=size, top_ratio=top_ratio, device="cpu")
        ref_maps, ref_scores = score_all(reference_backend, test["images"])
        reference = {"maps": ref_maps, "scores": ref_scores, "labels": test["labels"], "masks": test["masks"]}
        reference["metrics"] = metrics(ref_scores, test["labels"], ref_maps, test["masks"])
        decisions = ref_scores >= limits
        closest = float(np.min(np.abs(ref_scores - limits) / limits))
        print(
            f"{label}: {len(ref_scores)} test images, {int(decisions.sum())} flagged in float32; closest score "
            f"to its threshold: {100 * closest:.2f}% away; float32 I-AUROC {reference['metrics']['i_auroc']:.4f}, "
            f"P-AUROC {reference['metrics']['p_auroc']:.4f}, AUPRO {reference['metrics']['aupro']:.4f}",
            flush=True,
        )
        if args.sensitivity:
            sensitivity(model, size, top_ratio, calibration, test, reference)
            return
        rows = []
        for name in args.backends:
            try:
                extra = {"calibration": calibration} if name == INT8_BACKEND else {}
                backend = create_backend(
                    name, model, image_size=size, top_ratio=top_ratio, device="cpu", workdir=tmp, **extra
                )
            except Exception as exc:  # a backend that cannot run here is listed, the others measured
                print(f"{name}: not measured: {exc}")
                continue
            maps, scores = score_all(backend, test["images"])
            margin = RECHECK_MARGINS.get(name, RECHECK_MARGIN)
            rows.append(compare(name, maps, scores, reference, limits, margin))
        print_rows(rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"setup": label, "float32": reference["metrics"], "rows": rows}))


if __name__ == "__main__":
    main()
