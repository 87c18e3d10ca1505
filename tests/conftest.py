"""Shared fixtures: a small real pipeline run (ingest → tokenizer → shard) reused by many tests."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests track into their own temp projects
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test`: workers share the cores, not each one all of them
    # torch (OpenMP) starts a thread per core in every process: 3 workers on 2 cores would run 6 spinning threads.
    # Set before torch is imported, so the subprocesses the tests start (the CLI, dvc repro, torchrun) inherit it.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402

# Small but real: every built-in source, several shards per split.
TEST_OVERRIDES = [
    "ingest.sources.chitchat.max_conversations=1200",
    "ingest.sources.stdlib.max_files=40",
    "ingest.sources.synthetic.n=150",
    "tokenizer.vocab_size=512",
    "shard.shard_tokens=65536",
    "shard.val_fraction=0.05",
    "distill.enabled=false",  # the tiny overlay distills a student; tests that want one opt in
    "sft.enabled=false", "sft.steps=6", "sft.warmup_steps=1",  # chat fine-tuning: tests that want it opt in
]


TINY = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.block_size=64", "train.batch_size=4",
        "pilot.steps=12", "full.steps=6", "train.schedule.warmup_steps=3", "train.validation.every=6",
        "train.validation.batches=2", "train.sample.every=12", "train.sample.tokens=8", "train.checkpoint.every=4",
        "train.checkpoint.keep=2", "train.log_every=2", "train.device=cpu", "train.optimizer.lr=3e-3"]  # a model that trains in seconds


TINY_OVERLAY = str(PROJECT_ROOT / "configs" / "tiny.yaml")
# The whole flow (all nine stages) in about a minute, over the tiny overlay.
MICRO = [*TEST_OVERRIDES, "model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.block_size=64",
         "train.batch_size=4", "pilot.steps=12", "full.steps=6", "train.schedule.warmup_steps=3",
         "train.validation.every=6", "train.validation.batches=2", "train.sample.every=12", "train.sample.tokens=8",
         "train.checkpoint.every=6", "train.device=cpu", "train.optimizer.lr=3e-3",
         # a 12-step pilot cannot reach the seed's bar; these thresholds judge it as healthy
         "gate.max_loss=8", "gate.window=6", "gate.max_grad_norm_p99=100", "gate.min_turn_rate=0",
         # eval on a sliver of the val split and four HumanEval problems
         "eval.val_max_tokens=4096", "eval.chat_max_tokens=8", "eval.humaneval.problems=4",
         "eval.humaneval.n_samples=2", "eval.humaneval.k=[1,2]", "eval.humaneval.max_new_tokens=16",
         "distill.enabled=true", "distill.steps=4", "sft.enabled=true"]  # the tiny overlay's ternary student, a few steps of it

CODE = ("chatpipe", "flows", "tasks", "model", "kernels")  # what a clone needs to run the pipeline


def clone_code(root: Path) -> Path:
    """A copy of the project's code and configs, as a fresh clone has them; run it with PYTHONPATH=root."""
    for package in CODE:
        shutil.copytree(PROJECT_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", "configs", "data/chat_combined.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (PROJECT_ROOT / name).is_dir() else shutil.copy)(PROJECT_ROOT / name, root / name)
    return root


def git_snapshot(root: Path) -> Path:
    """`clone_code(root)` committed as a git repository (with prefect.yaml): a checkout that workers can clone at
    its commit, whatever is uncommitted in the project's own tree."""
    import subprocess

    clone_code(root)
    shutil.copy(PROJECT_ROOT / "prefect.yaml", root / "prefect.yaml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, env=env, capture_output=True)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(root: Path) -> Path:
    """A project directory with the sample chat file and params.yaml, as a user's clone has."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "data" / "chat_combined.txt", root / "data" / "chat_combined.txt")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


def test_params(*extra: str, base: Path | None = None):
    return load_params([PROJECT_ROOT / "configs" / "tiny.yaml"], [*TEST_OVERRIDES, *extra],
                       base=base or PROJECT_ROOT / "params.yaml")


test_params.__test__ = False  # a helper, not a test


def pytest_collection_modifyitems(config, items):
    """On pytest-xdist workers (`make test`): the files that hold `integration` tests first, each file's tests
    in their order. `--dist loadfile` hands out whole files in collection order, so the long ones (a pipeline
    under DVC, a Prefect deployment, the GPU run's CPU smoke) start at once instead of ending the run on one
    worker while the other has finished. A serial run keeps pytest's own order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    heavy = {item.path for item in items if item.get_closest_marker("integration")}
    first = {PROJECT_ROOT / path for path in FIRST}
    # a stable sort: each file's tests stay together, in order
    items.sort(key=lambda item: (item.path not in first, item.path not in heavy))


# The longest test (a third of the suite's time on one worker), handed out first: xdist gives each worker its next
# file before the current one ends, so what is queued behind this file is the light one handed out fourth.
FIRST = ("tests/flows/test_dvc.py",)


def once_per_session(tmp_path_factory, name: str, build):
    """`build(directory)`'s value, built once per test session. A session fixture is otherwise built once per
    pytest-xdist worker (workers are processes): here the first worker to ask builds it in the session's
    common temporary directory while the others wait on a lock, then they all unpickle its value and share
    its files. Without xdist, a plain `tmp_path_factory.mktemp(name)`."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    import fcntl
    import pickle

    common = tmp_path_factory.getbasetemp().parent  # xdist gives each worker <session's basetemp>/<worker id>
    directory, done = common / name, common / f"{name}.pickle"
    with open(common / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a worker dies
        if done.exists():
            return pickle.loads(done.read_bytes())
        shutil.rmtree(directory, ignore_errors=True)  # a worker before us failed half-way: each reports its own try
        directory.mkdir()
        value = build(directory)
        done.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One real run of the three data stages (once per session, shared by xdist workers); read-only."""
    def build(root: Path):
        from chatpipe.tasks.ingest import ingest
        from chatpipe.tasks.tokens import shard, tokenizer

        make_project(root)
        params, results = test_params(), {}
        with contextlib.chdir(root):
            for stage in (ingest, tokenizer, shard):
                results[stage.__name__.split(".")[-1]] = stage.run(params, Layout(root))
        return root, results

    root, results = once_per_session(tmp_path_factory, "built", build)
    return Layout(root), test_params(), results


def linked(root: Path, layout: Layout) -> Path:
    """A fresh project whose shards and tokenizer are the built fixture's (read-only, symlinked)."""
    for name in ("data", "artifacts"):
        (root / name).mkdir(parents=True)
    (root / "data" / "shards").symlink_to(layout.shards.resolve())
    (root / "artifacts" / "tokenizer").symlink_to(layout.tokenizer.resolve())
    return root


def kill_when(proc, path: Path, timeout: float = 300) -> None:
    """SIGKILL `proc` as soon as `path` exists (a checkpoint mid-run); it must not have finished first."""
    import signal
    import time

    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.fixture(scope="session")
def trained(built, tmp_path_factory):
    """`built` plus a TINY model trained through pilot and full (checkpoints/full; once per session); read-only."""
    from chatpipe.tasks.train import loop

    layout, _, _ = built
    params = test_params(*TINY)

    def build(root: Path) -> Path:
        linked(root, layout)
        with contextlib.chdir(root):
            for phase in ("pilot", "full"):
                loop.run(params, Layout(root), phase)
        return root

    return Layout(once_per_session(tmp_path_factory, "trained", build)), params


@pytest.fixture(scope="session")
def bundle_path(trained, tmp_path_factory) -> Path:
    """A model bundle (tasks/common/bundle.py) of the `trained` model; read-only."""
    from chatpipe.tasks.common import bundle
    from chatpipe.tasks.train import checkpoint

    layout, _ = trained
    model, _ = checkpoint.latest_model(layout.checkpoints / "full")
    return bundle.write(tmp_path_factory.mktemp("dist") / "tiny-test", model, layout.tokenizer,
                        "# tiny-test\n\nA model trained by the test suite.\n")


# ---------------------------------------------------------------- GCS: the real emulator on loopback

BUCKET = "chatpipe-test"
SECRET = "sekrit-7f3a9c"  # stands in for a key or token: must never reach a log, a file or a message


@pytest.fixture(scope="session")
def emulator():
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_env(emulator, monkeypatch, tmp_path):
    """The emulator as the environment's GCS, beside credentials that must not be used or shown."""
    key = tmp_path / f"key-{SECRET}.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": SECRET}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", SECRET)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return emulator


# ---------------------------------------------------------------- a real headless browser (Debian's chromium)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the page tests need Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
