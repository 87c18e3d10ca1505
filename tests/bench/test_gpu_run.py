"""bench/gpu/run.sh --cpu-smoke: every part of the GPU run, a few steps each on CPU, so it cannot rot.

The GPU run happens only when a GPU is lent (bench/gpu/README.md); this is what keeps its script, its parts
and its report working in between. The seed parts train on the suite's `built` project (no .gpu-carry here).
A smoke writes to a temporary directory, never bench/results/, and its exit status says whether every part
was ok.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"
SMOKE_BUDGET = 900  # seconds; the smoke takes about 2 minutes on an idle machine


def smoke(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """run.sh --cpu-smoke without $OUT, with TMPDIR in tmp_path (where the smoke must write)."""
    env = {**os.environ, "PYTHON": sys.executable, "CARRY": str(tmp_path / "no-carry"), "TMPDIR": str(tmp_path),
           **(env or {})}
    env.pop("OUT", None)
    # The GPU run's budget (560 s, its caps reserved for the parts after the seed's long run) is for a lease of
    # minutes; a smoke on a shared 2-core machine gets more. Past the budget the report says what ran out of time.
    return subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-smoke", "--budget", str(SMOKE_BUDGET), *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=SMOKE_BUDGET + 120,
                          check=False)


def written(run: subprocess.CompletedProcess, tmp_path: Path) -> Path:
    """The report's folder (the run's last line names it): a temporary directory, nothing in bench/results/."""
    out = Path(re.findall(r"^wrote (\S+?)(?:;|$)", run.stdout, re.M)[-1])
    assert out.is_relative_to(tmp_path), out
    return out


@pytest.mark.integration
def test_cpu_smoke_runs_every_part(built, tmp_path):
    layout, _, _ = built
    before = sorted(p.name for p in RESULTS.iterdir())
    run = smoke(tmp_path, "--project", str(layout.root))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = written(run, tmp_path)
    assert sorted(p.name for p in RESULTS.iterdir()) == before  # no dated folder of CPU numbers
    report = json.loads((out / "results.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"probe", "tests", "seed_pilot", "seed_full", "seed_bundle", "vulkan", "kernels",
                          "train_chat", "train_nano", "seed_graphs", "finetune", "fsdp", "option_c"}
    skipped = {k: p["why"] for k, p in parts.items() if p["status"] == "skipped"}
    assert set(skipped) == {"kernels", "seed_graphs"}, skipped  # CUDA only
    for key, part in parts.items():
        assert part["ok"], (key, part.get("tail"), part.get("results"))
    assert parts["seed_pilot"]["results"]["seed-pilot.json"]["gate"]["ok"] is True
    assert parts["seed_bundle"]["results"]["seed-bundle.json"]["step"] == 6  # the tiny full run's last step
    assert parts["train_chat"]["results"], "bench/train.py wrote no JSON"
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "results.md", "logs.txt", "seed-curves.csv", "seed-bundle.tar.00"} <= set(files)
    assert len(files) <= 8, files  # what the device tool brings back
    assert "| a. probe | ok |" in (out / "results.md").read_text()
    assert report["seconds"] <= report["budget_s"]  # the suite keeps to its budget (no wall-clock bound here)
    assert [p for p in tmp_path.glob("chatpipe-gpu-*") if p != out] == [], "the suite's work folder is left behind"


@pytest.mark.integration
def test_cpu_smoke_fails_when_its_parts_fail(tmp_path):
    """A Python whose torch cannot be imported: every part fails or is skipped unrun, and the exit status says so."""
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\")\n")
    before = sorted(p.name for p in RESULTS.iterdir())
    run = smoke(tmp_path, env={"PYTHONPATH": str(fake.parent)})
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    out = written(run, tmp_path)
    assert sorted(p.name for p in RESULTS.iterdir()) == before
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert not any(p["ok"] for k, p in parts.items() if k not in ("kernels", "seed_graphs")), parts
    assert {k for k, p in parts.items() if p["status"] == "failed"} >= {"probe", "tests", "train_chat", "fsdp"}
    assert "not ok: probe" in run.stdout


def test_a_smoke_may_not_write_into_bench_results(tmp_path):
    target = RESULTS / "smoke-must-not-write-here"
    run = subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-smoke", "--only", "probe"], cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHON": sys.executable, "OUT": str(target)},
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "temporary directory" in run.stderr, run.stdout + run.stderr
    assert not target.exists()
