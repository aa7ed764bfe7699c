"""fit --logger csv|tensorboard|mlflow: the logs are read back with each tool's own reader."""

from __future__ import annotations

import csv
import json

import pytest

from minimaxad.cli import main
from minimaxad.engine.loggers import RunLogger, create_logger

STEPS = 4


def fit_args(root, out, *extra):
    return [
        "fit",
        "--data",
        str(root),
        "--output",
        str(out),
        "--backbone",
        "unireplknet_micro",
        "--encoder-weights",
        "none",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        str(STEPS),
        "--lr",
        "0.003",
        "--val-fraction",
        "0.25",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def logged_run(synthetic_root, tmp_path_factory):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("logged") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(fit_args(synthetic_root, out, "--unified", "--logger", "csv", "tensorboard", "mlflow")) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_csv_steps_and_final_metrics(logged_run):
    out, metrics = logged_run
    with open(out / "logs" / "steps.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1)) and {r["job"] for r in rows} == {"all"}
    assert all(float(r["lr"]) == pytest.approx(0.003) for r in rows)  # one epoch: no decay yet
    assert all(float(r["images_per_second"]) > 0 and float(r["loss"]) > 0 for r in rows)
    with open(out / "logs" / "metrics.csv", newline="") as handle:
        final = {(r["category"], r["metric"]): float(r["value"]) for r in csv.DictReader(handle)}
    for category in ("weave", "washer"):
        assert final[(category, "i_auroc")] == pytest.approx(metrics["categories"][category]["i_auroc"], rel=1e-5)
    assert final[("mean", "p_auroc")] == pytest.approx(metrics["mean"]["p_auroc"], rel=1e-5)


def test_tensorboard_events_read_back(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, metrics = logged_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_second"} <= tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, STEPS + 1))
    with open(out / "logs" / "steps.csv", newline="") as handle:
        csv_losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert [e.value for e in losses] == pytest.approx(csv_losses, rel=1e-5)
    assert events.Scalars("test/washer/aupro_200")[0].value == pytest.approx(
        metrics["categories"]["washer"]["aupro_200"], rel=1e-5
    )
    assert events.Scalars("test/mean/i_auroc")[0].value == pytest.approx(metrics["mean"]["i_auroc"], rel=1e-5)


def test_mlflow_file_store_read_back(logged_run):
    from mlflow.tracking import MlflowClient

    out, metrics = logged_run
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "minimaxad"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["loss"] == "adc" and run.data.params["max_steps"] == str(STEPS)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
    assert run.data.metrics["test/weave/i_auroc"] == pytest.approx(metrics["categories"]["weave"]["i_auroc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "report.html", "metrics.json", "metrics.csv"} <= artifacts


def test_per_category_models_log_each_job(synthetic_root, tmp_path):
    out = tmp_path / "run"
    assert main(fit_args(synthetic_root, out, "--per-category", "--logger", "csv", "--no-eval")) == 0
    with open(out / "logs" / "steps.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["job"] for r in rows}) == ["washer", "weave"]
    assert all(sum(r["job"] == job for r in rows) == STEPS for job in ("washer", "weave"))
    assert not (out / "logs" / "metrics.csv").exists()  # nothing evaluated, nothing claimed


def test_only_rank_0_logs(tmp_path):
    logger = create_logger(["csv", "tensorboard"], tmp_path, is_main=False)
    assert type(logger) is RunLogger
    logger.log_step(None, 1, {"loss": 1.0, "lr": 0.1, "images_per_second": 3.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown logger.*wandb"):
        create_logger(["wandb"], tmp_path)
