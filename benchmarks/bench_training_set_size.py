"""Inference time per image against the number of training images: MiniMaxAD vs a
PatchCore-style memory bank, same encoder, same run (the paper's central efficiency argument).

    python benchmarks/bench_training_set_size.py                      # variant n, 256 px, 100..10,000
    python benchmarks/bench_training_set_size.py --sizes 100 1000 --repeats 1   # quicker

MiniMaxAD's cost is its network: it does not depend on the training set. The memory-bank
detector's bank holds ``ratio * N * P`` patch features (P = 1,024 patches per 256 px image), and
each test patch is compared with all of them (exact nearest neighbour).

How the banks are made: ``--distinct`` synthetic images (default 100) go through the encoder;
for larger N their patch features are repeated with a small Gaussian jitter (1% of the feature
spread) so that no two rows are equal. The cost of an exact nearest-neighbour query depends on
the bank's size and width, not on its values, so the timing is that of a real bank of N images.
The bank is chosen by PatchCore's greedy k-centre coreset while that stays under
``--greedy-budget`` point-distance updates (it is O(ratio * M^2) and takes hours beyond), else
by a uniform random subset of the same size; the table says which.

Writes a JSON file and an SVG plot (docs/img/cost_vs_training_set.svg by default).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from patchcore_baseline import MemoryBankDetector, greedy_coreset, patch_features

from minimaxad.data.synthetic import generate_synthetic_dataset
from minimaxad.data.transforms import Transform
from minimaxad.inference.backends import create_backend
from minimaxad.inference.benchmark import cpu_name, randomize_batchnorm
from minimaxad.models import MiniMaxAD


def synthetic_images(count: int, size: int, folder: Path, seed: int) -> torch.Tensor:
    root = generate_synthetic_dataset(
        folder,
        categories=("weave", "washer", "grain"),
        n_train=math.ceil(count / 3),
        n_test_good=1,
        n_test_defect=1,
        image_size=size,
        seed=seed,
        overwrite=True,
    )
    transform = Transform(size)
    paths = sorted(root.glob("*/train/good/*.png"))[:count]
    return torch.stack([transform(p) for p in paths])


def per_image_seconds(fn, images: torch.Tensor, repeats: int) -> float:
    fn(images[:1])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(images[i % len(images) : i % len(images) + 1])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def build_bank(
    features: torch.Tensor, n_images: int, patches: int, ratio: float, greedy_budget: float, seed: int
) -> tuple[torch.Tensor, str]:
    """The bank of a training set of ``n_images`` (from ``features (distinct*P, D)``)."""
    total = n_images * patches
    count = max(1, round(ratio * total))
    g = torch.Generator().manual_seed(seed)
    if count * total <= greedy_budget:
        pool = _training_patches(features, n_images, patches, g)

        return pool[greedy_coreset(pool, count, seed=seed)], "greedy k-centre"
    # random subset of the N-image training set without materialising all of it
    index = torch.randint(total, (count,), generator=g)
    source = features[index % features.shape[0]]
    copy = (index // features.shape[0]).float().unsqueeze(1)
    jitter = torch.randn(source.shape, generator=g) * (0.01 * features.std()) * (copy > 0).float()
    return source + jitter, "random subset"


def _training_patches(features: torch.Tensor, n_images: int, patches: int, g: torch.Generator) -> torch.Tensor:
    copies = math.ceil(n_images * patches / features.shape[0])
    parts = [features] + [
        features + torch.randn(features.shape, generator=g) * (0.01 * features.std()) for _ in range(copies - 1)
    ]
    return torch.cat(parts)[: n_images * patches]


def svg_plot(results: dict, path: Path, title: str) -> None:
    """Log-log lines of milliseconds per image against training images."""
    width, height, left, right, top, bottom = 640, 380, 70, 170, 40, 50
    xs = sorted({r["training_images"] for r in results["rows"]})
    series = {}
    for r in results["rows"]:
        series.setdefault(r["method"], []).append((r["training_images"], 1e3 * r["seconds_per_image"]))
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = math.log10(min(xs)), math.log10(max(xs))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    px = lambda x: left + (math.log10(x) - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    py = lambda y: height - bottom - (math.log10(y) - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2 - 60}" y="20" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for e in range(y0, y1 + 1):
        y = py(10**e)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10**e:g}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:,}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">training images</text>')
    out.append(
        f'<text transform="translate(18,{(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">'
        f"ms per test image (log)</text>"
    )
    for i, (name, pts) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = sorted(pts)
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts)
        ly = top + 10 + 20 * i
        out.append(
            f'<line x1="{width - right + 10}" x2="{width - right + 30}" y1="{ly}" y2="{ly}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        out.append(f'<text x="{width - right + 35}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="unireplknet_n")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1])
    parser.add_argument("--distinct", type=int, default=100, help="distinct images encoded for the banks")
    parser.add_argument("--repeats", type=int, default=3, help="test images timed per point (median)")
    parser.add_argument(
        "--greedy-budget",
        type=float,
        default=2e8,
        help="largest coreset_size * training_patches done with the greedy algorithm",
    )
    parser.add_argument("--output", default="benchmark-training-set.json")
    parser.add_argument("--plot", default="docs/img/cost_vs_training_set.svg")
    parser.add_argument("--work", default="/tmp/minimaxad-bench-training-set")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = MiniMaxAD(args.backbone).eval()
    randomize_batchnorm(model)
    images = synthetic_images(args.distinct, args.image_size, Path(args.work), seed=0)
    ours = create_backend("fused", model, image_size=args.image_size, device="cpu")
    print(
        f"{args.backbone}, {args.image_size} px, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{cpu_name()}; PyTorch eager float32 for both methods"
    )
    started = time.perf_counter()
    features = torch.cat(
        [patch_features(model.encoder, images[i : i + 8]).flatten(0, 1) for i in range(0, len(images), 8)]
    )
    patches = features.shape[0] // len(images)
    print(
        f"encoded {len(images)} distinct images: {patches} patches of {features.shape[1]} dims each "
        f"({time.perf_counter() - started:.0f} s)"
    )
    rows = []
    print(
        f"{'training images':>16}{'method':>22}{'bank rows':>12}{'bank MB':>9}{'ms/image':>10}{'vs MiniMaxAD':>14}"
        f"  bank chosen by"
    )
    for n in args.sizes:
        ours_s = per_image_seconds(lambda x: ours(x), images, args.repeats)
        rows.append(
            {"training_images": n, "method": "MiniMaxAD", "bank_rows": 0, "seconds_per_image": ours_s, "selection": "-"}
        )
        print(f"{n:>16,}{'MiniMaxAD':>22}{0:>12,}{0:>9}{1e3 * ours_s:>10.1f}{1.0:>13.1f}x  -")
        for ratio in args.ratios:
            started = time.perf_counter()
            bank, how = build_bank(features, n, patches, ratio, args.greedy_budget, seed=n)
            built = time.perf_counter() - started
            detector = MemoryBankDetector(model.encoder, ratio).set_bank(bank)
            seconds = per_image_seconds(detector.score, images, args.repeats)
            name = f"memory bank {100 * ratio:g}%"
            rows.append(
                {
                    "training_images": n,
                    "method": name,
                    "bank_rows": int(bank.shape[0]),
                    "bank_mb": bank.numel() * 4 / 2**20,
                    "seconds_per_image": seconds,
                    "selection": how,
                    "bank_build_seconds": built,
                }
            )
            print(
                f"{n:>16,}{name:>22}{bank.shape[0]:>12,}{bank.numel() * 4 / 2**20:>9.0f}{1e3 * seconds:>10.1f}"
                f"{seconds / ours_s:>13.1f}x  {how} ({built:.0f} s)",
                flush=True,
            )
            del bank, detector
    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "patches_per_image": patches,
        "feature_dims": int(features.shape[1]),
        "distinct_images": len(images),
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    svg_plot(
        result, Path(args.plot), f"Inference cost vs training-set size ({args.backbone}, {args.image_size} px, CPU)"
    )
    print(f"results: {args.output}; plot: {args.plot}")


if __name__ == "__main__":
    main()
