"""The chat-pipeline flow end to end on a real (test-harness) Prefect server with real MLflow."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chatpipe.tasks.pipeline import PIPELINE, UPSTREAM

from conftest import MICRO, clone_code, make_project
from conftest import TINY_OVERLAY as TINY


@pytest.fixture(scope="module", autouse=True)
def prefect_server(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs(flow_run_id) -> dict:
    """The task runs of a flow run, by stage."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def dag(flow_run_id: str) -> dict[str, set[str]]:
    """Each task of a flow run and the tasks whose results it took: the edges Prefect's UI draws."""
    runs = task_runs(flow_run_id)
    names = {r.id: name for name, r in runs.items()}
    return {name: {names[i.id] for inputs in r.task_inputs.values() for i in inputs if i.id in names}
            for name, r in runs.items()}


def break_training_forward(monkeypatch, at: int, how) -> None:
    """The model's `at`-th training forward pass (counting every phase's steps in order) goes wrong, once."""
    from chatpipe.model.transformer import Transformer

    real, calls = Transformer.forward, {"n": 0}

    def forward(self, idx, targets=None, **kw):
        logits, loss = real(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] == at:
                loss = how(loss)
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", forward)


def mtimes(root, *paths):
    return {p: (root / p).stat().st_mtime_ns for p in paths}


WATCHED = [stage.metrics for stage in PIPELINE.values()]  # metrics/<stage>.json, rewritten when the stage runs


def downstream(start: str) -> list[str]:
    """The metrics files of `start` and of every stage that reads what it writes, directly or not."""
    reached = {start}
    for name, ups in UPSTREAM.items():  # in table order: a stage's upstream comes before it
        if reached & set(ups):
            reached.add(name)
    return [path for path, name in zip(WATCHED, PIPELINE) if name in reached]


@pytest.mark.integration
def test_flow_runs_caches_and_reruns_only_what_changed(tmp_path):
    from mlflow.tracking import MlflowClient

    from chatpipe.flows.chat_pipeline import chat_pipeline

    root = make_project(tmp_path / "proj")
    summary = chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root))
    assert summary["gate"] == "passed" and summary["checkpoint"].endswith("full/step-000006")
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert gate["passed"] and len(gate["checks"]) == 7

    # MLflow: one parent run, a nested run per stage, tagged with lineage
    client = MlflowClient(summary["tracking_uri"])
    parent = client.get_run(summary["mlflow_run_id"])
    tags = parent.data.tags
    assert tags["chatpipe.flow_run_id"] and tags["chatpipe.git_commit"] and len(tags["chatpipe.tokenizer_sha256"]) == 64
    assert parent.data.params["pilot.steps"] == "12"
    assert dag(tags["chatpipe.flow_run_id"]) == {stage: set(ups) for stage, ups in UPSTREAM.items()}  # the table's DAG
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted([*PIPELINE, "publish chat-pipeline-ternary"])
    assert summary["student_bundle"] == "dist/chat-pipeline-ternary" and summary["student_gap"]["bundle_size_ratio"] > 1
    assert "Teacher vs student" in (root / "reports" / "eval.md").read_text()
    evaluation = next(r for r in children if r.info.run_name == "eval").data.metrics
    assert {"comparison.gap.val_loss", "comparison.gap.val_bpb", "comparison.student.bundle_bytes",
            "comparison.teacher.generation_tokens_per_s"} <= set(evaluation)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {"report/loss.png", "report/report.md"}
    assert "Health gate: PASSED" in (root / "reports" / parent.info.run_id / "report.md").read_text()

    # nothing changed: every stage is a cache hit, no file is rewritten
    before = mtimes(root, *WATCHED)
    again = chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root))
    assert mtimes(root, *WATCHED) == before and again["full_loss"] == summary["full_loss"]

    # one param of the shard stage changed: shard and what reads it, directly or not, re-run; ingest, tokenizer
    # and pack (it reads no shards) don't
    chat_pipeline(overlays=[TINY], overrides=[*MICRO, "shard.shard_tokens=32768"], workdir=str(root))
    after = mtimes(root, *WATCHED)
    assert [p for p in WATCHED if after[p] != before[p]] == downstream("shard")
    assert "metrics/pack.json" not in downstream("shard") and "metrics/sft.json" in downstream("shard")
    assert list((root / "checkpoints").glob("pilot.replaced-*"))     # old checkpoints moved aside, not resumed

    # an output deleted by hand is rebuilt even though the key is cached
    shutil.rmtree(root / "data" / "shards")
    chat_pipeline(overlays=[TINY], overrides=[*MICRO, "shard.shard_tokens=32768"], workdir=str(root))
    assert (root / "data" / "shards" / "manifest.json").exists()

    # the training step's code edited in a clone, whose `chatpipe run` drives the same directory on Prefect's
    # temporary server, as `make demo` does: pilot and every stage after it re-run (training from scratch, not
    # resumed), the data stages are cache hits; the output is the stages' summaries, no traceback
    clone = clone_code(tmp_path / "clone")
    step = clone / "tasks" / "train" / "loop.py"
    step.write_text(step.read_text() + "\n# an edit of the training step\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PYTHONPATH": str(clone)}
    where = subprocess.run([sys.executable, "-c", "from tasks.common.config import PROJECT_ROOT; print(PROJECT_ROOT)"],
                           cwd=clone, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(clone)  # the clone's code is what runs
    before, replaced = mtimes(root, *WATCHED), len(list((root / "checkpoints").glob("pilot.replaced-*")))
    overrides = [arg for o in [*MICRO, "shard.shard_tokens=32768"] for arg in ("-S", o)]
    proc = subprocess.run([str(Path(sys.executable).parent / "chatpipe"), "run", "-C", str(root), "-p", TINY,
                           *overrides], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "ERROR" not in out and "temporary server" not in out, out[-3000:]
    assert out.count("Finished in state") == 1  # the flow's; the tasks' own lines are their summaries
    after = mtimes(root, *WATCHED)
    assert [p for p in WATCHED if after[p] != before[p]] == downstream("pilot")  # every stage after the data ones
    assert len(list((root / "checkpoints").glob("pilot.replaced-*"))) == replaced + 1


@pytest.mark.integration
def test_a_nan_pilot_is_judged_by_the_gate_and_not_retried(tmp_path, monkeypatch):
    from chatpipe.flows.chat_pipeline import chat_pipeline
    from chatpipe.tasks.common.errors import GateFailed

    root = make_project(tmp_path / "proj")
    break_training_forward(monkeypatch, 6, lambda loss: loss * float("nan"))  # the pilot's step 6
    state = chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root), return_state=True)
    with pytest.raises(GateFailed, match=r"gate failed: finite 2 > 0;"):  # its loss and its grad norm
        state.result()
    checks = {c["name"]: c for c in json.loads((root / "metrics" / "gate.json").read_text())["checks"]}
    assert checks["finite"]["verdict"] == "fail" and "loss nan at step 6" in checks["finite"]["detail"]
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["pilot"].run_count == 1 and "full" not in runs   # a verdict on the inputs: not retried


@pytest.mark.integration
def test_a_refused_config_is_not_retried(tmp_path):
    from chatpipe.flows.chat_pipeline import chat_pipeline
    from chatpipe.tasks.common.errors import ConfigError

    root = make_project(tmp_path / "proj")
    state = chat_pipeline(overlays=[TINY], overrides=[*MICRO, "train.kernels=triton", "train.device=auto"],
                          workdir=str(root), return_state=True)  # auto is cpu here: refused when the pilot builds
    with pytest.raises(ConfigError, match="train.kernels: triton kernels run on CUDA"):
        state.result()
    assert task_runs(state.state_details.flow_run_id)["pilot"].run_count == 1


@pytest.mark.integration
def test_a_crash_is_retried_and_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    from chatpipe.flows.chat_pipeline import chat_pipeline

    def crash(loss):
        raise RuntimeError("a simulated crash of the worker")

    root = make_project(tmp_path / "proj")
    break_training_forward(monkeypatch, 12 + 5, crash)  # the full run's step 5, after its checkpoint at 4
    summary = chat_pipeline(overlays=[TINY], overrides=[*MICRO, "train.checkpoint.every=2"], workdir=str(root))
    assert summary["checkpoint"].endswith("full/step-000006")
    full = json.loads((root / "metrics" / "full.json").read_text())
    assert full["resumed_at"] == 4 and full["steps"] == 6
    parent = summary["mlflow_run_id"]
    from mlflow.tracking import MlflowClient
    flow_run_id = MlflowClient(summary["tracking_uri"]).get_run(parent).data.tags["chatpipe.flow_run_id"]
    assert task_runs(flow_run_id)["full"].run_count == 2


@pytest.mark.integration
def test_gate_stops_a_diverging_run(tmp_path):
    from chatpipe.flows.chat_pipeline import chat_pipeline
    from chatpipe.tasks.common.errors import GateFailed

    root = make_project(tmp_path / "proj")
    diverging = [*MICRO, "train.optimizer.lr=3.0", "train.schedule.warmup_steps=1", "gate.max_loss=4.0"]
    with pytest.raises(GateFailed, match="gate failed: .*metrics/gate.json"):
        chat_pipeline(overlays=[TINY], overrides=diverging, workdir=str(root))
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert not gate["passed"] and any(c["verdict"] == "fail" for c in gate["checks"])
    assert not (root / "metrics" / "full.json").exists() and not list((root / "checkpoints" / "full").glob("step-*"))


@pytest.mark.integration
def test_bad_params_fail_fast_and_busy_directory_is_refused(tmp_path):
    from chatpipe.flows.chat_pipeline import chat_pipeline
    from chatpipe.flows.request import Request
    from chatpipe.tasks.common.errors import ChatpipeError, ConfigError

    root = make_project(tmp_path / "proj")
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):
        chat_pipeline(overlays=[TINY], overrides=["tokenizer.vocab_size=huge"], workdir=str(root))
    assert not (root / "data" / "documents").exists()
    with Request(workdir=str(root)).lock():
        with pytest.raises(ChatpipeError, match="in use by another chat-pipeline run"):
            chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root))
