"""``minimaxad demo``: the whole tool on a CPU in a few minutes, with no network and no GPU.

Synthetic data -> training a small model -> evaluation (metrics + HTML report) -> prediction on
a few photos. Everything goes under one folder (default ``./minimaxad-demo``).
"""

from __future__ import annotations

import time
from pathlib import Path

from minimaxad.engine.config import RunConfig
from minimaxad.presets import get_preset


def run_demo(output: Path = Path("minimaxad-demo"), *, steps: int | None = None, backbone: str | None = None,
             seed: int = 0, progress: bool = True, echo=print) -> dict:
    from minimaxad.data import generate_synthetic_dataset
    from minimaxad.engine.runner import fit
    from minimaxad.models import get_backbone_spec
    from minimaxad.models.weights import find_cached_weights
    from minimaxad.inference.predict import predict_paths

    started = time.perf_counter()
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    config = RunConfig().updated(preset="demo", **get_preset("demo"))
    config = config.updated(backbone=backbone, max_steps=steps, seed=seed if seed else None)

    echo(f"minimaxad demo -> {output}")
    echo("step 1/4: building the synthetic dataset (textures and objects with scratches, spots, holes, "
         "foreign material, missing pieces, colour changes)")
    data_root = generate_synthetic_dataset(output / "data", seed=seed, overwrite=True)
    echo(f"          written to {data_root}")

    spec = get_backbone_spec(config.backbone)
    cached = find_cached_weights(spec)
    if cached is not None:
        echo(f"step 2/4: training {spec.name} with the ImageNet encoder weights found at {cached}")
        config = config.updated(encoder_weights=str(cached))
    else:
        echo(f"step 2/4: training {spec.name}. The ImageNet encoder weights ({spec.imagenet_file}) are not on this "
             f"machine, so the demo uses a RANDOM encoder: fine to see the tool work, not the paper's accuracy.")
    config = config.updated(data=str(data_root))
    run_dir = output / "run"
    summary = fit(config, run_dir, progress=progress, echo=lambda line: echo("          " + line.strip("\n")
                                                                                if "\n" not in line else line))

    echo("step 3/4: predicting on a few test photos (heatmaps, masks, scores.csv)")
    prediction = {}
    for category in sorted(p.name for p in data_root.iterdir() if p.is_dir()):
        test_dir = data_root / category / "test"
        picks = [sorted((test_dir / sub).iterdir())[0] for sub in ("good", "scratch", "spot")]
        prediction[category] = predict_paths(
            run_dir / "checkpoint.pt", picks, output / "predictions" / category, progress=False,
            category=category, echo=lambda line: echo(f"          {category}: " + line))

    elapsed = time.perf_counter() - started
    echo(f"step 4/4: done in {elapsed:.0f} s")
    echo(f"          report:      {run_dir / 'report.html'}")
    echo(f"          metrics:     {run_dir / 'metrics.json'}")
    echo(f"          predictions: {output / 'predictions'}")
    return {"summary": summary, "prediction": prediction, "seconds": elapsed, "run_dir": str(run_dir)}
