"""``minimaxad demo``: the whole tool on a CPU in a few minutes, with no GPU.

Synthetic data -> training a small model -> evaluation (metrics + HTML report) -> prediction on
a few photos. Everything goes under one folder (default ``./minimaxad-demo``).

The encoder: the ImageNet UniRepLKNet weights when they are in the cache or can be downloaded
(from Hugging Face, or ``$MINIMAXAD_HUB_URL``), else a random encoder, and the demo says which.
The demo's data is chosen so that a random encoder works (measured in docs/benchmarks.md): the two
texture categories (``weave``, ``grain``; the ``washer`` object, which varies in position and
rotation, is not separated by random features), every defect clearly visible
(``subtle_fraction=0``, strength drawn from the upper range) and no colour changes (random
features barely respond to a hue shift). So the offline demo shows the method finding defects;
the paper's accuracy on real photos needs the ImageNet encoder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minimaxad.engine.config import RunConfig
from minimaxad.presets import get_preset

Echo = Callable[[str], None]
# The demo's data: where random convolutional features separate the defects (see the module doc).
DEMO_CATEGORIES = ("weave", "grain")
DEMO_DEFECTS = ("scratch", "spot", "hole", "foreign", "missing")
DEMO_SUBTLE_FRACTION = 0.0  # every defect clearly visible (the generator's default draws a third faint)
DEMO_CLEAR_STRENGTH = (0.6, 1.0)  # the upper part of the generator's range (0.25, 1.0)
DEMO_TRAIN_IMAGES = 200  # per category; the preset holds some out to calibrate the thresholds


def choose_encoder(backbone: str, weights: str, echo: Echo, progress: bool) -> tuple[str, str]:
    """``(encoder_weights setting, sentence saying which encoder)``: ``weights`` is ``hub`` (cache,
    then a download, else random), ``none`` or a path."""
    from minimaxad.models import get_backbone_spec
    from minimaxad.models.weights import EncoderWeightsError, download_weights

    spec = get_backbone_spec(backbone)
    if str(weights).lower() == "none":
        return "none", "a RANDOM encoder (--encoder-weights none)"
    if str(weights).lower() != "hub":
        return str(weights), f"the ImageNet encoder weights in {weights}"
    if spec.imagenet_file is None:
        return "none", f"a RANDOM encoder ({spec.name} has no ImageNet checkpoint)"
    try:
        path = download_weights(spec, progress=progress, echo=echo)
    except EncoderWeightsError as exc:
        reason = str(exc).split(": ", 1)[-1].split(". Download ")[0]
        return "none", (
            f"a RANDOM encoder: the ImageNet weights {spec.imagenet_file} are not on this machine "
            f"and could not be downloaded ({reason})"
        )
    return str(path), f"the ImageNet encoder weights {path.name} (from {path.parent})"


def decision_counts(run_dir: Path) -> dict[str, dict[str, int]]:
    """Per category (and ``all``): defective images caught / missed, normal images passed /
    falsely flagged, at the thresholds stored with the run (as the report decides)."""
    from minimaxad.reporting.saved import load_evaluation

    saved = load_evaluation(run_dir / "evaluation.npz")
    thresholds = saved["meta"].get("thresholds") or {}
    per_category = thresholds.get("per_category") or {}
    counts: dict[str, dict[str, int]] = {}
    for category in sorted(set(map(str, saved["categories"]))) + ["all"]:
        chosen = np.ones(len(saved["scores"]), bool) if category == "all" else saved["categories"] == category
        if category == "all":
            limits = np.array([(per_category.get(str(c)) or thresholds)["image"]["value"] for c in saved["categories"]])
        else:
            limits = np.full(int(chosen.sum()), (per_category.get(category) or thresholds)["image"]["value"])
        flagged = saved["scores"][chosen] >= limits
        labels = saved["labels"][chosen]
        counts[category] = {
            "defective": int((labels == 1).sum()),
            "caught": int((flagged & (labels == 1)).sum()),
            "normal": int((labels == 0).sum()),
            "false_alarms": int((flagged & (labels == 0)).sum()),
        }
    return counts


def explain(
    summary: dict[str, Any],
    counts: dict[str, dict[str, int]],
    encoder: str,
    random_encoder: bool,
    image_fpr: float = 0.01,
    image_size: int = 96,
) -> list[str]:
    """Plain sentences: what the figures are, what they say here, and what they do not."""
    mean = summary.get("mean") or {}
    total = counts["all"]
    lines = [
        f"Encoder: {encoder}.",
        f"Image AUROC {mean.get('i_auroc', float('nan')):.3f} (mean over categories): the chance that a defective "
        f"image scores higher than a normal one (1 = every defective image above every normal one, 0.5 = chance). "
        f"Pixel AUROC {mean.get('p_auroc', float('nan')):.3f}: the same for defect pixels against normal pixels, "
        f"i.e. how well the heatmaps point at the defects.",
        f"Decisions at the thresholds calibrated on held-out normal images (set for about {100 * image_fpr:g}% false alarms): "
        f"{total['caught']} of {total['defective']} defective test images caught, {total['false_alarms']} of "
        f"{total['normal']} normal ones flagged by mistake ("
        + ", ".join(
            f"{c}: {v['caught']}/{v['defective']} caught, {v['false_alarms']} false alarms"
            for c, v in counts.items()
            if c != "all"
        )
        + ").",
    ]
    if random_encoder:
        lines.append(
            "These figures come from a RANDOM encoder on synthetic textures with clearly visible defects "
            "(chosen so that random features work: no object category, no colour changes): "
            "they show the method and the tool working, not the paper's accuracy. On real photos "
            "(MVTec AD, VisA, ...) the paper's figures need the ImageNet encoder: "
            "'minimaxad fit --encoder-weights hub ...' downloads it (or pass the file's path)."
        )
    else:
        lines.append(
            f"A short CPU run of a small variant (F, {image_size} px, a few hundred steps) on synthetic textures: "
            "the paper's figures come from variant N trained for the full schedule on the benchmarks."
        )
    return lines


def run_demo(
    output: Path = Path("minimaxad-demo"),
    *,
    steps: int | None = None,
    backbone: str | None = None,
    seed: int = 0,
    progress: bool = True,
    encoder_weights: str = "hub",
    echo: Echo = print,
) -> dict:
    """Generate synthetic data in ``output``, train a small model, evaluate it, predict on a few photos
    and write the report, printing a short summary with ``echo``; returns the summary, the prediction,
    the seconds taken and the run folder."""
    from minimaxad.data import generate_synthetic_dataset
    from minimaxad.engine.runner import fit
    from minimaxad.inference.predict import predict_paths
    from minimaxad.reporting.saved import render_saved_evaluation

    started = time.perf_counter()
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    config = RunConfig().updated(preset="demo", **get_preset("demo"))
    config = config.updated(backbone=backbone, max_steps=steps, seed=seed if seed else None)

    echo(f"minimaxad demo -> {output}")
    echo(
        "step 1/4: building the synthetic dataset (two textures, weave and grain, with clearly visible "
        "scratches, spots, holes, foreign material and missing pieces)"
    )
    data_root = generate_synthetic_dataset(
        output / "data",
        categories=DEMO_CATEGORIES,
        n_train=DEMO_TRAIN_IMAGES,
        seed=seed,
        defects=DEMO_DEFECTS,
        overwrite=True,
        subtle_fraction=DEMO_SUBTLE_FRACTION,
        clear_strength=DEMO_CLEAR_STRENGTH,
    )
    echo(f"          written to {data_root}")

    weights, encoder = choose_encoder(config.backbone, encoder_weights, echo, progress)
    random_encoder = weights == "none"
    echo(
        f"step 2/4: training {config.backbone} with {encoder}"
        + (
            ". Fine to see the method work; not the paper's accuracy (that needs the ImageNet encoder)."
            if random_encoder
            else "."
        )
    )
    config = config.updated(data=str(data_root), encoder_weights=weights)
    run_dir = output / "run"
    summary = fit(
        config,
        run_dir,
        progress=progress,
        echo=lambda line: echo("          " + line.strip("\n") if "\n" not in line else line),
    )
    counts = decision_counts(run_dir)
    about = explain(summary, counts, encoder, random_encoder, config.image_fpr, config.image_size)
    render_saved_evaluation(run_dir / "evaluation.npz", run_dir / "report.html", title="minimaxad demo", about=about)
    echo("          what the figures mean:")
    for line in about:
        echo("          - " + line)

    echo("step 3/4: predicting on every test photo, as on new ones (heatmaps, masks, scores.csv)")
    prediction = {}
    for category in sorted(p.name for p in data_root.iterdir() if p.is_dir()):
        # all of them, not a hand-picked few: the decisions then match the evaluation's counts
        test_dir = data_root / category / "test"
        prediction[category] = predict_paths(
            run_dir / "checkpoint.pt",
            [test_dir],
            output / "predictions" / category,
            progress=False,
            category=category,
            echo=lambda line: echo(f"          {category}: " + line),
        )

    elapsed = time.perf_counter() - started
    echo(f"step 4/4: done in {elapsed:.0f} s")
    echo(f"          report:      {run_dir / 'report.html'}")
    echo(f"          metrics:     {run_dir / 'metrics.json'}")
    echo(f"          predictions: {output / 'predictions'}")
    return {
        "summary": summary,
        "prediction": prediction,
        "seconds": elapsed,
        "run_dir": str(run_dir),
        "decisions": counts,
        "encoder": encoder,
        "random_encoder": random_encoder,
    }
