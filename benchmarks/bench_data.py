"""Images/second delivered by the data pipeline: 1024 px PNGs resized to 256, batch 16.

Compares, in one run, the uncached single-process loader (the baseline, ratio 1.00) with
2 DataLoader workers, the in-memory cache, and both. The PNGs are written to a temporary
folder first (smooth synthetic scenes upscaled + sensor noise, so files are as large and
slow to decode as real 1024 px photos: about 1.8 MB each).

    python benchmarks/bench_data.py                 # about 1 minute on 2 cores
    python benchmarks/bench_data.py --images 64 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from minimaxad.data import build_dataset, collate, render_sample


def make_pngs(folder: Path, n: int, size: int, threads: int) -> float:
    """Write n size x size RGB PNGs to folder/train/good; returns MB written."""
    out = folder / "train" / "good"
    out.mkdir(parents=True, exist_ok=True)
    cats = ("weave", "grain", "washer")

    def one(i: int) -> int:
        small, _ = render_sample(cats[i % 3], seed=0, index=i, image_size=256, split="train")
        big = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.int16)
        noise = np.random.default_rng(i).integers(-3, 4, big.shape, dtype=np.int16)
        path = out / f"{i:04d}.png"
        # compress_level 1: 3x faster to write; decoding costs the same as level 6
        Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, compress_level=1)
        return path.stat().st_size

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(n))) / 1e6


def images_per_second(ds, workers: int, batch: int, epochs: int, collate_fn=collate) -> float:
    """Steady-state rate: one warm-up epoch (worker start-up), then `epochs` timed ones."""
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate_fn,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    for _ in loader:  # warm-up
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for b in loader:
            n += b["image"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96, help="number of PNGs (default 96)")
    ap.add_argument("--size", type=int, default=1024, help="PNG side in pixels (default 1024)")
    ap.add_argument("--resize", type=int, default=256, help="image_size of the pipeline (default 256)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the parallel rows")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per setting (after 1 warm-up)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the PNGs (default: a temp dir)")
    args = ap.parse_args()
    torch.manual_seed(0)

    tmp = args.dir or Path(tempfile.mkdtemp(prefix="minimaxad_bench_"))
    try:
        t0 = time.perf_counter()
        mb = make_pngs(tmp, args.images, args.size, threads=os.cpu_count() or 1)
        print(f"wrote {args.images} PNGs {args.size}x{args.size} ({mb:.0f} MB) in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        plain = build_dataset("folder", tmp, split="train", image_size=args.resize)
        t_validate = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = build_dataset("folder", tmp, split="train", image_size=args.resize, validate=False, cache=True)
        t_fill = time.perf_counter() - t0

        rows = [
            ("uncached, 0 workers", plain, 0),
            (f"uncached, {args.workers} workers", plain, args.workers),
            ("cached,   0 workers", cached, 0),
            (f"cached,   {args.workers} workers", cached, args.workers),
        ]
        rates = [(name, images_per_second(ds, w, args.batch, args.epochs)) for name, ds, w in rows]
        # the same cached, single-process loader with torch's default_collate (torch.stack)
        rates.append(("cached, 0 w, torch collate", images_per_second(cached, 0, args.batch, args.epochs, None)))
        base = rates[0][1]
        print(
            f"\ndata pipeline: {args.images} PNGs {args.size} px -> {args.resize} px, batch {args.batch}, "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}, load average "
            f"{os.getloadavg()[0]:.1f}, minimaxad.data.collate unless noted"
        )
        print(f"{'setting':<24}{'images/s':>10}{'ratio':>9}")
        for name, rate in rates:
            print(f"{name:<24}{rate:>10.1f}{rate / base:>9.2f}")
        threads = min(8, os.cpu_count() or 1)
        print(f"\nquick validation pass: {t_validate:.2f} s ({args.images / t_validate:.0f} files/s)")
        print(
            f"cache fill (decode + resize, {threads} threads): {t_fill:.2f} s "
            f"({args.images / t_fill:.1f} images/s), {cached.cache_nbytes() / 1e6:.1f} MB in memory"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
