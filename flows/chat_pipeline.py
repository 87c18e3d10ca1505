"""The `chat-pipeline` Prefect flow: the pipeline diagram as code.

    ingest ──► tokenizer ──► shard ──► pilot ──► gate ──► full ──► [sft] ──► [distill] ──► eval ──► publish
                       └──► [pack] ──────────────────────────────────┘

The flow walks the stage table (tasks/pipeline.py) in order. Each box is a Prefect task made from its entry,
calling the same `run` as the CLI and DVC and handed the results of its upstream stages that ran (those that
write its inputs), so Prefect's UI draws the DAG from the table's files. A [box] runs only when its params
switch is on (pack and sft: `sft.enabled`; distill: `distill.enabled`); its consumers then read what came
before it (eval takes the full model). The gate's verdict on an unhealthy pilot, a pilot stopped by a NaN loss
included, ends the flow with GateFailed. A task's cache key is the content hash of what it reads
(flows/stages.py): a re-run with nothing changed does no work. A crash is retried, training from its last
checkpoint; our own errors and verdicts are not. Training runs in-process or, with `train_pool`, as the
`train/<pool>` deployment on a worker of that pool, here or elsewhere (flows/train_worker.py); task results
persist in the store (`store.uri`), so a retry elsewhere can read them. Every flow run is one MLflow parent
run; each stage nests under it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy

from chatpipe.flows import report, stages
from chatpipe.flows.request import Request
from chatpipe.tasks.common.errors import ChatpipeError
from chatpipe.tasks.common.stage import StageResult
from chatpipe.tasks.pipeline import PIPELINE, UPSTREAM


def crashed(task, task_run, state) -> bool:
    """Retry a crash (a killed worker, a lost connection, a bug that may not recur), never our own error: a NaN
    loss, a refused config or checkpoint is a verdict on the inputs, and the same run would end the same way."""
    return not isinstance(state.result(raise_on_failure=False), ChatpipeError)


def stage_task(name: str) -> Callable[..., StageResult]:
    """The flow's call for one stage: `stage(request, upstream results, train_pool) -> StageResult`."""
    spec = PIPELINE[name]

    @task(name=name, cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: p["key"]), persist_result=True,
          retries=spec.retries, retry_delay_seconds=5, retry_condition_fn=crashed)
    def run(request: Request, upstream: list[StageResult], key: str, train_pool: str | None) -> tuple[StageResult]:
        # `upstream` is for Prefect, which draws an edge from each task run whose result a task takes; the
        # stage reads its inputs' files. Prefect links a task's return value and its direct parts to the task
        # run, by identity; a part of a StageResult is its stage name, an interned string that the next stages'
        # metrics repeat, which would draw edges that are not there. Returned as (result,), only the result
        # itself is linked.
        if train_pool:
            from chatpipe.flows.train_worker import dispatch

            return (dispatch(train_pool, name, request, key),)
        return (request.run(name),)

    def call(request: Request, upstream: list[StageResult], train_pool: str | None) -> StageResult:
        params, root = request.load(), request.root
        fresh = {} if stages.outputs_present(spec, root) else {"refresh_cache": True}  # files gone: no result
        [result] = run.with_options(**fresh, result_storage=request.results)(
            request, upstream, stages.cache_key(spec, params, root), train_pool if spec.dispatch else None)
        get_run_logger().info(result.summary)
        if not result.ok and spec.halts:
            raise spec.halts(result.summary)
        return result

    return call


TASKS = {name: stage_task(name) for name in PIPELINE}


@flow(name="chat-pipeline", log_prints=True)
def chat_pipeline(overlays: list[str] = (), overrides: list[str] = (), workdir: str = ".",
                  train_pool: str | None = None) -> dict:
    """The stage table's stages in order, on params.yaml + overlays + overrides; returns the run's summary."""
    base = Request(overlays=[str(Path(p).resolve()) for p in overlays], overrides=list(overrides),
                   workdir=str(Path(workdir).resolve()))
    params = base.load()  # bad params fail here, before any work
    with base.lock(), report.parent_run(base) as parent:
        request = base.with_parent(parent.run_id).with_results(stages.result_storage(params, base.root))
        ran: dict[str, StageResult] = {}
        for name, stage in PIPELINE.items():
            if stages.enabled(stage, params):  # pack, sft: sft.enabled; distill: distill.enabled
                upstream = [ran[u] for u in UPSTREAM[name] if u in ran]  # Prefect draws an edge from each
                ran[name] = TASKS[name](request, upstream, train_pool)  # the gate's verdict may stop it here
        return report.publish(request, parent, ran)
