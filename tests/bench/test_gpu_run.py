"""bench/gpu/run.sh --cpu-smoke: every part of the GPU run, a few steps each on CPU, so it cannot rot.

The GPU run happens only when a GPU is lent (bench/gpu/README.md); this is what keeps its script, its parts
and its report working in between. The seed parts train on the suite's `built` project (no .gpu-carry here).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.conftest import PROJECT_ROOT


def test_cpu_smoke_runs_every_part(built, tmp_path):
    layout, _, _ = built
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "CARRY": str(tmp_path / "no-carry")}
    start = time.perf_counter()
    run = subprocess.run(["bash", "bench/gpu/run.sh", "--cpu-smoke", "--project", str(layout.root)], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    parts = report["parts"]
    assert set(parts) == {"probe", "tests", "seed_pilot", "seed_full", "seed_bundle", "vulkan", "kernels",
                          "train_chat", "train_nano", "seed_graphs", "finetune", "fsdp"}
    skipped = {k: p["why"] for k, p in parts.items() if p["status"] == "skipped"}
    assert set(skipped) <= {"kernels", "seed_graphs", "vulkan"}, skipped  # CUDA only; vulkan: only without IREE
    for key, part in parts.items():
        assert part["ok"] or key in skipped, (key, part.get("tail"), part.get("results"))
    assert parts["seed_pilot"]["results"]["seed-pilot.json"]["gate"]["ok"] is True
    assert parts["seed_bundle"]["results"]["seed-bundle.json"]["step"] == 6  # the tiny full run's last step
    assert parts["train_chat"]["results"], "bench/train.py wrote no JSON"
    files = sorted(p.name for p in out.iterdir())
    assert {"results.json", "results.md", "logs.txt", "seed-curves.csv", "seed-bundle.tar.00"} <= set(files)
    assert len(files) <= 8, files  # what the device tool brings back
    assert "| a. probe | ok |" in (out / "results.md").read_text()
    assert seconds < 150, f"the smoke took {seconds:.0f} s; make test allows it 2.5 minutes"
