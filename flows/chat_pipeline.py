"""The `chat-pipeline` Prefect flow: the pipeline diagram as code.

    ingest → tokenizer → shard → pilot → gate → full → distill → eval → publish

Each box is a Prefect task made from its entry in the stage table (tasks/pipeline.py) and calls the same
`run` as the CLI and DVC. A task takes the results of the stages it consumes, so Prefect's UI draws the
edges of the DAG; its cache key is the content hash of what it reads (flows/stages.py), so a re-run with
nothing changed does no work and a changed param or code file re-runs its stage and everything after it.
The gate stops the flow on an unhealthy pilot (a pilot stopped by a NaN loss included: the gate still
writes its report); the distillation runs only when `distill.enabled`. A crash is retried (training resumes
from its last checkpoint); our own errors and verdicts are not: the same inputs would end the same way.
Training runs in-process, or — with `train_pool` — as the `train/<pool>` deployment on a worker of that
pool, on this machine or another (flows/train_worker.py: artifacts through the store, `store.uri`). Task
results are persisted in the store too (flows/stages.py), so a retry elsewhere can read them. Every flow run is
one MLflow parent run; each stage nests under it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy

from chatpipe.flows import report, stages
from chatpipe.flows.request import Request
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.common.errors import ChatpipeError, GateFailed, StageFailed
from chatpipe.tasks.common.stage import StageResult


def crashed(task, task_run, state) -> bool:
    """Retry a crash (a killed worker, a lost connection, a bug that may not recur), never our own error: a NaN
    loss, a refused config or checkpoint is a verdict on the inputs, and the same run would end the same way."""
    return not isinstance(state.result(raise_on_failure=False), ChatpipeError)


def stage_task(name: str) -> Callable[..., StageResult]:
    """The flow's call for one stage: `stage(request, *consumed results, train_pool=None) -> StageResult`."""
    spec = PIPELINE[name]

    @task(name=name, cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda ctx, p: p["key"]), persist_result=True,
          retries=spec.retries, retry_delay_seconds=5, retry_condition_fn=crashed)
    def run(request: Request, consumes: tuple[StageResult, ...], key: str, train_pool: str | None
            ) -> tuple[StageResult]:
        # Prefect links a task's return value and its direct parts to the task run, by identity; a part of a
        # StageResult is its stage name, an interned string that the next stages' metrics repeat, which would
        # draw edges that are not there. Returned as (result,), only the result itself is linked.
        if train_pool and spec.dispatch:
            from chatpipe.flows.train_worker import dispatch

            return (dispatch(train_pool, name, request, key),)
        return (request.run(name),)

    def call(request: Request, *consumes: StageResult | None, train_pool: str | None = None) -> StageResult:
        params, root = request.load(), request.root
        fresh = {} if stages.outputs_present(spec, root) else {"refresh_cache": True}  # files gone: no result
        [result] = run.with_options(**fresh, result_storage=request.results)(
            request, tuple(r for r in consumes if r), stages.cache_key(spec, params, root), train_pool)
        get_run_logger().info(result.summary)
        if not result.ok and spec.halts:
            raise StageFailed(result.summary)
        return result

    return call


ingest, tokenizer, shard, pack = (stage_task(s) for s in ("ingest", "tokenizer", "shard", "pack"))
pilot, gate, full, sft, distill = (stage_task(s) for s in ("pilot", "gate", "full", "sft", "distill"))
evaluate, publish = stage_task("eval"), stage_task("publish")


@flow(name="chat-pipeline", log_prints=True)
def chat_pipeline(overlays: list[str] = (), overrides: list[str] = (), workdir: str = ".",
                  train_pool: str | None = None) -> dict:
    """ingest → tokenizer → shard → pack → pilot → gate → full → sft → distill → eval → publish, on
    params.yaml + overlays + overrides (pack and sft with sft.enabled, distill with distill.enabled)."""
    base = Request(overlays=[str(Path(p).resolve()) for p in overlays], overrides=list(overrides),
                   workdir=str(Path(workdir).resolve()))
    params = base.load()  # bad params fail here, before any work
    with base.lock(), report.parent_run(base) as parent:
        request = base.with_parent(parent.run_id).with_results(stages.result_storage(params, base.root))
        documents = ingest(request)
        bpe = tokenizer(request, documents)
        shards = shard(request, documents, bpe)
        rows = pack(request, documents, bpe) if params.sft.enabled else None
        pilot_run = pilot(request, shards, train_pool=train_pool)  # stopped by a NaN, it is judged all the same
        verdict = gate(request, pilot_run)
        if not verdict.ok:  # an unhealthy pilot: the full run never starts
            raise GateFailed(verdict.summary)
        base_model = full(request, verdict, shards, train_pool=train_pool)
        chat = sft(request, base_model, rows, train_pool=train_pool) if params.sft.enabled else None
        teacher = chat or base_model
        student = distill(request, teacher, train_pool=train_pool) if params.distill.enabled else None
        scores = evaluate(request, teacher, student)
        bundles = publish(request, scores)
        results = [documents, bpe, shards, rows, pilot_run, verdict, base_model, chat, teacher, student, scores,
                   bundles]
        return report.publish(request, parent, {r.stage: r for r in results if r})
