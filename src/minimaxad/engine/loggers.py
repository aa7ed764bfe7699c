"""Experiment loggers for ``minimaxad fit --logger csv|tensorboard|mlflow``.

Per training step: the loss, the learning rate and the images per second; at the end: every
metric of every category (and their mean); with MLflow also the configuration as parameters and
the report, metrics files and checkpoint as artifacts. Under torchrun only rank 0 logs (the
others get :class:`RunLogger`, which does nothing).

Where the logs go, always inside the run folder unless the user says otherwise:

* ``csv``: ``DIR/logs/steps.csv`` and ``DIR/logs/metrics.csv`` (no extra package);
* ``tensorboard``: event files in ``DIR/tensorboard/`` (``pip install 'minimaxad[tensorboard]'``;
  ``tensorboard --logdir DIR/tensorboard``);
* ``mlflow``: ``$MLFLOW_TRACKING_URI`` if set (a server, a database), else a file store in
  ``DIR/mlruns`` (``pip install 'minimaxad[mlflow]'``; ``mlflow ui --backend-store-uri DIR/mlruns``);
  the experiment is ``$MLFLOW_EXPERIMENT_NAME`` or ``minimaxad``, the run is named after ``DIR``.

Metric names: ``train/loss``, ``train/lr``, ``train/images_per_second`` (one model for all
categories) or ``train/<category>/loss`` ... (one model per category); ``test/<category>/<metric>``
and ``test/mean/<metric>`` at the end.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

LOGGER_CHOICES = ("csv", "tensorboard", "mlflow")


class RunLogger:
    """The interface, and the logger that logs nothing (no ``--logger``, ranks other than 0)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's configuration (once, at the start)."""

    def log_step(self, job: str | None, step: int, values: Mapping[str, float]) -> None:
        """One training step of model ``job`` (None: the one model of a unified run)."""

    def log_metrics(self, summary: Mapping[str, Any], step: int | None = None) -> None:
        """The final ``{"categories": {name: {metric: value}}, "mean": {...}}``."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """A file to keep with the run (report, metrics, checkpoint)."""

    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed``: the run ended with an error."""

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(failed=exc_type is not None)


def step_tag(job: str | None, name: str) -> str:
    """The name of a step value: ``train/<name>``, or ``train/<job>/<name>`` for one model per category."""
    return f"train/{name}" if job is None else f"train/{job}/{name}"


def metric_items(summary: Mapping[str, Any]):
    """``(tag, value)`` for every finite number in the summary: ``test/<category>/<metric>``."""
    groups = dict(summary.get("categories") or {})
    if summary.get("mean"):
        groups["mean"] = summary["mean"]
    for group, metrics in groups.items():
        for metric, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                yield f"test/{group}/{metric}", float(value)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as one flat ``{"key.sub_key": str(value)}`` dict, as parameters are logged."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class CSVLogger(RunLogger):
    """``DIR/logs/steps.csv`` (job, step, loss, lr, images_per_second) and ``DIR/logs/metrics.csv``."""

    STEP_COLUMNS = ("job", "step", "loss", "lr", "images_per_second")

    def __init__(self, output: Path) -> None:
        self.folder = Path(output) / "logs"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "steps.csv"
        new = not path.exists() or path.stat().st_size == 0  # --resume appends to the same file
        self._steps = open(path, "a", newline="")
        self._writer = csv.writer(self._steps)
        if new:
            self._writer.writerow(self.STEP_COLUMNS)

    def log_step(self, job, step, values):
        """One row of ``steps.csv``, flushed at once (a killed run keeps its steps)."""
        self._writer.writerow([job or "all", step, *(f"{values[k]:.6g}" for k in self.STEP_COLUMNS[2:])])
        self._steps.flush()

    def log_metrics(self, summary, step=None):
        """Write ``metrics.csv`` anew: one ``category, metric, value`` row per number."""
        with open(self.folder / "metrics.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("category", "metric", "value"))
            for tag, value in metric_items(summary):
                _, category, metric = tag.split("/", 2)
                writer.writerow((category, metric, f"{value:.6g}"))

    def close(self, failed=False):
        """Close ``steps.csv``."""
        self._steps.close()


class TensorBoardLogger(RunLogger):
    """Scalars in TensorBoard event files under ``DIR/tensorboard``."""

    def __init__(self, output: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch's writer needs the tensorboard package
            raise RuntimeError(
                "--logger tensorboard needs the tensorboard package: pip install 'minimaxad[tensorboard]'"
            ) from exc
        self.folder = Path(output) / "tensorboard"
        self.writer = SummaryWriter(str(self.folder))
        self.last_step = 0

    def log_params(self, params):
        """The configuration as the text summary ``config``."""
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(params).items())  # indented: shown as code
        self.writer.add_text("config", text, 0)

    def log_step(self, job, step, values):
        """One scalar per value, tagged by :func:`step_tag`."""
        for name, value in values.items():
            self.writer.add_scalar(step_tag(job, name), value, step)
        self.last_step = max(self.last_step, step)

    def log_metrics(self, summary, step=None):
        """The final metrics as scalars at the last training step (or ``step``)."""
        for tag, value in metric_items(summary):
            self.writer.add_scalar(tag, value, self.last_step if step is None else step)
        self.writer.flush()

    def close(self, failed=False):
        """Flush and close the event file."""
        self.writer.close()


class MLflowLogger(RunLogger):
    """One MLflow run: parameters, step metrics, final metrics, artifacts."""

    def __init__(self, output: Path) -> None:
        try:
            import mlflow
        except ImportError as exc:
            raise RuntimeError(
                "--logger mlflow needs MLflow: pip install 'minimaxad[mlflow]' "
                "(mlflow-skinny; or the full mlflow package)"
            ) from exc
        self.mlflow = mlflow
        output = Path(output).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 refuses its file store unless asked: a local folder is what a run folder wants
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (output / "mlruns").as_uri()
        self.client = mlflow.tracking.MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "minimaxad")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=output.name).info.run_id
        self.tracking_uri = uri
        self.last_step = 0

    def log_params(self, params):
        """The flattened configuration as MLflow parameters (values cut to 6000 characters)."""
        from mlflow.entities import Param

        flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):  # the API takes at most 100 per batch
            self.client.log_batch(self.run_id, params=flat[start : start + 100])

    def log_step(self, job, step, values):
        """The step's finite values as MLflow metrics."""
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(step_tag(job, k), float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        self.last_step = max(self.last_step, step)

    def log_metrics(self, summary, step=None):
        """The final metrics at the last training step (or ``step``)."""
        from mlflow.entities import Metric

        now, at = _now_ms(), self.last_step if step is None else step
        metrics = [Metric(tag, value, now, at) for tag, value in metric_items(summary)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_artifact(self, path, folder=None):
        """Upload ``path`` into the run's artifacts, in ``folder`` (None: at the top)."""
        self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, failed=False):
        """End the MLflow run as ``FINISHED``, or ``FAILED`` after an error."""
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class MultiLogger(RunLogger):
    """Several loggers at once (``--logger csv tensorboard``)."""

    def __init__(self, loggers: Sequence[RunLogger]) -> None:
        self.loggers = list(loggers)

    def log_params(self, params):
        """Pass on to every logger."""
        for logger in self.loggers:
            logger.log_params(params)

    def log_step(self, job, step, values):
        """Pass on to every logger."""
        for logger in self.loggers:
            logger.log_step(job, step, values)

    def log_metrics(self, summary, step=None):
        """Pass on to every logger."""
        for logger in self.loggers:
            logger.log_metrics(summary, step)

    def log_artifact(self, path, folder=None):
        """Pass on to every logger."""
        for logger in self.loggers:
            logger.log_artifact(path, folder)

    def close(self, failed=False):
        """Pass on to every logger."""
        for logger in self.loggers:
            logger.close(failed)


def create_logger(kinds: str | Sequence[str] | None, output: Path, *, is_main: bool = True) -> RunLogger:
    """The logger(s) named by ``--logger`` (``"csv"``, ``["csv", "mlflow"]`` ...); a do-nothing
    logger when none is named or on ranks other than 0."""
    if not kinds or not is_main:
        return RunLogger()
    names = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [n for n in names if n not in LOGGER_CHOICES]
    if unknown:
        raise ValueError(f"unknown logger(s) {', '.join(unknown)}; choose from {', '.join(LOGGER_CHOICES)}")
    classes = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    loggers = [classes[name](Path(output)) for name in dict.fromkeys(names)]
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)
