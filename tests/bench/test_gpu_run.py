"""bench/gpu/run.sh --cpu-smoke: every part of the GPU run, a few steps each on CPU, so it cannot rot.

The GPU run happens only when a GPU is lent (bench/gpu/README.md); this is what keeps its script, its parts
and its report working in between. The seed parts train on the suite's `built` project (no .gpu-carry here).
A smoke writes to a temporary directory, never bench/results/, and its exit status says whether every part
was ok.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"


def _suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", PROJECT_ROOT / "bench" / "gpu" / "suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SUITE = _suite()
SMOKE_BUDGET = SUITE.ALL_BUDGET  # every part, both calls' (the smoke itself takes about 2 minutes on an idle machine)


def test_the_gpu_session_plan_fits_its_lease():
    """Each call under one device command with room for run.sh's set-up, both with a machine's start inside the
    session's device time, and the seed's full run left at least its floor by the caps around it at GPU speed (the
    first plan, every part under one 560 s budget, left it less than nothing: it would have been skipped)."""
    every = SUITE.parts(Path("work"), Path("project"), Path("carry"))
    setup, start = 40, 120  # run.sh's wheels and loader; a machine's start and the transfers
    assert sum(SUITE.BUDGETS.values()) + setup * len(SUITE.CALLS) + start <= SUITE.DEVICE_SECONDS
    for call, keys in SUITE.CALLS.items():
        assert SUITE.BUDGETS[call] + setup <= SUITE.CALL_SECONDS, call
        assert SUITE.plan_problem([p for p in every if p.key in keys], SUITE.BUDGETS[call]) is None, call
    assert "seed_full" in SUITE.CALLS["seed"] and SUITE.plan_problem(every, 560) is not None
    refused = subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-smoke", "--only", "seed_pilot", "seed_full",
                              "--budget", "100"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
                             env={**os.environ, "PYTHON": sys.executable, "CARRY": "/nonexistent/carry",
                                  "OUT": "/nonexistent/never-written"})
    assert refused.returncode == 2 and "the plan leaves seed_full" in refused.stderr, refused.stderr


def smoke(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """run.sh --cpu-smoke without $OUT, with TMPDIR in tmp_path (where the smoke must write)."""
    env = {**os.environ, "PYTHON": sys.executable, "CARRY": str(tmp_path / "no-carry"), "TMPDIR": str(tmp_path),
           **(env or {})}
    env.pop("OUT", None)
    # Every part in one command, under ALL_BUDGET (each GPU call's budget is for its own parts at GPU speed). Past
    # the budget the report says what ran out of time.
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
    assert set(parts) == {"probe", "tests", "seed_pilot", "seed_full", "seed_bundle", "serve", "vulkan", "kernels",
                          "train_nano", "seed_compiled", "finetune", "fsdp", "option_c"}
    assert set(parts) == {key for call in SUITE.CALLS.values() for key in call}  # the two GPU calls hold every part
    skipped = {k: p["why"] for k, p in parts.items() if p["status"] == "skipped"}
    assert set(skipped) == {"kernels", "seed_compiled"}, skipped  # CUDA only
    for key, part in parts.items():
        assert part["ok"], (key, part.get("tail"), part.get("results"))
    assert parts["seed_pilot"]["results"]["seed-pilot.json"]["gate"]["ok"] is True
    assert parts["seed_bundle"]["results"]["seed-bundle.json"]["step"] == 6  # the tiny full run's last step
    assert parts["train_nano"]["results"], "bench/train.py wrote no JSON"
    served = parts["serve"]["results"]["serve-ternary.json"]["modes"]
    assert served["ternary"]["ternary_linears_on"] == ["cpu"] and served["teacher"]["ternary_linears_on"] is None
    assert served["ternary"]["weights_mib"] < served["teacher"]["weights_mib"]
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
    assert not any(p["ok"] for k, p in parts.items() if k not in ("kernels", "seed_compiled")), parts
    assert {k for k, p in parts.items() if p["status"] == "failed"} >= {"probe", "tests", "train_nano", "fsdp"}
    assert "not ok: probe" in run.stdout


def test_a_smoke_may_not_write_into_bench_results(tmp_path):
    target = RESULTS / "smoke-must-not-write-here"
    run = subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-smoke", "--only", "probe"], cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHON": sys.executable, "OUT": str(target)},
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "temporary directory" in run.stderr, run.stdout + run.stderr
    assert not target.exists()


def test_the_seed_falls_back_from_cuda_graphs_that_fail(monkeypatch, tmp_path):
    """A CUDA-graph failure cannot happen on a CPU, so the first training call is made to raise as one would: the
    phase trains again in torch.compile's default mode, the failure is recorded, and a mode that is not CUDA graphs
    gets no second try."""
    spec = importlib.util.spec_from_file_location("gpu_seed", PROJECT_ROOT / "bench" / "gpu" / "seed.py")
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    from chatpipe.tasks.common.config import load_params

    def load(*overrides):
        return load_params([seed.OVERLAY], [*seed.SMOKE, "train.compile=reduce-overhead", *overrides])

    modes = []

    def run(params, layout, phase):
        modes.append(params.train.compile)
        if params.train.compile == "reduce-overhead":
            raise RuntimeError("CUDAGraphs: accessing tensor output of CUDAGraphs that has been overwritten\ndetail")
        return f"{phase} trained"

    monkeypatch.setattr(seed.loop, "run", run)
    result, params, mode = seed.trained(load, None, "pilot")
    assert (result, modes, params.train.compile) == ("pilot trained", ["reduce-overhead", True], True)
    assert mode == {"compile": True, "graphs_failed": "RuntimeError: CUDAGraphs: accessing tensor output of "
                                                      "CUDAGraphs that has been overwritten"}

    def broken(params, layout, phase):
        modes.append(params.train.compile)
        raise RuntimeError("not the graphs")

    monkeypatch.setattr(seed.loop, "run", broken)
    with pytest.raises(RuntimeError, match="not the graphs"):
        seed.trained(load, None, "pilot", "train.compile=true")
    assert modes[2:] == [True]
