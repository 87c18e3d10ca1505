"""bench/gpu/vulkan.py end to end on this machine's Vulkan device (Mesa's lavapipe in CI), as the GPU box runs it.

`prepare --smoke` compiles a one-layer model's training step with the project's VulkanTrainer into a fresh
carry folder (no downloads); `run`, in its own process as on the GPU box, loads that .vmfb, repeats the
self-check against the saved CPU reference and times the step on Vulkan and in torch (CPU here). About 30 s
cold (the compile and lavapipe's shader builds), under 10 s with IREE's and Mesa's caches warm.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.train.backends import vulkan as vs

pytestmark = pytest.mark.skipif(
    not vs.available(),
    reason="no Vulkan training: needs `pip install iree-base-compiler iree-base-runtime iree-turbine` and a "
           "Vulkan device (apt-get install mesa-vulkan-drivers libvulkan1 for lavapipe)")

SCRIPT = str(PROJECT_ROOT / "bench" / "gpu" / "vulkan.py")


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.integration
def test_prepare_then_run_passes_the_self_check(tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "results.json"
    prepared = bench("prepare", "--carry", str(carry), "--smoke")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert {p.name for p in (carry / "vulkan").iterdir()} == {"step.vmfb", "batch.npz", "reference.npz", "meta.json"}
    assert not (carry / "wheels").exists() and not (carry / "gl").exists()  # --smoke downloads nothing

    ran = bench("run", "--carry", str(carry), "--out", str(out), "--steps", "3", "--seconds", "10")
    result = json.loads(out.read_text())
    assert ran.returncode == 0 and result["ok"], (result.get("error"), ran.stderr[-3000:])
    check = result["self_check"]
    assert check["verdict"] == "pass", check
    assert check["weights_checked"] == check["weights_total"]  # the smoke model's weights are all compared
    assert result["vulkan"]["timing"]["steps_per_s"] > 0 and result["torch"]["cpu_fp32"]["steps_per_s"] > 0
    assert result["model"]["init_matches_prepare"]
    assert result["foreign_modules"] == []  # nothing the GPU box lacks: no IREE compiler, no project deps
