"""SegF1 of each pixel-threshold rule (``minimaxad.engine.thresholds.PIXEL_RULES``) on sets with known defects.

MVTec AD 2 ranks methods by SegF1 at a pixel threshold chosen without seeing a defect. Every rule
here sees only the maps of normal photos held out of training (the run's own calibration set);
the test masks are used only to score the result. For each data set this script trains small
models with the Python API (``runner.fit``, one model per category, as ``minimaxad fit`` does),
rebuilds the calibration set exactly as the run did (checked against the normal scores stored in
the checkpoint), scores it and the test set with ``scoring.run_dataset``, and prints, per rule and
category, the SegF1 (``metrics.seg_f1``), the mean over categories, and the gap to the oracle
``seg_f1_max`` (``metrics.evaluate``), i.e. the best threshold chosen on the test masks.

Data: (i) the synthetic data set (``data.generate_synthetic_dataset``, every category), written
under ``--work``; (ii) the magnetic-tile photos (MVTec layout, read only) when present.

    PYTHONPATH=src python benchmarks/bench_pixel_thresholds.py --work /tmp/pixel-bench

Small models on a random encoder (no ImageNet weights here): the maps are far from the paper's,
so the table compares the rules with each other on the same maps; it says nothing about
MiniMaxAD's absolute SegF1. No timing is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minimaxad.data import calibration_subset, generate_synthetic_dataset, split_holdout
from minimaxad.engine.checkpoint import model_from_checkpoint, read_checkpoint
from minimaxad.engine.config import RunConfig
from minimaxad.engine.runner import fit, open_dataset
from minimaxad.engine.scoring import run_dataset
from minimaxad.engine.thresholds import DEFAULT_PIXEL_RULE, PIXEL_RULES, calibrate_thresholds
from minimaxad.metrics import evaluate, seg_f1

MAGNETIC_TILE = Path("/work/shared/data/magnetic_tile")


@dataclass
class CategoryResult:
    """One category's SegF1 per rule, the thresholds, and the oracle."""

    dataset: str
    category: str
    normal_images: int
    test_images: int
    seg_f1: dict[str, float]
    thresholds: dict[str, float]
    seg_f1_max: float
    seg_f1_max_threshold: float


def measure_category(config: RunConfig, checkpoint_path: Path, dataset: str, category: str) -> CategoryResult:
    """SegF1 of every rule for one trained category."""
    checkpoint = read_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    job = config.updated(categories=[category])
    # the calibration set of runner._fit: the same seeded hold-out, capped, un-augmented
    train = open_dataset(job, "train")
    _, holdout = split_holdout(train, config.val_fraction, seed=config.seed)
    holdout = calibration_subset(holdout, config.val_max_images, seed=config.seed).with_augment(False)
    tiling = config.tiling()  # a tiled run: maps at each photo's resolution, as the run calibrated
    common = dict(top_ratio=config.top_ratio, batch_size=config.batch_size, device=config.device, tiling=tiling)
    normal = run_dataset(model, holdout, collect_masks=False, **common)
    stored = checkpoint["thresholds"]
    if not np.allclose(np.sort(normal.scores), stored["normal_scores"], rtol=1e-5, atol=1e-7):
        raise RuntimeError(f"{dataset}/{category}: the rebuilt calibration set is not the one the run used")
    test = run_dataset(model, open_dataset(job, "test"), **common)
    valid = test.valid  # photos of different sizes: only their own pixels
    oracle = evaluate(
        test.scores, test.labels, anomaly_maps=test.maps, masks=test.masks, aupro_exact=False, valid=valid
    )
    f1s, values = {}, {}
    for rule in PIXEL_RULES:
        calibration = calibrate_thresholds(
            normal.scores,
            normal.map_list(),
            image_fpr=config.image_fpr,
            pixel_fpr=config.pixel_fpr,
            source="held-out normal images",
            seed=config.seed,
            pixel_rule=rule,
        )
        values[rule] = calibration["pixel"]["value"]
        f1s[rule] = seg_f1(test.maps, test.masks, values[rule], valid=valid)
    # the run's own rule ("fpr" before rules had names: the quantile) gives the same value from the same maps
    own = {"fpr": "quantile"}.get(stored["pixel"].get("method"), stored["pixel"].get("method", DEFAULT_PIXEL_RULE))
    if own in values and not np.isclose(stored["pixel"]["value"], values[own], rtol=1e-6):
        raise RuntimeError(f"{dataset}/{category}: the rule {own!r} differs from the run's own calibration")
    return CategoryResult(
        dataset,
        category,
        len(normal.scores),
        len(test.scores),
        f1s,
        values,
        oracle["seg_f1_max"],
        oracle["p_f1max_threshold"],
    )


def train_and_measure(config: RunConfig, output: Path, dataset: str, log) -> list[CategoryResult]:
    """Train one model per category of ``config`` into ``output``, then measure each."""
    print(f"== {dataset}: training ({config.backbone}, {config.image_size} px, {config.max_steps} steps)", flush=True)
    fit(config, output, progress=False, echo=lambda message: print(message, file=log, flush=True))
    results = []
    for path in sorted(output.glob("*/checkpoint.pt")):
        category = path.parent.name
        print(f"   measuring {dataset}/{category}", flush=True)
        results.append(measure_category(config, path, dataset, category))
    return results


def format_table(results: list[CategoryResult]) -> str:
    """Rule x category -> SegF1, mean over categories, and gap of the mean to the mean oracle."""
    names = [f"{r.dataset}/{r.category}" if r.dataset != r.category else r.category for r in results]
    width = max(18, *(len(n) for n in names))
    oracle = float(np.mean([r.seg_f1_max for r in results]))
    head = f"{'rule':<18}" + "".join(f"{n:>{width + 2}}" for n in names) + f"{'mean':>8}{'gap':>8}"
    lines = [head, "-" * len(head)]
    ranked = sorted(PIXEL_RULES, key=lambda rule: -np.mean([r.seg_f1[rule] for r in results]))
    for rule in ranked:
        f1 = [r.seg_f1[rule] for r in results]
        mark = " *" if rule == DEFAULT_PIXEL_RULE else ""
        lines.append(
            f"{rule + mark:<18}"
            + "".join(f"{v:>{width + 2}.4f}" for v in f1)
            + f"{np.mean(f1):>8.4f}{np.mean(f1) - oracle:>8.4f}"
        )
    lines.append(
        f"{'seg_f1_max':<18}" + "".join(f"{r.seg_f1_max:>{width + 2}.4f}" for r in results) + f"{oracle:>8.4f}"
    )
    lines.append("")
    lines.append("pixel thresholds (oracle: the seg_f1_max threshold, chosen on the test masks):")
    for rule in ranked:
        lines.append(f"{rule:<18}" + "".join(f"{r.thresholds[rule]:>{width + 2}.4g}" for r in results))
    lines.append(f"{'oracle':<18}" + "".join(f"{r.seg_f1_max_threshold:>{width + 2}.4g}" for r in results))
    lines.append("")
    lines.append(
        "images (held-out normal / test): "
        + ", ".join(f"{n} {r.normal_images}/{r.test_images}" for n, r in zip(names, results))
    )
    lines.append(f"* the default rule (DEFAULT_PIXEL_RULE); gap = mean SegF1 - mean seg_f1_max ({oracle:.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table with the command line and date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixel-threshold-bench"), help="where data and runs go")
    parser.add_argument("--backbone", default="unireplknet_a")
    parser.add_argument("--encoder-weights", default="none", help="none (random encoder) | hub | a path")
    parser.add_argument("--synthetic-size", type=int, default=128, help="synthetic photos and model input, px")
    parser.add_argument("--synthetic-steps", type=int, default=150, help="training steps per synthetic category")
    parser.add_argument("--synthetic-train", type=int, default=120, help="normal training photos per category")
    parser.add_argument("--magnetic-tile", type=Path, default=MAGNETIC_TILE, help="MVTec-layout root (read only)")
    parser.add_argument("--tile-size", type=int, default=256, help="model input for the magnetic tiles, px")
    parser.add_argument("--tile-steps", type=int, default=200, help="training steps for the magnetic tiles")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        help="measure these finished run folders (their config.json and <category>/checkpoint.pt, e.g. tiled runs "
        "of benchmarks/bench_tiling.py) instead of training",
    )
    args = parser.parse_args(argv)
    if args.runs:
        return measure_runs(args, argv)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    args.work.mkdir(parents=True, exist_ok=True)
    base = RunConfig(
        format="mvtec",
        backbone=args.backbone,
        encoder_weights=args.encoder_weights,
        batch_size=args.batch_size,
        device="cpu",
        evaluate=False,  # the metrics are computed here, per rule
        checkpoint_every=0,
    )
    results: list[CategoryResult] = []
    with open(args.work / "fit.log", "w") as log:
        synthetic = generate_synthetic_dataset(
            args.work / "synthetic",
            n_train=args.synthetic_train,
            n_test_defect=4,
            image_size=args.synthetic_size,
            seed=0,
            overwrite=True,
        )
        config = base.updated(data=str(synthetic), image_size=args.synthetic_size, max_steps=args.synthetic_steps)
        results += train_and_measure(config, args.work / "runs" / "synthetic", "synthetic", log)
        if (args.magnetic_tile / "train").is_dir():
            config = base.updated(data=str(args.magnetic_tile), image_size=args.tile_size, max_steps=args.tile_steps)
            results += train_and_measure(config, args.work / "runs" / "magnetic_tile", "magnetic_tile", log)
        else:
            print(f"no magnetic tiles at {args.magnetic_tile}: synthetic data only")
    settings = (
        f"rules: {', '.join(PIXEL_RULES)}; pixel_fpr {base.pixel_fpr}, seed {base.seed}, backbone {args.backbone}"
    )
    return report(results, command, started, args.json, settings)


def measure_runs(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The table for finished runs (``--runs``), each measured as it was trained (tiled or not)."""
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results: list[CategoryResult] = []
    for run in args.runs:
        config = RunConfig.from_dict(json.loads((run / "config.json").read_text())).updated(device="cpu")
        for path in sorted(run.glob("*/checkpoint.pt")):
            print(f"   measuring {run.name}/{path.parent.name}", flush=True)
            results.append(measure_category(config, path, run.name, path.parent.name))
    return report(results, command, started, args.json)


def report(
    results: list[CategoryResult], command: str, started: str, json_path: Path | None, settings: str | None = None
) -> int:
    """Print the table with the command line and date; also write it as JSON to ``json_path``."""
    print()
    print(f"command: {command}")
    print(f"date: {started}")
    if settings:
        print(settings)
    print("SegF1 per rule (rows, best mean first) and category (columns):")
    print(format_table(results))
    if json_path:
        json_path.write_text(
            json.dumps({"command": command, "date": started, "results": [vars(r) for r in results]}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
