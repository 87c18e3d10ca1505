"""The training deployment: `train/<pool>` runs one training phase on a worker of that pool.

A GPU machine runs `prefect worker start --pool cuda` (or `--pool vulkan`); the chat-pipeline flow,
started anywhere, hands it the pilot, the full run or the distillation with `run_deployment` and waits.
Each deployment pins its device (`train/vulkan` trains with train.device=vulkan). Both sides read and write the same workdir
(a shared disk), so the result is the phase's metrics file. A retried or restarted training deployment
resumes from the phase's last checkpoint.
"""
from __future__ import annotations

import json

from prefect import flow

from flows.request import Request
from tasks.common.errors import ChatpipeError
from tasks.common.stage import StageResult


@flow(name="train", log_prints=True)
def train(phase: str = "pilot", overlays: list[str] = (), overrides: list[str] = (), workdir: str = ".",
          device: str | None = None) -> dict:
    """Train one phase on this worker, on `device` (the deployment's: train/vulkan trains on Vulkan) or
    else the params' train.device; returns the phase's metrics."""
    pinned = [f"train.device={device}"] if device else []
    result = Request(list(overlays), [*overrides, *pinned], workdir).run(phase)
    print(result.summary)
    return result.metrics


def dispatch(pool: str, phase: str, request: Request) -> StageResult:
    """Run `phase` as the `train/<pool>` deployment and wait for it."""
    from prefect.deployments import run_deployment

    run = run_deployment(f"train/{pool}", parameters={"phase": phase, "overlays": request.overlays,
                                                      "overrides": request.overrides, "workdir": request.workdir})
    state = run.state
    if state is None or state.is_crashed() or state.is_cancelled():  # the worker died: the flow retries
        raise RuntimeError(f"train/{pool} ({phase}) ended {state.name if state else 'unknown'}: "
                           f"{state.message if state else ''}")
    if not state.is_completed():  # the phase failed there, on its inputs: the same run would fail again
        raise ChatpipeError(f"train/{pool} ({phase}) ended {state.name}: {state.message}")
    metrics = json.loads((request.root / "metrics" / f"{phase}.json").read_text())
    stopped = metrics.get("stopped")  # a NaN loss ended it early
    return StageResult(phase, f"train {phase}: {stopped or 'done'} on pool {pool} (flow run {run.name})", metrics,
                       ok=not stopped)
