"""Training on a worker elsewhere (issue 18), for real on this machine: two directories with no path in common,
a real Prefect server, process workers started from the second directory's own clones, the GCS emulator as the
store. The flow in the first directory trains on the worker, which is killed mid-pilot; another worker, from a
third directory, resumes from the last uploaded checkpoint with the same per-step losses; the flow then gates,
evaluates and publishes what it fetched back, and the bundle lands in the bucket."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from chatpipe.flows.train_worker import check_code, code_identity
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ChatpipeError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.publish import gcs
from chatpipe.tasks.publish.store import Store
from chatpipe.tasks.train import loop

from conftest import BUCKET, MICRO, free_port, git_snapshot, linked

BIN = Path(sys.executable).parent
STORE = f"gs://{BUCKET}/store"
OVERRIDES = [*MICRO, "sft.enabled=false", "distill.enabled=false", "pilot.steps=18", "train.checkpoint.keep=2",
             f"store.uri={STORE}", f"publish.gcs.bucket={BUCKET}", "publish.registry=null"]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _csv(path: Path) -> list[list[str]]:
    return [line.split(",")[:2] for line in path.read_text().splitlines()]


def test_a_worker_that_differs_from_the_flow_refuses_in_one_line():
    mine = code_identity()
    check_code(mine)
    with pytest.raises(ChatpipeError) as e:
        check_code({"commit": "0123456789abcdef", "code": "f" * 64})
    assert "\n" not in str(e.value) and "commit 0123456789ab, code ffffffffffff" in str(e.value)
    assert f"code {mine['code'][:12]}" in str(e.value)


def test_worker_without_a_server_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path)}
    for extra, message in (({}, "PREFECT_API_URL is not set"),
                           ({"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}, "does not answer")):
        proc = subprocess.run([str(BIN / "chatpipe"), "worker", "--pool", "cuda"], env=env | extra,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("lost", ["marked", pytest.param("heartbeats", marks=pytest.mark.slow)])
def test_flow_trains_on_a_worker_elsewhere_through_the_store(tmp_path, emulator, gcs_env, monkeypatch, lost):
    """`lost`: how the killed worker's run comes to an end. "heartbeats": for real, by the automation of
    flows/lost_runs.py once its heartbeats stop (45 s here; about a minute more). "marked": by hand, as that
    automation would, after checking it is on the server (the fast test)."""
    laptop, box = git_snapshot(tmp_path / "laptop"), tmp_path / "gpu-box"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GOOGLE_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PATH": f"{BIN}:{env['PATH']}",
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "STORAGE_EMULATOR_HOST": emulator,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "CHATPIPE_LOST_AFTER_S": "45"}
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    procs = []

    def start(args, cwd, log):
        procs.append(subprocess.Popen(args, cwd=cwd, env={**env, "PYTHONPATH": str(cwd)}, stdin=subprocess.DEVNULL,
                                      stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    def run(*args, cwd=laptop):
        proc = subprocess.run(args, cwd=cwd, env={**env, "PYTHONPATH": str(cwd)}, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def worker(name):  # a GPU box: its own clone of the repository, its own directory, one command
        subprocess.run(["git", "clone", "-q", str(laptop), str(box / name)], check=True)
        return start([str(BIN / "chatpipe"), "worker", "--pool", "cpu", "--workdir", str(box / name / "work")],
                     box / name, tmp_path / f"{name}.log")

    store = Store(STORE)
    try:
        start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], laptop,
              tmp_path / "server.log")
        deadline = time.time() + 120
        while not _healthy(f"http://127.0.0.1:{port}/api/health"):
            assert time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(1)
        run(str(BIN / "prefect"), "work-pool", "create", "cpu", "--type", "process")
        run(str(BIN / "prefect"), "--no-prompt", "deploy", "-n", "train/cpu")
        first = worker("first")
        flow = start([str(BIN / "chatpipe"), "run", "-p", "configs/tiny.yaml", "--train-pool", "cpu",
                      *(f"-S{o}" for o in OVERRIDES)], laptop, tmp_path / "flow.log")
        deadline = time.time() + 240  # the pilot's step-6 checkpoint lands in the store: the worker dies
        while not [k for k in store.keys("runs") if k.endswith("/step-000006")]:
            assert time.time() < deadline and flow.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            time.sleep(0.05)
        dead = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
        for proc in dead:  # the worker and its flow run's process (Prefect starts that in a session of its own)
            proc.kill()
        psutil.wait_procs(dead, timeout=30)
        uploaded = store.keys("runs")
        assert not [k for k in uploaded if k.endswith("/step-000018")], "the pilot finished before the kill"
        if lost == "marked":  # a lost worker's run stays Running until flows/lost_runs.py's automation ends it
            run(str(BIN / "python"), "-c", CRASH)
        worker("second")
        assert flow.wait(timeout=400) == 0, (tmp_path / "flow.log").read_text()[-4000:]
        crashed = run(str(BIN / "python"), "-c", CRASHED).stdout.splitlines()  # the killed worker's run, ended
        assert crashed == ["its worker sent no heartbeat for 45 s: lost" if lost == "heartbeats"
                           else "its worker was lost"], crashed
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    pilot = json.loads((laptop / "metrics" / "pilot.json").read_text())
    assert pilot["resumed_at"] in (6, 12) and pilot["store"].startswith(f"{STORE}/runs/pilot-")
    assert Path(pilot["checkpoint"]).parent == laptop / "checkpoints" / "pilot"  # fetched back into this workdir
    assert "uploaded gs://" in (tmp_path / "second.log").read_text()  # the second worker trained and uploaded
    assert not (box / "first" / "work").is_relative_to(laptop) and not (laptop / "checkpoints" / "full").is_symlink()
    assert json.loads((laptop / "metrics" / "gate.json").read_text())["passed"]
    assert json.loads((laptop / "metrics" / "eval.json").read_text())["checkpoint"].startswith(
        str(laptop / "checkpoints" / "full"))
    assert (gcs.download(f"gs://{BUCKET}/models/chat-pipeline", tmp_path / "downloaded") / "model.safetensors").exists()
    assert store.backend.names("prefect-results/")  # Prefect's results are in the store

    # the same pilot, uninterrupted, here: the same per-step losses as the killed-and-resumed one
    reference = linked(tmp_path / "reference", Layout(laptop))
    params = load_params([PROJECT_ROOT / "configs" / "tiny.yaml"], [*OVERRIDES, "store.uri=null"],
                         base=laptop / "params.yaml")
    loop.run(params, Layout(reference), "pilot")
    assert _csv(laptop / "metrics" / "pilot_curve.csv") == _csv(reference / "metrics" / "pilot_curve.csv")

    # an object changed in the store after upload is detected on fetch
    key = pilot["store"].removeprefix(f"{STORE}/")
    store.backend.put_bytes(f"{key}/model.safetensors", b"not the weights")
    with pytest.raises(InputError, match=r"model.safetensors: checksum mismatch against _COMPLETE"):
        store.fetch(key, tmp_path / "fetched")


CRASH = """
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from chatpipe.flows.lost_runs import NAME

assert Automation.read(name=NAME).trigger.within.total_seconds() == 45
with get_client(sync_client=True) as client:
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    for run in client.read_flow_runs(flow_run_filter=running):
        if run.deployment_id:  # the train run; the flow itself runs here, not as a deployment
            client.set_flow_run_state(run.id, Crashed(message="its worker was lost"), force=True)
"""

CRASHED = """
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType

with get_client(sync_client=True) as client:
    crashed = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])))
    for run in client.read_flow_runs(flow_run_filter=crashed):
        print(run.state.message)
"""
