"""Run untrusted Python programs in isolation and report pass/fail.

Model-generated code (and the synthetic code of ``tasks.ingest.synthetic``) is only ever
executed here, never in the pipeline's own process; the HumanEval evaluation reuses
the same entry points.  A program passes iff it runs to the end without an exception
within its limits.

How it works: ``run_many`` splits the programs into chunks and starts one runner per
chunk (this file run as ``python -I -S``, with an environment holding only PATH and
LANG), ``workers`` runners at a time.  As root, the runner moves into a network
namespace of its own (no interface is up: no network at all) and a mount namespace of
its own, where every mount is read-only and /tmp is a fresh tmpfs that only root may
write to: a program can write in its working directory and nowhere else.  The runner
reads its chunk as JSON on stdin and forks one child per program.  The child calls
``setsid()``, closes inherited descriptors, sends stdout to /dev/null and stderr to an
anonymous file, works in a fresh temporary directory, drops to a uid of its own
(``UID_BASE`` + its pid, which no account and no other program has) when started as
root (root ignores RLIMIT_NPROC and could write anywhere or kill the runner; with a uid
per program, ``kill(-1)`` and the process limit reach no other program), sets
RLIMIT_CPU/AS/FSIZE/NPROC and replaces ``socket.socket`` before ``exec``-ing the
program.  The runner enforces the wall-clock timeout, SIGKILLs the child's whole
process group (its forks included) and, being a child subreaper, also kills and reaps
any orphan left behind (even one that called setsid()); then it removes the directory
and prints one JSON line per program.  If a runner dies anyway (a program killed it),
the parent runs the program it died on alone and the rest of its chunk in a new
runner, so one hostile program cannot take the caller or other programs down with it.

Linux only (pidfd, prctl, /proc, mount_setattr).  Best-effort isolation, not a security
boundary (no seccomp filter; the kernel is shared).  Without root there are no
namespaces: the network block is only a monkeypatch (``_socket`` stays reachable), and
the child keeps the caller's uid, so it can read and write the caller's files and kill
the runner (the parent then recovers) or the caller.  ``os._exit(0)`` before the tests
counts as passing.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

FSIZE_BYTES = 16 << 20  # largest file a program may write
NPROC = 32  # processes per uid; not enforced for root, hence the uid drop
UID_BASE = 2_000_000_000  # + the program's pid: a uid (and gid) no account and no other program has
TMPFS = "mode=0755,size=256m"  # the runner's /tmp: working directories, at most this much in all
# Imported by the runner once so that every forked child has them for free.
PRELOAD = ("collections", "functools", "heapq", "itertools", "math", "re", "string",
           "typing", "resource", "socket", "traceback")
# Linux ABI numbers for the runner's namespaces and mounts (unshare, mount, mount_setattr).
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1


@dataclass(frozen=True)
class Outcome:
    passed: bool  # exited 0 within limits
    status: str  # "passed" | "failed" | "timeout" | "killed" (signal/memory) | "error"
    detail: str  # last line of stderr or reason, <= 300 chars


def run_one(program: str, **kw) -> Outcome:
    return run_many([program], **kw)[0]


def run_many(programs: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None) -> list[Outcome]:
    """Run every program in the sandbox; outcomes come back in input order."""
    from concurrent.futures import ThreadPoolExecutor  # here: runners start faster without it

    programs = list(programs)
    workers = max(1, workers or os.cpu_count() or 1)
    size = max(1, math.ceil(len(programs) / (workers * 4)))  # ~4 chunks per worker
    chunks = [programs[i:i + size] for i in range(0, len(programs), size)]
    with ThreadPoolExecutor(max(1, min(workers, len(chunks)))) as pool:
        done = pool.map(lambda chunk: _run_robust(chunk, timeout_s, memory_mb), chunks)
        return [outcome for chunk in done for outcome in chunk]


def _run_robust(programs: list[str], timeout_s: float, memory_mb: int) -> list[Outcome]:
    out: list[Outcome] = []
    while len(out) < len(programs):
        got = _run_chunk(programs[len(out):], timeout_s, memory_mb)
        out += itertools.takewhile(lambda o: o is not None, got)
        if len(out) < len(programs):  # the runner died on programs[len(out)]: rerun it alone
            alone = _run_chunk([programs[len(out)]], timeout_s, memory_mb)[0]
            out.append(alone or Outcome(False, "error", "sandbox runner died"))
    return out


def _run_chunk(programs: list[str], timeout_s: float, memory_mb: int) -> list[Outcome | None]:
    import subprocess  # here: runners start faster without it

    job = json.dumps({"programs": programs, "timeout_s": timeout_s, "memory_mb": memory_mb})
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                              input=job.encode(), capture_output=True, env=env,
                              cwd=tempfile.gettempdir(),
                              timeout=len(programs) * (timeout_s + 2) + 30)
        stdout = proc.stdout
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout or b""
    except OSError:  # could not even start a runner (e.g. out of processes)
        stdout = b""
    out: list[Outcome | None] = [None] * len(programs)
    for line in stdout.decode(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            out[rec["i"]] = Outcome(rec["status"] == "passed", rec["status"], rec["detail"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return out


# ---------------------------------------------------------------- runner side


def _runner() -> None:
    job = json.loads(sys.stdin.buffer.read())
    for name in PRELOAD:
        __import__(name)
    compile("x = [i for i in range(2)]", "<warm-up>", "exec")  # children then compile faster
    try:
        libc = ctypes.CDLL(None)
        libc.unshare(CLONE_NEWNET)  # no interface is up, so no network at all
        if os.getuid() == 0:
            _private_filesystem(libc)
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of programs become ours to kill
    except (OSError, AttributeError):
        pass  # not allowed here: the socket monkeypatch and the group kill remain
    for i, program in enumerate(job["programs"]):
        status, detail = _run_program(program, job["timeout_s"], job["memory_mb"])
        sys.stdout.write(json.dumps({"i": i, "status": status, "detail": detail[:300]}) + "\n")
        sys.stdout.flush()  # also keeps the buffer empty before the next fork


def _private_filesystem(libc) -> None:
    """In a mount namespace of our own: everything read-only, a fresh root-owned tmpfs on /tmp.

    Programs then write only in their working directory (under /tmp, owned by their uid):
    not in /tmp, /var/tmp, /dev/shm or any other world-writable place.  Any step the
    kernel refuses leaves the step before it in place; /tmp stays writable for us.
    """
    if libc.unshare(CLONE_NEWNS) or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
        return  # (private first: nothing mounted here may propagate to the host)
    if libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, TMPFS.encode()):
        return

    def read_only(path: bytes, recursive: bool, on: bool) -> None:
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY if on else 0, 0 if on else MOUNT_ATTR_RDONLY, 0, 0)
        libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), path,
                     ctypes.c_long(AT_RECURSIVE if recursive else 0), attr, ctypes.c_long(32))

    read_only(b"/", recursive=True, on=True)
    read_only(b"/tmp", recursive=False, on=False)
    if not os.access("/tmp", os.W_OK):
        read_only(b"/", recursive=True, on=False)


def _run_program(program: str, timeout_s: float, memory_mb: int) -> tuple[str, str]:
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            _child(program, workdir, err.fileno(), timeout_s, memory_mb)
        pidfd = os.pidfd_open(pid)  # readable once the child has exited (Linux >= 5.3)
        in_time = bool(select.select([pidfd], [], [], timeout_s)[0])
        os.close(pidfd)
        try:
            os.killpg(pid, signal.SIGKILL)  # its forks; the unreaped child keeps the group id
        except ProcessLookupError:
            pass
        status = os.waitpid(pid, 0)[1]
        _reap_leftovers()
        err.seek(max(0, os.fstat(err.fileno()).st_size - 4096))
        lines = err.read().decode(errors="replace").strip().splitlines()
    shutil.rmtree(workdir, ignore_errors=True)
    detail = lines[-1].strip() if lines else ""
    if not in_time:
        return "timeout", f"timed out after {timeout_s:g}s"
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            return "passed", ""
        if detail.startswith("MemoryError"):
            return "killed", f"memory limit exceeded: {detail}"
        return "failed", detail or f"exit code {code}"
    sig = os.WTERMSIG(status)
    if sig == signal.SIGXCPU:
        return "timeout", "CPU time limit exceeded"
    return "killed", f"killed by signal {sig}"


def _reap_leftovers() -> None:
    """Kill and reap what a program left: as subreaper every orphan is our child.

    This also catches processes that left the group with setsid(), and keeps zombies
    (which count against RLIMIT_NPROC) from piling up under a slow or absent init.
    """
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as f:
                for child in f.read().split():
                    os.kill(int(child), signal.SIGKILL)
        except OSError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return  # no children left
        time.sleep(0.001)


def _child(program: str, workdir: str, err_fd: int, timeout_s: float, memory_mb: int) -> None:
    import resource
    import socket
    import traceback

    code = 1
    try:
        os.setsid()  # own process group: the runner kills it whole
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err_fd, 2)
        if os.getuid() == 0:
            # Reach the stdlib through descriptors opened as root (its parents may be
            # closed to others, e.g. /root/.pyenv), then become a uid of our own.
            paths = []
            for path in sys.path:
                try:
                    paths.append(f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}")
                except OSError:
                    pass
            sys.path[:] = paths
            sys.path_importer_cache.clear()
            uid = UID_BASE + os.getpid()
            os.chown(workdir, uid, uid)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        try:  # die with the runner (a program may kill it when not started as root)
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, after setuid
        except (OSError, AttributeError):
            pass
        keep = sorted(int(p.rsplit("/", 1)[1]) for p in sys.path if p.startswith("/proc/self/fd/"))
        for low, high in zip([2] + keep, keep + [os.sysconf("SC_OPEN_MAX")]):
            os.closerange(low + 1, high)  # runner pipes, the err file, ...: all but sys.path
        os.chdir(workdir)
        cpu = math.ceil(timeout_s) + 1  # SIGXCPU (threads can outrun the wall clock)
        for res, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),
                                (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
                                (resource.RLIMIT_FSIZE, FSIZE_BYTES, FSIZE_BYTES),
                                (resource.RLIMIT_NPROC, NPROC, NPROC)):
            cap = resource.getrlimit(res)[1]  # a hard limit may only go down
            if cap != resource.RLIM_INFINITY:
                soft, hard = min(soft, cap), min(hard, cap)
            resource.setrlimit(res, (soft, hard))

        def no_network(*args, **kwargs):
            raise OSError("network access is disabled in the sandbox")

        socket.socket = socket.create_connection = no_network  # best-effort
        exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
        code = 0
    except BaseException:  # SystemExit included: exiting early is not passing
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    _runner()
