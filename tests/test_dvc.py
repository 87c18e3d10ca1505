"""`dvc repro` runs the three data stages in a real git+DVC repo, and a second run does nothing."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.config import PROJECT_ROOT, params_dict

from conftest import test_params

BIN = Path(sys.executable).parent


def run(cmd, cwd):
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_repro_then_noop(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "data/chat_combined.txt"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, repo / name)
    for package in ("tasks", "model"):
        shutil.copytree(PROJECT_ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(params_dict(test_params(
        "ingest.sources.chitchat.max_conversations=300", "ingest.sources.synthetic.n=60"))))
    run(["git", "init", "-q"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)

    first = run([str(BIN / "dvc"), "repro", "shard"], repo)   # the data stages (training has its own tests)
    for stage in ("ingest", "tokenizer", "shard"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "data" / "shards" / "manifest.json").exists() and (repo / "dvc.lock").exists()
    lock = (repo / "dvc.lock").read_text()

    second = run([str(BIN / "dvc"), "repro", "shard"], repo)
    assert "Running stage" not in second and "up to date" in second
    assert (repo / "dvc.lock").read_text() == lock

    # changing one param re-runs that stage and those after it, not the ones before
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["shard"]["shard_tokens"] = 32768
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = run([str(BIN / "dvc"), "repro", "shard"], repo)
    assert "Running stage 'shard'" in third and "Running stage 'ingest'" not in third
