"""`dvc repro` runs the whole pipeline in a real git+DVC repo (a clone of the project, its own code running);
a second run does nothing; `dvc exp run -S` with a changed param re-runs its stage and those after it; `dvc
metrics show` works; an edit of the training code re-runs training and what follows it, not the data stages
(`make test-slow`: two more whole runs)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chatpipe.tasks.common.config import PROJECT_ROOT, params_dict

from conftest import MICRO, clone_code, test_params

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration  # `make test-quick` leaves it out


def run(cmd, cwd):
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(cwd),  # the clone's code is what runs
                        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def repro(tmp_path) -> tuple[Path, str, str]:
    """A clone of the project in a fresh git+DVC repo after its first `dvc repro`: the repo, dvc, the output."""
    repo = clone_code(tmp_path / "repo")
    # params.yaml keeps the eval section (so a change there is granular); the overlay holds the rest
    small = params_dict(test_params(*MICRO))
    base = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()) | {"eval": small.pop("eval")}
    (repo / "params.yaml").write_text(yaml.safe_dump(base))
    (repo / "configs" / "tiny.yaml").write_text(yaml.safe_dump(small))
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, repo)
    first = run([dvc, "repro"], repo)
    for stage in ("ingest", "tokenizer", "shard", "pack", "pilot", "gate", "full", "sft", "distill", "eval", "publish"):
        assert f"Running stage '{stage}'" in first
    return repo, dvc, first


def test_repro_then_noop_then_an_experiment_reruns_from_its_param(tmp_path):
    repo, dvc, _ = repro(tmp_path)
    assert (repo / "checkpoints" / "full" / "step-000006").exists()
    assert (repo / "dist" / "chat-pipeline" / "checksums.json").exists()
    assert (repo / "dist" / "chat-pipeline-ternary" / "checksums.json").exists()
    lock = (repo / "dvc.lock").read_text()

    second = run([dvc, "repro"], repo)
    assert "Running stage" not in second and "up to date" in second
    assert (repo / "dvc.lock").read_text() == lock
    assert "final_loss" in run([dvc, "metrics", "show"], repo)

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "repro"], repo)
    exp = run([dvc, "exp", "run", "-S", "eval.val_max_tokens=12345"], repo)  # a changed param: its stage onwards
    assert "Running stage 'eval'" in exp and "Running stage 'publish'" in exp
    for stage in ("ingest", "tokenizer", "shard", "pack", "pilot", "gate", "full", "sft", "distill"):
        assert f"Running stage '{stage}'" not in exp
    assert "12345" in run([dvc, "exp", "show", "--md"], repo)


@pytest.mark.slow
def test_an_edit_of_the_training_code_reruns_training_not_the_data_stages(tmp_path):
    repo, dvc, _ = repro(tmp_path)
    step = repo / "tasks" / "train" / "loop.py"
    step.write_text(step.read_text() + "\n# an edit of the training step\n")
    again = run([dvc, "repro"], repo)
    for stage in ("pilot", "gate", "full", "sft", "distill", "eval", "publish"):
        assert f"Running stage '{stage}'" in again
    for stage in ("ingest", "tokenizer", "shard", "pack"):
        assert f"Running stage '{stage}'" not in again
    assert len(list((repo / "checkpoints").glob("pilot.replaced-*"))) == 1  # not resumed from the old code's run
