"""Command line: ``minimaxad fit | test | predict | report | benchmark | export | demo | presets | serve |
watch``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from minimaxad import __version__


# -- fit --------------------------------------------------------------------------------------
def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """The training options of ``fit`` (device, encoder and --quiet come from the shared parents)."""
    p.add_argument("--data", help="dataset root folder")
    p.add_argument("--format", help="mvtec | visa | goodsad | aebad | mad | realiad | folder (default mvtec)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--categories",
        nargs="+",
        help="categories to train on (default: all found); one model per category unless --unified",
    )
    group.add_argument("--all-categories", action="store_true", help="every category (the default)")
    p.add_argument(
        "--unified",
        action="store_true",
        default=None,
        help="one model for all categories (the paper's unified setting)",
    )
    p.add_argument(
        "--per-category",
        dest="unified",
        action="store_false",
        help="one model per category (overrides a unified preset)",
    )
    p.add_argument("--preset", help="named settings of a paper experiment (see 'minimaxad presets')")
    p.add_argument(
        "--protocol",
        help="follow this script's protocol instead of the preset's (see 'minimaxad "
        "presets -v'): train batches, ADC limit, image score, evaluation",
    )
    p.add_argument("--backbone", help="unireplknet_a|f|p|n|t (paper: n)")
    p.add_argument(
        "--loss",
        choices=["adc", "global", "local", "local-hm"],
        help="adc (MiniMaxAD-fr) or global (MiniMaxAD-fp); local, local-hm for ablations",
    )
    p.add_argument("--p-hard", type=float)
    p.add_argument("--p-lim", type=float)
    p.add_argument("--image-size", type=int, help="network input side (default 256; with --tile-size: the tile size)")
    p.add_argument("--crop-size", type=int)
    p.add_argument(
        "--tile-size",
        type=int,
        help="cut each photo, at its own resolution, into tiles of this side (small defects in large photos)",
    )
    p.add_argument("--tile-stride", type=int, help="pixels between tiles (default: the tile size, no overlap)")
    p.add_argument("--resize-long-side", type=int, help="with --tile-size: resize each photo's long side first")
    p.add_argument(
        "--tile-blend",
        choices=["mean", "distance"],
        help="overlapping tiles' maps: averaged (default) or distance-weighted",
    )
    p.add_argument("--test-domains", nargs="+", help="AeBAD-S: same background illumination view")
    p.add_argument(
        "--extra-data",
        nargs="+",
        metavar="FORMAT=ROOT",
        help="more training datasets merged into a unified run (e.g. mvtec=/data/mvtec)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, help="111 in the paper (1, 11, 111 for error bars)")
    p.add_argument(
        "--sampler",
        choices=["seeded", "authors"],
        help="data order: seeded by (seed, epoch), the default; authors: their scripts' DataLoader shuffle "
        "(the global generator after the network's construction), batch for batch",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="one run per seed (in OUTPUT/seed-<N>), then mean ± std per metric and category "
        "(the paper's error bars: --seeds 1 11 111)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision: fp32 | bf16 (CUDA, or CPUs with AVX-512 BF16/AMX) | fp16 (CUDA)",
    )
    p.add_argument("--channels-last", action="store_true", default=None, help="channels-last memory on CUDA")
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--cache", action="store_true", default=None, help="keep resized training images in memory")
    p.add_argument("--no-cache", dest="cache", action="store_false")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        default=None,
        help="leave unreadable images out with a warning instead of stopping",
    )
    p.add_argument(
        "--white-level",
        type=float,
        metavar="VALUE",
        help="photos of more than 8 bits (16-bit PNG/TIFF): the pixel value read as white, e.g. 4095 for a "
        "12-bit camera (default: measured on the training photos, the 99.9th percentile of their pixels)",
    )
    p.add_argument("--val-fraction", type=float, help="normal training images held out for thresholds")
    p.add_argument("--image-fpr", type=float, help="target false-positive rate of the image threshold")
    p.add_argument("--pixel-fpr", type=float, help="target false-positive rate of the pixel threshold")
    p.add_argument(
        "--pixel-threshold-rule",
        choices=list(PIXEL_RULE_NAMES),
        help="how the pixel threshold is chosen from normal photos (default image_max_p90: see docs/metrics.md)",
    )
    p.add_argument("--top-ratio", type=float, help="image score: mean of this fraction of top pixels (0: max)")
    p.add_argument("--bootstrap", type=int, help="bootstrap resamples for 95%% CIs of image metrics")
    p.add_argument("--checkpoint-every", type=int, help="epochs between resumable checkpoints")
    p.add_argument(
        "--sync-batchnorm",
        action="store_true",
        default=None,
        help="torchrun: decoder BatchNorms use the statistics of the whole global batch, as in "
        "one process (the default)",
    )
    p.add_argument(
        "--no-sync-batchnorm",
        dest="sync_batchnorm",
        action="store_false",
        help="torchrun: each process normalises with its own slice of the batch (fewer messages)",
    )
    p.add_argument(
        "--adc-sync",
        choices=["global", "per-rank"],
        help="torchrun: ADC loss thresholds from the gathered global batch (exact, the default) "
        "or from each process's own images",
    )
    p.add_argument(
        "--no-eval", dest="evaluate", action="store_false", default=None, help="train only; do not evaluate at the end"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    p.add_argument(
        "--logger",
        nargs="+",
        choices=["csv", "tensorboard", "mlflow"],
        help="also log loss, learning rate and images/s per step and the final metrics to CSV files, "
        "TensorBoard or MLflow (pip install 'minimaxad[tensorboard]' / 'minimaxad[mlflow]')",
    )
    p.add_argument("--output", required=True, help="run folder (checkpoints, metrics, report, logs)")


#: engine.thresholds.PIXEL_RULES' names (kept here so that building the parser imports no torch; a test checks them)
PIXEL_RULE_NAMES = ("quantile", "quantile_margin", "max", "image_max_median", "image_max_p90", "mean_std")

FIT_KEYS = (
    "data",
    "format",
    "categories",
    "unified",
    "backbone",
    "encoder_weights",
    "loss",
    "p_hard",
    "p_lim",
    "image_size",
    "crop_size",
    "tile_size",
    "tile_stride",
    "resize_long_side",
    "tile_blend",
    "test_domains",
    "epochs",
    "max_steps",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "sampler",
    "device",
    "precision",
    "channels_last",
    "workers",
    "cache",
    "skip_bad_images",
    "white_level",
    "val_fraction",
    "image_fpr",
    "pixel_fpr",
    "pixel_threshold_rule",
    "top_ratio",
    "bootstrap",
    "checkpoint_every",
    "evaluate",
    "sync_batchnorm",
    "adc_sync",
    "logger",
)


def config_from_args(args: argparse.Namespace):
    """The run's :class:`RunConfig`: defaults, then the preset, then ``--protocol``, then the options given."""
    from minimaxad.engine.config import RunConfig
    from minimaxad.presets import get_preset

    config = RunConfig()
    if args.preset:
        config = config.updated(preset=args.preset, **get_preset(args.preset))
    if args.protocol:
        from minimaxad.engine.protocol import get_protocol

        config = config.updated(**get_protocol(args.protocol).run_settings())
    overrides: dict[str, Any] = {k: getattr(args, k) for k in FIT_KEYS}
    if args.tile_size is not None and args.image_size is None:
        overrides["image_size"] = args.tile_size  # tiles go to the network as they are
    if args.pixel_fpr is not None and args.pixel_threshold_rule is None:
        overrides["pixel_threshold_rule"] = "quantile"  # the rule --pixel-fpr is the parameter of
    if args.extra_data:
        extras = []
        for spec in args.extra_data:
            if "=" not in spec:
                raise SystemExit(f"--extra-data expects FORMAT=ROOT, got {spec!r}")
            fmt, root = spec.split("=", 1)
            extras.append({"format": fmt, "root": root})
        overrides["extra_datasets"] = extras
    config = config.updated(**overrides)
    if config.data is None:
        raise SystemExit("minimaxad fit: --data ROOT is required")
    return config


def cmd_fit(args: argparse.Namespace) -> int:
    """``minimaxad fit``: train (one run, or one per ``--seeds``) and evaluate at the end."""
    from minimaxad.engine.runner import fit

    config = config_from_args(args)
    if args.seeds:
        from minimaxad.engine.runner import fit_seeds

        fit_seeds(config, Path(args.output), args.seeds, resume=args.resume, progress=not args.quiet)
        return 0
    fit(config, Path(args.output), resume=args.resume, progress=not args.quiet)
    return 0


# -- test -------------------------------------------------------------------------------------
def cmd_test(args: argparse.Namespace) -> int:
    """``minimaxad test``: evaluate a checkpoint on a test set, under its stored protocol or ``--protocol``."""
    from minimaxad.engine.runner import test

    overrides = {
        k: v
        for k, v in {
            "device": args.device,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "bootstrap": args.bootstrap,
            "test_domains": args.test_domains,
            "skip_bad_images": args.skip_bad_images or None,
            "tile_size": args.tile_size,
            "tile_stride": args.tile_stride,
            "resize_long_side": args.resize_long_side,
        }.items()
        if v is not None
    }
    test(
        Path(args.checkpoint),
        Path(args.output),
        data=args.data,
        format=args.format,
        categories=args.categories,
        overrides=overrides,
        encoder_weights=args.encoder_weights,
        progress=not args.quiet,
        protocol=args.protocol,
        image_threshold=args.threshold,
        false_positive_rate=args.false_positive_rate,
    )
    return 0


# -- predict ----------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    """``minimaxad predict``: score photos and folders; exit code 1 when no photo could be scored."""
    from minimaxad.inference.predict import predict_paths

    if args.mvtec_ad2:
        return _predict_mvtec_ad2(args)
    if not args.inputs:
        raise SystemExit("minimaxad predict: give photos or folders to score (or --mvtec-ad2 ROOT)")
    result = predict_paths(
        Path(args.checkpoint),
        [Path(p) for p in args.inputs],
        Path(args.output),
        batch_size=args.batch_size,
        device=args.device or "auto",
        encoder_weights=args.encoder_weights,
        image_threshold=args.threshold,
        false_positive_rate=args.false_positive_rate,
        pixel_threshold=args.pixel_threshold,
        alpha=args.alpha,
        write_report=args.report,
        progress=not args.quiet,
        category=args.category,
        backend=args.backend,
        recheck_margin=args.recheck_margin,
        trust_torchscript=args.trust_torchscript,
        tiling=_tiling_overrides(args),
    )
    return 0 if result["predicted"] else 1


def _predict_mvtec_ad2(args: argparse.Namespace) -> int:
    """``predict --mvtec-ad2 ROOT``: the private test sets in the evaluation server's layout."""
    from minimaxad.inference.mvtec_ad2_submission import write_mvtec_ad2_submission

    if args.inputs:
        raise SystemExit("minimaxad predict: give either photos or --mvtec-ad2 ROOT, not both")
    if _tiling_overrides(args) is not None:
        raise SystemExit("minimaxad predict --mvtec-ad2 scores as the model was trained: drop the --tile-* options")
    result = write_mvtec_ad2_submission(
        Path(args.checkpoint),
        Path(args.mvtec_ad2),
        Path(args.output),
        **({"splits": args.splits} if args.splits else {}),
        categories=args.categories,
        device=args.device or "auto",
        backend=args.backend,
        batch_size=args.batch_size,
        encoder_weights=args.encoder_weights,
        pixel_threshold=args.pixel_threshold,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return 0 if result["photos"] else 1


def _tiling_overrides(args: argparse.Namespace):
    """``--tile-size``/``--tile-stride``/``--resize-long-side`` of an inference command (None: the model's tiling)."""
    from minimaxad.inference.predict import TilingOverrides

    given = TilingOverrides(args.tile_size, args.tile_stride, args.resize_long_side)
    return None if given == TilingOverrides() else given


# -- report -----------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """``minimaxad report``: re-render ``report.html`` from a run's saved ``evaluation.npz``."""
    from minimaxad.reporting.saved import render_saved_evaluation

    run = Path(args.run)
    out = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "report.html"
    path = render_saved_evaluation(
        run,
        out,
        title=args.title,
        image_threshold=args.threshold,
        pixel_threshold=args.pixel_threshold,
        max_gallery=args.max_gallery,
    )
    print(f"report: {path}")
    return 0


# -- benchmark --------------------------------------------------------------------------------
def cmd_benchmark(args: argparse.Namespace) -> int:
    """``minimaxad benchmark``: time each backend (one JSON file per backbone), optionally training too."""
    from minimaxad.inference.benchmark import print_training_table, run_benchmark

    if args.tile_size is not None or args.photo_size is not None:
        return _benchmark_tiled(args)
    sizes = args.image_sizes or ([args.image_size] if args.image_size else [224, 256])
    for backbone in args.backbones:
        output = Path(args.output)
        if len(args.backbones) > 1:
            output = output.with_name(f"{output.stem}-{backbone}{output.suffix}")
        run_benchmark(
            args.backends,
            backbone=backbone,
            checkpoint=args.checkpoint,
            image_sizes=sizes,
            batch_sizes=args.batch_sizes,
            device=args.device or "auto",
            seconds=args.seconds,
            threads=args.threads,
            output=output,
        )
        if args.checkpoint:
            break
    if args.train:
        print_training_table(
            args.backbones, sizes[-1], args.batch_sizes, device=args.device or "auto", min_seconds=args.seconds
        )
    return 0


def _benchmark_tiled(args: argparse.Namespace) -> int:
    """``benchmark --tile-size T --photo-size WxH``: photos/s and tiles/s of tiled inference."""
    from minimaxad.inference.benchmark import parse_photo_size, run_tiled_benchmark

    if args.tile_size is None:
        raise SystemExit("minimaxad benchmark: --photo-size needs --tile-size")
    run_tiled_benchmark(
        args.backends,
        tile_size=args.tile_size,
        photo_size=parse_photo_size(args.photo_size or "2592x1944"),
        tile_stride=args.tile_stride,
        backbone=args.backbones[0],
        checkpoint=args.checkpoint,
        batch_sizes=args.batch_sizes,
        device=args.device or "auto",
        seconds=args.seconds,
        threads=args.threads,
        output=Path(args.output),
    )
    return 0


# -- export -----------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """``minimaxad export``: write the fused pipeline as ONNX, OpenVINO IR or TorchScript, with its ``.json``."""
    from minimaxad.inference.export import export

    path = export(
        Path(args.checkpoint),
        Path(args.output),
        format=args.format,
        encoder_weights=args.encoder_weights,
        check=not args.no_check,
        overwrite=args.overwrite,
        tiling=_tiling_overrides(args),
        calibration_images_count=args.calibration_images,
        calibration_data=args.calibration_data,
    )
    meta = json.loads(Path(str(path) + ".json").read_text())
    parity = meta.get("parity_relative_error")
    checked = (
        f"; matches PyTorch (relative error: map {parity['map']:.1e}, score {parity['score']:.1e})"
        if parity
        else "; not checked (--no-check)"
    )
    int8 = meta.get("int8")
    if int8:  # the float32 reference matches PyTorch; INT8 is measured against it
        errors = int8["error_vs_float32"]
        checked = (
            f"; INT8 calibrated on {int8['calibration']}; its float32 reference "
            f"{meta['float32_reference']['file']}{checked}"
            + (
                f"; INT8 against float32 on {errors['images']} of those images: map {errors['map']:.1e}, "
                f"score {errors['score']:.1e} (relative)"
                if errors
                else ""
            )
        )
    print(f"exported: {path} (outputs {', '.join(meta['outputs'])}){checked}; metadata: {path}.json")
    return 0


# -- demo -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """``minimaxad demo``: synthetic data -> train -> evaluate -> predict -> report."""
    from minimaxad.demo import run_demo

    # hub by default: the cached or downloaded ImageNet weights, else (offline) a random encoder

    run_demo(
        Path(args.output),
        steps=args.steps,
        backbone=args.backbone,
        seed=args.seed,
        progress=not args.quiet,
        encoder_weights=args.encoder_weights or "hub",
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``minimaxad download``: fetch and unpack a dataset; exit code 1 when it needs a manual step."""
    from minimaxad.data.download import download_dataset

    data = download_dataset(
        args.dataset, Path(args.root), url=args.url, keep_archive=args.keep_archive, progress=not args.quiet
    )
    return 0 if data is not None else 1  # 1: a manual step is needed (the instructions were printed)


def cmd_presets(args: argparse.Namespace) -> int:
    """``minimaxad presets``: list the presets; ``-v`` adds their settings, protocols and rules."""
    from minimaxad.engine.protocol import PROTOCOLS, RULES, get_protocol
    from minimaxad.presets import PRESETS

    for name, preset in PRESETS.items():
        print(f"{name:<12} {preset['describe']}")
        if args.verbose:
            print("             " + json.dumps({k: v for k, v in preset.items() if k != "describe"}))
            if "protocol" in preset:
                protocol = get_protocol(preset["protocol"])
                print(f"             protocol ({protocol.script}): {protocol.describe()}")
    if args.verbose:
        print("\nprotocols (--protocol NAME):")
        for protocol in PROTOCOLS.values():
            print(f"  {protocol.name:<12} {protocol.script}")
        print("\nrules:")
        for rule, meaning in RULES.items():
            print(f"  {rule:<30} {meaning}")
    return 0


# -- serve / watch (the inspection station) ---------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """``minimaxad serve``: the HTTP service, until stopped."""
    from minimaxad.inference.serve import ServeSettings, read_api_key, serve

    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue or max(64, 4 * args.max_batch),
        max_request_mb=args.max_request_mb,
        max_pixels=args.max_pixels,
        max_request_pixels=args.max_request_pixels,
        max_decoded_pixels=args.max_decoded_pixels,
        max_connections=args.max_connections,
        client_timeout_s=args.client_timeout,
        workers_threads=args.workers_threads or ServeSettings.workers_threads,
        api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
    )
    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        backend=args.backend,
        device=args.device or "auto",
        settings=settings,
        encoder_weights=args.encoder_weights,
        recheck_margin=args.recheck_margin,
        log_level=args.log_level,
        image_threshold=args.threshold,
        false_positive_rate=args.false_positive_rate,
        pixel_threshold=args.pixel_threshold,
        tiling=_tiling_overrides(args),
        **({"trust": True} if args.trust_torchscript else {}),
    )
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """``minimaxad watch``: score the photos dropped into a folder, until stopped (or once with ``--once``)."""
    from minimaxad.inference.watch import watch

    watch(
        Path(args.input_dir),
        Path(args.output),
        args.checkpoint,
        backend=args.backend,
        device=args.device or "auto",
        category=args.category,
        batch_size=args.batch_size,
        interval=args.interval,
        settle_seconds=args.settle_seconds,
        give_up_seconds=args.give_up_seconds,
        once=args.once,
        alpha=args.alpha,
        encoder_weights=args.encoder_weights,
        recheck_margin=args.recheck_margin,
        image_threshold=args.threshold,
        false_positive_rate=args.false_positive_rate,
        pixel_threshold=args.pixel_threshold,
        tiling=_tiling_overrides(args),
        **({"trust": True} if args.trust_torchscript else {}),
    )
    return 0


# -- options that several commands share ------------------------------------------------------
def _options(*arguments: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    """A parent parser holding ``arguments`` (``(flags, keywords)`` pairs), for ``parents=[...]``."""
    parent = argparse.ArgumentParser(add_help=False)
    for flags, keywords in arguments:
        parent.add_argument(*flags, **keywords)
    return parent


COMMON = _options((("--debug",), dict(action="store_true", help="on an error, show the whole traceback")))
QUIET = _options((("--quiet",), dict(action="store_true", help="no progress bar")))
DEVICE = _options((("--device",), dict(help="auto (the default: CUDA when there is one) | cpu | cuda | cuda:N")))
ENCODER = _options(
    (
        ("--encoder-weights",),
        dict(
            help="the ImageNet encoder: PATH to its checkpoint, 'hub' (cache, then download) or 'none' (random, not "
            "comparable to the paper); for a trained model, where its encoder file is now if it moved"
        ),
    )
)
DECISION = _options(
    (("--threshold",), dict(type=float, help="image score threshold (overrides the calibrated one)")),
    (
        ("--false-positive-rate",),
        dict(type=float, help="choose the image threshold for this rate of false alarms on the held-out normal images"),
    ),
)
# predict, serve and watch: a trained model as a checkpoint or an exported file, and how it decides
DEPLOYED_MODEL = _options(
    (
        ("--checkpoint",),
        dict(required=True, help="checkpoint.pt, or a file from 'minimaxad export' (.onnx, .xml, TorchScript)"),
    ),
    (
        ("--backend",),
        dict(
            default="fused",
            help="fused (default) | eager | compiled | bf16 | fp16 | onnxruntime | "
            "openvino | openvino-bf16 | openvino-int8 | torchscript (see 'minimaxad benchmark'); "
            "openvino-int8 from a checkpoint is quantized at start, calibrated on its training images "
            "(or export it once: 'minimaxad export --format openvino-int8'); its default --recheck-margin is 0.05",
        ),
    ),
    (("--pixel-threshold",), dict(type=float, help="threshold of the defect masks")),
    (
        ("--recheck-margin",),
        dict(
            type=float,
            help="reduced-precision backends: re-score in float32 the images "
            "whose score is within this fraction of the threshold "
            "(default 0.01, 0.05 for openvino-int8; 0 turns it off)",
        ),
    ),
    (
        ("--trust-torchscript",),
        dict(
            action="store_true",
            help="allow a TorchScript --checkpoint: loading one runs "
            "the code stored in it, so only for files you made or trust (checkpoints, ONNX "
            "and OpenVINO files need no trust)",
        ),
    ),
)
# test, predict, serve, watch, export: a tiled model is tiled as it was trained; these change that
TILING = _options(
    (("--tile-size",), dict(type=int, help="tile photos of this side (default: as the model was trained)")),
    (("--tile-stride",), dict(type=int, help="pixels between tiles, e.g. half the tile size for overlap")),
    (("--resize-long-side",), dict(type=int, help="resize each photo's long side before tiling")),
)
PHOTOS = _options(
    (("--category",), dict(help="unified model: use this category's calibrated thresholds")),
    (("--batch-size",), dict(type=int, default=16)),
    (("--alpha",), dict(type=float, default=0.5, help="heatmap opacity")),
)


# -- one function per command's options ---------------------------------------------------------
def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    """The ``fit`` command's parser."""
    fit = sub.add_parser(
        "fit",
        parents=[COMMON, QUIET, DEVICE, ENCODER],
        help="train (and evaluate) models",
        description="Train MiniMaxAD; evaluate at the end.",
    )
    add_fit_arguments(fit)
    fit.set_defaults(func=cmd_fit)


def add_test_parser(sub: argparse._SubParsersAction) -> None:
    """The ``test`` command's parser."""
    test = sub.add_parser(
        "test",
        parents=[COMMON, QUIET, DEVICE, ENCODER, DECISION, TILING],
        help="evaluate a trained checkpoint on a test set",
    )
    test.add_argument("--checkpoint", required=True, help="checkpoint.pt, or a run folder")
    test.add_argument("--data", help="dataset root (default: the one the model was trained on)")
    test.add_argument("--format")
    test.add_argument("--categories", nargs="+")
    test.add_argument("--test-domains", nargs="+")
    test.add_argument(
        "--protocol",
        help="evaluate under this script's protocol instead of the one stored in "
        "the checkpoint (see 'minimaxad presets -v')",
    )
    test.add_argument("--output", required=True)
    test.add_argument("--batch-size", type=int)
    test.add_argument("--workers", type=int)
    test.add_argument("--bootstrap", type=int)
    test.add_argument("--skip-bad-images", action="store_true")
    test.set_defaults(func=cmd_test)


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` command's parser."""
    pred = sub.add_parser(
        "predict",
        parents=[COMMON, QUIET, DEVICE, ENCODER, DECISION, DEPLOYED_MODEL, PHOTOS, TILING],
        help="score new photos: heatmaps, masks, scores.csv/json",
    )
    pred.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR")
    pred.add_argument("--output", required=True)
    pred.add_argument("--report", action="store_true", help="also write report.html")
    pred.add_argument(
        "--mvtec-ad2",
        metavar="ROOT",
        help="instead of photos: score MVTec AD 2's private test sets under ROOT into the evaluation server's layout",
    )
    pred.add_argument(
        "--splits",
        nargs="+",
        choices=["test_private", "test_private_mixed", "test_public"],
        help="with --mvtec-ad2 (default: test_private test_private_mixed, what the server takes)",
    )
    pred.add_argument("--categories", nargs="+", help="with --mvtec-ad2: only these categories")
    pred.add_argument("--overwrite", action="store_true", help="with --mvtec-ad2: replace an earlier submission")
    pred.set_defaults(func=cmd_predict)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """The ``report`` command's parser."""
    rep = sub.add_parser("report", parents=[COMMON], help="(re)write the HTML report of a test run")
    rep.add_argument("run", help="run folder (with evaluation.npz) or the .npz file")
    rep.add_argument("--output", help="HTML file (default: RUN/report.html)")
    rep.add_argument("--threshold", type=float)
    rep.add_argument("--pixel-threshold", type=float)
    rep.add_argument("--max-gallery", type=int, default=60)
    rep.add_argument("--title", default="minimaxad report")
    rep.set_defaults(func=cmd_report)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """The ``benchmark`` command's parser."""
    bench = sub.add_parser(
        "benchmark",
        parents=[COMMON, DEVICE],
        help="images/second and latency of every inference backend",
        description="Time every inference backend (PyTorch training form, fused, compiled, "
        "bf16, ONNX Runtime, OpenVINO, TorchScript) at each image and batch size, "
        "against this machine's float32 matrix-multiply limit; prints a table "
        "and writes JSON.",
    )
    bench.add_argument("--backends", nargs="+", help="default: every backend that can run here")
    bench.add_argument("--backbones", nargs="+", default=["unireplknet_n"], help="random-weight variants to time")
    bench.add_argument("--checkpoint", help="time a trained checkpoint instead (at its own image size)")
    bench.add_argument("--image-sizes", nargs="+", type=int, help="default: 224 256")
    bench.add_argument("--image-size", type=int, help="a single image size (same as --image-sizes N)")
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    bench.add_argument("--seconds", type=float, default=3.0, help="minimum timing per measurement")
    bench.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, i.e. the cores)")
    bench.add_argument("--output", default="benchmark.json", help="JSON file with every measurement")
    bench.add_argument("--train", action="store_true", help="also time training steps")
    bench.add_argument("--tile-size", type=int, help="time tiled inference of whole photos, tiles of this side")
    bench.add_argument("--tile-stride", type=int, help="with --tile-size: pixels between tiles (default: no overlap)")
    bench.add_argument(
        "--photo-size", metavar="WxH", help="with --tile-size: the photo's size (default 2592x1944, 5 MP)"
    )
    bench.set_defaults(func=cmd_benchmark)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """The ``export`` command's parser."""
    exp = sub.add_parser(
        "export",
        parents=[COMMON, ENCODER, TILING],
        help="export the fused inference pipeline (ONNX, TorchScript, OpenVINO)",
    )
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument(
        "--output",
        required=True,
        help="file to write: .onnx (ONNX), .xml (OpenVINO IR), anything else TorchScript; the batch axis is dynamic",
    )
    exp.add_argument(
        "--format",
        choices=["torchscript", "onnx", "openvino", "openvino-int8"],
        help="default: from the file suffix; openvino-int8: the network quantized to INT8 (NNCF, extra "
        "minimaxad[int8]) with its float32 reference beside it (NAME.float32.xml)",
    )
    exp.add_argument(
        "--calibration-images",
        type=int,
        default=300,
        metavar="N",
        help="openvino-int8: normal images (tiles for a tiled model) to calibrate on, spread over the "
        "training images (default 300)",
    )
    exp.add_argument(
        "--calibration-data",
        metavar="DIR",
        help="openvino-int8: calibrate on the normal images in DIR instead of the checkpoint's training images",
    )
    exp.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    exp.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files of that name (without it, export refuses to touch them)",
    )
    exp.set_defaults(func=cmd_export)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` command's parser."""
    demo = sub.add_parser(
        "demo",
        parents=[COMMON, QUIET, ENCODER],
        help="synthetic data -> train -> evaluate -> predict -> report, on a CPU",
    )
    demo.add_argument("--output", default="minimaxad-demo")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the demo preset's)")
    demo.add_argument("--backbone", default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def add_download_parser(sub: argparse._SubParsersAction) -> None:
    """The ``download`` command's parser."""
    down = sub.add_parser(
        "download",
        parents=[COMMON, QUIET],
        help="download a benchmark dataset (checked, resumable, safely unpacked)",
        description="Download a public benchmark into ROOT, check its SHA-256, unpack it "
        "(refusing members outside ROOT and links) and convert it to the layout the "
        "readers expect; for datasets behind a form, print where to get them.",
    )
    down.add_argument(
        "dataset",
        help="mvtec | visa | mvtec_loco | btad (downloaded); mpdd | goodsad | aebad | realiad | mad (instructions)",
    )
    down.add_argument("--root", required=True, help="folder to put the dataset in (created if needed)")
    down.add_argument("--url", help="another location of the same archive (a mirror); size and hash still checked")
    down.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    down.set_defaults(func=cmd_download)


def add_presets_parser(sub: argparse._SubParsersAction) -> None:
    """The ``presets`` command's parser."""
    pres = sub.add_parser("presets", parents=[COMMON], help="list the named presets")
    pres.add_argument("--verbose", "-v", action="store_true")
    pres.set_defaults(func=cmd_presets)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` command's parser."""
    srv = sub.add_parser(
        "serve",
        parents=[COMMON, DEVICE, ENCODER, DECISION, DEPLOYED_MODEL, TILING],
        help="HTTP service and web page for an inspection station",
        description="Serve a trained model over HTTP: POST /v1/predict (photos -> scores, decisions, "
        "heatmaps, masks), GET /v1/model, /v1/health, /v1/ready, /metrics "
        "(Prometheus), a web page at /, the API documented at /docs. Concurrent "
        'requests are micro-batched. Needs: pip install "minimaxad[serve]".',
    )
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)",
    )
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--max-batch", type=int, default=16, help="most images run together in one batch")
    srv.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="longest wait for more requests to fill a batch after the first arrives",
    )
    srv.add_argument(
        "--max-queue", type=int, help="images allowed to wait; beyond, 503 (default max(64, 4 x --max-batch))"
    )
    srv.add_argument("--max-request-mb", type=float, default=20.0, help="largest request body; beyond, 413")
    srv.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="largest image (width x height); beyond, 400 (decompression bombs)",
    )
    srv.add_argument(
        "--max-request-pixels",
        type=int,
        default=80_000_000,
        help="the images of one request together (width x height summed); beyond, 413",
    )
    srv.add_argument(
        "--max-decoded-pixels",
        type=int,
        default=80_000_000,
        help="decoded photo pixels held by all requests at once (memory bound); beyond, a request waits",
    )
    srv.add_argument(
        "--max-connections", type=int, default=32, help="requests open at once (bodies in memory); beyond, 503"
    )
    srv.add_argument(
        "--client-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may stay without sending a request, or pause inside a body; then closed (408)",
    )
    srv.add_argument(
        "--workers-threads",
        type=int,
        help="threads decoding uploads and drawing heatmaps (default: the cores, at most 8)",
    )
    srv.add_argument("--api-key-file", help="file holding the API key clients must send (X-API-Key header)")
    srv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    srv.set_defaults(func=cmd_serve)


def add_watch_parser(sub: argparse._SubParsersAction) -> None:
    """The ``watch`` command's parser."""
    wat = sub.add_parser(
        "watch",
        parents=[COMMON, DEVICE, ENCODER, DECISION, DEPLOYED_MODEL, PHOTOS, TILING],
        help="score images as a line camera drops them into a folder",
        description="Watch IN_DIR: score each new image once it is completely written, append "
        "it to OUT/results.jsonl and OUT/results.csv, write its heatmap and mask; a "
        "journal makes a restart neither skip nor repeat a file. IN_DIR is only read.",
    )
    wat.add_argument("input_dir", metavar="IN_DIR")
    wat.add_argument("--output", required=True, metavar="OUT", help="results folder (not inside IN_DIR)")
    wat.add_argument("--interval", type=float, default=0.5, help="seconds between looks at IN_DIR")
    wat.add_argument(
        "--settle-seconds",
        type=float,
        default=1.0,
        help="a file counts as completely written when its size and time stamp have not changed "
        "for this long and it decodes",
    )
    wat.add_argument(
        "--give-up-seconds",
        type=float,
        default=10.0,
        help="a settled file that still does not decode after this long is reported as unreadable",
    )
    wat.add_argument("--once", action="store_true", help="score what is in IN_DIR (once settled), then exit")
    wat.set_defaults(func=cmd_watch)


COMMANDS = (
    add_fit_parser,
    add_test_parser,
    add_predict_parser,
    add_report_parser,
    add_benchmark_parser,
    add_export_parser,
    add_demo_parser,
    add_download_parser,
    add_presets_parser,
    add_serve_parser,
    add_watch_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``minimaxad`` parser: one sub-command per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="minimaxad",
        description="MiniMaxAD anomaly detection: train on normal "
        "images, flag defective ones and show where the defect is.",
    )
    parser.add_argument("--version", action="version", version=f"minimaxad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (2 for an error the user can fix, said in one line)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"minimaxad {args.command}: error: {exc} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
