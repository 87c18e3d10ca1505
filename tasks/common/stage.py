"""What every stage returns, and where its summary goes.

A stage is `run(params, layout) -> StageResult` (the stage table, tasks/pipeline.py, says which). The CLI
prints `summary`, the Prefect flow records `metrics` and passes the result to the stages that consume it,
and `metrics/<stage>.json` keeps the same numbers for DVC. `ok` is False when the stage ran but its verdict
is to stop the pipeline (an unhealthy pilot at the gate): the CLI then exits non-zero, the flow stops.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import TrackingParams
from chatpipe.tasks.common.layout import Layout


@dataclass(frozen=True)
class StageResult:
    stage: str
    summary: str
    metrics: dict = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    mlflow_run_id: str | None = None
    ok: bool = True


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def finish(layout: Layout, stage: str, summary: str, metrics: dict, outputs: list[Path],
           tracking: TrackingParams | None = None, params: dict | None = None, ok: bool = True) -> StageResult:
    """Write metrics/<stage>.json and, given `tracking`, record the stage as an MLflow run."""
    atomic.write_json(layout.metrics(stage), metrics)
    run_id = None
    if tracking is not None:
        from chatpipe.tasks.common.tracking import record_stage

        run_id = record_stage(tracking, layout.root, stage, metrics, params or {}, [layout.metrics(stage)])
    return StageResult(stage, summary, metrics, tuple(str(p) for p in outputs), run_id, ok)
