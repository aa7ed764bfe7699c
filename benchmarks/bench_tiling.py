"""Whole-photo against tiled training and inference, on large photos with small defects.

    python benchmarks/bench_tiling.py            # about 20 minutes on 2 CPU cores
    python benchmarks/bench_tiling.py --quick    # a smoke test of every code path (tiny sizes)

Two data sets, each trained and tested once per way of feeding the network, with the SAME
training budget (``--steps`` x ``--batch-size`` network inputs: whole photos or tiles):

* a high-resolution synthetic set (``generate_highres_dataset``: ``--categories``, ``--photo-size``
  px photos whose defects are 1-3% of the side, 8-23 px at 768), written under ``--data-root``;
  rows: the whole photo resized to ``--image-size``; ``--tile-size`` tiles at full resolution;
  ``--tile-size`` tiles after resizing the long side to ``--resize-long-side``;
* the real magnetic-tile photos (``--magnetic``, MVTec layout, read only; 100-600 px photos of many
  sizes) at full resolution: the whole photo resized to ``--image-size`` against
  ``--magnetic-tile-size`` tiles at the photos' own resolution.

Printed per category and as the mean: I-AUROC, P-AUROC, AUPRO (exact, FPR <= 0.3), SegF1 at the
calibrated pixel threshold and SegF1-max, as ``fit`` evaluates them (metrics.json; whole-photo
runs are scored on maps and masks resized to the network's input, tiled runs at the photo's
resolution), then the pixel metrics again at every photo's own resolution for every row
(whole-photo maps resized up to the photo, the masks as stored), and the inference speed:
photos/s of ``Predictor.predict`` on the test photos, timed after a warm-up.

With ``--encoder-weights none`` (the default: no internet here) the encoder is RANDOM: the
figures show what tiling changes, not the accuracy the paper reaches with ImageNet weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from minimaxad.data.synthetic import generate_highres_dataset
from minimaxad.engine.config import RunConfig
from minimaxad.engine.runner import find_checkpoints, fit
from minimaxad.inference.benchmark import cpu_name
from minimaxad.inference.predict import Predictor
from minimaxad.metrics import evaluate

MAGNETIC = "/work/shared/data/magnetic_tile"
METRICS = (
    ("i_auroc", "I-AUROC"),
    ("p_auroc", "P-AUROC"),
    ("aupro", "AUPRO"),
    ("seg_f1", "SegF1"),
    ("seg_f1_max", "SegF1-max"),
)
PIXEL_METRICS = METRICS[1:]
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Mode:
    """One way of feeding the network: its name in the table and the RunConfig settings it changes."""

    name: str
    settings: dict[str, Any]


@dataclass
class DataSet:
    """An MVTec-layout root, its categories and the ways to run it."""

    title: str
    root: Path
    categories: list[str]
    modes: list[Mode]
    rows: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def test_photos(root: Path, category: str) -> list[tuple[Path, int, Path | None]]:
    """(photo, label, mask or None) of every test photo, sorted as the data reader sorts them."""
    items = []
    for folder in sorted((root / category / "test").iterdir()):
        for photo in sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS):
            if folder.name == "good":
                items.append((photo, 0, None))
            else:
                mask = root / category / "ground_truth" / folder.name / f"{photo.stem}_mask.png"
                items.append((photo, 1, mask if mask.is_file() else None))
    return items


def magnetic_subset(source: Path, target: Path, count: int) -> Path:
    """Copy ``count`` training photos and ``count`` test photos of each kind (with masks) of
    ``source`` to ``target`` (for --quick; the source is only read)."""
    for kind in sorted(p.name for p in (source / "test").iterdir()):
        for photo in sorted((source / "test" / kind).iterdir())[:count]:
            (target / "test" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy2(photo, target / "test" / kind / photo.name)
            mask = source / "ground_truth" / kind / f"{photo.stem}_mask.png"
            if mask.is_file():
                (target / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy2(mask, target / "ground_truth" / kind / mask.name)
    (target / "train" / "good").mkdir(parents=True, exist_ok=True)
    for photo in sorted((source / "train" / "good").iterdir())[: max(count, 8)]:
        shutil.copy2(photo, target / "train" / "good" / photo.name)
    return target


# --------------------------------------------------------------------------- running


def full_resolution_metrics(
    items: list[tuple[Path, int, Path | None]],
    scores: np.ndarray,
    maps: list[np.ndarray],
    pixel_threshold: float | None,
) -> dict[str, float]:
    """The pixel metrics at every photo's own resolution: maps resized (bilinear) to the photo,
    the stored masks binarised at 128, photos of different sizes padded and masked out."""
    sizes = [Image.open(photo).size[::-1] for photo, _, _ in items]  # (H, W)
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    stack = np.zeros((len(items), height, width), np.float32)
    masks = np.zeros((len(items), height, width), bool)
    valid = np.zeros((len(items), height, width), bool)
    for i, ((_, _, mask_path), amap, (h, w)) in enumerate(zip(items, maps, sizes)):
        amap = torch.as_tensor(np.asarray(amap, np.float32))
        if tuple(amap.shape) != (h, w):
            amap = F.interpolate(amap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        stack[i, :h, :w] = amap.numpy()
        valid[i, :h, :w] = True
        if mask_path is not None:
            masks[i, :h, :w] = np.asarray(Image.open(mask_path).convert("L")) >= 128
    labels = np.asarray([label for _, label, _ in items])
    result = evaluate(scores, labels, stack, masks, pixel_threshold=pixel_threshold, valid=valid)
    return {key: float(result[key]) for key, _ in PIXEL_METRICS if key in result}


def time_predictor(
    checkpoint: Path, items: list[tuple[Path, int, Path | None]], batch_size: int, chunk: int
) -> tuple[float, np.ndarray, list[np.ndarray], float | None]:
    """photos/s of ``Predictor.predict`` over the test photos (after a warm-up on two), the
    scores, the maps and the pixel threshold."""
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    paths = [str(photo) for photo, _, _ in items]
    predictor.predict(paths[:2], batch_size=batch_size)  # warm-up: first-call allocations
    scores, maps = [], []
    started = time.perf_counter()
    for start in range(0, len(paths), chunk):  # a few photos at a time: tiles of all would fill memory
        prediction = predictor.predict(paths[start : start + chunk], batch_size=batch_size)
        scores.append(np.asarray(prediction.scores))
        maps.extend(list(prediction.maps))
    seconds = time.perf_counter() - started
    return len(paths) / seconds, np.concatenate(scores), maps, predictor.pixel_threshold


def run_mode(data: DataSet, mode: Mode, args: argparse.Namespace, output: Path, log) -> None:
    """Train and evaluate ``mode`` on ``data`` (one model per category), time its inference and
    add one row per category to ``data.rows``."""
    config = RunConfig(
        data=str(data.root),
        format="mvtec",
        categories=data.categories,
        backbone=args.backbone,
        encoder_weights=args.encoder_weights,
        loss=args.loss,
        lr=args.lr,
        lr_gamma=1.0,  # no decay per epoch: a tiled epoch is ~9x longer, the same budget would decay less
        epochs=1_000_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        val_fraction=0.1,
        checkpoint_every=0,
        cache=True,
        device="cpu",
        seed=args.seed,
        **mode.settings,
    )
    log(f"--- {data.title}: {mode.name} -> {output}")
    started = time.perf_counter()
    summary = fit(config, output, progress=False, echo=log)
    fit_seconds = time.perf_counter() - started
    for category in data.categories:
        items = test_photos(data.root, category)
        speed, scores, maps, threshold = time_predictor(
            find_checkpoints(output / category)[0], items, args.infer_batch, args.infer_chunk
        )
        full = full_resolution_metrics(items, scores, maps, threshold)
        metrics = summary["categories"][category]
        row = {
            "data": data.title,
            "mode": mode.name,
            "category": category,
            **{key: metrics.get(key) for key, _ in METRICS},
            "full_resolution": full,
            "photos_per_s": speed,
            "fit_s": fit_seconds / len(data.categories),
            "settings": mode.settings,
        }
        data.rows.append(row)
        log(f"    {category}: {json.dumps({k: v for k, v in row.items() if k != 'settings'}, default=str)}")


# --------------------------------------------------------------------------- printing


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def table(data: DataSet) -> str:
    """Per category and the mean over categories, one line per mode; pixel metrics as ``fit``
    reported them, then at the photos' own resolution, then the speed."""
    names = [m.name for m in data.modes]
    width = max(len(n) for n in names) + 2
    header = (
        f"{'category':<14}{'run':<{width}}"
        + "".join(f"{title:>10}" for _, title in METRICS)
        + " |"
        + "".join(f"{title:>10}" for _, title in PIXEL_METRICS)
        + f"{'photos/s':>10}{'fit s':>8}"
    )
    lines = [header, f"{'':<{14 + width}}{'as fit evaluates (metrics.json)':^50} |{'at each photo resolution':^40}"]
    lines.insert(0, "-" * len(header))
    lines.append("-" * len(header))
    groups = [(c, [r for r in data.rows if r["category"] == c]) for c in data.categories]
    if len(data.categories) > 1:
        groups.append(("mean", None))
    for category, rows in groups:
        for name in names:
            if rows is None:
                picked = [r for r in data.rows if r["mode"] == name]
            else:
                picked = [r for r in rows if r["mode"] == name]
            if not picked:
                continue

            def mean(get) -> float | None:
                values = [get(r) for r in picked]
                values = [v for v in values if v is not None and not math.isnan(v)]
                return float(np.mean(values)) if values else None

            line = f"{category:<14}{name:<{width}}"
            line += "".join(f"{_pct(mean(lambda r, k=k: r[k])):>10}" for k, _ in METRICS)
            line += " |" + "".join(
                f"{_pct(mean(lambda r, k=k: r['full_resolution'].get(k))):>10}" for k, _ in PIXEL_METRICS
            )
            speed, fit_s = mean(lambda r: r["photos_per_s"]), mean(lambda r: r["fit_s"])
            line += f"{speed:>10.2f}{fit_s:>8.0f}"
            lines.append(line)
    lines.append("-" * len(header))
    return "\n".join(lines)


def markdown(data: DataSet) -> str:
    """The same table in Markdown (for docs/benchmarks.md)."""
    head = (
        ["category", "run"] + [t for _, t in METRICS] + [f"{t} (photo res.)" for _, t in PIXEL_METRICS] + ["photos/s"]
    )
    out = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    cats = data.categories + (["mean"] if len(data.categories) > 1 else [])
    for category in cats:
        for mode in data.modes:
            picked = [r for r in data.rows if r["mode"] == mode.name and category in ("mean", r["category"])]
            if not picked:
                continue

            def mean(get) -> float | None:
                values = [v for v in (get(r) for r in picked) if v is not None and not math.isnan(v)]
                return float(np.mean(values)) if values else None

            cells = [category, mode.name]
            cells += [_pct(mean(lambda r, k=k: r[k])) for k, _ in METRICS]
            cells += [_pct(mean(lambda r, k=k: r["full_resolution"].get(k))) for k, _ in PIXEL_METRICS]
            cells.append(f"{mean(lambda r: r['photos_per_s']):.2f}")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="unireplknet_a")
    parser.add_argument(
        "--encoder-weights", default="none", help="none (a random encoder: no internet here), hub or a path"
    )
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per model (default 128; --quick 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="network inputs per step (default 8; --quick 2)")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--loss", default="global", help="global (the demo's choice with a random encoder) or adc")
    parser.add_argument("--seed", type=int, default=111)
    parser.add_argument("--data-root", help="where the synthetic set is written (default: OUTPUT/synthetic)")
    parser.add_argument("--output", help="runs and results (default: a temporary folder, removed at the end)")
    parser.add_argument("--categories", nargs="+", default=None, help="synthetic categories (default grain washer)")
    parser.add_argument("--photo-size", type=int, default=None, help="synthetic photo side (default 768)")
    parser.add_argument("--n-train", type=int, default=None, help="synthetic training photos per category (default 40)")
    parser.add_argument("--image-size", type=int, default=None, help="whole-photo network input (default 256)")
    parser.add_argument("--tile-size", type=int, default=None, help="synthetic tiles (default 256)")
    parser.add_argument(
        "--resize-long-side",
        type=int,
        default=None,
        help="the third synthetic row's resize (default 512; 0: no such row)",
    )
    parser.add_argument("--magnetic", default=MAGNETIC, help="magnetic-tile category folder (MVTec layout); '' to skip")
    parser.add_argument(
        "--magnetic-tile-size", type=int, default=None, help="tiles at the photos' resolution (default 128)"
    )
    parser.add_argument("--infer-batch", type=int, default=16, help="Predictor batch (tiles for tiled models)")
    parser.add_argument("--infer-chunk", type=int, default=32, help="photos per Predictor.predict call")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 helps on a busy machine)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--verbose", action="store_true", help="print fit's progress lines")
    parser.add_argument("--markdown", action="store_true", help="also print the tables in Markdown")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke test of every path, not a measurement"
    )
    args = parser.parse_args(argv)
    full = dict(
        steps=128, batch_size=8, categories=["grain", "washer"], photo_size=768, n_train=40, image_size=256,
        tile_size=256, resize_long_side=512, magnetic_tile_size=128,
    )  # fmt: skip
    quick = dict(
        steps=2, batch_size=2, categories=["grain"], photo_size=192, n_train=6, image_size=64,
        tile_size=64, resize_long_side=128, magnetic_tile_size=128,
    )  # fmt: skip
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.output is None
    output = Path(tempfile.mkdtemp(prefix="bench-tiling-") if temporary else args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    log_file = (output / "bench_tiling.log").open("a")

    def log(message: str) -> None:
        log_file.write(message + "\n")
        log_file.flush()
        if args.verbose:
            print(message, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    random_encoder = str(args.encoder_weights).lower() == "none"
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = [
        "command: python benchmarks/bench_tiling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; {os.cpu_count()} CPUs: {cpu_name()}; Python {platform.python_version()}; "
        f"load average {load:.1f} at the start",
        f"model: {args.backbone}, encoder "
        + ("RANDOM (--encoder-weights none): figures show what tiling changes, NOT the paper's accuracy" if random_encoder else str(args.encoder_weights))
        + f"; {args.loss} loss, lr {args.lr}; budget per model: {args.steps} steps x {args.batch_size} = "
        f"{args.steps * args.batch_size} network inputs (whole photos or tiles); 10% of the training photos held out for thresholds",
    ]  # fmt: skip
    print("\n".join(header), flush=True)
    if args.quick:
        print("--quick: tiny sizes, a smoke test; the figures mean nothing", flush=True)

    # the synthetic set
    data_root = Path(args.data_root).resolve() if args.data_root else output / "synthetic"
    n_test_good, n_test_defect = (2, 1) if args.quick else (8, 2)
    defects = ("spot", "hole") if args.quick else ("scratch", "spot", "hole", "foreign", "missing", "color")
    t0 = time.perf_counter()
    generate_highres_dataset(
        data_root,
        categories=args.categories,
        n_train=args.n_train,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        image_size=args.photo_size,
        defects=defects,
        overwrite=True,
    )
    n_test = n_test_good + n_test_defect * len(defects)
    print(
        f"synthetic set: {len(args.categories)} categories ({', '.join(args.categories)}), {args.photo_size} px photos, "
        f"{args.n_train} training / {n_test} test photos each ({n_test_defect} of each of {', '.join(defects)}), "
        f"defects 1-3% of the side ({math.ceil(0.01 * args.photo_size)}-{math.floor(0.03 * args.photo_size)} px); "
        f"generated in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    tile, size, long_side = args.tile_size, args.image_size, args.resize_long_side
    modes = [
        Mode(f"whole photo -> {size} px", {"image_size": size}),
        Mode(f"tiles {tile} at {args.photo_size} px", {"tile_size": tile, "image_size": tile}),
    ]
    if long_side:
        modes.append(
            Mode(
                f"tiles {tile} at {long_side} px",
                {"tile_size": tile, "image_size": tile, "resize_long_side": long_side},
            )
        )
    datasets = [DataSet("synthetic", data_root, list(args.categories), modes)]

    # the real photos
    magnetic = Path(args.magnetic) if args.magnetic else None
    if magnetic is not None and (magnetic / "train" / "good").is_dir():
        if args.quick:
            magnetic = magnetic_subset(magnetic, output / "magnetic-subset" / magnetic.name, 1)
        mt = args.magnetic_tile_size
        datasets.append(
            DataSet(
                "magnetic tiles",
                magnetic.parent,
                [magnetic.name],
                [
                    Mode(f"whole photo -> {size} px", {"image_size": size}),
                    Mode(f"tiles {mt} at photo res.", {"tile_size": mt, "image_size": mt}),
                ],
            )
        )
    elif magnetic is not None:
        print(f"magnetic-tile photos not found at {magnetic}: that comparison is skipped", flush=True)

    for data in datasets:
        for mode in data.modes:
            run_mode(
                data,
                mode,
                args,
                output / data.title.replace(" ", "-") / mode.name.replace(" ", "_").replace(">", ""),
                log,
            )
            print(f"done: {data.title}, {mode.name} ({time.perf_counter() - started:.0f} s so far)", flush=True)

    for data in datasets:
        print(f"\n{data.title} ({data.root}):")
        print(table(data))
    print(
        f"\nphotos/s: Predictor.predict (fused, float32, batch {args.infer_batch} inputs) on the test photos after a "
        f"warm-up; fit s: training + evaluation per category. Total {time.perf_counter() - started:.0f} s; "
        f"load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f} at the end."
    )
    if args.markdown:
        for data in datasets:
            print(f"\n{data.title}:\n\n{markdown(data)}")
    results = {
        "header": header,
        "datasets": [{"title": d.title, "rows": d.rows, "markdown": markdown(d)} for d in datasets],
    }
    (output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    log_file.close()
    if temporary:
        shutil.rmtree(output, ignore_errors=True)
    else:
        print(f"runs, log and results.json: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
