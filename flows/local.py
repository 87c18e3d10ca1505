"""`chatpipe up` / `chatpipe down`: a Prefect server, work pools, deployments and workers on this machine;
`chatpipe worker`: a worker for a server elsewhere (a GPU box's whole setup).

Exactly the documented steps (`prefect server start`, `prefect work-pool create`, `prefect deploy`,
`prefect worker start`), run for you, so `prefect deployment run chat-pipeline/local` works on one machine.
State lives in $PREFECT_HOME (default ~/.prefect), worker pids and logs in $PREFECT_HOME/chatpipe-local/.

The user's Prefect settings are left as they were: the server's URL reaches the processes `up` starts through
their environment, and `chatpipe run` / `chatpipe worker` through the file `up` writes beside the pids
(`api-url`, removed by `down`), never through the active Prefect profile, which may point at the user's own
server or Prefect Cloud. (A profile of our own would work too, but selecting it takes two variables, where the
prefect CLI needs one: `export PREFECT_API_URL=...`, which `up` prints.) A server that does not answer is
refused in one line before a run starts, not deep inside Prefect's client.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
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
URL_FILE = STATE / "api-url"  # the server `up` started, until `down`: what `chatpipe run` and `worker` use


def _prefect(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "prefect"
    proc = subprocess.run([str(exe), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ChatpipeError(f"prefect {' '.join(args)} failed: {last[0]}")
    return proc


def _status(url: str, timeout: float = 2) -> int | None:
    """The HTTP status of the server's /health, a refusal included (a server that wants a key, as Prefect Cloud
    may, is up); None: nothing answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def _healthy(url: str) -> bool:
    return _status(url) == 200


def api_url() -> tuple[str | None, str, str]:
    """The Prefect server our commands use, where that came from and how to stop using it: $PREFECT_API_URL, else
    the server `up` started (until `down`), else Prefect's settings (the active profile's PREFECT_API_URL).
    None: none is set (Prefect's temporary server)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"], "$PREFECT_API_URL", "`unset PREFECT_API_URL`"
    if URL_FILE.exists():
        return URL_FILE.read_text().strip(), "started by `chatpipe up`", "`chatpipe down`"
    from prefect.context import get_settings_context

    context = get_settings_context()
    return (context.settings.api.url, f"PREFECT_API_URL of Prefect profile {context.profile.name!r}",
            "`prefect config unset PREFECT_API_URL`")


def use_server() -> str | None:
    """Point this process (a `chatpipe run`) at its Prefect server (`api_url`); None: Prefect's temporary one.
    One that does not answer is refused in one line with the two ways out. Call it before Prefect is imported."""
    url, source, unset = api_url()
    if url is None:
        return None
    if _status(url, timeout=3) is None:
        port = urllib.parse.urlsplit(url).port
        start = "`chatpipe up" + ("`" if port in (None, 4200) else f" --port {port}`")
        raise ChatpipeError(f"no Prefect server answers at {url} ({source}): start it with {start}, or {unset} "
                            f"to run on a temporary server")
    os.environ["PREFECT_API_URL"] = url
    return url


def _spawn(name: str, args: list[str], env: dict) -> None:
    """A long-running prefect process in its own session, logging to STATE/<name>.log."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / f"{name}.log", "ab") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), *args], cwd=PROJECT_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def up(port: int = 4200, pools: tuple[str, ...] | None = None, timeout: float = 180) -> str:
    """Start (or reuse) the server on `port`, create the pools, deploy, start the workers; returns the API URL.
    Its processes get the URL in their environment; the user's Prefect profile is not written."""
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_API_URL": url}
    if not _healthy(url):
        _spawn("server", ["--no-prompt", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
        deadline = time.time() + timeout
        while not _healthy(url):
            if time.time() > deadline:
                raise ChatpipeError(f"the Prefect server did not answer on {url} within {timeout:.0f}s")
            time.sleep(1)
    STATE.mkdir(parents=True, exist_ok=True)
    URL_FILE.write_text(url + "\n")
    for pool in declared_pools():
        if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
            _prefect("work-pool", "create", pool, "--type", "process", env=env)
    _prefect("--no-prompt", "deploy", "--all", env=env)
    for pool in pools or local_pools():
        _spawn(f"worker-{pool}", ["worker", "start", "--pool", pool], env)
    return url


def worker(pool: str, workdir: Path) -> None:
    """Become a process worker of `pool` for the Prefect server of `api_url` (on a GPU box, $PREFECT_API_URL: the
    box's whole setup); its training runs fetch their inputs into `workdir` (CHATPIPE_WORKDIR) from the store the
    flow names."""
    url, _, _ = api_url()
    if not url:
        raise ChatpipeError("PREFECT_API_URL is not set: export the flow's Prefect server, e.g. "
                            "PREFECT_API_URL=http://<server>:4200/api")
    if _status(url, timeout=3) is None:
        raise ChatpipeError(f"the Prefect server at {url} does not answer (is it up and reachable from here?)")
    env = os.environ | {"PREFECT_API_URL": url, "CHATPIPE_WORKDIR": str(Path(workdir).resolve())}
    exe = str(Path(sys.executable).parent / "prefect")
    os.execve(exe, [exe, "worker", "start", "--pool", pool, "--type", "process"], env)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie has stopped; its parent (PID 1 in a container, say) may not reap it soon
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def down(timeout: float = 20) -> str | None:
    """Stop what `up` started, the workers first, then the server, and wait for them (SIGKILL after `timeout`);
    forget the server's URL, so nothing of ours points at it. Returns that URL (None: `up` had not run)."""
    url = URL_FILE.read_text().strip() if URL_FILE.exists() else None
    URL_FILE.unlink(missing_ok=True)
    pids = []
    for pid_file in sorted(STATE.glob("*.pid"), key=lambda p: p.name == "server.pid"):
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)  # each was started in its own session: its group is its flow runs too
            pids.append(pid)
        except (ProcessLookupError, ValueError, PermissionError):
            pass
        pid_file.unlink()
    deadline = time.time() + timeout
    while (pids := [pid for pid in pids if _running(pid)]) and time.time() < deadline:
        time.sleep(0.2)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return url
