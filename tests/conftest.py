"""Shared fixtures: a small real pipeline run (ingest → tokenizer → shard) reused by many tests."""
from __future__ import annotations

import contextlib
import os
import shutil
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
]


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
