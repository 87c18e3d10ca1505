"""Every file a stage writes is ignored by git, so `make demo` leaves `git status` clean.

The stage table (tasks/pipeline.py) declares each stage's outputs, metrics and plots; .gitignore must cover
each of them, whether or not it exists yet. An output named without a suffix is a directory (checked as
`path/`, and a file inside it), one with a suffix a file.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import PurePosixPath

import pytest

from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.pipeline import PIPELINE

pytestmark = pytest.mark.skipif(not (PROJECT_ROOT / ".git").exists() or not shutil.which("git"),
                                reason="needs git and the repository")


def written() -> list[str]:
    """Every output, metrics file and plot the stage table declares."""
    return sorted({o.path for stage in PIPELINE.values() for o in stage.outputs}
                  | {stage.metrics for stage in PIPELINE.values()}
                  | {plot.path for stage in PIPELINE.values() for plot in stage.plots})


def as_checked(path: str) -> list[str]:
    """A file as itself; a directory (no suffix) as `dir/` and a file inside it."""
    return [path] if PurePosixPath(path).suffix else [f"{path}/", f"{path}/x"]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False)


def test_every_stage_output_is_ignored():
    paths = {checked for path in written() for checked in as_checked(path)}
    assert "data/sft/" in paths and "metrics/pack.json" in paths  # the table is what we think it is
    run = git("check-ignore", "--no-index", *sorted(paths))
    assert run.returncode in (0, 1), run.stderr  # 1: none ignored
    assert sorted(paths - set(run.stdout.splitlines())) == [], "not ignored by .gitignore"


def test_no_stage_output_is_tracked():
    """An ignore rule does not hide a file git already tracks."""
    run = git("ls-files", "--", *written())
    assert run.returncode == 0 and run.stdout == "", run.stdout or run.stderr
