"""MLflow tracking for every stage: one place that knows the tracking URI, the run and the buffering.

The URI comes from params (`tracking.uri`), else `$MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` with
artifacts under `mlruns/` in the project directory (MLflow's file store is deprecated). Per-step metrics
are buffered and sent in batches, so logging every step costs little. A run can be resumed by id: a
training run restarted from a checkpoint keeps appending to the same MLflow run.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from chatpipe.tasks.common.config import TrackingParams

log = logging.getLogger("chatpipe.tracking")

_SECRET = re.compile(r"(key|token|secret|password|credential)", re.I)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # the UI's "Model training"


def tracking_uri(cfg: TrackingParams, root: Path = Path(".")) -> str:
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def ui_url(experiment_id: str, run_id: str | None = None, base: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows an experiment's runs table (or one run). MLflow 3's UI opens an experiment on
    its GenAI overview (traces) unless told `workflowType=machine_learning`, whatever the experiment's kind."""
    return f"{base}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + \
        "?workflowType=machine_learning"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested params → MLflow's flat `a.b.c` keys; anything that looks like a secret is left out."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if _SECRET.search(str(key)):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class Run:
    """An MLflow run that buffers metrics. Use it as a context manager: it ends FINISHED, or FAILED when
    an exception (a crash, a NaN, Ctrl-C) leaves the block, so no run is left RUNNING by a dead stage."""

    def __init__(self, cfg: TrackingParams, root: Path, run_name: str, run_id: str | None = None,
                 tags: dict | None = None, params: dict | None = None, flush_every: int = 10) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg, root)  # on the client only: a global URI would leak into the next project
        self.client = MlflowClient(uri)
        experiment_id = self._experiment(cfg.experiment, root, uri)
        if run_id and not self._exists(run_id):  # a checkpoint brought from another tracking store
            log.warning("MLflow run %s (from the checkpoint) is not in %s; continuing in a new run", run_id, uri)
            run_id = None
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = dict(tags or {})
            if cfg.parent_run_id:
                tags["mlflow.parentRunId"] = cfg.parent_run_id
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            items = sorted(flatten(params or {}).items())
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        self.uri, self.experiment_id, self.flush_every, self.buffer, self.ended = uri, experiment_id, flush_every, [], False

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.finish("FAILED" if kind else "FINISHED")

    def _experiment(self, name: str, root: Path, uri: str) -> str:
        """The experiment's id, created if new and marked as model training (MLflow 3's experiment kind)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(
                name, artifact_location=(root / "mlruns").resolve().as_uri() if uri.startswith("sqlite") else None,
                tags={EXPERIMENT_KIND: MODEL_TRAINING})
        if EXPERIMENT_KIND not in experiment.tags:  # made by an earlier version, or by hand
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return experiment.experiment_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:
            return False

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if len(self.buffer) >= self.flush_every * 4:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self.buffer[i:i + 1000])
        self.buffer = []

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (once: a second call does nothing)."""
        if self.ended:
            return
        self.ended = True
        self.flush()
        self.client.set_terminated(self.run_id, status=status)


def numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested metrics dict, as flat MLflow metric names."""
    out = {}
    for key, value in d.items():
        name = re.sub(r"[^\w./ -]", "_", f"{prefix}{key}")
        if isinstance(value, dict):
            out.update(numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def record_stage(cfg: TrackingParams, root: Path, stage: str, metrics: dict, params: dict,
                 artifacts: list[Path] = ()) -> str:
    """One MLflow run for a finished stage: its params section, numeric metrics and files."""
    with Run(cfg, root, run_name=stage, tags={"chatpipe.stage": stage}, params=params) as run:
        run.log(0, numbers(metrics))
        for path in artifacts:
            run.log_artifact(path)
    return run.run_id
