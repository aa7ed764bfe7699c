"""Time and peak memory of ``minimaxad.metrics.evaluate`` on MVTec-AD-sized synthetic data.

    python benchmarks/bench_metrics.py            # full 1,725 x 256 x 256 set + 200-image comparison
    python benchmarks/bench_metrics.py --quick    # 300 + 50 images, a smoke run

1. ``evaluate`` on the full synthetic test set (1,725 images, 113 M pixels; MVTec AD's size).
2. On the first 200 images: ``evaluate`` against a straightforward reference in the same run:
   scikit-learn's roc_auc_score / average_precision_score / precision_recall_curve (F1-max) at
   image and pixel level, plus the authors' 200-threshold AUPRO loop (per threshold, per image,
   label the mask and sum every region), and the agreement of the numbers.

Each measurement runs in a fresh subprocess that loads the data from .npy files, so the peak
resident memory (VmHWM) belongs to that measurement alone; it is reported in total and
above the loaded data. scikit-learn is needed (test/benchmark dependency only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------


def make_dataset(n: int, size: int, seed: int, out: Path) -> None:
    """MVTec-like test set: ~27 % normal images; anomalous ones with 1-3 defects (ellipses of
    2-70 px, thin scratches), some touching the border; smooth maps with the defects raised
    by a random, sometimes weak, amount. Written as scores/labels/maps/masks .npy files."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    labels = (rng.random(n) > 0.27).astype(np.int64)
    masks = np.zeros((n, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            if rng.random() < 0.25:  # thin scratch
                a, b = rng.uniform(15, 70), rng.uniform(1, 3)
            else:
                a, b = rng.uniform(2, 40, 2) * (size / 256)
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(th) + dy * np.sin(th)
            v = -dx * np.sin(th) + dy * np.cos(th)
            masks[i] |= (u / a) ** 2 + (v / b) ** 2 <= 1
    maps = np.empty((n, size, size), dtype=np.float32)
    kernel = torch.ones(1, 1, 9, 9) / 81
    for s in range(0, n, 64):
        e = min(n, s + 64)
        low = torch.rand(e - s, 1, 16, 16) * 0.3
        base = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=True)
        m = torch.from_numpy(masks[s:e]).float().unsqueeze(1)
        blurred = F.conv2d(F.pad(m, (4, 4, 4, 4)), kernel)
        strength = torch.from_numpy(rng.uniform(0.05, 0.6, (e - s, 1, 1, 1)).astype(np.float32))
        noisy = base + strength * blurred + 0.03 * torch.randn(e - s, 1, size, size)
        maps[s:e] = noisy[:, 0].numpy()
    k = max(1, int(size * size * 0.01))  # image score: mean of the top 1 % pixels (authors' default)
    flat = maps.reshape(n, -1)
    scores = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:].mean(1).astype(np.float32)
    np.save(out / "scores.npy", scores)
    np.save(out / "labels.npy", labels)
    np.save(out / "maps.npy", maps)
    np.save(out / "masks.npy", masks)


# ---------------------------------------------------------------------------
# the straightforward reference
# ---------------------------------------------------------------------------


def reference_metrics(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray) -> dict:
    from scipy import ndimage
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    def f1max(y, s):
        p, r, _ = precision_recall_curve(y, s)
        return float(np.max((2 * p * r / (p + r + 1e-12))[:-1]))

    out = {
        "i_auroc": roc_auc_score(labels, scores),
        "i_ap": average_precision_score(labels, scores),
        "i_f1max": f1max(labels, scores),
    }
    gt, pr = masks.ravel(), maps.ravel()
    out["p_auroc"] = roc_auc_score(gt, pr)
    out["p_ap"] = average_precision_score(gt, pr)
    out["p_f1max"] = f1max(gt, pr)
    # the authors' compute_pro, with scipy labelling in place of skimage (8-connectivity)
    structure = np.ones((3, 3), dtype=int)
    min_th, max_th = maps.min(), maps.max()
    delta = (max_th - min_th) / 200
    binary = np.zeros_like(maps, dtype=bool)
    fprs, pros = [], []
    inverse = ~masks
    for th in np.arange(min_th, max_th, delta):
        binary[maps <= th] = 0
        binary[maps > th] = 1
        per_region = []
        for b, m in zip(binary, masks):
            lab, count = ndimage.label(m, structure)
            for j, sl in enumerate(ndimage.find_objects(lab)):
                coords = np.nonzero(lab[sl] == j + 1)
                per_region.append(b[sl][coords].sum() / len(coords[0]))
        pros.append(np.mean(per_region))
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < 0.3
    out["aupro_200"] = auc(fprs[keep] / fprs[keep].max(), pros[keep])
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# one measurement per subprocess
# ---------------------------------------------------------------------------


def _status_mib(field: str) -> float:
    # VmHWM (peak resident set) belongs to this process image; ru_maxrss would carry the
    # parent's peak over fork + exec
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return math.nan


def worker(kind: str, data: Path, n: int) -> None:
    import torch

    def load(name: str) -> np.ndarray:
        mm = np.load(data / name, mmap_mode="r")
        arr = np.array(mm[:n])  # in memory, like the maps a real run holds
        del mm  # unmap the file: its pages must not count in this process's memory
        return arr

    scores, labels, maps, masks = (load(f"{k}.npy") for k in ("scores", "labels", "maps", "masks"))
    if kind == "ours":  # import and warm up outside the timing
        from minimaxad.metrics import evaluate

        evaluate(scores[:20], labels[:20], anomaly_maps=maps[:20], masks=masks[:20])
    else:
        import sklearn.metrics  # noqa: F401
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    if kind == "ours":
        res = evaluate(
            torch.from_numpy(scores),
            torch.from_numpy(labels),
            anomaly_maps=torch.from_numpy(maps),
            masks=torch.from_numpy(masks),
        )
    else:
        res = reference_metrics(scores, labels, maps, masks)
    elapsed = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "time_s": elapsed,
                "peak_mib": peak,
                "base_mib": base,
                "threads": torch.get_num_threads(),
                "metrics": {k: v for k, v in res.items() if isinstance(v, float)},
            }
        )
    )


def measure(kind: str, data: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(data), "--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-full", type=int, default=1725)
    ap.add_argument("--n-small", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="runs of evaluate per size (best and all reported)")
    ap.add_argument("--quick", action="store_true", help="300 + 50 images, one repeat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.n)
        return
    if args.quick:
        args.n_full, args.n_small, args.repeats = 300, 50, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    try:
        t0 = time.perf_counter()
        make_dataset(args.n_full, args.size, args.seed, tmp)
        masks = np.load(tmp / "masks.npy", mmap_mode="r")
        print(
            f"synthetic set: {args.n_full} x {args.size} x {args.size} = {args.n_full * args.size**2 / 1e6:.1f} M "
            f"pixels, {np.mean(masks):.2%} anomalous pixels ({time.perf_counter() - t0:.1f} s to make)"
        )
        print(f"cpu cores available: {len(os.sched_getaffinity(0))}")
        full = [measure("ours", tmp, args.n_full) for _ in range(args.repeats)]
        runs = ", ".join(f"{r['time_s']:.1f}" for r in full)
        print(
            f"\n[full, {args.n_full} images] evaluate: {min(r['time_s'] for r in full):.1f} s (runs: {runs}), "
            f"peak RSS {max(r['peak_mib'] for r in full):.0f} MiB total, "
            f"{max(r['peak_mib'] - r['base_mib'] for r in full):.0f} MiB above the loaded data + libraries"
        )
        for k, v in full[0]["metrics"].items():
            print(f"    {k:10s} {v:.6f}")
        small = [measure("ours", tmp, args.n_small) for _ in range(args.repeats)]
        ref = measure("reference", tmp, args.n_small)
        t_ours = min(r["time_s"] for r in small)
        runs = ", ".join(f"{r['time_s']:.2f}" for r in small)
        print(
            f"\n[{args.n_small} images] evaluate: {t_ours:.2f} s (runs: {runs}), "
            f"peak RSS {max(r['peak_mib'] for r in small):.0f} MiB "
            f"(+{max(r['peak_mib'] - r['base_mib'] for r in small):.0f})"
        )
        print(
            f"[{args.n_small} images] reference (sklearn + 200-threshold loop): {ref['time_s']:.1f} s, "
            f"peak RSS {ref['peak_mib']:.0f} MiB (+{ref['peak_mib'] - ref['base_mib']:.0f})"
        )
        print(f"[{args.n_small} images] speed-up: {ref['time_s'] / t_ours:.1f}x")
        print("    metric       ours        reference   |diff|")
        for k, v in ref["metrics"].items():
            o = small[0]["metrics"][k]
            print(f"    {k:10s} {o:.8f}  {v:.8f}  {abs(o - v):.1e}")
        print(f"    {'aupro':10s} {small[0]['metrics']['aupro']:.8f}  (exact form; no reference loop)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
