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

from tasks.config import PROJECT_ROOT, load_params  # noqa: E402
from tasks.stage import Layout  # noqa: E402

# Small but real: every built-in source, several shards per split.
TEST_OVERRIDES = [
    "ingest.sources.chitchat.max_conversations=1200",
    "ingest.sources.stdlib.max_files=40",
    "ingest.sources.synthetic.n=150",
    "tokenizer.vocab_size=512",
    "shard.shard_tokens=65536",
    "shard.val_fraction=0.05",
    "distill.enabled=false",  # the tiny overlay distills a student; tests that want one opt in
]


TINY = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.block_size=64", "train.batch_size=4",
        "train.pilot_steps=12", "train.full_steps=6", "train.warmup_steps=3", "train.eval_every=6",
        "train.eval_batches=2", "train.sample_every=12", "train.sample_tokens=8", "train.checkpoint_every=4",
        "train.keep_checkpoints=2", "train.log_every=2", "train.device=cpu", "train.lr=3e-3"]  # a model that trains in seconds


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


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One real run of the three data stages; tests must treat it as read-only."""
    from tasks import ingest, shard, tokenizer

    root = make_project(tmp_path_factory.mktemp("built"))
    params = test_params()
    results = {}
    with contextlib.chdir(root):
        for stage in (ingest, tokenizer, shard):
            results[stage.__name__.split(".")[-1]] = stage.run(params, Layout(root))
    return Layout(root), params, results


def linked(root: Path, layout: Layout) -> Path:
    """A fresh project whose shards and tokenizer are the built fixture's (read-only, symlinked)."""
    for name in ("data", "artifacts"):
        (root / name).mkdir(parents=True)
    (root / "data" / "shards").symlink_to(layout.shards.resolve())
    (root / "artifacts" / "tokenizer").symlink_to(layout.tokenizer.resolve())
    return root


@pytest.fixture(scope="session")
def trained(built, tmp_path_factory):
    """`built` plus a TINY model trained through pilot and full (checkpoints/full); read-only."""
    from tasks import train

    layout, _, _ = built
    root = linked(tmp_path_factory.mktemp("trained"), layout)
    params = test_params(*TINY)
    with contextlib.chdir(root):
        for phase in ("pilot", "full"):
            train.run(params, Layout(root), phase)
    return Layout(root), params


@pytest.fixture(scope="session")
def bundle_path(trained, tmp_path_factory) -> Path:
    """A model bundle (tasks/bundle.py) of the `trained` model; read-only."""
    from tasks import bundle

    layout, _ = trained
    model, _ = bundle.from_checkpoint(layout.checkpoints / "full")
    return bundle.write(tmp_path_factory.mktemp("dist") / "tiny-test", model, layout.tokenizer,
                        "# tiny-test\n\nA model trained by the test suite.\n")


# ---------------------------------------------------------------- GCS: the real emulator on loopback

BUCKET = "chatpipe-test"
SECRET = "sekrit-7f3a9c"  # stands in for a key or token: must never reach a log, a file or a message


@pytest.fixture(scope="session")
def emulator():
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
