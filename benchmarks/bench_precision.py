"""Reduced precision against float32 on the synthetic test set: maps and image-level decisions.

    python benchmarks/bench_precision.py                 # variant n, 256 px, bf16 and openvino-bf16

A random-weight model (no ImageNet weights here) scores the synthetic dataset's normal training
images and its test images with the float32 backend (``fused``) and with each reduced-precision
backend. Thresholds are calibrated per category on the float32 scores of the normal training
images (99th percentile, the tool's default false-positive rate), then every test image is
decided with each backend. Prints the maps' relative error (max |bf16 - fp32| / max |fp32|),
the score error, and how many decisions changed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from minimaxad.data import build_dataset, generate_synthetic_dataset
from minimaxad.inference.backends import create_backend
from minimaxad.inference.benchmark import randomize_batchnorm
from minimaxad.inference.export import relative_error
from minimaxad.models import MiniMaxAD


def score_all(backend, dataset, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for start in range(0, len(dataset), batch):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])
        m, s = backend(images)
        maps.append(m.float().cpu().numpy())
        scores.append(s.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="unireplknet_n")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--backends", nargs="+", default=["bf16", "openvino-bf16"])
    parser.add_argument("--train", type=int, default=20, help="normal training images per category")
    parser.add_argument("--test", type=int, default=8, help="normal and defective test images per category")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = MiniMaxAD(args.backbone).eval()
    randomize_batchnorm(model)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic_dataset(
            Path(tmp) / "data",
            categories=("weave", "washer", "grain"),
            n_train=args.train,
            n_test_good=args.test,
            n_test_defect=args.test,
            image_size=args.image_size,
            seed=1,
        )
        train = build_dataset("mvtec", root, split="train", image_size=args.image_size)
        test = build_dataset("mvtec", root, split="test", image_size=args.image_size)
        reference = create_backend("fused", model, image_size=args.image_size, device="cpu")
        train_maps, train_scores = score_all(reference, train)
        test_maps, test_scores = score_all(reference, test)
        categories = np.asarray(test.item_categories)
        train_categories = np.asarray(train.item_categories)
        thresholds = {c: float(np.quantile(train_scores[train_categories == c], 0.99)) for c in set(categories)}
        limit = np.array([thresholds[c] for c in categories])
        decisions = test_scores >= limit
        margin = float(np.min(np.abs(test_scores - limit) / limit))
        print(
            f"{args.backbone} (random weights), {args.image_size} px: {len(train)} normal training images for the "
            f"thresholds, {len(test)} test images, {int(decisions.sum())} flagged in float32; "
            f"closest score to its threshold: {100 * margin:.2f}% away"
        )
        print(f"{'backend':<15}{'map rel. error':>16}{'score rel. error':>18}{'decisions changed':>19}")
        for name in args.backends:
            backend = create_backend(name, model, image_size=args.image_size, device="cpu", workdir=tmp)
            maps, scores = score_all(backend, test)
            changed = int(np.sum((scores >= limit) != decisions))
            print(
                f"{name:<15}{relative_error(maps, test_maps):>16.2e}{relative_error(scores, test_scores):>18.2e}"
                f"{changed:>12} / {len(test)}"
            )


if __name__ == "__main__":
    main()
