"""The chat-pipeline flow end to end on a real (test-harness) Prefect server with real MLflow."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MICRO, clone_code, make_project
from conftest import TINY_OVERLAY as TINY

EDGES = {"tokenizer": {"ingest"}, "shard": {"ingest", "tokenizer"}, "pilot": {"shard"}, "gate": {"pilot"},
         "full": {"gate", "shard"}, "distill": {"full"}, "eval": {"full", "distill"}, "publish": {"eval"}}


@pytest.fixture(scope="module", autouse=True)
def prefect_server(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    with prefect_test_harness(server_startup_timeout=120):
        yield


def dag(flow_run_id: str) -> dict[str, set[str]]:
    """Each task of a flow run and the tasks whose results it took: the edges Prefect's UI draws."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = {r.id: r.name.rsplit("-", 1)[0] for r in runs}
    return {names[r.id]: {names[i.id] for inputs in r.task_inputs.values() for i in inputs if i.id in names}
            for r in runs}


def mtimes(root, *paths):
    return {p: (root / p).stat().st_mtime_ns for p in paths}


def test_flow_runs_caches_and_reruns_only_what_changed(tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    from flows.chat_pipeline import chat_pipeline

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
    assert parent.data.params["train.pilot_steps"] == "12"
    assert {stage: consumed for stage, consumed in dag(tags["chatpipe.flow_run_id"]).items() if consumed} == EDGES
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["distill", "eval", "full", "gate", "ingest", "pilot", "publish",
                                                         "publish chat-pipeline-ternary", "shard", "tokenizer"]
    assert summary["student_bundle"] == "dist/chat-pipeline-ternary" and summary["student_gap"]["bundle_size_ratio"] > 1
    assert "Teacher vs student" in (root / "reports" / "eval.md").read_text()
    evaluation = next(r for r in children if r.info.run_name == "eval").data.metrics
    assert {"comparison.gap.val_loss", "comparison.gap.val_bpb", "comparison.student.bundle_bytes",
            "comparison.teacher.generation_tokens_per_s"} <= set(evaluation)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {"report/loss.png", "report/report.md"}
    assert "Health gate: PASSED" in (root / "reports" / parent.info.run_id / "report.md").read_text()

    # nothing changed: every stage is a cache hit, no file is rewritten
    watched = ("metrics/ingest.json", "metrics/tokenizer.json", "metrics/shard.json", "metrics/pilot.json",
               "metrics/gate.json", "metrics/full.json", "metrics/distill.json", "metrics/eval.json",
               "metrics/publish.json")
    before = mtimes(root, *watched)
    again = chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root))
    assert mtimes(root, *watched) == before and again["full_loss"] == summary["full_loss"]

    # one param of the shard stage changed: shard and everything after it re-run, ingest and tokenizer don't
    chat_pipeline(overlays=[TINY], overrides=[*MICRO, "shard.shard_tokens=32768"], workdir=str(root))
    after = mtimes(root, *watched)
    assert [p for p in watched if after[p] != before[p]] == list(watched[2:])
    assert list((root / "checkpoints").glob("pilot.replaced-*"))     # old checkpoints moved aside, not resumed

    # an output deleted by hand is rebuilt even though the key is cached
    shutil.rmtree(root / "data" / "shards")
    chat_pipeline(overlays=[TINY], overrides=[*MICRO, "shard.shard_tokens=32768"], workdir=str(root))
    assert (root / "data" / "shards" / "manifest.json").exists()

    # the training step's code edited in a clone, whose `chatpipe run` drives the same directory: pilot and
    # every stage after it re-run (training from scratch, not resumed), the data stages are cache hits
    clone = clone_code(tmp_path / "clone")
    step = clone / "tasks" / "train" / "loop.py"
    step.write_text(step.read_text() + "\n# an edit of the training step\n")
    env = os.environ | {"PYTHONPATH": str(clone), "PREFECT_API_URL": PREFECT_API_URL.value()}
    where = subprocess.run([sys.executable, "-c", "from tasks.common.config import PROJECT_ROOT; print(PROJECT_ROOT)"],
                           cwd=clone, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(clone)  # the clone's code is what runs
    before, replaced = mtimes(root, *watched), len(list((root / "checkpoints").glob("pilot.replaced-*")))
    overrides = [arg for o in [*MICRO, "shard.shard_tokens=32768"] for arg in ("-S", o)]
    proc = subprocess.run([str(Path(sys.executable).parent / "chatpipe"), "run", "-C", str(root), "-p", TINY,
                           *overrides], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = mtimes(root, *watched)
    assert [p for p in watched if after[p] != before[p]] == list(watched[3:])
    assert len(list((root / "checkpoints").glob("pilot.replaced-*"))) == replaced + 1


def test_gate_stops_a_diverging_run(tmp_path):
    from flows.chat_pipeline import chat_pipeline
    from tasks.common.errors import GateFailed

    root = make_project(tmp_path / "proj")
    diverging = [*MICRO, "train.lr=3.0", "train.warmup_steps=1", "gate.max_loss=4.0"]
    with pytest.raises(GateFailed, match="gate failed: .*metrics/gate.json"):
        chat_pipeline(overlays=[TINY], overrides=diverging, workdir=str(root))
    gate = json.loads((root / "metrics" / "gate.json").read_text())
    assert not gate["passed"] and any(c["verdict"] == "fail" for c in gate["checks"])
    assert not (root / "metrics" / "full.json").exists() and not list((root / "checkpoints" / "full").glob("step-*"))


def test_bad_params_fail_fast_and_busy_directory_is_refused(tmp_path):
    from flows.chat_pipeline import chat_pipeline
    from flows.request import Request
    from tasks.common.errors import ChatpipeError, ConfigError

    root = make_project(tmp_path / "proj")
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):
        chat_pipeline(overlays=[TINY], overrides=["tokenizer.vocab_size=huge"], workdir=str(root))
    assert not (root / "data" / "documents").exists()
    with Request(workdir=str(root)).lock():
        with pytest.raises(ChatpipeError, match="in use by another chat-pipeline run"):
            chat_pipeline(overlays=[TINY], overrides=MICRO, workdir=str(root))
