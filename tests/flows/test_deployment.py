"""`prefect deployment run chat-pipeline/local` through a real local server and process worker, as the
README says: `chatpipe up`, the run, `chatpipe down`; from a git checkout (the training deployments clone the code
at the flow's commit), with the default store: a directory in the workdir, nothing to set up. The user's Prefect
profile points at a server of its own; it is byte for byte as it was after all that (issue 26, item 6), and after
`down`, `chatpipe run` uses it again, not the stopped server."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatpipe.tasks.train.backends.devices import DEVICES

from conftest import MICRO, free_port, git_snapshot, make_project

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration  # `make test-quick` leaves it out


def test_deployment_run_on_local_server_and_worker(tmp_path):
    port, theirs = free_port(), f"http://127.0.0.1:{free_port()}/api"  # the user's own server (not running)
    home = tmp_path / "prefect-home"
    profiles = home / "profiles.toml"  # where Prefect reads profiles from: $PREFECT_HOME/profiles.toml
    home.mkdir()
    profiles.write_text(f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{theirs}"\n')
    before = profiles.read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_HOME": str(home), "PATH": f"{BIN}:{env['PATH']}",
            "PYTHONPATH": str(git_snapshot(tmp_path / "checkout")),
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
        [url] = re.findall(r"export PREFECT_API_URL=(\S+)", up.stdout)  # what the prefect CLI needs, as printed
        assert url == f"http://127.0.0.1:{port}/api" and profiles.read_bytes() == before
        env["PREFECT_API_URL"] = url
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
        down = subprocess.run([str(BIN / "chatpipe"), "down"], env=env, capture_output=True, text=True, timeout=120)
    assert "now unset PREFECT_API_URL" in down.stdout, down.stderr
    assert profiles.read_bytes() == before
    env.pop("PREFECT_API_URL")  # as `down` said: `chatpipe run` goes to the profile's server, not the stopped one
    after = subprocess.run([str(BIN / "chatpipe"), "run", "-C", str(root)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert after.returncode == 2 and f"answers at {theirs} (PREFECT_API_URL of Prefect profile 'mine')" in after.stderr
    assert url not in after.stderr, after.stderr
    assert json.loads((root / "metrics" / "gate.json").read_text())["passed"]
    assert json.loads((root / "metrics" / "full.json").read_text())["device"].startswith(f"{pool} (requested), ")
    assert (root / "dist" / "chat-pipeline" / "checksums.json").exists()        # eval and publish ran too
    assert [p.name for p in (root / "store" / "runs").iterdir()] and any((root / "store" / "prefect-results").iterdir())
    assert (root / "dist" / "chat-pipeline-ternary" / "checksums.json").exists() == (pool == "cpu")  # the student
