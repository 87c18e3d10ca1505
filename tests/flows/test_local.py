"""`chatpipe run` and `chatpipe down` against servers that are not there (issue 26, item 6), in seconds: a
Prefect server that does not answer is refused before any work, in one line naming it and the two ways out; after
`chatpipe down`, nothing of ours points at the stopped server. The real `up` → deployment run → `down`, with a
user's profile left byte for byte as it was, is tests/flows/test_deployment.py."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent


def _env(home: Path, **extra: str) -> dict:
    """No Prefect or MLflow settings of the caller's: a PREFECT_HOME (and so a profiles file) of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"PREFECT_HOME": str(home)} | extra


def _chatpipe(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "chatpipe"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_run_refuses_a_prefect_api_url_that_does_not_answer(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    proc = _chatpipe("run", "-p", "configs/tiny.yaml", "-C", str(tmp_path), env=_env(tmp_path, PREFECT_API_URL=url))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"chatpipe: error: no Prefect server answers at {url} ($PREFECT_API_URL)")
    assert "start it with `chatpipe up --port" in proc.stderr and "`unset PREFECT_API_URL`" in proc.stderr
    assert "to run on a temporary server" in proc.stderr


def test_down_stops_what_up_started_and_forgets_its_server(tmp_path):
    """What `up` leaves (a pid per process, the server's URL) after its server died: `run` says so; `down` stops
    the rest and forgets the URL, so `run` goes back to the user's own setting (here a profile's, also down)."""
    home, state = tmp_path / "prefect-home", tmp_path / "prefect-home" / "chatpipe-local"
    ours, theirs = (f"http://127.0.0.1:{free_port()}/api" for _ in range(2))
    state.mkdir(parents=True)
    (state / "api-url").write_text(ours + "\n")
    worker = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (state / "worker-cpu.pid").write_text(str(worker.pid))
    profiles = home / "profiles.toml"
    profiles.write_text(f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{theirs}"\n')
    before = profiles.read_bytes()
    env = _env(home)
    try:
        stale = _chatpipe("run", "-C", str(tmp_path), env=env)
        assert stale.returncode == 2 and stale.stderr.count("\n") == 1, stale.stderr
        assert f"at {ours} (started by `chatpipe up`)" in stale.stderr and "or `chatpipe down` to run" in stale.stderr

        down = _chatpipe("down", env=env | {"PREFECT_API_URL": ours})  # the user exported it, as `up` said
        assert down.returncode == 0 and "now unset PREFECT_API_URL" in down.stdout, down.stderr
        assert worker.wait(timeout=5) == -signal.SIGTERM and not list(state.iterdir())

        after = _chatpipe("run", "-C", str(tmp_path), env=env)
        assert after.returncode == 2 and after.stderr.count("\n") == 1, after.stderr
        assert f"at {theirs} (PREFECT_API_URL of Prefect profile 'mine')" in after.stderr and ours not in after.stderr
        assert "`prefect config unset PREFECT_API_URL`" in after.stderr
        assert profiles.read_bytes() == before
    finally:
        if worker.poll() is None:
            worker.kill()
