"""The training deployment: `train/<pool>` runs one training phase on a worker of that pool, on any machine.

A GPU box runs `chatpipe worker --pool cuda`; the chat-pipeline flow, started anywhere, hands it the pilot, the
full run, sft or the distillation and waits. The two share no disk: what the phase reads and writes travels
through the artifact store (`store.uri`, tasks/publish/store.py), and the flow run passes only keys and URIs.

The flow side (`dispatch`) puts the phase's inputs in the store by content key (its table entry's inputs: the
tokenizer, the shards or sft rows, and the latest checkpoint of each phase it starts from), runs `train/<pool>`
with the keys, the params (resolved: no file of the laptop is named), and its code's identity, then fetches the
phase's last checkpoint into its own workdir; the metrics files come back in the run's result. Gate, eval and
publish then run there unchanged.

The worker side (`train`) refuses in one line when its code is not the flow's (the commit, and the code's hash,
which also catches uncommitted edits); fetches the inputs into its own directory ($CHATPIPE_WORKDIR, which
`chatpipe worker` sets); restores the phase's latest checkpoint from the store, so a worker that takes over from
a killed one resumes exactly where the last upload left off (tasks/train/resume.py: same per-step losses);
trains, uploading each checkpoint as it is written; and returns keys, metrics and the metrics files.

A phase that fails there on our own error (ChatpipeError: a refused config, a NaN; read from the run's result in
the store) fails the flow; any other end (crashed, cancelled, a run that outlived its killed worker and broke on
its pipe) is retried by the flow's task, on whichever worker polls, from the store's last checkpoint. A run whose
worker died outright is marked Crashed when its heartbeats stop (flows/lost_runs.py).

A run's checkpoints live under `runs/<stage cache key>/step-NNNNNN/` (flows/stages.py: the hash of its params,
code and inputs): the same run resumes there, a changed one starts afresh. Prefect's results go to the store
too (`flows/stages.py: result_storage`, passed to the worker's run as PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK), so
the flow reads the worker's return value and a retry elsewhere reads what ran before. The code reaches the
worker by the deployment's pull step (prefect.yaml: git_clone of CHATPIPE_REPO at CHATPIPE_COMMIT, which
`dispatch` sets for each run).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from chatpipe.flows import lost_runs
from chatpipe.flows.request import Request
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import PROJECT_ROOT, params_dict
from chatpipe.tasks.common.errors import ChatpipeError
from chatpipe.tasks.common.hashing import code_hash
from chatpipe.tasks.common.stage import StageResult
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.publish.store import Store
from chatpipe.tasks.train import checkpoint

CODE = ("chatpipe", "flows", "tasks", "model", "kernels")  # what must be the same on both sides


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_identity() -> dict:
    """The commit this code was checked out at (None outside git) and the hash of the code itself."""
    return {"commit": _git("rev-parse", "HEAD"), "code": code_hash(CODE, PROJECT_ROOT)}


def _describe(identity: dict) -> str:
    return f"commit {(identity.get('commit') or 'none')[:12]}, code {identity['code'][:12]}"


def check_code(origin: dict) -> None:
    """One line naming both when this worker's code is not the code of the flow that sent the run."""
    mine = code_identity()
    if mine["code"] != origin["code"]:
        raise ChatpipeError(f"this worker runs other code ({_describe(mine)}) than the flow ({_describe(origin)}); "
                            "start the worker from the flow's commit, or let the deployment's pull step fetch it")


def _inputs(phase: str, root: Path) -> dict[str, Path]:
    """What the phase reads, by path relative to the workdir: its table entry's directories, a checkpoint
    directory as its latest checkpoint (the metrics files it lists are for DVC, not for training)."""
    found = {}
    for rel in PIPELINE[phase].inputs:
        path = root / rel
        if rel.startswith("checkpoints/"):
            path = checkpoint.latest(path)
        if path is not None and path.is_dir():
            found[str(path.relative_to(root))] = path
    return found


@flow(name="train")
def train(phase: str, params: dict, store: str, inputs: dict[str, str], run: str, origin: dict,
          device: str | None = None) -> dict:
    """Train one phase on this worker from the store's inputs (`dispatch` sends every argument but `device`), on
    `device` (the deployment's: train/vulkan trains on Vulkan) or else the params' train.device; returns the last
    checkpoint's key, the metrics and the metrics files."""
    check_code(origin)
    workdir = Path(os.environ.get("CHATPIPE_WORKDIR", "~/.cache/chatpipe/work")).expanduser().resolve() / run
    artifacts = Store(store, workdir)
    for rel, key in inputs.items():
        artifacts.fetch(key, workdir / rel)
    if done := artifacts.keys(run):  # a worker before this one uploaded some: resume from the last
        artifacts.fetch(done[-1], workdir / "checkpoints" / phase / Path(done[-1]).name)
    atomic.write_bytes(workdir / "params.yaml", yaml.safe_dump(params, sort_keys=False).encode())
    pinned = [f"train.device={device}"] if device else []
    log = get_run_logger()  # not print: a worker that died leaves its run's stdout a broken pipe

    def upload(path: Path) -> None:
        log.info("uploaded %s", artifacts.put(path, f"{run}/{path.name}"))  # skipped when the store has it whole

    result = Request([], pinned, str(workdir)).run(phase, on_checkpoint=upload)
    log.info(result.summary)
    if last := checkpoint.latest(workdir / "checkpoints" / phase):  # trained here before, and done: no save ran
        upload(last)
    spec = PIPELINE[phase]
    files = [spec.metrics, *(p.path for p in spec.plots)]
    return {"summary": result.summary, "metrics": result.metrics, "ok": result.ok,
            "checkpoint": f"{run}/{last.name}" if last else None,
            "files": {rel: (workdir / rel).read_text() for rel in files if (workdir / rel).exists()}}


def repository() -> str:
    """Where workers clone the code from: $CHATPIPE_REPO, else this checkout's `origin`, else the checkout itself."""
    return os.environ.get("CHATPIPE_REPO") or _git("remote", "get-url", "origin") or str(PROJECT_ROOT)


def dispatch(pool: str, phase: str, request: Request, key: str) -> StageResult:
    """Run `phase` as the `train/<pool>` deployment and wait for it; its last checkpoint and metrics files are then
    in this workdir. `key`: the stage's cache key (where its checkpoints go)."""
    from prefect.deployments import run_deployment

    params, root = request.load(), request.root
    artifacts = Store(params.store.uri, root)
    inputs = {rel: artifacts.put_content(path, "checkpoint" if rel.startswith("checkpoints/") else path.name)
              for rel, path in _inputs(phase, root).items()}
    origin = code_identity()
    env = {"CHATPIPE_REPO": repository(), "CHATPIPE_COMMIT": origin["commit"] or "",
           "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": request.results, "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(lost_runs.HEARTBEAT_S)}
    lost_runs.ensure()  # a run whose worker dies is marked Crashed, and retried below
    run = run_deployment(f"train/{pool}", parameters={
        "phase": phase, "params": params_dict(params), "store": artifacts.uri, "inputs": inputs,
        "run": f"runs/{key}", "origin": origin}, job_variables={"env": env}, tags=[lost_runs.TAG])
    state = run.state
    if state is None or not state.is_completed():
        ended = f"train/{pool} ({phase}) ended {state.name if state else 'unknown'}: {state.message if state else ''}"
        if state and state.is_failed() and isinstance(state.result(raise_on_failure=False), ChatpipeError):
            raise ChatpipeError(ended)  # the phase failed there, on its inputs: the same run would fail again
        raise RuntimeError(ended)  # crashed, cancelled, or not our error (a dead worker's broken pipe): retried
    out = state.result()  # from the store: the worker wrote it there
    metrics = out["metrics"]
    if out["checkpoint"]:
        with atomic.atomic_dir(root / "checkpoints" / phase) as tmp:  # only the run's own: eval takes the latest
            artifacts.fetch(out["checkpoint"], tmp / Path(out["checkpoint"]).name)
        metrics["checkpoint"] = str(root / "checkpoints" / phase / Path(out["checkpoint"]).name)
    metrics["store"] = artifacts.url(out["checkpoint"]) if out["checkpoint"] else None
    for rel, text in out["files"].items():
        atomic.write_bytes(root / rel, text.encode())
    atomic.write_json(root / PIPELINE[phase].metrics, metrics)
    stopped = metrics.get("stopped")  # a NaN loss ended it early
    return StageResult(phase, f"train {phase}: {stopped or 'done'} on pool {pool} (flow run {run.name}; "
                              f"checkpoint {metrics['store']})", metrics, ok=out["ok"])
