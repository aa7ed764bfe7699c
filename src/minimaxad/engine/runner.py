"""What ``minimaxad fit`` and ``minimaxad test`` do: datasets, one model per category or one for
all, evaluation, metrics files, report."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minimaxad.engine.checkpoint import (
    CheckpointError,
    model_from_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
)
from minimaxad.engine.config import RunConfig
from minimaxad.engine.distributed import DistributedContext, distributed_session
from minimaxad.engine.loggers import RunLogger, create_logger
from minimaxad.engine.protocol import Protocol, get_protocol
from minimaxad.engine.scoring import DatasetOutputs, resolve_device, run_dataset
from minimaxad.engine.thresholds import get_pixel_rule, resolve_thresholds, thresholds_by_category
from minimaxad.engine.trainer import train
from minimaxad.files import check_writable_folder, inside

log = logging.getLogger("minimaxad")
Echo = Callable[[str], None]


def silence_logging() -> None:
    """For ranks other than 0 of a distributed run: no log file, no console messages."""
    logger = logging.getLogger("minimaxad")
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False


def setup_logging(output_dir: Path, name: str = "train.log") -> Path:
    """Log INFO and up to ``output_dir/name`` (the console gets the progress bar and warnings).

    One run's log file at a time: the file handler of an earlier ``fit``/``test`` in this
    process is closed first, so that two runs never write into each other's logs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / name
    logger = logging.getLogger("minimaxad")
    logger.setLevel(logging.INFO)
    close_run_logging()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.minimaxad_run_log = True  # ours to close (a user's own handlers are left alone)
    logger.addHandler(handler)
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(console)
    return path


def close_run_logging() -> None:
    """Detach and close the log file of the run that ended (see :func:`setup_logging`)."""
    logger = logging.getLogger("minimaxad")
    for handler in list(logger.handlers):
        if getattr(handler, "minimaxad_run_log", False):
            logger.removeHandler(handler)
            handler.close()


def with_run_logging(function: Callable) -> Callable:
    """A command whose log file is closed when it returns or fails."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            close_run_logging()

    return wrapper


# -- datasets ---------------------------------------------------------------------------------
#: the dataset's mask rule (data.transforms.relabel_cropped_mask) for each protocol mask rule
_DATASET_MASK_RULES = {
    "resize-binarise": "binarise",
    "resize-crop-relabel-max": "relabel-max",
    "resize-crop-relabel-binarise": "relabel-half",
}


def run_protocol(config: RunConfig) -> Protocol:
    """The protocol the run follows (stored in its configuration; ``single`` when none is)."""
    return get_protocol(config.protocol)


def open_dataset(config: RunConfig, split: str, categories: list[str] | None = None, domain: str | None = None):
    """``build_dataset`` with the run's settings; merges ``extra_datasets`` for unified training.

    Test sets get the protocol's mask rule; training images are augmented only with
    ``config.augment``, and then never cached: the augmentation crops the original photo, as the
    authors' script does, not a resized copy.
    """
    from minimaxad.data import build_dataset

    if config.data is None:
        raise ValueError("no data root given: pass --data ROOT")
    augment = config.augment and split == "train"
    common = dict(
        image_size=config.image_size,
        crop_size=config.crop_size,
        skip_bad_images=config.skip_bad_images,
        white_level=config.white_level,
    )
    # tiled runs cut the decoded photos themselves: a cache of whole photos resized to image_size is of no use
    cache = config.cache and split == "train" and not augment and config.tile_size is None
    kwargs = dict(common, augment=augment, cache=cache)
    if split == "test":
        kwargs["mask_rule"] = _DATASET_MASK_RULES[run_protocol(config).mask_rule]
    if config.cache and augment:
        log.info("training images not cached: the augmentation crops each original photo")
    if domain is not None:
        kwargs["domain"] = domain
    dataset = build_dataset(
        config.format,
        config.data,
        split=split,
        categories=categories if categories is not None else config.categories,
        **kwargs,
    )
    if split == "train" and config.extra_datasets:
        from minimaxad.data import UnifiedDataset

        parts = [dataset]
        for extra in config.extra_datasets:
            parts.append(_open_extra(config, extra, "train", extra.get("categories")))
        dataset = UnifiedDataset(parts)
    return dataset


def _open_extra(config: RunConfig, extra: dict[str, Any], split: str, categories: list[str] | None):
    from minimaxad.data import build_dataset

    return build_dataset(
        extra["format"],
        extra["root"],
        split=split,
        categories=categories,
        # the paper resizes MVTec AD straight to AeBAD-S's crop size (224)
        image_size=extra.get("image_size", config.crop_size or config.image_size),
        crop_size=extra.get("crop_size"),
        skip_bad_images=config.skip_bad_images,
        white_level=config.white_level,
    )


def resolve_white_level(config: RunConfig) -> RunConfig:
    """``config`` with its ``white_level`` measured on the training photos when not given: photos
    of more than 8 bits are then read with their own range as white, in training, in testing and
    (through the checkpoint's configuration) in ``predict``/``serve``/``watch``. Unchanged when
    it is given, or when the training photos are 8-bit."""
    from minimaxad.data import build_dataset
    from minimaxad.data.io import measure_white_level

    if config.white_level is not None:
        if not config.white_level > 0:
            raise ValueError(f"--white-level {config.white_level:g}: expected a pixel value above 0, e.g. 4095")
        return config
    if config.data is None:
        return config
    listing = build_dataset(config.format, config.data, "train", categories=config.categories, validate=False)
    level = measure_white_level([record.path for record in listing.records])
    return config if level is None else config.updated(white_level=level)


@dataclass
class TestSet:
    """One test set of a run: its dataset, the name prefix of its results (AeBAD-S domain) and
    whether the protocol's own evaluation (rather than the common one) applies to it."""

    dataset: Any
    domain: str | None
    protocol_evaluation: bool


def test_sets(config: RunConfig, categories: list[str]) -> list[TestSet]:
    """Every test set of the run: the main dataset (AeBAD-S once per test domain) and, for a
    merged run (``aebad-mvtec``), each extra dataset's test split for the categories it holds.
    The protocol's own evaluation applies to the main dataset; extra datasets use the common path."""
    from minimaxad.data import list_categories

    protocol = run_protocol(config)
    own = protocol.evaluation != "common"
    sets: list[TestSet] = []
    main_categories = categories
    extra_categories: list[tuple[dict, list[str]]] = []
    if config.extra_datasets:
        main_found = set(list_categories(config.format, config.data))
        main_categories = [c for c in categories if c in main_found]
        for extra in config.extra_datasets:
            found = set(list_categories(extra["format"], extra["root"]))
            wanted = [c for c in categories if c in found and c not in main_found]
            if wanted:
                extra_categories.append((extra, wanted))
    if main_categories:
        if config.test_domains:
            sets += [
                TestSet(open_dataset(config, "test", main_categories, domain=d), d, own) for d in config.test_domains
            ]
        else:
            sets.append(TestSet(open_dataset(config, "test", main_categories), None, own))
    for extra, wanted in extra_categories:
        sets.append(TestSet(_open_extra(config, extra, "test", wanted), None, False))
    if not sets:
        raise ValueError(f"none of the categories {categories} is in the test data at {config.data}")
    return sets


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What :func:`evaluate_model` returns.

    ``summary``: ``{"categories": {name: metrics}}``; ``outputs``: every test item's maps and scores;
    ``thresholds``: the thresholds in force (calibrated or given), ``per_category`` too where calibrated.
    """

    summary: dict[str, Any]
    outputs: DatasetOutputs
    thresholds: dict[str, dict[str, Any]]


def evaluate_model(
    model,
    config: RunConfig,
    categories: list[str],
    calibration: dict | None,
    echo: Echo = print,
    progress: bool = True,
    **threshold_overrides,
) -> Evaluation:
    """Maps and scores of every test item, metrics per category (and per AeBAD-S domain), by
    the run's protocol: the common path (``evaluation_batch``) or the AeBAD-S script's
    ``evaluate()`` (:func:`minimaxad.metrics.aebad.evaluate_aebad`)."""
    from minimaxad.metrics.aebad import evaluate_aebad
    from minimaxad.reporting.results import evaluate_by_category

    device = resolve_device(config.device)
    protocol = run_protocol(config)
    per_category: dict[str, dict[str, Any]] = {}
    collected: list[DatasetOutputs] = []
    sets = test_sets(config, categories)
    several = len(categories) > 1
    for test_set in sets:
        domain, dataset = test_set.domain, test_set.dataset
        echo(f"  testing on {len(dataset)} images{f' (domain {domain})' if domain else ''}")
        own = test_set.protocol_evaluation and protocol.evaluation == "aebad-evaluate"
        outputs = run_dataset(
            model,
            dataset,
            top_ratio=config.top_ratio,
            batch_size=config.batch_size,
            device=device,
            workers=config.workers,
            progress=progress,
            protocol_map=(protocol.level_merge, protocol.smoothing) if own else None,
            tiling=config.tiling(),
        )
        if domain is not None:
            outputs.categories = [f"{c}/{domain}" if several else domain for c in outputs.categories]
        if own:
            for name in dict.fromkeys(outputs.categories):
                part = outputs.select(i for i, c in enumerate(outputs.categories) if c == name)
                per_category[name] = evaluate_aebad(part.protocol_maps, part.masks, part.labels)
        else:
            has_mask = outputs.has_mask if len(outputs.has_mask) else None
            summary = evaluate_by_category(
                outputs.scores,
                outputs.labels,
                outputs.categories,
                anomaly_maps=outputs.maps,
                masks=outputs.masks,
                has_mask=has_mask,
                valid=outputs.valid,  # tiled photos of different sizes
                # each category's calibrated pixel threshold (the rule of the report and predict), for seg_f1
                pixel_thresholds={
                    c: resolve_thresholds(calibration, category=c, **threshold_overrides)["pixel"]["value"]
                    for c in dict.fromkeys(outputs.categories)
                },
                bootstrap=config.bootstrap,
                seed=config.seed,
            )
            per_category.update(summary["categories"])
        outputs.protocol_maps = None  # the metrics are done: keep one copy of the maps
        collected.append(outputs)
    outputs = collected[0] if len(collected) == 1 else _concat_outputs(collected)
    thresholds: dict[str, Any] = resolve_thresholds(calibration, **threshold_overrides)
    categories_seen = sorted(set(outputs.categories))
    calibrated = set((calibration or {}).get("per_category") or {})
    if any(c in calibrated or c.rsplit("/", 1)[0] in calibrated for c in categories_seen):
        thresholds["per_category"] = thresholds_by_category(calibration, categories_seen, **threshold_overrides)
    return Evaluation({"categories": per_category}, outputs, thresholds)


def _concat_outputs(parts: list[DatasetOutputs]) -> DatasetOutputs:
    import torch

    return DatasetOutputs(
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [c for p in parts for c in p.categories],
        [x for p in parts for x in p.paths],
        torch.cat([p.maps for p in parts]),
        None if any(p.masks is None for p in parts) else torch.cat([p.masks for p in parts]),
        np.concatenate([p.has_mask for p in parts]),
    )


def finish_results(
    per_category: dict[str, dict],
    output: Path,
    echo: Echo,
    protocol: Protocol | None = None,
    *,
    paper_protocol: bool = True,
) -> dict[str, Any]:
    """Mean over categories (or AeBAD-S domains, or test sets), ``metrics.json`` + ``metrics.csv``
    (each with the metrics the protocol reports), and the printed table in the paper's layout.
    ``paper_protocol=False`` (a run without preset or ``--protocol``) adds ``DEPLOYMENT_KEYS``
    (``seg_f1``, ``seg_f1_max``) to what the protocol reports; a paper protocol keeps the authors' metrics."""
    from minimaxad.reporting.results import DEPLOYMENT_KEYS, format_paper_table, summarize, write_metrics

    keys = None if protocol is None else tuple(protocol.reported) + (() if paper_protocol else DEPLOYMENT_KEYS)
    summary = summarize(per_category, keys=keys)
    if protocol is not None:
        summary["protocol"] = protocol.name
    json_path, csv_path = write_metrics(summary, output)
    echo(format_paper_table(summary, protocol))
    echo(f"metrics: {json_path} and {csv_path}")
    return summary


def write_evaluation_report(evaluation: Evaluation, summary: dict, output: Path, config: dict, title: str) -> Path:
    """``report.html`` plus ``evaluation.npz`` (what ``minimaxad report`` re-renders from)."""
    from minimaxad.reporting.saved import render_saved_evaluation, save_evaluation

    npz = save_evaluation(output / "evaluation.npz", evaluation, summary, config)
    return render_saved_evaluation(npz, output / "report.html", title=title)


# -- fit ----------------------------------------------------------------------------------------
@with_run_logging
def fit(
    config: RunConfig, output: Path, *, resume: bool = False, progress: bool = True, echo: Echo = print
) -> dict[str, Any] | None:
    """Train (one model for all categories, or one per category), then evaluate unless
    ``config.evaluate`` is False. Returns the metrics summary (None without evaluation, and on
    the ranks other than 0 of a distributed run).

    Launched by torchrun (``WORLD_SIZE > 1``) every process trains its share of each batch; rank 0
    alone logs, writes files, calibrates and evaluates (after all training jobs, so that the other
    ranks are never kept waiting on it): the others return as soon as the last model is trained.
    """
    with distributed_session(resolve_device(config.device)) as context, contextlib.ExitStack() as closing:
        return _fit(config, Path(output), context, resume=resume, progress=progress, echo=echo, closing=closing)


def fit_seeds(
    config: RunConfig,
    output: Path,
    seeds: list[int],
    *,
    resume: bool = False,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any] | None:
    """One :func:`fit` per seed, each in ``output/seed-<N>``, then mean ± std over the seeds per
    metric and per category (the paper's error bars over seeds 1, 11, 111): ``metrics.json``
    (which keeps every run under ``runs``), ``metrics.csv`` (``<metric>_std`` columns) and a
    ``report.html`` linking each seed's report. Returns the combined summary (None without
    evaluation or on ranks other than 0)."""
    from minimaxad.reporting.results import format_paper_table, seed_spread, write_metrics
    from minimaxad.reporting.seeds import write_seed_report

    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {seeds}: give distinct seeds, e.g. --seeds 1 11 111")
    output = Path(output)
    runs: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        echo(f"=== seed {seed} ({len(runs) + 1} of {len(seeds)}) ===")
        summary = fit(config.updated(seed=seed), output / f"seed-{seed}", resume=resume, progress=progress, echo=echo)
        if summary is not None:
            runs[str(seed)] = summary
    if not runs:
        return None
    combined = seed_spread(runs)
    protocol = run_protocol(config)
    combined["protocol"] = protocol.name
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.json").write_text(
        json.dumps({**config.to_dict(), "seed": None, "seeds": list(seeds)}, indent=2) + "\n"
    )
    json_path, csv_path = write_metrics(combined, output)
    echo(f"mean ± std over seeds {', '.join(map(str, seeds))}:")
    echo(format_paper_table(combined, protocol))
    report = write_seed_report(
        combined,
        output / "report.html",
        {s: f"seed-{s}" for s in runs},
        title=f"minimaxad - {config.preset or config.format}, seeds {', '.join(map(str, seeds))}",
    )
    echo(f"metrics: {json_path} and {csv_path}; report: {report}")
    return combined


def _fit(
    config: RunConfig,
    output: Path,
    context: DistributedContext,
    *,
    resume: bool,
    progress: bool,
    echo: Echo,
    closing: contextlib.ExitStack | None = None,
) -> dict[str, Any] | None:
    from minimaxad.data import calibration_subset, split_holdout
    from minimaxad.data.build import validation_split

    tiling = config.tiling()  # settings it cannot be combined with fail before anything is written
    get_pixel_rule(config.pixel_threshold_rule)  # an unknown rule too, not after training
    if context.is_main:
        check_writable_folder(output, "--output folder")  # fail now, not after hours of training
        remove_stale_temporaries(output)  # partial writes of a killed run (its checkpoints are complete)
        setup_logging(output)
    else:
        silence_logging()
        echo, progress = (lambda message: None), False
    if config.encoder_weights is not None and str(config.encoder_weights).lower() != "none":
        # fail before any data is read when the ImageNet weights cannot be had
        from minimaxad.models import get_backbone_spec
        from minimaxad.models.weights import resolve_weights_source

        # one download per machine: local rank 0 fills the cache, the other ranks then find it there
        resolved = context.first_local_rank_then_others(
            lambda: resolve_weights_source(get_backbone_spec(config.backbone), config.encoder_weights)
        )
        config = config.updated(encoder_weights=str(resolved))
    config = resolve_white_level(config)  # before any photo is decoded: training and test read them alike
    if context.is_main:
        config.save(output / "config.json")
    logger = create_logger(config.logger, output, is_main=context.is_main)  # --logger: rank 0 only
    if closing is not None:
        closing.enter_context(logger)
    logger.log_params(config.to_dict())
    echo(f"[1/3] reading {config.format} data from {config.data}")
    train_full = open_dataset(config, "train")
    categories = list(train_full.categories)
    echo(f"      {len(train_full)} training images, categories: {', '.join(categories)}")
    echo(f"      protocol {run_protocol(config).describe()}")
    if tiling is not None:
        echo(f"      tiling: {tiling.describe()}")
    if config.white_level is not None:
        echo(f"      photos of more than 8 bits read with {config.white_level:g} as white")
    if run_protocol(config).name == "aebad-mvtec" and not config.extra_datasets:
        echo(
            "      WARNING: the aebad-mvtec protocol trains on AeBAD-S merged with MVTec AD; without "
            "--extra-data mvtec=ROOT this is AeBAD-S alone"
        )
    if config.encoder_weights is None or str(config.encoder_weights).lower() == "none":
        echo("      WARNING: random encoder (--encoder-weights none): results are NOT comparable to the paper")
    if context.enabled:
        echo(f"      distributed: {context.world_size} processes ({context.backend}), global batch {config.batch_size}")
    jobs = [("all", categories)] if config.unified else [(c, [c]) for c in categories]
    # a format with its own normal calibration photos (MVTec AD 2 validation/good) calibrates on them
    # and holds no training photo out; merged extra data sets keep the hold-out
    validation_source = None if config.extra_datasets else validation_split(config.format)
    validation = open_dataset(config, "validation") if validation_source else None
    per_category: dict[str, dict] = {}
    trained = []  # distributed runs evaluate once every model is trained
    for name, job_categories in jobs:
        job_dir = output if config.unified else output / name
        inside(output, name)  # a category's folder never leads out of --output (UnsafePathError)
        if config.unified:
            train_set = train_full
        else:
            train_set = train_full.subset(np.flatnonzero(np.asarray(train_full.item_categories) == name))
        holdout = None
        if validation is not None:
            holdout = validation.subset(np.flatnonzero(np.isin(validation.item_categories, job_categories)))
            holdout = calibration_subset(holdout, config.val_max_images, seed=config.seed)
            calibration_note = f"thresholds from {len(holdout)} validation photos ({validation_source}), none held out"
        elif config.val_fraction > 0:
            train_set, holdout = split_holdout(train_set, config.val_fraction, seed=config.seed)
            # thresholds from every category alike, never from augmented crops
            holdout = calibration_subset(holdout, config.val_max_images, seed=config.seed).with_augment(False)
        if validation is None:
            calibration_note = f"{0 if holdout is None else len(holdout)} held out for thresholds"
        echo(
            f"[2/3] training {'one model for all categories' if config.unified else f'category {name}'}: "
            f"{len(train_set)} images, {calibration_note}"
        )
        job_config = config.updated(categories=job_categories)
        job = None if config.unified else name
        result = train(
            job_config,
            train_set,
            holdout,
            job_dir,
            categories=job_categories,
            resume=resume,
            progress=progress,
            context=context,
            on_step=(lambda step, values, job=job: logger.log_step(job, step, values))
            if context.is_main and config.logger
            else None,
        )
        if context.is_main:
            logger.log_artifact(result.checkpoint_path, job)
        echo(
            f"      checkpoint: {result.checkpoint_path} ({result.steps} steps, "
            f"{result.images_per_second:.1f} images/s, final loss {result.final_loss:.4f})"
        )
        if config.evaluate and context.is_main:
            trained.append((name, job_dir, job_config, job_categories, result))
            if not context.enabled:
                _evaluate_job(*trained.pop(), per_category, echo, progress)
    if not (config.evaluate and context.is_main):
        return None
    for job in trained:
        _evaluate_job(*job, per_category, echo, progress)
    summary = finish_results(
        per_category, output, echo, run_protocol(config), paper_protocol=config.protocol is not None
    )
    _log_results(logger, summary, output, [None] if config.unified else [name for name, _ in jobs])
    if not config.unified:
        echo(f"reports: {output}/<category>/report.html")
    else:
        echo(f"report: {output / 'report.html'}")
    return summary


def _log_results(logger: RunLogger, summary: dict[str, Any], output: Path, jobs: list[str | None]) -> None:
    """The metrics per category, and the metrics files and reports as artifacts (MLflow)."""
    logger.log_metrics(summary)
    for path in (output / "metrics.json", output / "metrics.csv"):
        if path.is_file():
            logger.log_artifact(path)
    for job in jobs:
        report = (output if job is None else output / job) / "report.html"
        if report.is_file():
            logger.log_artifact(report, job)


def _evaluate_job(
    name: str,
    job_dir: Path,
    job_config: RunConfig,
    job_categories: list[str],
    result,
    per_category: dict[str, dict],
    echo: Echo,
    progress: bool,
) -> None:
    echo(f"[3/3] evaluating {name}")
    evaluation = evaluate_model(
        result.model, job_config, job_categories, result.thresholds, echo=echo, progress=progress
    )
    per_category.update(evaluation.summary["categories"])
    job_summary = {"categories": evaluation.summary["categories"]}
    write_evaluation_report(evaluation, job_summary, job_dir, job_config.to_dict(), title=f"minimaxad - {name}")


# -- test ---------------------------------------------------------------------------------------
def find_checkpoints(path: Path) -> list[Path]:
    """A checkpoint file, a run folder with ``checkpoint.pt``, or a per-category run folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / "checkpoint.pt").is_file():
        return [path / "checkpoint.pt"]
    found = sorted(path.glob("*/checkpoint.pt")) if path.is_dir() else []
    if not found:
        raise CheckpointError(f"no checkpoint at {path} (expected a checkpoint.pt file or a run folder)")
    return found


@with_run_logging
def test(
    checkpoint: Path,
    output: Path,
    *,
    data: str | None = None,
    format: str | None = None,
    categories: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    encoder_weights: str | None = None,
    progress: bool = True,
    echo: Echo = print,
    protocol: str | None = None,
    **threshold_overrides,
) -> dict[str, Any]:
    """Evaluate trained checkpoint(s) on a test set; writes metrics and report into ``output``.

    The evaluation follows the protocol stored in each checkpoint's configuration (the one it
    was trained under); ``protocol`` (a name of :data:`~minimaxad.engine.protocol.PROTOCOLS`)
    evaluates under another one instead.
    """
    output = Path(output)
    setup_logging(output, "test.log")
    per_category: dict[str, dict] = {}
    used: Protocol | None = None
    paper_protocol = False  # True when a checkpoint's configuration (or --protocol) names a paper protocol
    for path in find_checkpoints(checkpoint):
        state = read_checkpoint(path)
        config = RunConfig.from_dict(state["config"])
        if protocol is not None:
            config = config.updated(**get_protocol(protocol).run_settings())
        config = config.updated(data=data, format=format, **(overrides or {}))
        used = run_protocol(config)
        paper_protocol = paper_protocol or config.protocol is not None
        echo(f"protocol {used.describe()}")
        wanted = [c for c in state["categories"] if categories is None or c in categories]
        if categories is not None and not wanted:
            continue
        echo(f"testing {path} on {config.format} data at {config.data} ({', '.join(wanted)})")
        model = model_from_checkpoint(state, encoder_weights=encoder_weights)
        evaluation = evaluate_model(
            model, config, wanted, state.get("thresholds"), echo=echo, progress=progress, **threshold_overrides
        )
        per_category.update(evaluation.summary["categories"])
        job_dir = output if len(find_checkpoints(checkpoint)) == 1 else output / path.parent.name
        inside(output, path.parent.name)
        write_evaluation_report(
            evaluation,
            {"categories": evaluation.summary["categories"]},
            job_dir,
            config.to_dict(),
            title=f"minimaxad test - {', '.join(wanted)}",
        )
    if not per_category:
        raise ValueError(f"none of the categories {categories} is in the checkpoint(s) at {checkpoint}")
    (output / "config.json").write_text(
        json.dumps(
            {
                "checkpoint": str(checkpoint),
                "data": data,
                "format": format,
                "categories": categories,
                "protocol": used.to_dict() if used else None,
            },
            indent=2,
        )
    )
    return finish_results(per_category, output, echo, used, paper_protocol=paper_protocol)
