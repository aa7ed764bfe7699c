"""Our ``minimaxad fit`` against the authors' own script, end to end, as the outside check runs them.

    python benchmarks/compare_fit_with_authors_script.py --data CATEGORY_DIR --seeds 111 1
    python benchmarks/compare_fit_with_authors_script.py --data CATEGORY_DIR --inputs-only

Where ``compare_training_with_authors.py`` feeds both training steps our tensors and scores both
networks with our evaluation, this script leaves the authors' side entirely to their code: their
``dataset.py`` reads the photos and masks (``ImageFolder`` over ``train/``, ``MVTecDataset`` over
the test split, torchvision's transforms), their single-class ADC loop trains, their
``evaluation_batch`` scores (``benchmarks/authors_script_side.py``, run by ``--authors-python``, an
interpreter with torchvision: ``.venv-anomalib`` by default). Our side is the command line a user
types: ``minimaxad fit --backbone unireplknet_<variant> --encoder-weights ENC --loss adc
--image-size S --epochs E --batch-size B --seed SEED --device cpu --val-fraction 0``. Under each
seed both get the same random encoder, built by their code (no ImageNet weights here).

First, always, the inputs: every training and test photo as their pipeline makes it and as ours
does (with the white level ``fit`` measures), compared tensor by tensor, masks pixel by pixel.
Photos whose tensors differ are listed with the reason where it is known (more than 8 bits: their
Pillow conversion clips at 255; an EXIF orientation: they ignore it). Then one training per seed
and side, and a table of the metrics (their evaluation, our ``metrics.json``) with the paired
difference. ``--json`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIDE = Path(__file__).resolve().with_name("authors_script_side.py")
DEFAULT_AUTHORS_CODE = ROOT.parent / "shared" / "authors_code"
DEFAULT_AUTHORS_PYTHON = ROOT / ".venv-anomalib" / "bin" / "python"
METRICS = ("i_auroc", "p_auroc", "aupro_200")


def authors(python: Path, *args: Any, threads: int) -> None:
    """One command of ``authors_script_side.py`` under their interpreter; its errors say which."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    done = subprocess.run([str(python), str(SIDE), *map(str, args)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the authors' side failed ({' '.join(map(str, args[:1]))}):\n{done.stderr[-3000:]}")


def why_differs(path: Path) -> str:
    """The known reason a photo reads differently in their pipeline, or ''."""
    with Image.open(path) as im:
        if im.mode.startswith("I") or im.mode == "F":
            return f"{im.mode}: more than 8 bits (theirs clips at 255)"
        if im.getexif().get(0x0112, 1) not in (1, None):
            return "EXIF orientation (theirs ignores it)"
    return ""


def compare_inputs(data: Path, size: int, python: Path, code: Path, threads: int, work: Path) -> dict[str, Any]:
    """Their tensors against ours for every photo of ``data``; prints and returns the summary."""
    from minimaxad.data import build_dataset
    from minimaxad.engine.config import RunConfig
    from minimaxad.engine.runner import resolve_white_level

    dump = work / "authors_inputs.pt"
    authors(python, "inputs", code, data, size, dump, threads=threads)
    theirs = torch.load(dump, weights_only=False)
    level = resolve_white_level(RunConfig(data=str(data), image_size=size)).white_level
    ours: dict[tuple[str, str], tuple[torch.Tensor, Any, str]] = {}
    for split in ("train", "test"):
        dataset = build_dataset("mvtec", data, split, image_size=size, white_level=level)
        for i, record in enumerate(dataset.records):
            item = dataset[i]
            key = (split, f"{Path(record.path).parent.name}/{Path(record.path).name}")
            ours[key] = (item["image"], item["mask"] if split == "test" else None, record.path)
    only_theirs, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    differing, mask_pixels = [], 0
    for key in sorted(set(theirs) & set(ours)):
        (their_image, their_mask), (our_image, our_mask, path) = theirs[key], ours[key]
        gap = float((their_image - our_image).abs().max())
        why = why_differs(Path(path)) if gap > 1e-5 else ""
        if gap > 1e-5:
            differing.append({"photo": "/".join(key), "max_abs_difference": gap, "why": why})
        if their_mask is not None and "EXIF" not in why:  # a turned photo's mask is turned with it
            mask_pixels += int((their_mask != our_mask).sum())
    summary = {
        "photos_compared": len(set(theirs) & set(ours)),
        "only_theirs": ["/".join(k) for k in only_theirs],
        "only_ours": ["/".join(k) for k in only_ours],
        "differing": differing,
        "mask_pixels_differing": mask_pixels,
        "white_level": level,
    }
    print(f"inputs at {size} px: {summary['photos_compared']} photos in both pipelines", end="")
    print(f", white level {level:g}" if level is not None else ", all 8-bit (no white level)")
    print(f"  tensors differing by more than 1e-5: {len(differing)}; mask pixels differing: {mask_pixels}")
    print("  (masks of photos turned by their EXIF orientation are turned with them, so not compared)")
    for row in differing[:10]:
        print(f"    {row['photo']}: max |difference| {row['max_abs_difference']:.4f}  {row['why']}")
    if len(differing) > 10:
        print(f"    ... and {len(differing) - 10} more")
    for name, keys in (("only in theirs", only_theirs), ("only in ours", only_ours)):
        if keys:
            print(
                f"  {name}: {len(keys)} ({', '.join('/'.join(k) for k in keys[:5])}{' ...' if len(keys) > 5 else ''})"
            )
    return summary


def fit_ours(data: Path, variant: str, seed: int, encoder: Path, args: argparse.Namespace, out: Path) -> dict:
    command = [
        sys.executable, "-m", "minimaxad", "fit", "--data", str(data), "--backbone", f"unireplknet_{variant}",
        "--encoder-weights", str(encoder), "--loss", "adc", "--image-size", str(args.image_size),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(seed),
        "--device", "cpu", "--val-fraction", "0", "--output", str(out), "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"minimaxad fit failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["mean"]
    return {**{k: float(metrics[k]) for k in METRICS}, "seconds": time.time() - start}


def print_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per seed and mean ± std: theirs, ours, ours minus theirs (paired)."""
    head = " | ".join(f"{side} {m}" for m in METRICS for side in ("theirs", "ours"))
    print(f"\nseed | {head} | P-AUROC ours - theirs")
    for row in rows:
        cells = " | ".join(f"{row[side][m]:.3f}" for m in METRICS for side in ("authors", "ours"))
        print(f"{row['seed']} | {cells} | {row['ours']['p_auroc'] - row['authors']['p_auroc']:+.3f}")
    summary: dict[str, Any] = {}
    for side in ("authors", "ours"):
        summary[side] = {
            m: (float(np.mean([r[side][m] for r in rows])), float(np.std([r[side][m] for r in rows]))) for m in METRICS
        }
    gaps = [r["ours"]["p_auroc"] - r["authors"]["p_auroc"] for r in rows]
    summary["p_auroc_gap"] = (float(np.mean(gaps)), float(np.std(gaps)))
    cells = " | ".join(
        f"{summary[side][m][0]:.3f} ± {summary[side][m][1]:.3f}" for m in METRICS for side in ("authors", "ours")
    )
    print(f"mean ± std | {cells} | {summary['p_auroc_gap'][0]:+.3f} ± {summary['p_auroc_gap'][1]:.3f}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="one MVTec-layout category (train/, test/, ground_truth/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[111, 1])
    ap.add_argument("--variant", default="f", choices=list("fpnt"))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--inputs-only", action="store_true", help="compare the two pipelines' tensors, train nothing")
    ap.add_argument("--authors-code", type=Path, default=DEFAULT_AUTHORS_CODE)
    ap.add_argument(
        "--authors-python", type=Path, default=DEFAULT_AUTHORS_PYTHON, help="an interpreter with torchvision"
    )
    ap.add_argument("--threads", type=int, default=1, help="threads of each side (the two sides run one after another)")
    ap.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the comparison here")
    args = ap.parse_args(argv)
    for what, path in (("--authors-python", args.authors_python), ("--authors-code", args.authors_code)):
        if not path.exists():
            ap.error(
                f"{what} {path} does not exist (build .venv-anomalib with scripts/test.sh, or pass an interpreter with torchvision)"
            )
    data = args.data.resolve()
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "inputs": compare_inputs(data, args.image_size, args.authors_python, args.authors_code, args.threads, work)
        }
        rows = []
        for seed in [] if args.inputs_only else args.seeds:
            encoder = work / f"encoder-{seed}.pt"
            authors(
                args.authors_python, "encoder", args.authors_code, args.variant, seed, encoder, threads=args.threads
            )
            theirs_json = work / f"authors-{seed}.json"
            authors(
                args.authors_python, "train", args.authors_code, data, args.variant, seed, encoder,
                args.image_size, args.epochs, args.batch_size, theirs_json, threads=args.threads,
            )  # fmt: skip
            ours = fit_ours(data, args.variant, seed, encoder, args, work / f"ours-{seed}")
            rows.append({"seed": seed, "authors": json.loads(theirs_json.read_text()), "ours": ours})
            print(
                f"seed {seed}: theirs P-AUROC {rows[-1]['authors']['p_auroc']:.3f}, ours {ours['p_auroc']:.3f}",
                flush=True,
            )
        if rows:
            record["summary"] = print_table(rows)
        record["runs"] = rows
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
