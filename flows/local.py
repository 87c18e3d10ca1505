"""`chatpipe up` / `chatpipe down`: a Prefect server, work pools, deployments and workers on this machine;
`chatpipe worker`: a worker for a server elsewhere (a GPU box's whole setup).

Exactly the documented steps (`prefect server start`, `prefect work-pool create`, `prefect deploy`,
`prefect worker start`), run for you, so `prefect deployment run chat-pipeline/local` works on one machine.
State lives in $PREFECT_HOME (default ~/.prefect), worker pids and logs in $PREFECT_HOME/chatpipe-local/.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.common.errors import ChatpipeError

POOLS = ("local", "cpu")  # pools that always get a worker here; every pool in prefect.yaml is created


def local_pools() -> tuple[str, ...]:
    """POOLS, plus `cuda` / `vulkan` when this machine has that device (tasks/train/backends/devices.py; software Vulkan
    such as lavapipe counts: it runs Vulkan training for real, only slowly)."""
    from chatpipe.tasks.train.backends.devices import DEVICES

    return POOLS + tuple(name for name in ("cuda", "vulkan") if DEVICES[name].available())


def declared_pools() -> list[str]:
    import yaml

    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    return sorted({d["work_pool"]["name"] for d in spec["deployments"]})
STATE = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "chatpipe-local"


def _prefect(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "prefect"
    proc = subprocess.run([str(exe), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ChatpipeError(f"prefect {' '.join(args)} failed: {last[0]}")
    return proc


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn(name: str, args: list[str], env: dict) -> None:
    """A long-running prefect process in its own session, logging to STATE/<name>.log."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), *args], cwd=PROJECT_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def up(port: int = 4200, pools: tuple[str, ...] | None = None, timeout: float = 180) -> str:
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_API_URL": url}
    if not _healthy(url):
        _spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
        deadline = time.time() + timeout
        while not _healthy(url):
            if time.time() > deadline:
                raise ChatpipeError(f"the Prefect server did not answer on {url} within {timeout:.0f}s")
            time.sleep(1)
    _prefect("config", "set", f"PREFECT_API_URL={url}", env=env)
    for pool in declared_pools():
        if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
            _prefect("work-pool", "create", pool, "--type", "process", env=env)
    _prefect("--no-prompt", "deploy", "--all", env=env)
    for pool in pools or local_pools():
        _spawn(f"worker-{pool}", ["worker", "start", "--pool", pool], env)
    return url


def worker(pool: str, workdir: Path) -> None:
    """Become a process worker of `pool` for the server at $PREFECT_API_URL (the whole setup of a GPU box): its
    training runs fetch their inputs into `workdir` (CHATPIPE_WORKDIR) from the store the flow names."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url  # the environment's, else the Prefect profile's
    if not url:
        raise ChatpipeError("PREFECT_API_URL is not set: export the flow's Prefect server, e.g. "
                            "PREFECT_API_URL=http://<server>:4200/api")
    if not _healthy(url):
        raise ChatpipeError(f"the Prefect server at {url} does not answer (is it up and reachable from here?)")
    env = os.environ | {"CHATPIPE_WORKDIR": str(Path(workdir).resolve())}
    exe = str(Path(sys.executable).parent / "prefect")
    os.execve(exe, [exe, "worker", "start", "--pool", pool, "--type", "process"], env)


def down() -> None:
    """Stop what `up` started: the workers first, then the server."""
    for pid_file in sorted(STATE.glob("*.pid"), key=lambda p: p.name == "server.pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pid_file.unlink()
