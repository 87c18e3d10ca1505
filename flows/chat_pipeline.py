"""The `chat-pipeline` Prefect flow: the pipeline diagram as code.

    ingest → tokenizer → shard → pilot → gate → full → distill → eval → publish

Each box is a Prefect task that calls the same `tasks/<stage>.run` as the CLI and DVC. A task's cache key
is the content hash of what it reads (flows/stages.py, from dvc.yaml), so a re-run with nothing changed
does no work and a changed param re-runs its stage and everything after it. `distill` (a student taught by
the full model; tasks/distill.py) does nothing unless `distill.enabled`. Training runs in-process,
or — with `train_pool` — as the `train/<pool>` deployment on a worker of that pool (flows/train_worker.py).
Every flow run is one MLflow parent run; each stage nests under it.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy

from flows import report, stages
from flows.request import STAGES, Request
from tasks.stage import StageResult

TRAINING = ("pilot", "full", "distill")
STAGE_RETRIES = dict.fromkeys(TRAINING, 2)  # training resumes from its last checkpoint on retry


@task(cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: p["key"]), persist_result=True)
def run_stage(stage: str, key: str, request: Request, train_pool: str | None = None) -> StageResult:
    """Run one stage (its cache key is computed by the flow from the stage's inputs)."""
    if train_pool and stage in TRAINING:
        from flows.train_worker import dispatch

        return dispatch(train_pool, stage, request)
    return request.run(stage)


def stage(name: str, request: Request, train_pool: str | None) -> StageResult:
    params, root = request.load(), request.root
    key = stages.cache_key(name, params, root)
    options = {"name": name, "retries": STAGE_RETRIES.get(name, 0), "retry_delay_seconds": 5}
    if not stages.outputs_present(name, params, root):
        options["refresh_cache"] = True  # a cached result whose files are gone is no result
    return run_stage.with_options(**options)(name, key, request, train_pool)


@flow(name="chat-pipeline", log_prints=True)
def chat_pipeline(overlays: list[str] = (), overrides: list[str] = (), workdir: str = ".",
                  train_pool: str | None = None) -> dict:
    """ingest → tokenizer → shard → pilot → gate → full → distill → eval → publish, on params.yaml + overlays
    + overrides."""
    base = Request(overlays=[str(Path(p).resolve()) for p in overlays], overrides=list(overrides),
                   workdir=str(Path(workdir).resolve()))
    base.load()  # bad params fail here, before any work
    with base.lock(), report.parent_run(base) as parent:
        request = base.with_parent(parent.run_id)
        results = {}
        for name in STAGES:
            results[name] = stage(name, request, train_pool)
            get_run_logger().info(results[name].summary)
        return report.publish(request, parent, results)
