"""tasks.common.sandbox: hostile programs fail alone; the caller and the other programs survive."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from chatpipe.tasks.common import sandbox
from chatpipe.tasks.common.sandbox import Outcome, run_many, run_one

SECRET = "hunter2-do-not-leak"

PROGRAMS = {
    "ok": "assert sum(range(10)) == 45",
    "assert": "assert 1 + 1 == 3, 'math is broken'",
    "syntax": "def broken(:\n    pass",
    "loop": "while True:\n    pass",
    "alloc": "blob = bytearray(4 * 1024 ** 3)",
    "bigfile": "with open('big.bin', 'wb') as f:\n    f.write(b'x' * 100_000_000)",
    "kill_parent": "import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(0.5)",
    "fork_loop": ("import os\nwhile True:\n    try:\n        if os.fork() == 0:\n"
                  "            while True:\n                pass\n    except OSError:\n        pass"),
    "env": "import os\nassert 'CHATPIPE_SECRET_TEST' not in os.environ\nassert 'HOME' not in os.environ",
    "workdir": ("import os\nassert os.listdir('.') == [], os.listdir('.')\n"
                "open('scratch.txt', 'w').write('hi')\nassert os.getcwd() != {cwd!r}"),
    "network": ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
                "except OSError:\n    pass\nelse:\n    raise AssertionError('network reachable')"),
    "exit0": "import sys\nsys.exit(0)",
    "stdlib": "import json, fractions, datetime\nassert json.loads('[1]') == [1]",
    "after": "import math\nassert math.gcd(12, 18) == 6",
}


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    os.environ["CHATPIPE_SECRET_TEST"] = SECRET
    try:
        names = list(PROGRAMS)
        programs = [PROGRAMS[n].replace("{cwd!r}", repr(os.getcwd())) for n in names]
        results = run_many(programs, timeout_s=1.0, memory_mb=256, workers=2)
    finally:
        del os.environ["CHATPIPE_SECRET_TEST"]
    return dict(zip(names, results))


def test_shapes(outcomes):
    assert len(outcomes) == len(PROGRAMS)
    for outcome in outcomes.values():
        assert isinstance(outcome, Outcome)
        assert outcome.status in {"passed", "failed", "timeout", "killed", "error"}
        assert outcome.passed == (outcome.status == "passed")
        assert len(outcome.detail) <= 300


@pytest.mark.parametrize("name", ["ok", "env", "workdir", "network", "stdlib", "after"])
def test_good_programs_pass(outcomes, name):
    assert outcomes[name] == Outcome(True, "passed", ""), outcomes[name]


def test_failing_assert(outcomes):
    assert outcomes["assert"].status == "failed"
    assert outcomes["assert"].detail == "AssertionError: math is broken"


def test_syntax_error(outcomes):
    assert outcomes["syntax"].status == "failed"
    assert "SyntaxError" in outcomes["syntax"].detail


def test_infinite_loop_times_out(outcomes):
    assert outcomes["loop"].status == "timeout"


def test_big_allocation_hits_memory_limit(outcomes):
    assert outcomes["alloc"].status == "killed"
    assert "MemoryError" in outcomes["alloc"].detail


def test_big_file_is_refused(outcomes):
    assert not outcomes["bigfile"].passed
    assert outcomes["bigfile"].status in {"failed", "killed"}


@pytest.mark.parametrize("name", ["kill_parent", "fork_loop", "exit0"])
def test_hostile_programs_fail(outcomes, name):
    assert not outcomes[name].passed, outcomes[name]


def test_kill_parent_inside_one_runner():
    """A program killing its parent must not cost the programs after it in the same runner."""
    ok, bad = "assert 2 * 3 == 6", "import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(0.5)"
    got = sandbox._run_robust([ok, bad, ok, "assert False", ok], 2.0, 256)
    assert [o.passed for o in got] == [True, False, True, False, True]
    assert got[3].status == "failed"


def test_runner_death_is_recovered(monkeypatch):
    """If a runner dies mid-chunk, the rest of the chunk is re-run and gets real outcomes."""
    real = sandbox._run_chunk
    calls = []

    def dying_first_runner(programs, timeout_s, memory_mb):
        calls.append(len(programs))
        got = real(programs, timeout_s, memory_mb)
        return got[:1] + [None] * (len(got) - 1) if len(calls) == 1 else got

    monkeypatch.setattr(sandbox, "_run_chunk", dying_first_runner)
    programs = ["assert True", "assert False", "x = 1", "raise ValueError('v')"]
    got = sandbox._run_robust(programs, 2.0, 256)
    assert [o.status for o in got] == ["passed", "failed", "passed", "failed"]
    assert got[3].detail == "ValueError: v"
    assert calls == [4, 1, 2]  # whole chunk, the one it died on alone, then the rest


def test_stray_processes_are_killed():
    """Background children left by finished programs die, even after setsid()."""
    shared = tempfile.mkdtemp(prefix="sandbox-test-")
    os.chmod(shared, 0o777)  # the program may run as nobody
    programs = [(f"import os, time\nif os.fork() == 0:\n    {escape}time.sleep(1.0)\n"
                 f"    open({os.path.join(shared, name)!r}, 'w').close()\n    os._exit(0)")
                for name, escape in (("in-group", ""), ("escaped", "os.setsid()\n    "))]
    try:
        assert all(o.passed for o in run_many(programs, timeout_s=5.0))
        time.sleep(1.5)
        assert os.listdir(shared) == []
    finally:
        for name in os.listdir(shared):
            os.remove(os.path.join(shared, name))
        os.rmdir(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a uid drop (as root) hides other processes")
def test_secret_not_readable_from_other_processes(monkeypatch):
    monkeypatch.setenv("CHATPIPE_SECRET_TEST", SECRET)
    program = (f"import os\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
               f"    try:\n        data = open(f'/proc/{{pid}}/environ', 'rb').read()\n"
               f"    except OSError:\n        continue\n    assert {SECRET.encode()!r} not in data, pid")
    assert run_one(program).passed


def test_run_one_and_empty():
    assert run_one("pass") == Outcome(True, "passed", "")
    assert run_many([]) == []


def test_order_is_preserved_across_many_runners():
    programs = [f"assert {i} % 3 != 0" for i in range(60)]
    got = run_many(programs, workers=3)
    assert [o.passed for o in got] == [i % 3 != 0 for i in range(60)]


@pytest.mark.skipif(os.geteuid() != 0, reason="the read-only mount namespace needs root")
def test_programs_write_only_in_their_working_directory():
    program = ("import os\nopen('mine.txt', 'w').write('ok')\n"
               "for d in ('/tmp', '/var/tmp', '/dev/shm', os.path.dirname(os.getcwd())):\n"
               "    try:\n        open(os.path.join(d, 'escaped.txt'), 'w')\n    except OSError:\n        continue\n"
               "    raise AssertionError(d)")
    assert run_one(program) == Outcome(True, "passed", "")
    assert not os.path.exists("/tmp/escaped.txt")


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does each program get a uid of its own")
def test_kill_everything_reaches_no_other_program():
    """kill(-1) signals every process of the caller's uid: with a uid per program, that is only itself."""
    victim = "import os, time\ntime.sleep(1.5)\nassert os.getuid() >= 2_000_000_000"
    killer = ("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(5)\n    os._exit(0)\n"
              "time.sleep(0.3)\nos.kill(-1, 9)\n_, status = os.waitpid(pid, 0)\n"
              "assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9")  # it does kill its own child
    got = run_many([victim, killer], timeout_s=5.0, workers=2)  # two runners, side by side
    assert got == [Outcome(True, "passed", "")] * 2
