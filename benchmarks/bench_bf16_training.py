"""Does ``--precision bf16`` training end where fp32 does? Final metrics over seeds, both precisions.

    python benchmarks/bench_bf16_training.py                          # synthetic set + magnetic tiles, 3 seeds
    python benchmarks/bench_bf16_training.py --datasets synthetic --seeds 1 2 --max-steps 10

Runs ``minimaxad fit`` (tiny: variant F, random encoder, 64 px, global loss as the demo preset,
``--max-steps`` steps) once per seed and precision on each dataset: the synthetic MVTec-layout set
(written to a temporary folder) and ../shared/data/magnetic_tile (real photos, one category).
Prints, per dataset and metric, the fp32 mean and range over seeds, the bf16 mean and range, and
whether the bf16 mean lies inside the fp32 seed-to-seed range widened by half its width (the
spread a fourth fp32 seed could plausibly show), with the training time of each precision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
MAGNETIC_TILE = REPO.parent / "shared" / "data" / "magnetic_tile"
METRICS = ("i_auroc", "p_auroc", "aupro")


def fit(data: Path, output: Path, precision: str, seed: int, args: argparse.Namespace) -> tuple[dict, float]:
    command = [
        sys.executable,
        "-m",
        "minimaxad",
        "fit",
        "--preset",
        "demo",
        "--format",
        "mvtec",
        "--unified",
        "--data",
        str(data),
        "--output",
        str(output),
        "--precision",
        precision,
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--max-steps",
        str(args.max_steps),
        "--quiet",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((output / "metrics.json").read_text())["mean"], seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets", nargs="+", choices=["synthetic", "magnetic_tile"], default=["synthetic", "magnetic_tile"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 11, 111])
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    from minimaxad.engine.trainer import cpu_supports_bf16

    if not cpu_supports_bf16():
        print("skipped: this CPU has no AVX-512 BF16 or AMX (bf16 would be emulated)")
        return 0
    with tempfile.TemporaryDirectory(prefix="minimaxad-bf16-") as tmp:
        roots = {}
        if "synthetic" in args.datasets:
            from minimaxad.data import generate_synthetic_dataset

            roots["synthetic"] = generate_synthetic_dataset(Path(tmp) / "synthetic", image_size=args.image_size)
        if "magnetic_tile" in args.datasets:
            if not MAGNETIC_TILE.is_dir():
                print(f"magnetic tiles skipped: {MAGNETIC_TILE} not found")
            else:
                roots["magnetic_tile"] = MAGNETIC_TILE
        for name, root in roots.items():
            results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
            seconds: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
            for seed in args.seeds:
                for precision in ("fp32", "bf16"):
                    metrics, took = fit(root, Path(tmp) / f"{name}-{precision}-{seed}", precision, seed, args)
                    results[precision].append(metrics)
                    seconds[precision] += took
            print(
                f"\n{name}: {len(args.seeds)} seeds {args.seeds}, {args.max_steps} steps, {args.image_size} px; "
                f"fit time fp32 {seconds['fp32']:.0f} s, bf16 {seconds['bf16']:.0f} s"
            )
            print(f"{'metric':<9}{'fp32 mean':>10}{'fp32 range':>18}{'bf16 mean':>10}{'bf16 range':>18}  inside")
            for metric in METRICS:
                a = [m[metric] for m in results["fp32"] if m.get(metric) is not None]
                b = [m[metric] for m in results["bf16"] if m.get(metric) is not None]
                if not a or not b:
                    continue
                width = max(a) - min(a)
                inside = min(a) - width / 2 <= statistics.mean(b) <= max(a) + width / 2
                print(
                    f"{metric:<9}{statistics.mean(a):>10.4f}{f'{min(a):.4f}-{max(a):.4f}':>18}"
                    f"{statistics.mean(b):>10.4f}{f'{min(b):.4f}-{max(b):.4f}':>18}  {'yes' if inside else 'NO'}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
