"""What every stage returns, and where its summary goes.

A stage is `tasks/<stage>.py: run(params, root) -> StageResult`. The CLI prints `summary`, the Prefect
flow records `metrics`, and `metrics/<stage>.json` keeps the same numbers for DVC.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks import atomic
from tasks.config import TrackingParams


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to a project root (DESIGN.md, data contracts)."""
    root: Path = Path(".")

    @property
    def documents(self) -> Path:
        return self.root / "data" / "documents"

    @property
    def tokenizer(self) -> Path:
        return self.root / "artifacts" / "tokenizer"

    @property
    def shards(self) -> Path:
        return self.root / "data" / "shards"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"


@dataclass(frozen=True)
class StageResult:
    stage: str
    summary: str
    metrics: dict = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    mlflow_run_id: str | None = None


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def finish(layout: Layout, stage: str, summary: str, metrics: dict, outputs: list[Path],
           tracking: TrackingParams | None = None, params: dict | None = None) -> StageResult:
    """Write metrics/<stage>.json and, given `tracking`, record the stage as an MLflow run."""
    atomic.write_json(layout.metrics(stage), metrics)
    run_id = None
    if tracking is not None:
        from tasks.tracking import record_stage

        run_id = record_stage(tracking, layout.root, stage, metrics, params or {}, [layout.metrics(stage)])
    return StageResult(stage, summary, metrics, tuple(str(p) for p in outputs), run_id)
