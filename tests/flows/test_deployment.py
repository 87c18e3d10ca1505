"""`prefect deployment run chat-pipeline/local` through a real local server and process worker, as the
README says: `chatpipe up`, the run, `chatpipe down`; from a git checkout (the training deployments clone the code
at the flow's commit), with the default store: a directory in the workdir, nothing to set up."""
import json
import os
import subprocess
import sys
from pathlib import Path

from chatpipe.tasks.train.backends.devices import DEVICES

from conftest import MICRO, free_port, git_snapshot, make_project

BIN = Path(sys.executable).parent


def test_deployment_run_on_local_server_and_worker(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PATH": f"{BIN}:{env['PATH']}",
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PYTHONPATH": str(git_snapshot(tmp_path / "checkout")),
            "CHATPIPE_WORKDIR": str(tmp_path / "worker")}  # not ~/.cache/chatpipe/work, which other runs share
    root = make_project(tmp_path / "proj")
    # CI installs Mesa's lavapipe, so training goes to the train/vulkan deployment for real; elsewhere train/cpu.
    # The distill phase's teacher runs in torch, which the Vulkan step does not: it is off on that pool.
    pool = "vulkan" if DEVICES["vulkan"].available() else "cpu"
    overrides = MICRO + ["distill.enabled=false", "sft.enabled=false"] if pool == "vulkan" else MICRO

    def run(*args, timeout=600):
        proc = subprocess.run([*args], capture_output=True, text=True, env=env, timeout=timeout)
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    try:
        up = run(str(BIN / "chatpipe"), "up", "--port", str(port))
        assert "prefect deployment run chat-pipeline/local" in up.stdout
        assert f"pools local, cpu{', vulkan' if pool == 'vulkan' else ''}" in up.stdout
        # training goes on to the train/<pool> deployment, picked up by that pool's worker
        done = run(str(BIN / "prefect"), "deployment", "run", "chat-pipeline/local", "--watch",
                   "--param", f"workdir={root}", "--param", f"overrides={json.dumps(overrides)}",
                   "--param", f"train_pool={pool}")
        assert "Completed" in done.stdout + done.stderr
        env["COLUMNS"] = "250"  # so the table does not abbreviate the state
        trains = run(str(BIN / "prefect"), "flow-run", "ls", "--flow-name", "train", "--state", "COMPLETED")
        phases = 3 if pool == "cpu" else 2  # pilot, full and (where it is on) distill ran there
        assert trains.stdout.count("COMPLETED") == phases, trains.stdout
    finally:
        subprocess.run([str(BIN / "chatpipe"), "down"], env=env, capture_output=True, timeout=120)
    assert json.loads((root / "metrics" / "gate.json").read_text())["passed"]
    assert json.loads((root / "metrics" / "full.json").read_text())["device"].startswith(f"{pool} (requested), ")
    assert (root / "dist" / "chat-pipeline" / "checksums.json").exists()        # eval and publish ran too
    assert [p.name for p in (root / "store" / "runs").iterdir()] and any((root / "store" / "prefect-results").iterdir())
    assert (root / "dist" / "chat-pipeline-ternary" / "checksums.json").exists() == (pool == "cpu")  # the student
